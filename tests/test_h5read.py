"""keras_ckpt.format.h5read: ours and Keras's files read in place, what is loaded is exactly what
was checked, and read errors are damage. Crafted files are in `test_crafted_files.py`; the checked
reading on its own in `test_checked.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import google_crc32c
import h5py
import keras
import numpy as np
import pytest
from conftest import assert_same_state, fresh_like, state_of, trained

from keras_ckpt import CheckpointManager
from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format import h5read, h5write, snapshot
from keras_ckpt.format.checked import VerifiedFile
from keras_ckpt.store.local import seal_file


def model_of(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(300), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.weights + model.optimizer.variables]


def committed(directory, model: keras.Model, name: str, *, gzip: bool = False) -> None:
    """`model`'s weights committed as checkpoint `name` (Keras's own file), optionally with every
    kernel re-stored gzip-compressed."""
    manager = CheckpointManager(directory)
    with manager.stage() as folder:
        staged = os.path.join(folder, name)
        model.save_weights(staged)
        if gzip:
            with h5py.File(staged, "r+") as f:
                for path in ("layers/dense/vars/0", "layers/dense_1/vars/0"):
                    value = f[path][()]
                    del f[path]
                    f.create_dataset(path, data=value, chunks=True, compression="gzip")
        manager.commit({name: staged}, name=name, kind="weights")
    manager.close()


@pytest.mark.parametrize("writer", ["ours", "keras"])
@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_fast_reader_loads_ours_and_keras_files_in_place(tmp_path, data, writer, suffix):
    model = trained(data, bfloat16=True)
    path = tmp_path / f"m{suffix}"
    weights_only = suffix == ".weights.h5"
    if writer == "ours":
        h5write.write_snapshot(snapshot.take(model, weights_only=weights_only), str(path))
    else:
        (model.save_weights if weights_only else model.save)(path)
    expected = seal_file(path, sync=False)
    target = fresh_like(model)
    # Keras's `.keras` holds its HDF5 member at an arbitrary offset: read in place all the same.
    assert h5read.load_weights(target, path, expected)
    assert_same_state(state_of(target), state_of(model))
    if not weights_only:
        assert_same_state(state_of(h5read.load_model(path, expected)), state_of(model))


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_a_flipped_byte_is_found_by_the_reader(tmp_path, data, suffix):
    model = trained(data)
    path = tmp_path / f"m{suffix}"
    sealed = h5write.write_snapshot(
        snapshot.take(model, weights_only=suffix == ".weights.h5"), str(path)
    )
    with open(path, "r+b") as f:
        f.seek(sealed.size // 2)
        byte = f.read(1)
        f.seek(sealed.size // 2)
        f.write(bytes([byte[0] ^ 1]))
    target = fresh_like(model)
    before = state_of(target)
    with pytest.raises(CorruptCheckpointError, match=r"checksum mismatch"):
        h5read.load_weights(target, path, sealed, name="m")
    assert_same_state(state_of(target), before)  # nothing was assigned
    if suffix == ".keras":
        with pytest.raises(CorruptCheckpointError, match=r"checksum mismatch"):
            h5read.load_model(path, sealed)


def test_a_file_rewritten_in_place_after_its_check_loads_what_was_checked(tmp_path, monkeypatch):
    """`cp other.weights.h5 m.weights.h5` (or `rsync --inplace`) while a load is under way: the
    load still assigns the bytes whose checksum matched, never the new ones."""
    checked, other = model_of(1), model_of(2)
    committed(tmp_path, checked, "m.weights.h5")
    replacement = tmp_path.parent / f"{tmp_path.name}-other.weights.h5"
    other.save_weights(replacement)
    assert replacement.stat().st_size == (tmp_path / "m.weights.h5").stat().st_size
    real_digest = google_crc32c.Checksum.digest

    def rewrite_then_digest(self):  # right after the checksum pass, before anything is loaded
        with open(tmp_path / "m.weights.h5", "r+b") as f:  # in place, as `cp` does
            f.truncate(0)
            f.write(replacement.read_bytes())
        monkeypatch.setattr(google_crc32c.Checksum, "digest", real_digest)
        return real_digest(self)

    monkeypatch.setattr(google_crc32c.Checksum, "digest", rewrite_then_digest)
    target = model_of(3)
    CheckpointManager(tmp_path).load_weights(target, "latest")
    for a, b in zip(weights(target), weights(checked), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_truncated_while_it_loads_neither_kills_the_process_nor_loads_garbage(tmp_path):
    """A mapped file truncated under its reader kills it with SIGBUS; read from one descriptor
    into memory, the checked bytes load, whatever happens to the file."""
    checked = model_of(1)
    committed(tmp_path, checked, "m.weights.h5")
    np.save(
        tmp_path.parent / f"{tmp_path.name}-expected.npy",
        np.concatenate([w.ravel() for w in weights(checked)]),
    )
    child = textwrap.dedent(
        f"""
        import sys, google_crc32c, numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_h5read import model_of, weights
        from keras_ckpt import CheckpointManager
        real = google_crc32c.Checksum.digest
        def truncate_then_digest(self):
            open({str(tmp_path / "m.weights.h5")!r}, "r+b").truncate(0)
            google_crc32c.Checksum.digest = real
            return real(self)
        google_crc32c.Checksum.digest = truncate_then_digest
        target = model_of(3)
        CheckpointManager({str(tmp_path)!r}).load_weights(target, "latest")
        loaded = np.concatenate([w.ravel() for w in weights(target)])
        expected = np.load({str(tmp_path.parent / f"{tmp_path.name}-expected.npy")!r})
        print("equal" if np.array_equal(loaded, expected) else "different")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip().endswith("equal")


def test_a_read_error_inside_a_matching_file_is_damage_and_falls_back(tmp_path):
    """A gzip-compressed dataset whose stream is garbage, in a file whose record matches it (a
    crafted folder brings its own records): h5py's error while Keras's walk assigns is damage,
    so "latest" falls back to the previous checkpoint, and nothing of the bad one is assigned."""
    good, bad = model_of(1), model_of(2)
    committed(tmp_path, good, "a.weights.h5")
    source = tmp_path / "b-source.weights.h5"
    bad.save_weights(source)
    with h5py.File(source, "r+") as f:
        value = f["layers/dense/vars/0"][()]
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", data=value, chunks=(8, 300), compression="gzip")
        offset = f["layers/dense/vars/0"].id.get_chunk_info(0).byte_offset
    raw = bytearray(source.read_bytes())
    raw[offset + 10 : offset + 60] = b"\xff" * 50  # the deflate stream, not the metadata
    source.write_bytes(bytes(raw))
    manager = CheckpointManager(tmp_path)
    with manager.stage() as folder:
        staged = os.path.join(folder, "b.weights.h5")
        with open(staged, "wb") as f:
            f.write(bytes(raw))
        manager.commit({"b.weights.h5": staged}, name="b.weights.h5", kind="weights")
    manager.close()
    target = model_of(3)
    with pytest.warns(UserWarning, match=r"b.weights.h5 in .* is damaged \(.*cannot read dataset"):
        assert manager.load_weights(target, "latest").name == "a.weights.h5"
    for a, b in zip(weights(target), weights(good), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CorruptCheckpointError, match=r"layers/dense/vars/0"):
        h5read.load_weights(model_of(3), tmp_path / "b.weights.h5")


@pytest.mark.parametrize("can_map", [True, False])
def test_the_buffer_is_anonymous_memory_or_plain_memory_where_mapping_fails(
    tmp_path, mocker, can_map
):
    import mmap

    model = model_of(1)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    if not can_map:
        mocker.patch.object(mmap, "mmap", side_effect=OSError(19, "No such device"))
    source = VerifiedFile(path, None)
    assert source.buffer.tobytes() == path.read_bytes()
    assert source.buffer.flags.writeable  # arrays handed to Keras are writable, as read ones are
    target = model_of(2)
    assert h5read.load_weights(target, path)
    for a, b in zip(weights(target), weights(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_legacy_h5_model_is_loaded_by_keras_legacy_loader_from_the_checked_bytes(tmp_path):
    model = model_of(1)
    model.save(tmp_path / "m.h5")  # Keras's legacy HDF5 full model
    sealed = VerifiedFile(tmp_path / "m.h5", None).sealed
    target = model_of(2)
    assert h5read.load_weights(target, tmp_path / "m.h5", sealed) is False  # Keras's loader
    for a, b in zip(target.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    loaded = h5read.load_model(tmp_path / "m.h5", sealed, compile=False)
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_safe_mode_refuses_a_legacy_h5_lambda_on_every_supported_keras(tmp_path):
    # Keras 3.10's legacy loader takes no safe_mode argument; the check must still apply.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)])
    model.save(tmp_path / "m.h5")
    sealed = VerifiedFile(tmp_path / "m.h5", None).sealed
    with pytest.raises(ValueError, match="safe_mode"):
        h5read.load_model(tmp_path / "m.h5", sealed, compile=False)
    loaded = h5read.load_model(tmp_path / "m.h5", sealed, compile=False, safe_mode=False)
    assert isinstance(loaded.layers[-1], keras.layers.Lambda)


@keras.saving.register_keras_serializable(package="test_h5read")
class CountingInitializer(keras.initializers.Initializer):
    """Glorot-uniform that counts its calls: Keras's `load_model` draws every initial value."""

    calls = 0

    def __call__(self, shape, dtype=None):
        CountingInitializer.calls += 1
        return keras.initializers.GlorotUniform()(shape, dtype=dtype)


@keras.saving.register_keras_serializable(package="test_h5read")
class ReadsItsWeightInBuild(keras.layers.Layer):
    """Creates a weight from an array in `build`: it cannot be built with its initialization
    deferred, so the loader must build it the plain way."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")
        self.offset = keras.Variable(np.zeros(input_shape[-1], "float32"), name="offset")

    def call(self, x):
        return x * self.scale + self.offset


def test_load_model_fills_variables_from_the_file_without_drawing_initial_values(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, kernel_initializer=CountingInitializer()),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(2, kernel_initializer=CountingInitializer()),
        ]
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    CountingInitializer.calls = 0
    plain = keras.saving.load_model(tmp_path / "m.keras")
    assert CountingInitializer.calls == 2  # Keras draws each kernel, then overwrites it

    CountingInitializer.calls = 0
    sealed = VerifiedFile(tmp_path / "m.keras", None).sealed
    loaded = h5read.load_model(tmp_path / "m.keras", sealed)
    assert CountingInitializer.calls == 0
    for ours, keras_own in zip(
        loaded.weights + loaded.optimizer.variables,
        plain.weights + plain.optimizer.variables,
        strict=True,
    ):
        assert ours.path == keras_own.path
        if "seed_generator" not in ours.path:  # not in the file: a fresh seed, as Keras's
            np.testing.assert_array_equal(ours.numpy(), keras_own.numpy())
    for variable in loaded.metrics_variables:  # not in the file: their own initial value
        assert variable.numpy() == 0
    x, y = np.ones((4, 4)), np.zeros((4, 2))
    assert loaded.evaluate(x, y, verbose=0) == plain.evaluate(x, y, verbose=0)
    loaded.fit(x, y, verbose=0)  # and it trains


def test_a_model_that_needs_its_values_while_it_is_built_loads_the_plain_way(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), ReadsItsWeightInBuild()])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 3)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = h5read.load_model(tmp_path / "m.keras")
    assert len(loaded.weights) == len(model.weights)
    for ours, saved in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), saved.numpy())
    np.testing.assert_array_equal(
        loaded.predict(np.ones((2, 3)), verbose=0), model.predict(np.ones((2, 3)), verbose=0)
    )
