"""Loads Keras's `.weights.h5` and `.keras` files from the bytes whose crc32c it checked.

The file is read once into memory and every link and dataset is checked before anything is read
(`checked.VerifiedFile`, `checked.CheckedHDF5`: every guard of Keras's loader, and more). Keras's
own loading walk (`saving_lib._load_state`) then assigns the checked arrays, through a store of
ours; for a `.keras` model the model is rebuilt from its config as `keras.saving.load_model` does
(compile config, custom objects, `safe_mode`, assets), except that its variables take their
first value from the file instead of drawing one from their initializers first (see
`_keras_private.values_from_the_file`). A legacy `.h5` file is loaded by Keras's
legacy loader, from the same checked buffer. Any read error, and any refusal, raises
`CorruptCheckpointError`, so a manager loading `"latest"` falls back to the previous checkpoint.
"""

from __future__ import annotations

import inspect
import json
import os
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format._keras_private import (
    compile_from_config,
    saving_lib,
    uninitialized,
    values_from_the_file,
)
from keras_ckpt.format.checked import CheckedHDF5, VerifiedFile
from keras_ckpt.store.local import SealedFile

__all__ = [
    "load_weights",
    "load_weights_and_extras",
    "load_model",
]


class _InPlaceStore(saving_lib.H5IOStore):
    """What Keras's loading walk needs of a weights store, over a `CheckedHDF5`.

    A read error inside the walk is kept in `error`: Keras's walk turns exceptions of
    `load_own_variables` into a loading failure (or, with `skip_mismatch`, a warning).
    """

    def __init__(self, hdf5: CheckedHDF5):
        self.mode = "r"  # no file of its own: the parent's __init__ would open one
        self._hdf5 = hdf5
        self._entries: dict[str, dict[str, str]] = {group: {} for group in hdf5.groups}
        for path in hdf5.datasets:
            parent, _, key = path.rpartition("/")
            self._entries.setdefault(parent, {})[key] = path
        self._paths = hdf5.groups | set(hdf5.datasets)
        self._keras2 = "_layer_checkpoint_dependencies" in hdf5.groups
        self._entry: dict[str, str] = {}
        self.error: CorruptCheckpointError | None = None

    def __bool__(self) -> bool:
        return True

    def get(self, path: str) -> _InPlaceStore:
        group = f"{path}/vars" if path else "vars"
        if group not in self._entries and path and self._keras2:  # as Keras's store: Keras 2.13
            group = f"{path.replace('layers', '_layer_checkpoint_dependencies')}/vars"
        self._entry = self._entries.get(group, {})
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
        try:
            return self._hdf5.array(self._entry[key])
        except CorruptCheckpointError as e:
            self.error = self.error or e
            raise

    def close(self) -> None:
        pass


class _Walk:
    """Keras's loading walk over one checked file, in one or more passes over a model.

    A pass skips what an earlier one loaded (Keras's `visited_saveables`), so a model can be
    walked before it is compiled and again after, for its optimizer. `finish` raises what
    Keras's `load_model` raises for what failed to load.
    """

    def __init__(self, hdf5: CheckedHDF5, assets: Any, *, skip_mismatch: bool = False):
        self._store = _InPlaceStore(hdf5)
        self._assets = assets
        self._skip_mismatch = skip_mismatch
        self._visited: set[int] = set()
        self._failed: set[int] = set()
        self._errors: dict[int, Any] = {}

    def load(self, model: Any) -> None:
        self._visited.discard(id(model))  # its own variables again, then what is new under it
        saving_lib._load_state(
            model,
            weights_store=self._store,
            assets_store=self._assets,
            inner_path="",
            skip_mismatch=self._skip_mismatch,
            visited_saveables=self._visited,
            failed_saveables=self._failed,
            error_msgs=self._errors,
        )
        if self._store.error is not None:
            raise self._store.error

    def finish(self) -> None:
        if self._failed:
            saving_lib._raise_loading_failure(self._errors, warn_only=self._skip_mismatch)


def _load_state(model: Any, hdf5: CheckedHDF5, assets: Any, *, skip_mismatch: bool = False) -> None:
    walk = _Walk(hdf5, assets, skip_mismatch=skip_mismatch)
    walk.load(model)
    walk.finish()


def _is_legacy(name: str) -> bool:
    return name.endswith((".h5", ".hdf5")) and not name.endswith(".weights.h5")


def load_weights(
    model: Any,
    path: str | os.PathLike[str],
    expected: SealedFile | None = None,
    *,
    name: str | None = None,
    skip_mismatch: bool = False,
) -> bool:
    """`model.load_weights(path)` from the bytes whose checksum was checked, with every check of
    Keras's loader and ours (see the module docstring).

    What the bytes hold decides how they load (HDF5, or a zip with an HDF5 member); only a legacy
    `.h5` file is told by its name (`name`, else `path`), as Keras tells it. Returns True when
    keras-ckpt's store fed Keras's loading walk, False for a legacy `.h5` file (Keras's legacy
    loader read it, from the same checked bytes).

    Raises:
        CorruptCheckpointError: the file cannot be read, differs from `expected`, or holds
            something not allowed.
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
    shown = name or os.fspath(path)
    source = VerifiedFile(path, expected, name=name)
    with source.hdf5() as hdf5:
        if _is_legacy(shown) and source.kind == "hdf5":
            from keras.src.legacy.saving import legacy_h5_format

            group: Any = hdf5.file
            if "layer_names" not in group.attrs and "model_weights" in hdf5.groups:
                group = group["model_weights"]
            load = legacy_h5_format.load_weights_from_hdf5_group
            # Keras 3.10's takes no skip_mismatch (its own load_weights drops it): a mismatch
            # then raises there instead of being skipped.
            if "skip_mismatch" in inspect.signature(load).parameters:
                _legacy(lambda: load(group, model, skip_mismatch), source.name)
            else:
                _legacy(lambda: load(group, model), source.name)
            return False
        _load_state(model, hdf5, None, skip_mismatch=skip_mismatch)
    return True


def _legacy(load: Any, name: str) -> Any:
    """Runs Keras's legacy loader on checked bytes: its read errors are damage, like ours."""
    try:
        return load()
    except (OSError, RuntimeError, KeyError) as e:  # h5py's errors on a file h5py opened
        raise CorruptCheckpointError(f"{name}: cannot read it ({e})") from e


def _load_legacy_model(file: Any, custom_objects: Any, compile: bool, safe_mode: bool) -> Any:
    """Keras's legacy `.h5` model loader with `safe_mode` honoured on every supported Keras."""
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.saving import serialization_lib

    load = legacy_h5_format.load_model_from_hdf5
    if "safe_mode" in inspect.signature(load).parameters:
        return load(file, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
    # Older Keras (3.10) takes no `safe_mode` here: its deserializers read the scope instead.
    with serialization_lib.SafeModeScope(safe_mode):
        return load(file, custom_objects=custom_objects, compile=compile)


def _read_group(hdf5: CheckedHDF5, group: str) -> tuple[dict, dict]:
    if group not in hdf5.groups:
        raise KeyError(f"{hdf5.name} has no group {group!r}")
    arrays = {
        path.rpartition("/")[2]: np.array(hdf5.array(path), copy=True)
        for path in hdf5.datasets
        if path.rpartition("/")[0] == group
    }
    return arrays, dict(hdf5.file[group].attrs.items())


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
        CorruptCheckpointError: the file differs from `expected` or holds something not allowed.
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
    with VerifiedFile(path, expected, name=name).hdf5() as hdf5:
        extras = _read_group(hdf5, extra_group)
        _load_state(model, hdf5, None)
    return extras


def load_model(
    path: str | os.PathLike[str],
    expected: SealedFile | None = None,
    *,
    name: str | None = None,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> Any:
    """`keras.saving.load_model(path)` of a `.keras` (or legacy `.h5`) file, from the bytes whose
    checksum was checked, with every check of Keras's loader and ours (see the module docstring).

    `safe_mode` and `custom_objects` mean what they mean to Keras: deserializing the config is
    Keras's own code.

    Raises:
        CorruptCheckpointError: the file cannot be read, differs from `expected`, is not a
            `.keras` zip (nor, by its name, a legacy `.h5` model), or holds something not allowed.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> model.save(path)  # Keras's own file, read from the checked bytes as ours are
    >>> load_model(path).count_params()
    3
    """
    shown = name or os.fspath(path)
    source = VerifiedFile(path, expected, name=name)
    if _is_legacy(shown) and source.kind == "hdf5":
        with source.hdf5() as hdf5:
            return _legacy(
                lambda: _load_legacy_model(hdf5.file, custom_objects, compile, safe_mode),
                source.name,
            )
    with source.hdf5() as hdf5:  # every check before the (slower) model building
        config_json = source.read_member(saving_lib._CONFIG_FILENAME)
        archive = source.archive()
        if len(archive.namelist()) > 3:
            source.check_extraction()
        try:
            config = json.loads(config_json.decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CorruptCheckpointError(
                f"{source.name}: {saving_lib._CONFIG_FILENAME} is not JSON ({e})"
            ) from None
        assets = None
        if len(archive.namelist()) > 3:
            try:  # extracts the archive, from the checked bytes
                assets = saving_lib.DiskIOStore(
                    saving_lib._ASSETS_DIRNAME, archive=archive, mode="r"
                )
            except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as e:
                raise CorruptCheckpointError(f"{source.name}: cannot extract it ({e})") from e
        try:
            return _build_and_load(
                config, config_json.decode(), hdf5, assets, custom_objects, compile, safe_mode
            )
        finally:
            if assets is not None:
                assets.close()


def _build_and_load(
    config: Any,
    config_json: str,
    hdf5: CheckedHDF5,
    assets: Any,
    custom_objects: Any,
    compile: bool,
    safe_mode: bool,
) -> Any:
    """The model `config_json` describes with the file's values, built as Keras builds it, but
    with its variables taking their first value from the file (`values_from_the_file`): the
    layers are built and loaded inside, then the model is compiled and its optimizer loaded.
    A model that cannot be built that way (a layer making a weight from an array) is built
    again the plain way, as Keras does."""
    compile_config = config.get("compile_config") if compile and isinstance(config, dict) else None
    walk = _Walk(hdf5, assets)
    deferred = False
    try:
        with values_from_the_file() as deferred:
            if deferred:
                model = saving_lib._model_from_config(config_json, custom_objects, False, safe_mode)
                walk.load(model)
        if deferred and uninitialized(model.variables):
            deferred = False  # this Keras's deferral did not reach them: build it the plain way
    except ValueError as e:  # Keras refuses a variable made from a value in a stateless scope
        if not deferred or "stateless scope" not in str(e):
            raise
        deferred = False
    if deferred:
        if compile_config:
            compile_from_config(model, compile_config, custom_objects, safe_mode)
            walk.load(model)  # what compiling added: the optimizer
    else:
        walk = _Walk(hdf5, assets)
        model = saving_lib._model_from_config(config_json, custom_objects, compile, safe_mode)
        walk.load(model)
    walk.finish()
    return model
