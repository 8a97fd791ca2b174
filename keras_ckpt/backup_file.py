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
(`tests/test_backup_file.py`). Which variables the Keras part holds is learnt by identity while the
snapshot is taken, so nothing is stored twice.

The bytes are produced by exactly two calls, each swappable for a faster implementation: `write`
(today Keras's writer via `snapshot.write`, then h5py adds the group) and `read`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

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
    "read",
    "restore_variables",
    "write",
]

FORMAT = "keras_ckpt.backup/2"
GROUP = "__keras_ckpt__"
SUFFIX = ".weights.h5"
_STATE = "state.json"
_KERAS = "keras"  # layout tag: the variable is in Keras's part of the file
_EXTRA = "extra"  # layout tag: the variable is in GROUP/variables/<i>


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
    """What `read` found in a backup file; the Keras part stays in the file until restored.

    Attributes:
        path: The local file (the Keras part is loaded from it by `restore_variables`).
        state: The JSON state as `capture` was given it.
        layout: `(path, shape)` of every training variable, in `state.training_variables` order.
        variables: The variables outside Keras's part, by layout index.
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


def capture(model: Any, state: dict[str, Any], callbacks: Sequence[Any]) -> BackupSnapshot:
    """Copies a backup's state to host memory: the only part of a backup that blocks training.

    Args:
        model: The model being trained (its optimizer is built if it is not yet).
        state: JSON-serialisable state of the caller (progress, RNG, epoch-start state, ...).
        callbacks: The stateful callbacks whose state goes with the backup, in a fixed order.

    Raises:
        TypeError: a callback state (or `state`) cannot be written as JSON.
    """
    variables = st.training_variables(model)  # builds the optimizer first, so Keras saves it
    weights = snap.take(model, weights_only=True)
    layout = []
    extra: dict[int, np.ndarray] = {}
    for i, variable in enumerate(variables):
        in_keras = id(variable) in weights.saved_ids
        layout.append([variable.path, list(variable.shape), _KERAS if in_keras else _EXTRA])
        if not in_keras:
            extra[i] = np.array(_to_numpy(variable), copy=True)
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


def write(snapshot: BackupSnapshot, path: str | os.PathLike[str]) -> SealedFile | None:
    """Writes the backup file at local `path`. Swappable: one call produces all its bytes.

    Returns the file's size and checksum if the writer computed them while writing (then the
    store need not read the file back), else None.
    """
    path = os.fspath(path)
    snap.write(snapshot.weights, path)
    with h5py.File(path, "a") as f:
        group = f.create_group(GROUP)
        text = json.dumps(snapshot.state).encode()
        group.create_dataset(_STATE, data=np.frombuffer(text, dtype=np.uint8))
        variables = group.create_group("variables")
        for index, array in snapshot.variables.items():
            variables.create_dataset(str(index), data=array)
        callbacks = group.create_group("callbacks")
        for k, arrays in enumerate(snapshot.callback_arrays):
            holder = callbacks.create_group(str(k))
            for j, array in enumerate(arrays):
                holder.create_dataset(str(j), data=array)
    return None


def read(path: str | os.PathLike[str]) -> BackupContents:
    """Reads a backup file's state and extra arrays (the Keras part is loaded on restore).

    Raises:
        BackupFileError: the file is not a readable backup of this format.
    """
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            group = f.get(GROUP)
            if not isinstance(group, h5py.Group) or _STATE not in group:
                raise BackupFileError(f"{path} holds no keras-ckpt backup state ({GROUP}/)")
            state = json.loads(bytes(group[_STATE][()]).decode())
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                found = state.get("format") if isinstance(state, dict) else None
                raise BackupFileError(f"{path}: unknown backup format {found!r}")
            layout = [(str(p), tuple(int(n) for n in shape)) for p, shape, _ in state["layout"]]
            variables = {}
            for i, (_, _, where) in enumerate(state["layout"]):
                if where == _EXTRA:
                    variables[i] = group[f"variables/{i}"][()]
            callback_arrays = [
                [group[f"callbacks/{k}/{j}"][()] for j in range(int(entry["arrays"]))]
                for k, entry in enumerate(state["callbacks"])
            ]
    except BackupFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise BackupFileError(f"Cannot read backup file {path}: {error}") from error
    return BackupContents(path, state, layout, variables, callback_arrays)


def restore_variables(model: Any, contents: BackupContents, *, only: Any = None) -> None:
    """Assigns the backup's variables to the model's `state.training_variables`.

    The caller checks first that the layout matches the model. With `only` (a set of variable
    ids), assigns just those of the extra variables and does not touch Keras's part.
    """
    variables = st.training_variables(model)
    if only is None:
        # Keras's own loader for Keras's part, as Keras's BackupAndRestore restores.
        model.load_weights(contents.path)
    for index, array in contents.variables.items():
        variable = variables[index]
        if only is None or id(variable) in only:
            variable.assign(array)
