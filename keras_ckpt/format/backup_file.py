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
by identity while the snapshot is taken (`BackupFile.capture`), so nothing is stored twice; the
JSON layout names each variable's dataset, and a restore reads them directly (views of the file's
checked bytes in memory), without Keras's loading walk. Which variables and callbacks a backup
holds is the training side's decision (`keras_ckpt.training.backup`): it hands them over as
`BackupInputs`.

`write` produces every byte in one pass (`h5write.write_snapshot`: h5py lays the file out, the
arrays go in with `os.pwrite` from the snapshot's memory, crc32c is computed from that memory), so
the store never reads a backup back; `read` is the only reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format import checked, h5read, h5write
from keras_ckpt.format import snapshot as snap
from keras_ckpt.format.base import Format, Staged
from keras_ckpt.store.local import SealedFile

__all__ = [
    "BackupContents",
    "BackupFile",
    "BackupFileError",
    "BackupInputs",
    "BackupSnapshot",
    "FORMAT",
    "GROUP",
    "SUFFIX",
    "file_name",
    "is_three_file_backup",
    "read",
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


@dataclass
class BackupInputs:
    """What the training side decided one backup holds, handed to `BackupFile.capture`.

    Attributes:
        variables: Every training variable, in a fixed order (`fit_state.training_variables`).
        state: JSON-serialisable state of the caller (progress, RNG, epoch-start state, ...).
        callbacks: Each stateful callback's (class name, JSON state, arrays), in a fixed order.
    """

    variables: Sequence[Any]
    state: dict[str, Any]
    callbacks: Sequence[tuple[str, dict[str, Any], Sequence[np.ndarray]]] = ()


class BackupFile(Format):
    """`BackupAndRestore`'s backups as a format: one `.weights.h5` file per backup.

    Args:
        copy: Take a snapshot at `capture` that stays as it is while training goes on (held
            tensors on TensorFlow, host buffers reused from one backup to the next elsewhere:
            `snapshot.Snapshotter`), for backups written in the background; False writes
            straight from the variables' memory, for backups written inline before the next
            step.

    Example:

    >>> import keras, tempfile
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> fmt = BackupFile()
    >>> captured = fmt.capture(model, BackupInputs(model.weights, {"step": 3}))
    >>> staged = fmt.write(captured, tempfile.mkdtemp(), "backup-000000003")
    >>> list(staged.files)
    ['backup-000000003.weights.h5']
    >>> fmt.read(staged.files["backup-000000003.weights.h5"]).state["step"]
    3
    """

    kind = "training_state"

    def __init__(self, *, copy: bool = True):
        self._copy = copy
        self._snapshotter: snap.Snapshotter | None = None

    def capture(self, model: Any, extra: Any = None) -> BackupSnapshot:
        """Takes a backup's state (`snapshot.Snapshotter`): the only part of a backup that blocks
        training.

        Args:
            model: The model being trained (its optimizer built, so Keras's walk saves it).
            extra: The `BackupInputs` of this backup.

        Raises:
            TypeError: a callback state (or the state) cannot be written as JSON.
        """
        if not isinstance(extra, BackupInputs):
            raise TypeError(f"A backup needs its BackupInputs. Received: extra={extra!r}")
        if self._snapshotter is None:
            self._snapshotter = snap.Snapshotter(copy=self._copy)
        weights = self._snapshotter.take(model, weights_only=True)
        layout = []
        variables: dict[int, np.ndarray] = {}
        for i, variable in enumerate(extra.variables):
            dataset = weights.saved.get(id(variable))
            if dataset is None:  # not in Keras's part: stored once, in our group
                dataset = f"{GROUP}/variables/{i}"
                variables[i] = np.array(_to_numpy(variable), copy=True)
            layout.append([variable.path, list(variable.shape), dataset])
        entries, arrays = [], []
        for class_name, state, callback_arrays in extra.callbacks:
            # The array count is ours, never read back from the callback's own state.
            entries.append({"class": class_name, "state": state, "arrays": len(callback_arrays)})
            arrays.append([np.array(a, copy=True) for a in callback_arrays])
        full = {**extra.state, "format": FORMAT, "layout": layout, "callbacks": entries}
        json.dumps(full)  # fail here, on the training thread, not in the writer
        return BackupSnapshot(weights, variables, arrays, full)

    def write(self, captured: Any, folder: str, name: str) -> Staged:
        filename = file_name(name)
        staged = os.path.join(folder, filename)
        return Staged({filename: staged}, {filename: write(captured, staged)})

    def discard(self, captured: Any) -> None:
        captured.weights.discard()

    def release(self) -> None:
        self._snapshotter = None

    def read(
        self, path: str | os.PathLike[str], expected: SealedFile | None = None, *, name: str = ""
    ) -> BackupContents:
        """The backup in local file `path`, its bytes checked against `expected` first.

        Raises:
            CorruptCheckpointError: the bytes differ from `expected`.
            BackupFileError: the file is not a readable backup of this format.
        """
        return read(path, expected, name=name or None)

    def load_weights(self, model: Any, path: str, expected: SealedFile, *, name: str) -> None:
        h5read.load_weights(model, path, expected, name=name)  # a backup is a plain weights file


def _to_numpy(variable: Any) -> Any:
    import keras

    return keras.ops.convert_to_numpy(variable)


def file_name(name: str) -> str:
    """The file of backup `name`: `backup-000000042` -> `backup-000000042.weights.h5`."""
    return f"{name}{SUFFIX}"


def is_three_file_backup(paths: Iterable[str]) -> bool:
    """True for the files of a backup in the older three-file format: a folder `backup-<N>/`
    holding `model.weights.h5`, `state.npz` and `state.json`, which this format replaced."""
    return any(p.endswith("/state.npz") for p in paths)


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
    dataset is checked before anything is read from it (`checked.VerifiedFile`): what is restored
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
        with checked.VerifiedFile(path, expected, name=name).hdf5() as hdf5:
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
