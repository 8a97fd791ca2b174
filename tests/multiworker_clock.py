"""Helpers of the multi-worker children (`multiworker_child.py`, `multiworker_jax_child.py`).

Each worker gets its own clock for `every_seconds`, advancing a fixed number of seconds per training
step, so the workers' clocks disagree at every step, as real clocks of different hosts do, and a
save on the clock is due on each worker at a different step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import keras

from keras_ckpt.state import is_replaying


class StepClock(keras.callbacks.Callback):
    """A clock reading `seconds_per_step` times the steps trained, installed as the `every_seconds`
    clock of `callbacks`. Put it first in `fit`'s callbacks, so the others read this step's time."""

    def __init__(self, seconds_per_step: float, *callbacks: keras.callbacks.Callback):
        super().__init__()
        self.seconds_per_step = seconds_per_step
        self.steps = 0
        for callback in callbacks:
            callback._schedule.clock = self

    def __call__(self) -> float:
        return self.steps * self.seconds_per_step

    def on_train_batch_end(self, batch, logs=None):
        if not is_replaying(self._model):
            self.steps += 1


def report_saves(say: Callable[..., None], checkpoint, backup) -> None:
    """Reports `SAVE <callback> <global step>` at each save decision (also off the chief)."""
    for name, callback in (("ModelCheckpoint", checkpoint), ("BackupAndRestore", backup)):
        real = callback._save

        def save(*args, _real=real, _name=name, _callback=callback, **kwargs):
            say("SAVE", _name, _callback._progress.global_step)
            return _real(*args, **kwargs)

        callback._save = save


def wait_for_signal(backup, timeout: float = 300.0) -> None:
    """Sleeps until `backup` caught a signal (the test sends it), then lets training go on."""
    deadline = time.monotonic() + timeout
    while backup.interrupted is None and time.monotonic() < deadline:
        time.sleep(0.05)
