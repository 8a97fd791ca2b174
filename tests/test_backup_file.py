"""The one-file backup: a plain Keras `.weights.h5` plus only the state Keras's walk leaves out."""

from __future__ import annotations

import json
import warnings

import h5py
import keras
import numpy as np
import pytest
from conftest import build_model, h5_datasets

import keras_ckpt
from keras_ckpt import backup_file
from keras_ckpt import state as st
from keras_ckpt.callbacks.backup_and_restore import OWNER


class Crash(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.steps = at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        if st.is_replaying(self.model):
            return
        self.steps += 1
        if self.steps == self.at_step:
            raise RuntimeError("crash")


class Remembers(keras.callbacks.Callback):
    """A `CheckpointStateful` callback whose own state happens to use the key `best_weights`."""

    def __init__(self):
        super().__init__()
        self.state = {"best_weights": 2, "path": "best.weights.h5", "epochs": 0}
        self.received = None

    def on_epoch_end(self, epoch, logs=None):
        self.state = {**self.state, "epochs": self.state["epochs"] + 1}

    def get_checkpoint_state(self):
        return dict(self.state)

    def set_checkpoint_state(self, state):
        self.received = state
        self.state = dict(state)


def fit(model, data, callbacks, epochs=3, **kwargs):
    x, y = data
    return model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def crash_and_keep(tmp_path, data, *callbacks, at_step=6, **kwargs):
    """Fits until a crash at `at_step`; returns the model and the newest backup's record."""
    model = build_model(dropout=0.5)
    backup = keras_ckpt.BackupAndRestore(tmp_path, save_freq=2, delete_checkpoint=False, **kwargs)
    with pytest.raises(RuntimeError):
        fit(model, data, [backup, *callbacks, Crash(at_step)])
    backup.wait_until_finished()
    return model, keras_ckpt.CheckpointManager(tmp_path).latest(owner=OWNER)


def test_a_callback_state_with_a_best_weights_key_round_trips_unchanged(tmp_path, data):
    first = Remembers()
    crash_and_keep(tmp_path, data, first)  # 4 steps per epoch: backed up at step 6, epoch 1
    saved = dict(first.state)
    second = Remembers()
    fit(build_model(dropout=0.5), data, [keras_ckpt.BackupAndRestore(tmp_path), second])
    assert second.received == saved
    assert second.received["best_weights"] == 2  # not taken for a count of arrays
