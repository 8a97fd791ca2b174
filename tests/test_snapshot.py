"""keras_ckpt.snapshot: host copies written later in Keras's own formats (private Keras APIs)."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest
from conftest import build_model, h5_datasets

from keras_ckpt import snapshot


def trained(data, dropout=0.0):
    model = build_model(dropout=dropout)
    x, y = data
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model


def test_weights_snapshot_writes_the_same_datasets_as_save_weights(tmp_path, data):
    model = trained(data)
    model.save_weights(tmp_path / "keras.weights.h5")
    snapshot.write(snapshot.take(model, weights_only=True), str(tmp_path / "ours.weights.h5"))
    theirs, ours = (
        h5_datasets(tmp_path / "keras.weights.h5"),
        h5_datasets(tmp_path / "ours.weights.h5"),
    )
    assert sorted(theirs) == sorted(ours) and len(ours) > 4
    for name in theirs:
        np.testing.assert_array_equal(theirs[name], ours[name])


def test_snapshot_is_frozen_while_training_goes_on(tmp_path, data):
    model = trained(data)
    frozen = [v.numpy().copy() for v in model.weights]
    snap = snapshot.take(model, weights_only=True)
    x, y = data
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # the variables move on
    snapshot.write(snap, str(tmp_path / "then.weights.h5"))
    fresh = build_model(seed=7)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "then.weights.h5")
    assert len(frozen) == len(fresh.weights) > 0
    for a, b in zip(fresh.weights, frozen, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)


def test_full_model_snapshot_is_a_keras_file_plain_keras_loads(tmp_path, data):
    model = trained(data, dropout=0.5)
    snapshot.write(snapshot.take(model, weights_only=False), str(tmp_path / "m.keras"))
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
    assert len(model.weights) > 0
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_assets_are_carried_into_the_keras_file(tmp_path):
    lookup = keras.layers.StringLookup(vocabulary=["a", "b", "c"])
    model = keras.Sequential([keras.Input((1,), dtype="string"), lookup])
    snapshot.write(snapshot.take(model, weights_only=False), str(tmp_path / "m.keras"))
    model.save(tmp_path / "keras.keras")
    with (
        zipfile.ZipFile(tmp_path / "m.keras") as ours,
        zipfile.ZipFile(tmp_path / "keras.keras") as theirs,
    ):
        assert sorted(ours.namelist()) == sorted(theirs.namelist())
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[-1].get_vocabulary() == lookup.get_vocabulary()


def test_snapshot_records_its_size(data):
    model = trained(data)
    snap = snapshot.take(model, weights_only=True)
    expected = sum(v.numpy().nbytes for v in model.weights) + sum(
        v.numpy().nbytes for v in model.optimizer.variables
    )
    assert snap.nbytes == expected


def test_recording_store_is_accepted_by_keras_saving_walk():
    # Keras type-checks the store; if it stops accepting our subclass, this names the cause.
    with pytest.raises(ValueError, match="weights_store"):
        snapshot.saving_lib._save_state(
            build_model(),
            weights_store=object(),
            assets_store=None,
            inner_path="",
            visited_saveables=set(),
        )
    assert isinstance(
        snapshot._RecordingStore(snapshot.Snapshotter()), snapshot.saving_lib.H5IOStore
    )
