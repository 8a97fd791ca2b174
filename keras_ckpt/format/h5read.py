"""Loads Keras's `.weights.h5` and `.keras` files in place, checking their crc32c on the way.

The file is mapped into memory (the page cache's pages, not a copy) and its crc32c computed over
it before anything is assigned; the arrays are then views of the map at their datasets' offsets,
which h5py reports (it reads only the small metadata). Keras's own loading walk
(`saving_lib._load_state`) assigns them, through a store of ours. A `.keras` file written by
`h5write` holds its HDF5 member at offset 4096, where h5py finds it inside the zip; for a
`.keras` model the model is rebuilt from its config as `keras.saving.load_model` does (compile
config, custom objects, `safe_mode`, assets).

Files this reader cannot take in place (a `.keras` Keras wrote, whose HDF5 member lies at an
arbitrary offset; chunked or compressed datasets; Keras 2 layouts) are loaded by Keras after the
same checksum pass.
"""

from __future__ import annotations

import mmap
import os
import zipfile
from collections.abc import Iterator
from typing import Any

import google_crc32c
import h5py
import numpy as np

from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format._keras_private import saving_lib
from keras_ckpt.store.local import SealedFile

__all__ = ["VerifiedFile", "load_weights", "load_weights_and_extras", "load_model"]

_CHUNK = 8 * 1024 * 1024


class _NotInPlace(Exception):
    """The file is valid but not laid out for in-place reading; Keras's loader takes it."""


def _map_or_read(f: Any) -> np.ndarray:
    """The open file's bytes: a private map (copy-on-write: the arrays Keras receives are
    writable, as read ones would be); read into memory if mapping fails.

    Not `MAP_POPULATE`: on a writable private map it copies every page up front (measured: 300 MB
    mapped and checksummed in 200 ms with it, 28 ms without; read into memory, 190 ms).
    """
    size = os.fstat(f.fileno()).st_size
    if size:
        try:
            mapped = mmap.mmap(
                f.fileno(),
                size,
                flags=mmap.MAP_PRIVATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except (OSError, ValueError):  # a file system that cannot map: read it
            pass
        else:
            return np.frombuffer(mapped, np.uint8)
    buffer = np.empty(size, np.uint8)
    view = memoryview(buffer)  # type: ignore[arg-type]
    position = 0
    while position < size:
        count = f.readinto(view[position:])
        if not count:
            break
        position += count
    return buffer[:position]


class VerifiedFile:
    """A local file mapped into memory, its size and crc32c checked before anything is loaded.

    The map shares the page cache's pages (nothing is copied; a checkpoint file is never changed
    in place, and one deleted meanwhile stays readable until the map goes); where mapping fails,
    the file is read into memory instead.

    Args:
        path: The local file.
        expected: Its recorded size and checksum; None to only compute them (`.sealed`).
        name: How error messages name the file (default: `path`).

    Raises:
        CorruptCheckpointError: the size or checksum differs from `expected` (the message names
            the file and both values).

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "f")
    >>> _ = open(path, "wb").write(b"abc")
    >>> VerifiedFile(path, None).sealed
    SealedFile(size=3, checksum='crc32c:364b3fb7')
    """

    def __init__(
        self, path: str | os.PathLike[str], expected: SealedFile | None, *, name: str | None = None
    ):
        self.path = os.fspath(path)
        shown = name or self.path
        with open(self.path, "rb", buffering=0) as f:
            self.buffer = _map_or_read(f)
        crc = google_crc32c.Checksum()
        for position in range(0, self.buffer.size, _CHUNK):
            crc.update(self.buffer[position : position + _CHUNK])
        self.sealed = SealedFile(self.buffer.size, f"crc32c:{crc.digest().hex()}")
        if expected is not None:
            if self.sealed.size != expected.size:
                raise CorruptCheckpointError(
                    f"{shown}: size {self.sealed.size} bytes, record says {expected.size}"
                )
            if self.sealed.checksum != expected.checksum:
                raise CorruptCheckpointError(
                    f"{shown}: checksum mismatch ({self.sealed.checksum}, record says "
                    f"{expected.checksum})"
                )

    def _array(self, ds: Any) -> np.ndarray:
        """The dataset's value: a view of the buffer when it is stored plainly, else h5py's read."""
        dtype = ds.dtype
        offset = ds.id.get_offset()
        nbytes = int(np.prod(ds.shape, dtype=np.int64)) * dtype.itemsize if ds.shape else 0
        dcpl = ds.id.get_create_plist()
        plain = (
            ds.shape is not None
            and offset is not None
            and dcpl.get_layout() == h5py.h5d.CONTIGUOUS
            and dcpl.get_nfilters() == 0
            and dcpl.get_external_count() == 0
            and dtype.isnative
            and dtype.kind in "biufcV"
            and dtype.fields is None
            and nbytes > 0
            and ds.id.get_storage_size() == nbytes
            and offset + nbytes <= self.buffer.size
        )
        if plain:
            value = self.buffer[offset : offset + nbytes].view(dtype).reshape(ds.shape)
        else:
            value = np.asarray(ds[()])
        if ds.attrs.get("dtype") == "bfloat16":
            import ml_dtypes

            if value.dtype.itemsize == 2 and value.dtype.kind == "V":
                value = value.view(ml_dtypes.bfloat16)
            else:
                value = np.array(value, dtype=ml_dtypes.bfloat16)
        return value

    def open_hdf5(self) -> h5py.File:
        """The HDF5 file (for `.keras`: its member, opened in place inside the zip).

        Raises:
            _NotInPlace: a `.keras` whose HDF5 member h5py cannot open in place.
        """
        hdf5_offset = 0
        if zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as archive:
                try:
                    info = archive.getinfo(saving_lib._VARS_FNAME_H5)
                except KeyError:
                    raise _NotInPlace("no HDF5 member") from None
            if info.compress_type != zipfile.ZIP_STORED:
                raise _NotInPlace("compressed HDF5 member")
            start = info.header_offset
            local = self.buffer[start : start + 30].tobytes()
            name_length = int.from_bytes(local[26:28], "little")
            extra_length = int.from_bytes(local[28:30], "little")
            hdf5_offset = start + 30 + name_length + extra_length
            if hdf5_offset < 512 or hdf5_offset & (hdf5_offset - 1):
                raise _NotInPlace("HDF5 member not at a power-of-two offset")
        try:
            file = h5py.File(self.path, "r")
        except OSError as e:
            raise _NotInPlace(str(e)) from None
        if file.userblock_size != hdf5_offset:
            file.close()
            raise _NotInPlace("h5py found another HDF5 file than the member")
        return file

    def store(self, file: h5py.File) -> _InPlaceStore:
        """A Keras weights store reading `file`'s datasets from this buffer."""
        if "_layer_checkpoint_dependencies" in file:
            raise _NotInPlace("Keras 2 layout")
        entries: dict[str, dict[str, Any]] = {}
        paths: set[str] = set()

        def visit(name: str, obj: Any) -> None:
            paths.add(name)
            if isinstance(obj, h5py.Dataset):
                parent, _, key = name.rpartition("/")
                entries.setdefault(parent, {})[key] = obj
            elif isinstance(obj, h5py.Group):
                entries.setdefault(name, {})

        file.visititems(visit)
        return _InPlaceStore(self, entries, paths)


class _InPlaceStore(saving_lib.H5IOStore):
    """What Keras's loading walk needs of a weights store, over a `VerifiedFile`."""

    def __init__(self, source: VerifiedFile, entries: dict[str, dict[str, Any]], paths: set[str]):
        self.mode = "r"  # no file of its own: the parent's __init__ would open one
        self._source = source
        self._entries = entries
        self._paths = paths
        self._entry: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return True

    def get(self, path: str) -> _InPlaceStore:
        self._entry = self._entries.get(f"{path}/vars" if path else "vars", {})
        return self

    def has_path(self, path: str) -> bool:
        return path in self._paths

    def keys(self) -> Any:
        return self._entry.keys()

    def __len__(self) -> int:
        return len(self._entry)

    def __contains__(self, item: object) -> bool:
        return item in self._entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entry)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._entry:
            raise KeyError(key)
        return self._source._array(self._entry[key])

    def close(self) -> None:
        pass


def _load_state(model: Any, store: Any, assets: Any, *, skip_mismatch: bool = False) -> None:
    failed: set[int] = set()
    errors: dict[int, Any] = {}
    saving_lib._load_state(
        model,
        weights_store=store,
        assets_store=assets,
        inner_path="",
        skip_mismatch=skip_mismatch,
        visited_saveables=set(),
        failed_saveables=failed,
        error_msgs=errors,
    )
    if failed:
        saving_lib._raise_loading_failure(errors, warn_only=skip_mismatch)


def load_weights(
    model: Any,
    path: str | os.PathLike[str],
    expected: SealedFile | None = None,
    *,
    name: str | None = None,
    skip_mismatch: bool = False,
) -> bool:
    """`model.load_weights(path)` with the file's checksum checked in the same read.

    Returns True when the file was read in place, False when Keras's loader read it (after the
    checksum pass).

    Raises:
        CorruptCheckpointError: the file differs from `expected`.
        ValueError: the model is not built.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.weights.h5")
    >>> model.save_weights(path)
    >>> load_weights(model, path)
    True
    """
    if not model.built:
        raise ValueError(
            "You are loading weights into a model that has not yet been built. Try building "
            "the model first by calling it on some data or by using `build()`."
        )
    source = VerifiedFile(path, expected, name=name)
    try:
        if not (name or os.fspath(path)).endswith((".weights.h5", ".keras")):
            raise _NotInPlace("legacy `.h5` file")  # Keras's legacy loader reads those
        with source.open_hdf5() as file:
            _load_state(model, source.store(file), None, skip_mismatch=skip_mismatch)
        return True
    except _NotInPlace:
        del source
        model.load_weights(os.fspath(path), skip_mismatch=skip_mismatch)
        return False


def _read_group(source: VerifiedFile | None, file: h5py.File, group: str) -> tuple[dict, dict]:
    if group not in file:
        raise KeyError(f"{file.filename} has no group {group!r}")
    node = file[group]
    arrays = {
        key: np.array(source._array(ds) if source is not None else ds[()], copy=True)
        for key, ds in node.items()
        if isinstance(ds, h5py.Dataset)
    }
    return arrays, dict(node.attrs.items())


def load_weights_and_extras(
    model: Any,
    path: str | os.PathLike[str],
    expected: SealedFile | None,
    *,
    extra_group: str,
    name: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`load_weights`, and the datasets and attributes of `extra_group` (see `h5write`), in the
    same checked read of a `.weights.h5` file.

    Raises:
        CorruptCheckpointError: the file differs from `expected`.
        KeyError: the file has no group `extra_group`.

    Example:

    >>> import keras, os, tempfile
    >>> import numpy as np
    >>> from keras_ckpt.format import h5write, snapshot
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> path = os.path.join(tempfile.mkdtemp(), "b.weights.h5")
    >>> sealed = h5write.write_snapshot(snapshot.take(model, weights_only=True), path,
    ...     extra_group="keras_ckpt", extra_arrays={"rng": np.arange(3)}, extra_attrs={"step": 7})
    >>> arrays, attrs = load_weights_and_extras(model, path, sealed, extra_group="keras_ckpt")
    >>> arrays["rng"].tolist(), int(attrs["step"])
    ([0, 1, 2], 7)
    """
    if not model.built:
        raise ValueError("You are loading weights into a model that has not yet been built.")
    source = VerifiedFile(path, expected, name=name)
    try:
        with source.open_hdf5() as file:
            extras = _read_group(source, file, extra_group)
            _load_state(model, source.store(file), None)
        return extras
    except _NotInPlace:
        del source
        model.load_weights(os.fspath(path))
        with h5py.File(path, "r") as file:
            return _read_group(None, file, extra_group)


def load_model(
    path: str | os.PathLike[str],
    expected: SealedFile | None = None,
    *,
    name: str | None = None,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> Any:
    """`keras.saving.load_model(path)` of a `.keras` file, checked and read in one pass.

    Raises:
        CorruptCheckpointError: the file differs from `expected`.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> model.save(path)  # Keras's own file: read by Keras after the checksum pass
    >>> load_model(path).count_params()
    3
    """
    source = VerifiedFile(path, expected, name=name)
    try:
        if not (name or os.fspath(path)).endswith(".keras"):
            raise _NotInPlace("legacy `.h5` file")  # Keras's legacy loader reads those
        file = source.open_hdf5()
    except _NotInPlace:
        del source
        import keras

        return keras.saving.load_model(
            os.fspath(path), custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    with file, zipfile.ZipFile(source.path) as archive:
        config_json = archive.read(saving_lib._CONFIG_FILENAME).decode()
        model = saving_lib._model_from_config(config_json, custom_objects, compile, safe_mode)
        assets = None
        if len(archive.namelist()) > 3:
            assets = saving_lib.DiskIOStore(saving_lib._ASSETS_DIRNAME, archive=archive, mode="r")
        try:
            _load_state(model, source.store(file), assets)
        finally:
            if assets is not None:
                assets.close()
    return model
