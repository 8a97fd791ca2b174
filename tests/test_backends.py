"""How each backend's `fit` drives our callbacks: async batch hooks, JAX's detached state.

Keras runs batch-end hooks in a thread pool on JAX and PyTorch (never on TensorFlow) unless a
callback overrides `on_train_batch_end` without `async_safe=True`; on JAX the trainer keeps the
state outside the variables until something syncs it. `make test-backends` runs this file with
KERAS_BACKEND=jax and =torch.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import build_model
from keras.src.callbacks.callback_list import CallbackList

import keras_ckpt

BACKEND = keras.backend.backend()
threaded_hooks = pytest.mark.skipif(
    BACKEND == "tensorflow",
    reason="the tensorflow backend never runs batch hooks in threads (IS_THREAD_SAFE is False)",
)


def dispatches_batch_ends_async(callback, model):
    return CallbackList([callback], model=model)._async_train


@threaded_hooks
def test_epoch_saves_keep_async_batch_dispatch(tmp_path):
    model = build_model()
    callback = keras_ckpt.ModelCheckpoint(tmp_path / "m.keras")
    assert dispatches_batch_ends_async(callback, model)


@threaded_hooks
@pytest.mark.parametrize("kwargs", [{"save_freq": 2}, {"every_seconds": 60.0}])
def test_step_saves_run_their_hook_on_the_training_thread(tmp_path, kwargs):
    model = build_model()
    callback = keras_ckpt.ModelCheckpoint(tmp_path / "m-{epoch}-{batch}.keras", **kwargs)
    assert not dispatches_batch_ends_async(callback, model)


def test_async_counted_steps_land_in_the_records(tmp_path, data):
    """Steps counted by hooks that may run out of order in worker threads are exact."""
    x, y = data
    callback = keras_ckpt.ModelCheckpoint(tmp_path / "m-{epoch}.weights.h5", save_weights_only=True)
    build_model().fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[callback])
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert [(r.epoch, r.step, r.global_step) for r in records] == [
        (1, 0, 16),
        (2, 0, 32),
        (3, 0, 48),
    ]


@pytest.mark.parametrize("async_save", [False, True])
def test_a_step_save_holds_that_steps_weights(tmp_path, data, async_save):
    """Not the state of a later step, nor (JAX) the stale variables of the epoch's start."""
    x, y = data
    callback = keras_ckpt.ModelCheckpoint(
        tmp_path / "s-{batch}.weights.h5",
        save_weights_only=True,
        save_freq=2,
        async_save=async_save,
    )
    build_model().fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    after_two = build_model()
    after_two.fit(x[:32], y[:32], batch_size=16, epochs=1, shuffle=False, verbose=0)
    saved = build_model()
    saved.optimizer.build(saved.trainable_variables)  # else load_weights skips the optimizer's
    saved.load_weights(tmp_path / "s-2.weights.h5")
    initial = build_model()
    for got, want, before in zip(saved.weights, after_two.weights, initial.weights, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)
        assert not np.array_equal(np.asarray(got), np.asarray(before))
    assert int(saved.optimizer.iterations) == 2  # and Adam's moments of step 2:
    for got, want in zip(saved.optimizer.variables, after_two.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)


def test_backups_record_the_backend(tmp_path, data):
    x, y = data
    backup = keras_ckpt.BackupAndRestore(tmp_path, save_freq=2, delete_checkpoint=False)
    build_model().fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[backup])
    record = keras_ckpt.CheckpointManager(tmp_path).latest()
    assert record.backend == BACKEND
