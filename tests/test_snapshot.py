"""keras_ckpt.format.snapshot: host copies, written later in Keras's own formats (private APIs)."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest
from conftest import build_model, h5_datasets

from keras_ckpt.format import h5write, snapshot


def trained(data, dropout=0.0):
    model = build_model(dropout=dropout)
    x, y = data
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model


def test_weights_snapshot_writes_the_same_datasets_as_save_weights(tmp_path, data):
    model = trained(data)
    model.save_weights(tmp_path / "keras.weights.h5")
    h5write.write_snapshot(
        snapshot.take(model, weights_only=True), str(tmp_path / "ours.weights.h5")
    )
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
    h5write.write_snapshot(snap, str(tmp_path / "then.weights.h5"))
    fresh = build_model(seed=7)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "then.weights.h5")
    assert len(frozen) == len(fresh.weights) > 0
    for a, b in zip(fresh.weights, frozen, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)


def test_an_inline_snapshot_keeps_no_buffers_and_writes_the_same_file(tmp_path):
    """`copy=False` (saves written before the next step): no host buffers are allocated or
    kept, and the file is the one a copying snapshot writes."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1200), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)  # its variables are >= 4 KiB too
    copying, inline = snapshot.Snapshotter(), snapshot.Snapshotter(copy=False)
    h5write.write_snapshot(
        copying.take(model, weights_only=True), str(tmp_path / "copied.weights.h5")
    )
    h5write.write_snapshot(
        inline.take(model, weights_only=True), str(tmp_path / "inline.weights.h5")
    )
    assert not inline._buffers
    kernel = model.layers[0].kernel
    taken = [a for kind, _, a in inline.take(model, weights_only=True).ops if kind == "set"]
    if keras.backend.backend() == "tensorflow":  # a view of the variable's own buffer
        assert any(np.shares_memory(a, snapshot._host_view(kernel)) for a in taken)
    assert copying._buffers
    copied_arrays = [
        a for kind, _, a in copying.take(model, weights_only=True).ops if kind == "set"
    ]
    assert not any(np.shares_memory(a, snapshot._host_view(kernel)) for a in copied_arrays)
    copied, direct = (h5_datasets(tmp_path / f"{n}.weights.h5") for n in ("copied", "inline"))
    assert sorted(copied) == sorted(direct) and len(direct) > 4
    for name in copied:
        np.testing.assert_array_equal(copied[name], direct[name])


def test_a_background_snapshot_is_a_host_copy_that_stays_as_it_was(tmp_path, data):
    """A background snapshot copies every value into host buffers the snapshotter owns, on every
    backend (on TensorFlow, holding the tensors would make training copy them into memory its
    allocator keeps after `fit`): training on, then writing, gives the file of the moment of the
    snapshot, optimizer variables included, and the optimizer is left as it was."""
    model = trained(data)
    state = list(model.weights) + list(model.optimizer.variables)
    frozen = [v.numpy().copy() for v in state]
    snapshotter = snapshot.Snapshotter()
    snap = snapshotter.take(model, weights_only=True)
    taken = [a for kind, _, a in snap.ops if kind == "set"]
    assert len(taken) > len(model.weights)
    views = [snapshot._host_view(v) for v in state]
    assert not any(np.shares_memory(a, v) for a in taken for v in views)  # host memory of its own
    assert "save_own_variables" not in vars(model.optimizer)
    x, y = data
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)  # every variable moves on
    moved = [not np.array_equal(v.numpy(), f) for v, f in zip(state, frozen, strict=True)]
    assert sum(moved) >= len(model.weights)
    h5write.write_snapshot(snap, str(tmp_path / "then.weights.h5"))
    fresh = build_model(seed=7)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "then.weights.h5")
    loaded = list(fresh.weights) + list(fresh.optimizer.variables)
    assert len(loaded) == len(frozen) > len(model.weights)
    for a, b in zip(loaded, frozen, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)


def test_the_optimizer_variables_are_taken_once(mocker):
    """Keras's optimizer hands over `variable.numpy()`, a copy; during a snapshot it hands over
    the variables themselves, so neither an inline nor a background snapshot copies them twice."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1200), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    numpy = mocker.spy(type(model.optimizer.variables[0]), "numpy")
    for copy in (False, True):
        snap = snapshot.Snapshotter(copy=copy).take(model, weights_only=True)
        assert numpy.call_count == 0
        optimizer = [a for kind, key, a in snap.ops if kind == "set"][-3:]
        expected = [v.numpy() for v in model.optimizer.variables[-3:]]
        numpy.reset_mock()
        for a, b in zip(optimizer, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    assert "save_own_variables" not in vars(model.optimizer)


class RefillingLayer(keras.layers.Layer):
    """Saves its two variables through one NumPy buffer it refills for each key: legal, since
    Keras's own store copies what it is handed."""

    def build(self, input_shape):
        self.a = self.add_weight(shape=(16,), initializer="ones", name="a")
        self.b = self.add_weight(shape=(16,), initializer="zeros", name="b")

    def call(self, x):
        return x * self.a + self.b

    def save_own_variables(self, store):
        buffer = np.empty((16,), "float32")
        for key, variable in (("0", self.a), ("1", self.b)):
            buffer[...] = keras.ops.convert_to_numpy(variable)
            store[key] = buffer

    def load_own_variables(self, store):
        self.a.assign(store["0"])
        self.b.assign(store["1"])


def test_an_inline_save_copies_a_buffer_a_layer_refills_between_keys(tmp_path):
    import keras_ckpt

    model = keras.Sequential([keras.Input((16,)), RefillingLayer(), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    checkpoint = keras_ckpt.ModelCheckpoint(
        tmp_path / "m.weights.h5", save_weights_only=True, async_save=False
    )
    model.fit(np.ones((4, 16)), np.ones((4, 2)), epochs=1, verbose=0, callbacks=[checkpoint])
    assert checkpoint._pipeline.format._copy is False  # the inline path
    saved = h5_datasets(tmp_path / "m.weights.h5")
    layer = model.layers[0]
    np.testing.assert_array_equal(saved["layers/refilling_layer/vars/0"], layer.a.numpy())
    np.testing.assert_array_equal(saved["layers/refilling_layer/vars/1"], layer.b.numpy())
    assert not np.array_equal(layer.a.numpy(), layer.b.numpy())


def test_an_inline_save_of_ordinary_layers_copies_nothing(mocker):
    """What Keras's layers and optimizer hand over is a variable, a backend tensor, or the array
    the optimizer made for that very key: the inline snapshot keeps them as they are."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1200), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    spy = mocker.spy(snapshot.Snapshotter, "_copy")
    snapshot.Snapshotter(copy=False).take(model, weights_only=True)
    assert spy.call_count == len(model.weights) + len(model.optimizer.variables)
    for call, returned in zip(spy.call_args_list, spy.spy_return_list, strict=True):
        assert returned is call.args[2]  # the source itself, not a copy


@pytest.mark.parametrize("async_save", [True, False])
def test_callbacks_copy_only_when_writing_in_the_background(tmp_path, data, async_save, mocker):
    import keras_ckpt

    made = mocker.spy(snapshot.Snapshotter, "__init__")
    model = trained(data)
    x, y = data
    checkpoint = keras_ckpt.ModelCheckpoint(
        tmp_path / "m.weights.h5", async_save=async_save, save_weights_only=True
    )
    backup = keras_ckpt.BackupAndRestore(
        tmp_path / "backup", async_save=async_save, delete_checkpoint=False
    )
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[checkpoint, backup])
    assert [call.kwargs["copy"] for call in made.call_args_list] == [async_save, async_save]


def test_full_model_snapshot_is_a_keras_file_plain_keras_loads(tmp_path, data):
    model = trained(data, dropout=0.5)
    h5write.write_snapshot(snapshot.take(model, weights_only=False), str(tmp_path / "m.keras"))
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
    h5write.write_snapshot(snapshot.take(model, weights_only=False), str(tmp_path / "m.keras"))
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
