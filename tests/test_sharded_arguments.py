"""How the callbacks choose sharded checkpoints, checked when they are made: wrong values name the
argument, and a sharded choice without JAX and orbax-checkpoint fails at once (these tests run on
TensorFlow, where Orbax cannot write)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_ckpt

needs_other_backend = pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="checks the refusal on a backend Orbax cannot use"
)


def test_sharded_must_be_a_bool_or_none(tmp_path):
    with pytest.raises(ValueError, match=r"argument `sharded`.*Received: sharded='yes'"):
        keras_ckpt.BackupAndRestore(tmp_path / "backup", sharded="yes")


def test_a_folder_filepath_may_not_end_in_a_keras_extension(tmp_path):
    with pytest.raises(ValueError, match=r"argument `filepath`.*without `\.keras`"):
        keras_ckpt.ModelCheckpoint(f"{tmp_path}/model-{{epoch}}.keras/")


def test_a_folder_filepath_needs_a_field_as_a_folder_cannot_be_replaced_in_place(tmp_path):
    with pytest.raises(ValueError, match=r"argument `filepath`.*a field such as `\{epoch\}`"):
        keras_ckpt.ModelCheckpoint(f"{tmp_path}/best/")


@needs_other_backend
def test_a_folder_filepath_needs_the_jax_backend(tmp_path):
    with pytest.raises(ImportError, match="needs the JAX backend"):
        keras_ckpt.ModelCheckpoint(f"{tmp_path}/model-{{epoch}}/")


@needs_other_backend
def test_sharded_backups_need_the_jax_backend(tmp_path):
    with pytest.raises(ImportError, match="needs the JAX backend"):
        keras_ckpt.BackupAndRestore(tmp_path / "backup", sharded=True)


def test_file_checkpoints_stay_files_for_a_model_held_whole(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    checkpoint = keras_ckpt.ModelCheckpoint(f"{tmp_path}/m-{{epoch}}.keras")
    backup = keras_ckpt.BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)
    model.fit(np.ones((1, 2)), np.ones((1, 1)), epochs=1, verbose=0, callbacks=[checkpoint, backup])
    assert (tmp_path / "m-1.keras").is_file()
    assert (tmp_path / "backup" / "backup-000000001.weights.h5").is_file()
