"""keras_ckpt.training.signals: the handlers `BackupAndRestore` installs for SIGTERM and SIGINT
during `fit`, and what it gives back."""

from __future__ import annotations

import os
import signal

import keras
import pytest
from conftest import Crash, build_model, fit

import keras_ckpt
from keras_ckpt.training.signals import SignalCatcher


def test_signal_handlers_are_restored_after_fit(tmp_path, data):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    fit(build_model(), data, [keras_ckpt.BackupAndRestore(tmp_path)], epochs=1)
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_signal_goes_to_the_previous_handler(tmp_path, data):
    class InterruptTwice(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit(build_model(), data, [keras_ckpt.BackupAndRestore(tmp_path), InterruptTwice()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_after_a_failed_fit_goes_to_the_previous_handler(tmp_path, data):
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(RuntimeError):
            fit(build_model(), data, [keras_ckpt.BackupAndRestore(tmp_path), Crash(3)])
        # on_train_end never ran, so our handler is still installed; it must not swallow Ctrl-C.
        signal.raise_signal(signal.SIGINT)
        assert received == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_signal_handler_never_reads_callback_model(tmp_path, data, monkeypatch):
    """On JAX `Callback.model` syncs the trainer's state into the variables; read from a signal
    handler, between steps, it could make the stop backup hold an older step than its label."""
    backup = keras_ckpt.BackupAndRestore(
        tmp_path / "b", save_freq=100, raise_on_interrupt=False, delete_checkpoint=False
    )
    in_handler: list[bool] = []
    real_handle = SignalCatcher.handle

    def handle(self, signum, frame):
        in_handler.append(True)
        try:
            real_handle(self, signum, frame)
        finally:
            in_handler.pop()

    real_model = keras.callbacks.Callback.model

    def guarded(self):
        assert not in_handler, "Callback.model was read inside the signal handler"
        return real_model.fget(self)

    monkeypatch.setattr(SignalCatcher, "handle", handle)
    monkeypatch.setattr(type(backup), "model", property(guarded))

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    fit(build_model(), data, [backup, Interrupt()])
    assert backup.interrupted == signal.SIGINT
    [record] = keras_ckpt.CheckpointManager(tmp_path / "b").checkpoints()
    assert record.step == 3  # the signal lands in batch 1's end; the backup is taken at batch 2's


def test_a_handler_given_back_after_another_took_the_signal_hands_it_on():
    """A catcher that handed a signal on while another catcher held the signal, then got it back
    from that one, still knows the handler from before (it looped through itself forever)."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    first, second = SignalCatcher(None, "first"), SignalCatcher(None, "second")
    try:
        first.install()
        second.install()
        first.handle(signal.SIGINT, None)  # not inside its fit: handed to the handler before it
        second.uninstall()  # gives the signal back to the first catcher
        signal.raise_signal(signal.SIGINT)
        assert received == [signal.SIGINT, signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is not first.handle  # it gave the signal back
    finally:
        signal.signal(signal.SIGINT, previous)
