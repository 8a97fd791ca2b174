"""Shared fixtures and helpers: tiny real Keras models, generated data (nothing is downloaded),
checkpoint directories, and the callbacks and fit loop several test files use."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.util

import keras
import numpy as np
import pytest
from hypothesis import settings

import keras_ckpt
from keras_ckpt.manager import CheckpointManager

# Property tests judge behaviour, never speed: Hypothesis's default 200 ms deadline per example
# fails them on a loaded machine (an example that took 313 ms once, 0.04 ms when rerun).
settings.register_profile("keras_ckpt", deadline=None)
settings.load_profile("keras_ckpt")

# The CLI never computes with a Keras backend, but `import keras_ckpt` imports Keras, which imports
# TensorFlow unless told otherwise: CLI subprocesses start faster on the numpy backend. Keras's
# numpy backend imports JAX (for its FFT), so where JAX is absent they keep the default backend.
LIGHT_BACKEND = "numpy" if importlib.util.find_spec("jax") else os.environ["KERAS_BACKEND"]
LIGHT_ENV = {**os.environ, "KERAS_BACKEND": LIGHT_BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3"}


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


class Crash(keras.callbacks.Callback):
    """Raises at the `at_step`-th trained step (replayed steps do not count)."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.steps = at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        if keras_ckpt.state.is_replaying(self.model):
            return
        self.steps += 1
        if self.steps == self.at_step:
            raise RuntimeError("crash")


def fit(model, data, callbacks, epochs=3, **kwargs):
    """`model.fit` on `data` in batches of 16 (4 steps an epoch), silently."""
    x, y = data
    return model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


@pytest.fixture
def outside(tmp_path):
    """A folder beside the checkpoint directory holding a file nobody may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.txt").write_text("precious")
    return folder


@pytest.fixture
def manager(tmp_path):
    """A manager of `tmp_path`, closed (its lock released) after the test."""
    with CheckpointManager(tmp_path) as manager:
        yield manager


# ------------------------------------------------------------------ a model that is hard to save


@keras.saving.register_keras_serializable(package="keras_ckpt_tests")
class Counter(keras.layers.Layer):
    """A registered custom layer with int and bool variables besides a float one."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.count = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="count"
        )
        self.flags = self.add_weight(
            shape=(4,), dtype="bool", initializer="zeros", trainable=False, name="flags"
        )

    def call(self, x, training=False):
        if training:
            self.count.assign_add(1)
            self.flags.assign(keras.ops.ones((4,), dtype="bool"))
        return x * self.scale


def awkward_model(*, bfloat16: bool = False) -> keras.Model:
    """Nested functional + BatchNormalization, custom layer, bfloat16 layer, Adam with EMA."""
    keras.utils.set_random_seed(0)
    if bfloat16:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        inner_in = keras.Input((8,))
        h = keras.layers.Dense(1200, activation="relu")(inner_in)  # large: the pwrite path
        h = keras.layers.BatchNormalization()(h)
        inner = keras.Model(inner_in, h, name="inner")
        x_in = keras.Input((8,))
        h = inner(x_in)
        h = Counter()(h)
        h = keras.layers.Dense(16, dtype="bfloat16")(h)
        out = keras.layers.Dense(3, activation="softmax", dtype="float32")(h)
        model = keras.Model(x_in, out)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model.compile(
        optimizer=keras.optimizers.Adam(use_ema=True),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def trained(data, **kwargs):
    """`awkward_model(**kwargs)` after one epoch: every variable holds a trained value."""
    model = awkward_model(**kwargs)
    model.fit(*data, epochs=1, batch_size=16, verbose=0)
    return model


def state_of(model) -> list[np.ndarray]:
    """Every model and optimizer variable, as arrays."""
    return [np.asarray(v.numpy()) for v in model.weights + model.optimizer.variables]


def assert_same_state(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b) > 0
    for left, right in zip(a, b, strict=True):
        assert left.dtype == right.dtype
        np.testing.assert_array_equal(left, right)


def fresh_like(model) -> keras.Model:
    """An untrained `awkward_model` with its optimizer built, shaped like `model`."""
    clone = awkward_model()
    clone.optimizer.build(clone.trainable_variables)
    assert [v.shape for v in clone.weights] == [v.shape for v in model.weights]
    return clone


class Capture(keras.callbacks.Callback):
    """The model's state at each epoch end, as a checkpoint saved then holds it (Keras swaps the
    EMA weights in when `fit` ends, after the last save)."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_epoch_end(self, epoch, logs=None):
        self.states.append(state_of(self.model))
