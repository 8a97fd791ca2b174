"""keras_ckpt.format.h5write: Keras's own formats, written in one pass from a host snapshot."""

from __future__ import annotations

import io
import os
import struct
import zipfile

import h5py
import keras
import ml_dtypes
import numpy as np
import pytest
from conftest import (
    Capture,
    Counter,
    assert_same_state,
    awkward_model,
    fresh_like,
    state_of,
    trained,
)

import keras_ckpt
from keras_ckpt.format import _zip, h5read, h5write, snapshot
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.store.local import seal_file


def h5_tree(path) -> dict:
    """Every group and dataset with its attributes (and, for datasets, dtype and value)."""
    source = path
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            source = io.BytesIO(archive.read("model.weights.h5"))
    out = {}
    with h5py.File(source, "r") as f:

        def visit(name, obj):
            attrs = {k: str(v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                out[name] = ("dataset", obj.dtype.str, obj.shape, attrs, obj[()].tobytes())
            else:
                out[name] = ("group", attrs)

        f.visititems(visit)
    return out


@pytest.fixture(params=[False, True], ids=["float32", "mixed_bfloat16"])
def bf16(request):
    return request.param


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_same_datasets_and_attributes_as_keras_and_plain_keras_loads_it(
    tmp_path, data, bf16, suffix
):
    model = trained(data, bfloat16=bf16)
    weights_only = suffix == ".weights.h5"
    ours, theirs = tmp_path / f"ours{suffix}", tmp_path / f"keras{suffix}"
    sealed = h5write.write_snapshot(snapshot.take(model, weights_only=weights_only), str(ours))
    assert sealed == seal_file(ours)
    (model.save_weights if weights_only else model.save)(theirs)
    assert h5_tree(ours) == h5_tree(theirs)
    assert any(v[3].get("dtype") == "bfloat16" for v in h5_tree(ours).values() if v[0] == "dataset")
    if weights_only:
        loaded = fresh_like(model)
        loaded.load_weights(ours)
    else:
        loaded = keras.saving.load_model(ours)
        assert isinstance(loaded.get_layer(index=2), Counter)
    assert_same_state(state_of(loaded), state_of(model))


def test_keras_file_is_one_clean_zip_with_its_hdf5_member_at_4096(tmp_path, data):
    model = trained(data)
    path = tmp_path / "m.keras"
    h5write.write_snapshot(snapshot.take(model, weights_only=False), str(path))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = [i.filename for i in archive.infolist()]
        info = archive.getinfo("model.weights.h5")
    assert names == ["model.weights.h5", "metadata.json", "config.json"]
    assert info.compress_type == zipfile.ZIP_STORED and info.header_offset == 0
    with open(path, "rb") as f:
        assert f.read(h5write.USERBLOCK + 8)[-8:] == b"\x89HDF\r\n\x1a\n"
    with h5py.File(path, "r") as f:  # h5py opens the member in place
        assert f.userblock_size == h5write.USERBLOCK and "layers" in f


def test_assets_of_a_lookup_layer_are_in_the_file_and_load(tmp_path):
    lookup = keras.layers.StringLookup()
    lookup.adapt(["a", "b", "c", "a"])  # an adapted vocabulary is saved as an asset
    model = keras.Sequential([keras.Input((1,), dtype="string"), lookup])
    path = tmp_path / "m.keras"
    h5write.write_snapshot(snapshot.take(model, weights_only=False), str(path))
    model.save(tmp_path / "keras.keras")
    with zipfile.ZipFile(path) as ours, zipfile.ZipFile(tmp_path / "keras.keras") as theirs:
        assert sorted(ours.namelist()) == sorted(theirs.namelist())
        assert any(n.startswith("assets/") for n in ours.namelist())
        assert ours.testzip() is None
    for loaded in (keras.saving.load_model(path), h5read.load_model(path)):
        assert loaded.layers[-1].get_vocabulary() == lookup.get_vocabulary()


def test_snapshotter_reuses_its_buffers_and_reallocates_on_a_new_shape(data):
    model = trained(data)
    snapshotter = snapshot.Snapshotter()
    first = snapshotter.take(model, weights_only=True)
    big = [op[2] for op in first.ops if op[0] == "set" and op[2].nbytes >= snapshot._SMALL]
    assert big
    second = snapshotter.take(model, weights_only=True)
    again = [op[2] for op in second.ops if op[0] == "set" and op[2].nbytes >= snapshot._SMALL]
    if keras.backend.backend() != "tensorflow":  # (TensorFlow's values are held, not copied)
        assert all(a is b for a, b in zip(big, again, strict=True))
    with pytest.raises(RuntimeError, match="reused by a later take"):
        h5write.write_snapshot(first, "/nonexistent/never-written.weights.h5")
    # What is copied (everything on JAX and PyTorch, a layer's own NumPy array anywhere) goes
    # into a buffer per slot, reused while the shape and dtype stay.
    source = np.arange(4096, dtype="float32")
    buffer = snapshotter._copy(7, source)
    assert snapshotter._copy(7, source + 1) is buffer and buffer[0] == 1
    renewed = snapshotter._copy(7, np.zeros(buffer.size + 1, buffer.dtype))
    assert renewed is not buffer and snapshotter._buffers[7] is renewed


@pytest.mark.parametrize("async_save", [True, False], ids=["background", "inline"])
@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_model_checkpoint_files_load_in_plain_keras(tmp_path, data, async_save, suffix):
    model = awkward_model(bfloat16=True)
    callback = keras_ckpt.ModelCheckpoint(
        str(tmp_path / f"m-{{epoch}}{suffix}"),
        save_weights_only=suffix == ".weights.h5",
        async_save=async_save,
    )
    capture = Capture()
    model.fit(*data, epochs=2, batch_size=16, verbose=0, callbacks=[callback, capture])
    path = tmp_path / f"m-2{suffix}"
    if suffix == ".keras":
        loaded = keras.saving.load_model(path)
    else:
        loaded = fresh_like(model)
        loaded.load_weights(path)
    assert_same_state(state_of(loaded), capture.states[-1])
    record = CheckpointManager(tmp_path).get(f"m-2{suffix}")
    assert record.files[0].checksum == seal_file(path).checksum


def test_extra_group_is_written_and_plain_keras_ignores_it(tmp_path, data):
    model = trained(data)
    path = tmp_path / "b.weights.h5"
    extra = {"big": np.arange(5000, dtype="float64"), "small": np.array([1, 2], "int64")}
    sealed = h5write.write_snapshot(
        snapshot.take(model, weights_only=True),
        str(path),
        extra_group="keras_ckpt",
        extra_arrays=extra,
        extra_attrs={"state": '{"epoch": 3}'},
    )
    assert sealed == seal_file(path)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["keras_ckpt/big"][()], extra["big"])
        np.testing.assert_array_equal(f["keras_ckpt/small"][()], extra["small"])
        assert f["keras_ckpt"].attrs["state"] == '{"epoch": 3}'
    loaded = fresh_like(model)
    loaded.load_weights(path)
    assert_same_state(state_of(loaded), state_of(model))
    again = fresh_like(model)
    arrays, attrs = h5read.load_weights_and_extras(again, path, sealed, extra_group="keras_ckpt")
    assert_same_state(state_of(again), state_of(model))
    assert sorted(arrays) == ["big", "small"] and attrs["state"] == '{"epoch": 3}'
    np.testing.assert_array_equal(arrays["big"], extra["big"])
    with pytest.raises(ValueError, match="already a group"):
        h5write.write_snapshot(
            snapshot.take(model, weights_only=True), str(path), extra_group="layers"
        )


class _Float8(keras.layers.Layer):
    """Saves a float8 array beside its variables: a dtype the one-pass writer leaves to Keras."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(3,), initializer="ones")

    def call(self, x):
        return x

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["f8"] = np.arange(4, dtype="float32").astype(ml_dtypes.float8_e4m3fn)

    def load_own_variables(self, store):
        self.w.assign(store["0"])


def test_exotic_dtypes_fall_back_to_keras_writer(tmp_path):
    model = keras.Sequential([keras.Input((3,)), _Float8(), keras.layers.Dense(2)])
    snap = snapshot.take(model, weights_only=True)
    assert not snap.plain
    path = tmp_path / "s.weights.h5"
    sealed = h5write.write_snapshot(snap, str(path))
    assert sealed == seal_file(path)
    model.save_weights(tmp_path / "keras.weights.h5")
    assert h5_tree(path) == h5_tree(tmp_path / "keras.weights.h5")


def test_a_layout_that_differs_from_keras_falls_back_to_keras_writer(tmp_path, data, monkeypatch):
    model = trained(data)
    monkeypatch.setattr(h5write, "layout_matches_keras", lambda: (False, False))
    for suffix, weights_only in ((".weights.h5", True), (".keras", False)):
        path = tmp_path / f"m{suffix}"
        sealed = h5write.write_snapshot(snapshot.take(model, weights_only=weights_only), str(path))
        assert sealed == seal_file(path)
        with open(path, "rb") as f:  # Keras's writer: no 4096-byte aligned member
            assert f.read(h5write.USERBLOCK + 8)[-8:] != b"\x89HDF\r\n\x1a\n"
    assert_same_state(state_of(keras.saving.load_model(tmp_path / "m.keras")), state_of(model))


def test_layout_probe_matches_the_installed_keras():
    matches, _eager = h5write.layout_matches_keras()
    assert matches


# ------------------------------------------------------------------ the zip tail, the writeback


def test_zip64_tail_for_a_member_past_4_gib_is_read_by_zipfile(tmp_path):
    size = (1 << 32) + 10  # sparse: nothing of it is written
    path = tmp_path / "big.zip"
    header = _zip.local_header("model.weights.h5", 0, size, length=4096)
    tail = _zip.archive_tail(
        _zip.Member("model.weights.h5", 0, size, 0), [("config.json", b"{}")], 4096 + size
    )
    with open(path, "wb") as f:
        f.write(header)
        f.seek(4096 + size)
        f.write(tail)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.weights.h5")
        assert (info.file_size, info.header_offset) == (size, 0)
        assert archive.read("config.json") == b"{}"
        assert archive.getinfo("config.json").header_offset == 4096 + size
    assert struct.unpack("<I", header[:4])[0] == 0x04034B50 and len(header) == 4096


@pytest.mark.parametrize("sync", [True, False])
def test_a_synced_write_starts_the_writeback_as_it_goes(tmp_path, mocker, sync):
    """Every 8 MiB written is handed to the disk at once (Linux `sync_file_range`), so that the
    final fsync waits for the tail only; the file is the same."""
    calls = []
    mocker.patch.object(h5write, "_SYNC_FILE_RANGE", lambda *args: calls.append(args[1:]) or 0)
    mocker.patch.object(h5write, "_WRITEBACK_EVERY", 16 << 10)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1200), keras.layers.Dense(3)])
    path = tmp_path / "m.weights.h5"
    sealed = h5write.write_snapshot(snapshot.take(model, weights_only=True), str(path), sync=sync)
    assert sealed == seal_file(path, sync=False)
    if not sync:
        assert calls == []
        return
    assert {flags for _, _, flags in calls} == {h5write._SYNC_FILE_RANGE_WRITE}
    ranges = sorted((offset, offset + count) for offset, count, _ in calls)
    assert all(end <= start for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False))
    assert len(ranges) == 2 and all(end - start >= 16 << 10 for start, end in ranges)
    with h5py.File(path) as file:  # the 38 KB kernel; then the bias and the 14 KB kernel together
        kernel = file["layers/dense/vars/0"]
        start, end = kernel.id.get_offset(), kernel.id.get_offset() + kernel.nbytes
    assert any(a <= start and end <= b for a, b in ranges)


@pytest.mark.skipif(h5write._SYNC_FILE_RANGE is None, reason="sync_file_range is Linux's")
def test_sync_file_range_is_called_with_a_signature_the_kernel_accepts(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    fd = os.open(path, os.O_RDWR)
    try:
        assert h5write._SYNC_FILE_RANGE(fd, 0, 100_000, h5write._SYNC_FILE_RANGE_WRITE) == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_large_datasets_start_at_multiples_of_4096_and_plain_keras_loads_the_file(tmp_path, suffix):
    """Datasets of 64 KiB and more are aligned (HDF5's own alignment setting) in the file, so a
    reader holding it in page-aligned memory finds them aligned too; small ones are packed."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4000), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.layers[0].kernel.assign(np.arange(32_000, dtype="float32").reshape(8, 4000))
    path = tmp_path / f"m{suffix}"
    h5write.write_snapshot(snapshot.take(model, weights_only=suffix != ".keras"), str(path))
    offsets = {}
    with h5py.File(path, "r") as f:  # h5py finds the superblock after the zip header itself
        f.visititems(
            lambda name, obj: (
                offsets.update({name: (obj.id.get_offset(), obj.nbytes)})
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    large = {name: offset for name, (offset, size) in offsets.items() if size >= 64 << 10}
    assert len(large) >= 3  # the kernel and its two Adam moments
    assert all(offset % 4096 == 0 for offset in large.values()), large
    assert any(offset % 4096 for offset, size in offsets.values() if size < 64 << 10)
    if suffix == ".keras":
        loaded = keras.saving.load_model(path)
    else:
        loaded = keras.models.clone_model(model)
        loaded.compile(optimizer="adam", loss="mse")
        loaded.optimizer.build(loaded.trainable_variables)
        loaded.load_weights(path)
    assert_same_state(state_of(loaded), state_of(model))
