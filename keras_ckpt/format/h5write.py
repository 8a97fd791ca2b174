"""Writes a snapshot as Keras's own `.weights.h5` or `.keras` file, in one pass over the bytes.

h5py lays the HDF5 file out (the groups, attributes and datasets Keras's `H5IOStore` makes, each
large dataset contiguous and allocated but not written), the file is closed, then each array's
bytes go to its dataset's offset with `os.pwrite` from the snapshot's host buffers (the GIL is
released during the system calls). The file's crc32c (and, for `.keras`, the zip member's CRC-32)
is computed from the same in-memory bytes, not read back; then the file is fsynced.

Large datasets start at multiples of 4096 bytes (HDF5's own alignment setting, which every HDF5
reader follows), so a reader holding the file in page-aligned memory can hand them over as they
lie. A `.keras` file is a zip written once: `model.weights.h5` stored first, its data at offset 4096
(the local header padded with an extra field; the HDF5 file made with a 4096-byte user block, so
its addresses count the header), then `metadata.json`, `config.json`, the assets and the central
directory. Plain `keras.saving.load_model` loads it, and `h5py` opens the archive itself in place
(HDF5 looks for its superblock at 0, 512, 1024, ... 4096), which `h5read` uses.

What this path does not cover (dtypes other than numbers and bool, or a Keras whose store layout
differs from ours) is written by Keras's own `H5IOStore` from the same host copies, then
checksummed by reading it back (`storage.seal_file`).
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import google_crc32c
import h5py
import numpy as np

from keras_ckpt.format import _zip
from keras_ckpt.format._keras_private import saving_lib
from keras_ckpt.format.snapshot import _SMALL, Snapshot, _is_bfloat16
from keras_ckpt.store.local import SealedFile, seal_file

__all__ = ["write_snapshot", "lay_out_plainly", "layout_matches_keras", "USERBLOCK"]

USERBLOCK = 4096  # offset of the HDF5 member's data inside a `.keras` zip written here
# Datasets of at least _ALIGN_FROM bytes start at a multiple of _ALIGN in the file (HDF5's
# H5Pset_alignment; plain Keras and h5py read such files as any other): a reader that holds the
# file in page-aligned memory hands them to the backend without copying them into aligned memory
# first, and a direct-I/O writer could write them as they are. At most 4 KiB of padding each.
_ALIGN = 4096
_ALIGN_FROM = 64 << 10
_PWRITE_MAX = 1 << 30
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the range back, do not wait
# Bytes written between two such requests: one per array would be thousands for a big model.
_WRITEBACK_EVERY = 8 << 20


def _dcpl() -> Any:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _dataset(group: Any, key: str, value: np.ndarray, pending: list | None) -> None:
    """Creates dataset `key` as Keras's store would; large ones allocated empty into `pending`."""
    bfloat16 = _is_bfloat16(value.dtype)
    if pending is None or value.nbytes < _SMALL:
        if bfloat16:
            group.create_dataset(key, data=value).attrs["dtype"] = "bfloat16"
        else:
            group[key] = value
        return
    ds = group.create_dataset(key, shape=value.shape, dtype=value.dtype, dcpl=_dcpl())
    if bfloat16:
        ds.attrs["dtype"] = "bfloat16"
    pending.append((ds, value))


def _lay_out(
    file: Any, ops: list[tuple[str, Any, Any]], *, eager_groups: bool, pending: list | None
) -> None:
    """Replays Keras's saving calls as `H5IOStore` would apply them to `file`."""
    group = None
    path = ""
    for kind, a, b in ops:
        if kind == "make":
            path, group = a, None
            if b or eager_groups:
                group = (
                    file.create_group("vars")
                    if not a
                    else file.create_group(a).create_group("vars")
                )
                for k, v in (b or {}).items():
                    group.attrs[k] = v
        else:
            if group is None:
                group = (
                    file.create_group("vars")
                    if not path
                    else file.create_group(path).create_group("vars")
                )
            _dataset(group, a, b, pending)


def lay_out_plainly(file: Any, ops: list[tuple[str, Any, Any]], *, eager_groups: bool) -> None:
    """Writes `ops` into an open h5py `file` with h5py alone (the layout check compares this)."""
    _lay_out(file, ops, eager_groups=eager_groups, pending=None)


# Calls covering each layout rule: a group with metadata, a nested path, a path made but never
# written (deferred or eager group), the root, bfloat16 and bool datasets.
_PROBE_CALLS: list[tuple[str, Any, Any]] = [
    ("make", "", None),
    ("make", "layers/dense", {"name": "dense"}),
    ("set", "0", np.zeros((2, 3), "float32")),
    ("set", "1", np.zeros((), "int64")),
    ("make", "layers/empty", None),
    ("make", "layers/nameless", None),
    ("set", "0", np.zeros((4,), "bool")),
    ("make", "optimizer", {"name": "adam"}),
    ("set", "0", np.zeros((3,), "float32").astype("bfloat16")),
]


def _tree(file: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"/": sorted((k, str(v)) for k, v in file.attrs.items())}

    def visit(name: str, obj: Any) -> None:
        attrs = sorted((k, str(v)) for k, v in obj.attrs.items())
        if isinstance(obj, h5py.Dataset):
            out[name] = ("dataset", obj.shape, obj.id.get_type().dtype.str, attrs)
        else:
            out[name] = ("group", attrs)

    file.visititems(visit)
    return out


def _keras_store_replay(calls: list[tuple[str, Any, Any]]) -> io.BytesIO:
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    entry: Any = store
    for kind, a, b in calls:
        if kind == "make":
            entry = store.make(a, metadata=b)
        else:
            entry[a] = b
    store.close()
    return buffer


@functools.cache
def layout_matches_keras() -> tuple[bool, bool]:
    """(whether our layout equals Keras's for the probe calls, whether Keras makes groups eagerly).

    Keras 3.10 creates a `vars` group at every `make`; later versions create it at the first
    value unless the saveable has metadata. Both are detected here, then checked.
    """
    theirs = _keras_store_replay(_PROBE_CALLS)
    with h5py.File(theirs, "r") as f:
        expected = _tree(f)
        eager = "layers/empty/vars" in f
    ours = io.BytesIO()
    with h5py.File(ours, "w") as f:
        lay_out_plainly(f, _PROBE_CALLS, eager_groups=eager)
    with h5py.File(ours, "r") as f:
        found = _tree(f)
    return expected == found, eager


def _bytes_of(array: np.ndarray) -> np.ndarray:
    # An array, not a memoryview: google_crc32c refuses memoryviews.
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done : done + _PWRITE_MAX], offset + done)


def _sync_file_range() -> Any:
    """Linux's `sync_file_range` through libc (ctypes releases the GIL), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()


def _start_writeback(fd: int, offset: int, count: int) -> None:
    """Asks the kernel to start writing these bytes to disk now (every 8 MiB written), so that
    the fsync at the end waits only for the last of them (measured here: 300 MB written and
    fsynced in 420-540 ms instead of 480-920 ms). A hint only: its result is ignored, and the
    fsync that follows reports any error."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, count, _SYNC_FILE_RANGE_WRITE)


def _read(fd: int, count: int, offset: int) -> np.ndarray:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise OSError(f"Short read of an HDF5 file being written ({len(data)} of {count} bytes)")
    return np.frombuffer(data, np.uint8)


def _assets(assets_dir: str | None) -> list[tuple[str, bytes]]:
    members: list[tuple[str, bytes]] = []
    if not assets_dir:
        return members
    for root, dirs, files in os.walk(assets_dir):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            relative = os.path.relpath(full, assets_dir).replace(os.sep, "/")
            with open(full, "rb") as f:
                members.append((f"{saving_lib._ASSETS_DIRNAME}/{relative}", f.read()))
    return members


def write_snapshot(
    snapshot: Snapshot,
    path: str,
    *,
    sync: bool = True,
    extra_group: str | None = None,
    extra_arrays: Mapping[str, np.ndarray] | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
) -> SealedFile:
    """Writes `snapshot` to local `path` (`.keras` zip or `.weights.h5`); returns size and crc32c.

    Args:
        snapshot: From `snapshot.Snapshotter.take` (not overwritten by a later take since).
        path: Local file to create (overwritten if it exists).
        sync: fsync the file before returning.
        extra_group: Name of one extra top-level HDF5 group (weights files only) holding
            `extra_arrays` as datasets and `extra_attrs` as attributes; plain Keras ignores it.
        extra_arrays, extra_attrs: Its content (the arrays are read, not copied: keep them
            unchanged until this returns).

    Raises:
        ValueError: extras for a `.keras` file, or an `extra_group` Keras's layout already uses.
        RuntimeError: the snapshot's buffers were reused by a later take.

    Example:

    >>> import keras, os, tempfile
    >>> from keras_ckpt.format.snapshot import Snapshotter
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.weights.h5")
    >>> sealed = write_snapshot(Snapshotter().take(model, weights_only=True), path,
    ...                         extra_group="keras_ckpt", extra_attrs={"step": 3})
    >>> sealed.size == os.path.getsize(path)
    True
    """
    snapshot.check_current()
    extras = None
    if extra_group is not None or extra_arrays or extra_attrs:
        if not snapshot.weights_only:
            raise ValueError("Extra HDF5 data can only be added to a `.weights.h5` file.")
        if not extra_group or "/" in extra_group:
            raise ValueError(
                "Invalid value for argument `extra_group`. Expected a top-level group name. "
                f"Received: extra_group={extra_group!r}"
            )
        extras = (extra_group, dict(extra_arrays or {}), dict(extra_attrs or {}))
    matches, eager = layout_matches_keras()
    if not snapshot.plain or not matches:
        _write_with_keras(snapshot, path, extras)
        return seal_file(path, sync=sync)
    return _write_one_pass(snapshot, path, sync=sync, eager=eager, extras=extras)


def _add_extras(file: Any, extras: tuple[str, dict, dict], pending: list | None) -> None:
    name, arrays, attrs = extras
    if name in file:
        raise ValueError(f"extra_group={name!r} is already a group of Keras's layout")
    group = file.create_group(name)
    for k, v in attrs.items():
        group.attrs[k] = v
    for key, array in arrays.items():
        _dataset(group, key, np.asarray(array), pending)


def _write_one_pass(
    snapshot: Snapshot,
    path: str,
    *,
    sync: bool,
    eager: bool,
    extras: tuple[str, dict, dict] | None,
) -> SealedFile:
    userblock = 0 if snapshot.weights_only else USERBLOCK
    pending: list[tuple[Any, np.ndarray]] = []
    options: dict[str, int] = {"userblock_size": userblock} if userblock else {}
    options.update(alignment_threshold=_ALIGN_FROM, alignment_interval=_ALIGN)
    with h5py.File(path, "w", **options) as file:
        _lay_out(file, snapshot.ops, eager_groups=eager, pending=pending)
        if extras is not None:
            _add_extras(file, extras, pending)
        regions = sorted(((ds.id.get_offset(), a) for ds, a in pending), key=lambda r: r[0])
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        # The file in order, from the end of the user block: skeleton bytes (small, read back)
        # and the arrays, which are not in the file yet.
        segments: list[tuple[bool, np.ndarray]] = []
        position = userblock
        for offset, array in regions:
            if offset is None or offset < position or offset + array.nbytes > size:
                raise RuntimeError(f"Unexpected HDF5 layout in {path}: dataset at {offset}")
            if offset > position:
                segments.append((False, _read(fd, offset - position, position)))
            segments.append((True, _bytes_of(array)))
            position = offset + array.nbytes
        if position < size:
            segments.append((False, _read(fd, size - position, position)))
        crc = google_crc32c.Checksum()
        tail = b""
        if userblock:
            member_crc = 0
            for _, data in segments:
                member_crc = _zip.crc32(data, member_crc)  # type: ignore[arg-type]
            name = saving_lib._VARS_FNAME_H5
            header = _zip.local_header(name, member_crc, size - userblock, length=userblock)
            others = [
                (saving_lib._METADATA_FILENAME, snapshot.metadata_json.encode()),
                (saving_lib._CONFIG_FILENAME, snapshot.config_json.encode()),
                *_assets(snapshot.assets_dir),
            ]
            tail = _zip.archive_tail(
                _zip.Member(name, member_crc, size - userblock, 0), others, size
            )
            _pwrite_all(fd, memoryview(header), 0)
            crc.update(header)
        position = written = userblock  # written: bytes up to there handed to the disk
        for is_array, data in segments:
            if is_array:
                _pwrite_all(fd, data, position)
                if sync and position + len(data) - written >= _WRITEBACK_EVERY:
                    _start_writeback(fd, written, position + len(data) - written)
                    written = position + len(data)
            crc.update(data)
            position += len(data)
        if tail:
            _pwrite_all(fd, memoryview(tail), size)
            crc.update(tail)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return SealedFile(size + len(tail), f"crc32c:{crc.digest().hex()}")


def _replay(ops: list[tuple[str, Any, Any]], store: Any) -> None:
    entry = store
    for kind, a, b in ops:
        if kind == "make":
            entry = store.make(a, metadata=b)  # Keras 3.10 returns an entry, later the store
        else:
            entry[a] = b


def _write_with_keras(snapshot: Snapshot, path: str, extras: tuple[str, dict, dict] | None) -> None:
    """Keras's own store, fed with the snapshot's host copies (the fallback)."""
    if snapshot.weights_only:
        store = saving_lib.H5IOStore(path, mode="w")
        try:
            _replay(snapshot.ops, store)
        finally:
            store.close()
        if extras is not None:
            with h5py.File(path, "a") as file:
                _add_extras(file, extras, None)
        return
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(saving_lib._METADATA_FILENAME, snapshot.metadata_json)
        archive.writestr(saving_lib._CONFIG_FILENAME, snapshot.config_json)
        store = saving_lib.H5IOStore(saving_lib._VARS_FNAME_H5, archive=archive, mode="w")
        try:
            _replay(snapshot.ops, store)
        finally:
            store.close()
        for name, data in _assets(snapshot.assets_dir):
            archive.writestr(name, data)
