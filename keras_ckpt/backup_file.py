"""The backup file of `BackupAndRestore`: the only module that knows a backup's bytes.

A backup is ONE file, `backup-<global step>.weights.h5`: a plain Keras weights file holding the
model's and optimizer's variables exactly as `model.save_weights` writes them (so plain
`model.load_weights(path)` loads it), plus one extra top-level HDF5 group with only what Keras's
saving walk leaves out::

    __keras_ckpt__/state.json         the JSON state, as a uint8 dataset: format, progress, RNG,
                                      callback states, epoch-start state, variables layout
    __keras_ckpt__/variables/<i>      variable i of the layout, if Keras's file does not hold it
                                      (metric and SeedGenerator variables, Keras's global seed)
    __keras_ckpt__/callbacks/<k>/<j>  array j of stateful callback k (EarlyStopping.best_weights)

Keras's walk never writes a name starting with `__` (`saving_lib._walk_saveable` skips such
attributes), so no layer can collide with the group, and `load_weights` ignores it silently
(`tests/test_backup_file.py`). Which variables the Keras part holds, and in which dataset, is learnt
by identity while the snapshot is taken, so nothing is stored twice; the JSON layout names each
variable's dataset, and a restore reads them directly (views of the file's checked bytes in memory),
without Keras's loading walk.

`write` produces every byte in one pass (`h5write.write_snapshot`: h5py lays the file out, the
arrays go in with `os.pwrite` from host buffers reused across backups, crc32c is computed from
memory), so the store never reads a backup back; `read` is the only reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_ckpt import h5read, h5write
from keras_ckpt import snapshot as snap
from keras_ckpt import state as st
from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.storage import SealedFile

__all__ = [
    "BackupContents",
    "BackupFileError",
    "BackupSnapshot",
    "FORMAT",
    "GROUP",
    "SUFFIX",
    "capture",
    "file_name",
    "is_round1",
    "keep_only",
    "read",
    "restore_variables",
    "write",
]

FORMAT = "keras_ckpt.backup/2"
GROUP = "__keras_ckpt__"
SUFFIX = ".weights.h5"
_STATE = "state.json"


class BackupFileError(CorruptCheckpointError):
    """A backup file could not be read as one (truncated, altered, or not a backup at all).

    Example:

    >>> issubclass(BackupFileError, CorruptCheckpointError)
    True
    """


@dataclass
class BackupSnapshot:
    """Host copies of one backup, taken on the training thread; `write` needs nothing else.

    Attributes:
        weights: Keras's saving walk of the model (model and optimizer variables).
        variables: Host copies of the variables Keras's walk does not hold, by layout index.
        callback_arrays: Arrays of each stateful callback, in callback order.
        state: The JSON state (with `layout` and `callbacks`).
    """

    weights: snap.Snapshot
    variables: dict[int, np.ndarray]
    callback_arrays: list[list[np.ndarray]]
    state: dict[str, Any]

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in self.variables.values())
        extra += sum(a.nbytes for arrays in self.callback_arrays for a in arrays)
        return self.weights.nbytes + extra


@dataclass
class BackupContents:
    """What `read` found in a backup file.

    Attributes:
        path: The local file it was read from.
        state: The JSON state as `capture` was given it.
        layout: `(path, shape)` of every training variable, in `state.training_variables` order.
        variables: Every variable's value, by layout index.
        callback_arrays: Arrays of each stateful callback, in callback order.
    """

    path: str
    state: dict[str, Any]
    layout: list[tuple[str, tuple[int, ...]]]
    variables: dict[int, np.ndarray] = field(default_factory=dict)
    callback_arrays: list[list[np.ndarray]] = field(default_factory=list)


def file_name(name: str) -> str:
    """The file of backup `name`: `backup-000000042` -> `backup-000000042.weights.h5`."""
    return f"{name}{SUFFIX}"


def is_round1(paths: Iterable[str]) -> bool:
    """True for the files of a backup written by keras-ckpt round 1: a folder `backup-<N>/`
    holding `model.weights.h5`, `state.npz` and `state.json`, which this format replaced."""
    return any(p.endswith("/state.npz") for p in paths)


def capture(
    model: Any,
    state: dict[str, Any],
    callbacks: Sequence[Any],
    snapshotter: snap.Snapshotter | None = None,
) -> BackupSnapshot:
    """Copies a backup's state to host memory: the only part of a backup that blocks training.

    Args:
        model: The model being trained (its optimizer is built if it is not yet).
        state: JSON-serialisable state of the caller (progress, RNG, epoch-start state, ...).
        callbacks: The stateful callbacks whose state goes with the backup, in a fixed order.
        snapshotter: Reuses its host buffers from one backup to the next (write each backup
            before capturing the next); fresh buffers without one.

    Raises:
        TypeError: a callback state (or `state`) cannot be written as JSON.
    """
    variables = st.training_variables(model)  # builds the optimizer first, so Keras saves it
    weights = (snapshotter or snap.Snapshotter()).take(model, weights_only=True)
    layout = []
    extra: dict[int, np.ndarray] = {}
    for i, variable in enumerate(variables):
        dataset = weights.saved.get(id(variable))
        if dataset is None:  # not in Keras's part: stored once, in our group
            dataset = f"{GROUP}/variables/{i}"
            extra[i] = np.array(_to_numpy(variable), copy=True)
        layout.append([variable.path, list(variable.shape), dataset])
    entries, arrays = [], []
    for callback in callbacks:
        cb_state, cb_arrays = st.callback_state(callback)
        # The array count is ours, never read back from the callback's own state.
        entry: dict[str, Any] = {"class": type(callback).__name__, "state": cb_state}
        entry["arrays"] = len(cb_arrays)
        entries.append(entry)
        arrays.append([np.array(a, copy=True) for a in cb_arrays])
    full = {**state, "format": FORMAT, "layout": layout, "callbacks": entries}
    json.dumps(full)  # fail here, on the training thread, not in the writer
    return BackupSnapshot(weights, extra, arrays, full)


def _to_numpy(variable: Any) -> Any:
    import keras

    return keras.ops.convert_to_numpy(variable)


def write(snapshot: BackupSnapshot, path: str | os.PathLike[str]) -> SealedFile:
    """Writes and fsyncs the backup file at local `path` in one pass; returns its size and crc32c
    (computed while writing, so the store need not read the file back)."""
    text = json.dumps(snapshot.state).encode()
    arrays: dict[str, np.ndarray] = {_STATE: np.frombuffer(text, dtype=np.uint8)}
    for index, array in snapshot.variables.items():
        arrays[f"variables/{index}"] = array
    for k, callback_arrays in enumerate(snapshot.callback_arrays):
        for j, array in enumerate(callback_arrays):
            arrays[f"callbacks/{k}/{j}"] = array
    return h5write.write_snapshot(
        snapshot.weights, os.fspath(path), extra_group=GROUP, extra_arrays=arrays
    )


def read(
    path: str | os.PathLike[str], expected: SealedFile | None = None, *, name: str | None = None
) -> BackupContents:
    """Reads a backup file: its state and every variable, Keras's part included.

    The file is read once into memory, checked against `expected` on the way, and every link and
    dataset is checked before anything is read from it (`h5read.VerifiedFile`): what is restored
    is exactly what was checked. Arrays of plainly stored datasets are views of that memory.

    Args:
        path: The local backup file.
        expected: Its recorded size and checksum (None: not checked).
        name: How error messages name the file (default: `path`).

    Raises:
        BackupFileError: the file is not a readable backup of this format, differs from
            `expected`, or holds something a Keras weights file may not.
    """
    path = os.fspath(path)
    shown = name or path
    try:
        with h5read.VerifiedFile(path, expected, name=name).hdf5() as hdf5:
            state_path = f"{GROUP}/{_STATE}"
            if state_path not in hdf5.datasets:
                raise BackupFileError(f"{shown} holds no keras-ckpt backup state ({GROUP}/)")
            state = json.loads(bytes(hdf5.array(state_path)).decode())
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                found = state.get("format") if isinstance(state, dict) else None
                raise BackupFileError(f"{shown}: unknown backup format {found!r}")
            layout, variables = [], {}
            for i, (variable, shape, dataset) in enumerate(state["layout"]):
                layout.append((str(variable), tuple(int(n) for n in shape)))
                variables[i] = hdf5.array(dataset)
                if variables[i].shape != layout[-1][1]:
                    raise BackupFileError(
                        f"{shown}: {dataset} has shape {variables[i].shape}, the backup's layout "
                        f"says {layout[-1][1]} for {variable}"
                    )
            callback_arrays = [
                [hdf5.array(f"{GROUP}/callbacks/{k}/{j}") for j in range(int(entry["arrays"]))]
                for k, entry in enumerate(state["callbacks"])
            ]
    except BackupFileError:
        raise
    except CorruptCheckpointError as error:
        reason = str(error).removeprefix(f"{shown}: ")
        raise BackupFileError(f"Cannot read backup file {shown}: {reason}") from error
    except (KeyError, ValueError, TypeError, RecursionError) as error:
        raise BackupFileError(f"Cannot read backup file {shown}: {error}") from error
    return BackupContents(path, state, layout, variables, callback_arrays)


def restore_variables(
    model: Any, contents: BackupContents, *, only: set[int] | None = None
) -> None:
    """Assigns the backup's variables to the model's `state.training_variables`.

    The caller checks first that the layout matches the model. With `only` (a set of variable
    ids), assigns just those.
    """
    variables = st.training_variables(model)
    for index, array in contents.variables.items():
        variable = variables[index]
        if only is None or id(variable) in only:
            variable.assign(array)


def keep_only(contents: BackupContents, ids: set[int], model: Any) -> BackupContents:
    """The same contents holding only the variables in `ids` (frees the rest, and the buffer)."""
    variables = st.training_variables(model)
    kept = {i: np.array(a) for i, a in contents.variables.items() if id(variables[i]) in ids}
    return BackupContents(
        contents.path, contents.state, contents.layout, kept, contents.callback_arrays
    )
