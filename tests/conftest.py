"""Shared fixtures: tiny real Keras models and generated data (nothing is downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture
def data():
    """(x, y) for a 3-class problem, 64 samples of 8 features, fixed seed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, y


def build_model(dropout: float = 0.0, seed: int = 0):
    """A compiled two-layer classifier small enough to fit in milliseconds."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8,)), keras.layers.Dense(16, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(3, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def make_model():
    return build_model


def h5_datasets(path) -> dict:
    """Every dataset of an HDF5 file (a `.weights.h5`), by its path inside the file."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def commit(manager, name, files=None, kind="weights", **kwargs):
    """Commits `files` (relpath -> bytes; default `{name}.bin`) through a real staging folder."""
    files = files or {f"{name}.bin": name.encode()}
    with manager.stage() as folder:
        staged = {}
        for i, (relpath, data) in enumerate(files.items()):
            staged[relpath] = os.path.join(folder, str(i))
            with open(staged[relpath], "wb") as f:
                f.write(data)
        return manager.commit(staged, name=name, kind=kind, **kwargs)


def fail_removing(mocker, relpath: str, times: int = 1):
    """`LocalStorage.remove(relpath)` raises PermissionError (an immutable file, as `chattr +i`
    makes one) the first `times` calls; everything else is removed as usual."""
    from keras_ckpt.store.local import LocalStorage

    real = LocalStorage.remove
    left = {"n": times}

    def remove(self, path):
        if path == relpath and left["n"] > 0:
            left["n"] -= 1
            raise PermissionError(1, "Operation not permitted", os.path.basename(path))
        return real(self, path)

    return mocker.patch.object(LocalStorage, "remove", remove)
