"""keras_ckpt.format.h5read: reading `.weights.h5` and `.keras` files in place, from the bytes
whose checksum was checked."""

from __future__ import annotations

import pytest
from conftest import assert_same_state, fresh_like, state_of, trained

from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format import h5read, h5write, snapshot
from keras_ckpt.store.local import seal_file


@pytest.mark.parametrize("writer", ["ours", "keras"])
@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_fast_reader_loads_ours_in_place_and_keras_files_too(tmp_path, data, writer, suffix):
    model = trained(data, bfloat16=True)
    path = tmp_path / f"m{suffix}"
    weights_only = suffix == ".weights.h5"
    if writer == "ours":
        h5write.write_snapshot(snapshot.take(model, weights_only=weights_only), str(path))
    else:
        (model.save_weights if weights_only else model.save)(path)
    expected = seal_file(path, sync=False)
    target = fresh_like(model)
    in_place = h5read.load_weights(target, path, expected)
    # Keras's `.keras` holds its HDF5 member at an arbitrary offset: Keras's loader reads it.
    assert in_place == (writer == "ours" or weights_only)
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


@pytest.mark.parametrize("can_map", [True, False])
def test_the_reader_maps_the_file_and_reads_it_where_mapping_fails(tmp_path, data, mocker, can_map):
    import mmap

    model = trained(data)
    path = tmp_path / "m.weights.h5"
    sealed = h5write.write_snapshot(snapshot.take(model, weights_only=True), str(path))
    real_mmap = mmap.mmap
    if not can_map:
        mocker.patch.object(mmap, "mmap", side_effect=OSError(19, "No such device"))
    source = h5read.VerifiedFile(path, sealed)
    assert source.sealed == sealed
    exporter = getattr(source.buffer.base, "obj", None)  # np.frombuffer: a memoryview of it
    assert isinstance(exporter, real_mmap) is can_map  # a map of the file, not a copy
    target = fresh_like(model)
    assert h5read.load_weights(target, path, sealed)
    assert_same_state(state_of(target), state_of(model))
