"""keras_ckpt.format._keras_private: the private Keras saving functions we call are checked at
import, so a Keras that changed them fails clearly, naming what changed."""

from __future__ import annotations

import pytest

from keras_ckpt.format import _keras_private


def test_missing_private_keras_function_fails_clearly_at_import(monkeypatch):
    monkeypatch.delattr(_keras_private.saving_lib, "_save_state")
    with pytest.raises(ImportError, match=r"private saving API changed.*_save_state` is missing"):
        _keras_private._check()


def test_changed_private_keras_signature_fails_clearly(monkeypatch):
    monkeypatch.setattr(_keras_private.saving_lib, "_load_state", lambda model, store: None)
    with pytest.raises(ImportError, match=r"_load_state.* changed"):
        _keras_private._check()


def test_without_what_deferred_values_need_a_model_loads_the_plain_way(tmp_path, monkeypatch):
    import keras
    import numpy as np

    from keras_ckpt.format import h5read

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    monkeypatch.setattr(_keras_private, "_VARIABLE_API", None)
    with _keras_private.values_from_the_file() as deferred:
        assert deferred is False
    loaded = h5read.load_model(tmp_path / "m.keras")
    for ours, saved in zip(
        loaded.weights + loaded.optimizer.variables,
        model.weights + model.optimizer.variables,
        strict=True,
    ):
        np.testing.assert_array_equal(ours.numpy(), saved.numpy())


def test_a_failed_deferral_leaves_keras_variable_registry_as_it_found_it():
    import keras
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute("uninitialized_variables")
    with pytest.raises(ValueError, match="stateless scope"):
        with _keras_private.values_from_the_file() as deferred:
            assert deferred is True
            keras.Variable(initializer="ones", shape=(2,))  # deferred, then dropped
            keras.Variable(1.0)  # from a value: refused inside a stateless scope
    assert global_state.get_global_attribute("uninitialized_variables") == before
    assert global_state.get_global_attribute("stateless_scope") is None


def test_a_deferral_that_misses_variables_is_caught_and_the_model_built_the_plain_way(
    tmp_path, monkeypatch
):
    """If Keras renamed the global list of deferred variables, the deferral would leave them
    without values: the loader must notice and build the model the plain way."""
    import keras
    import numpy as np

    from keras_ckpt.format import h5read

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    from keras.src.backend.common import global_state

    monkeypatch.setattr(_keras_private, "_UNINITIALIZED", "renamed_by_a_future_keras")
    registry = list(global_state.get_global_attribute("uninitialized_variables") or [])
    try:
        loaded = h5read.load_model(tmp_path / "m.keras")
    finally:  # Keras's own list now holds the variables the deferral missed: not for later tests
        global_state.set_global_attribute("uninitialized_variables", registry)
    assert not _keras_private.uninitialized(loaded.variables + loaded.optimizer.variables)
    for ours, saved in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), saved.numpy())
