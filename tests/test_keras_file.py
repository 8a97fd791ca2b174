"""keras_ckpt.format.keras_file: Keras's own files as a format; a legacy `.h5` full model is
written by Keras, inline."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from conftest import build_model, fit

import keras_ckpt
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.store.local import seal_file


def test_legacy_h5_full_model_is_written_by_keras_and_sealed(tmp_path, data):
    model = build_model()
    callback = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.h5"))
    model.fit(*data, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    record = CheckpointManager(tmp_path).get("m-1.h5")
    assert record.files[0].checksum == seal_file(tmp_path / "m-1.h5").checksum
    loaded = CheckpointManager(tmp_path).load_model("m-1.h5")
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_legacy_h5_full_model_is_written_by_keras_even_with_async_save(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.h5"), async_save=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is a legacy format
        fit(build_model(), data, [cb], epochs=1)
        loaded = keras.saving.load_model(tmp_path / "m-1.h5")
    assert loaded.count_params() == build_model().count_params()
