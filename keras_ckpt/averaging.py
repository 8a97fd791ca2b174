"""Checkpoint averaging: the element-wise mean of the weights of checkpoints a run already kept.

Averaging the last few checkpoints of a run (fairseq's `average_checkpoints.py`, SWA, model soups)
often generalises better than any one of them, at no training cost. The weights are read straight
from the checkpoints' HDF5 bytes (no model is built), each checkpoint read into memory once and
checked against its record and by every check of the loader (`h5read.VerifiedFile`), one at a time;
the result is written atomically as a file plain Keras loads. `CheckpointManager.average` is the
entry point.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from keras_ckpt._validate import check_bool, check_choice, invalid
from keras_ckpt.h5read import WEIGHTS_MEMBER, CheckedHDF5, VerifiedFile
from keras_ckpt.records import Record
from keras_ckpt.storage import SealedFile, atomic_local_file

if TYPE_CHECKING:
    from keras_ckpt.manager import CheckpointManager

__all__ = ["average", "select"]

# Top-level HDF5 groups of a weights file that hold no model variable: the optimizer's state, and
# a backup's training state (`backup_file.GROUP`, dropped from the averaged file).
NOT_MODEL = ("optimizer", "__keras_ckpt__")
_SELECTOR = re.compile(r"(last|best):(.*)")


def select(
    manager: CheckpointManager,
    selector: str | Sequence[str],
    *,
    monitor: str | None = None,
    mode: str = "auto",
) -> list[Record]:
    """The records `selector` names, oldest first (not yet verified).

    Args:
        manager: The checkpoint directory.
        selector: `"last:N"` (the N newest), `"best:N"` (the N best by `monitor`) or a list of
            checkpoint names.
        monitor: For `"best:N"`; defaults to the metric the writing callback monitored (and then
            the mode it recorded, unless `mode` is given).
        mode: For `"best:N"`: `"min"`, `"max"` or `"auto"`.

    Raises:
        ValueError: an unknown selector, `N` not a positive int, or fewer checkpoints than `N`.
    """
    check_choice("mode", mode, ("auto", "min", "max"))
    records = manager.checkpoints()
    if isinstance(selector, str):
        match = _SELECTOR.fullmatch(selector)
        if match is None:
            raise invalid("select", '"last:N", "best:N" or a list of checkpoint names', selector)
        how, count_text = match.groups()
        if not re.fullmatch(r"[0-9]+", count_text) or int(count_text) < 1:
            raise invalid("select", f'"{how}:N" with N a positive integer', selector)
        count = int(count_text)
        if how == "best":
            if monitor is None:
                monitor, recorded_mode = _recorded_monitor(records)
                if mode == "auto" and recorded_mode in ("min", "max"):
                    mode = recorded_mode
            ranked = manager._ranked_by(monitor, mode, None)
            records, scope = ranked[:count], f"with {monitor!r} in their metrics"
        else:
            records, scope = records[-count:], ""
        if len(records) < count:
            raise invalid(
                "select",
                f"at most as many checkpoints as {manager.directory} holds {scope}".rstrip()
                + f" ({len(records)})",
                selector,
            )
        return sorted(records, key=lambda r: r.sequence)
    if not isinstance(selector, Sequence) or not selector:
        raise invalid("select", '"last:N", "best:N" or a list of checkpoint names', selector)
    names = list(selector)
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise invalid("select", "a list of distinct checkpoint names", selector)
    return sorted((manager.get(name) for name in names), key=lambda r: r.sequence)


def _recorded_monitor(records: Sequence[Record]) -> tuple[str, str | None]:
    for record in reversed(records):
        for state in (record.owner_state.get("retention"), record.owner_state):
            if isinstance(state, dict) and isinstance(state.get("monitor"), str):
                return state["monitor"], state.get("mode")
    raise ValueError(
        'Invalid value for argument `monitor`. `select="best:N"` needs the metric to rank by: '
        "no checkpoint records the one its callback monitored. Received: monitor=None"
    )


def average(
    manager: CheckpointManager,
    selector: str | Sequence[str],
    path: str | os.PathLike[str],
    *,
    monitor: str | None = None,
    mode: str = "auto",
    overwrite: bool = False,
) -> list[Record]:
    """Writes the element-wise mean of the selected checkpoints' model weights to `path`.

    Every floating-point model variable is summed in float64 and divided by the number of
    checkpoints, then cast back to its dtype. Integer and boolean variables (counters, seeds) are
    the newest checkpoint's. The optimizer state is not averaged: the file holds the newest
    checkpoint's optimizer state unchanged (moments of a mean have no meaning; keeping the newest's
    lets `keras.saving.load_model` restore a compiled model as usual). A `.keras` output also holds
    the newest checkpoint's `config.json` and `metadata.json`.

    Args:
        manager: The checkpoint directory.
        selector: `"last:N"`, `"best:N"` or a list of checkpoint names (see `select`).
        path: Local file to write: `.keras` (every selected checkpoint must be a full model) or
            `.weights.h5` (any checkpoints; load it with `model.load_weights`).
        monitor, mode: For `"best:N"` (see `select`).
        overwrite: Replace an existing `path`. Defaults to `False`.

    Returns:
        The averaged checkpoints' records, oldest first.

    Raises:
        ValueError: a bad selector or count, `path` exists (without `overwrite`) or has the wrong
            suffix, or the checkpoints differ in architecture or shapes.
        CorruptCheckpointError: a selected checkpoint fails verification.

    Example:

    >>> import keras, numpy as np, keras_ckpt
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> ckpt = keras_ckpt.ModelCheckpoint("runs/avg-doc/m-{epoch}.keras", keep_last=3)
    >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=3, callbacks=[ckpt], verbose=0)
    >>> manager = keras_ckpt.CheckpointManager("runs/avg-doc")
    >>> [r.name for r in manager.average("last:3", "runs/avg.keras", overwrite=True)]
    ['m-1.keras', 'm-2.keras', 'm-3.keras']
    >>> keras.saving.load_model("runs/avg.keras").count_params()
    3
    """
    check_bool("overwrite", overwrite)
    if not isinstance(path, (str, os.PathLike)) or "://" in os.fspath(path):
        raise invalid("path", "a local .keras or .weights.h5 file path", path)
    out = os.fspath(path)
    if not (out.endswith(".keras") or out.endswith(".weights.h5")):
        raise invalid("path", "a file name ending in .keras or .weights.h5", path)
    if os.path.exists(out) and not overwrite:
        raise invalid("path", "a path that does not exist yet (or `overwrite=True`)", path)
    records = select(manager, selector, monitor=monitor, mode=mode)
    verified = [manager.resolve(record.name) for record in records]
    if out.endswith(".keras") and any(r.kind != "model" for r in verified):
        partial = [r.name for r in verified if r.kind != "model"]
        raise invalid(
            "path",
            f"a .weights.h5 file: {', '.join(partial)} hold weights only, not a full model",
            path,
        )
    names = [r.name for r in verified]
    newest = _read(manager, verified[-1])
    with contextlib.ExitStack() as stack:
        newest_hdf5 = stack.enter_context(newest.hdf5())
        means = _mean(manager, verified, newest_hdf5, names)
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="keras_ckpt-avg-"))
        weights = os.path.join(folder, WEIGHTS_MEMBER)
        with open(weights, "wb") as f:  # the newest's checked bytes, not its file read again
            f.write(memoryview(newest_hdf5.image))  # type: ignore[arg-type]
        with h5py.File(weights, "r+") as target:
            for key, array in means.items():
                target[key][...] = array
            if NOT_MODEL[1] in target:  # a backup's resume state belongs to no average
                del target[NOT_MODEL[1]]
        if out.endswith(".weights.h5"):
            with open(weights, "rb") as src, atomic_local_file(out) as dest:
                shutil.copyfileobj(src, dest)
        else:
            newest.read_json("config.json")  # the output is a model only if this is one
            members = {
                n: newest.read_member(n) for n in newest.archive().namelist() if n != WEIGHTS_MEMBER
            }
            with atomic_local_file(out) as dest, zipfile.ZipFile(dest, "w") as archive:
                for name, data in members.items():
                    archive.writestr(name, data)
                archive.write(weights, WEIGHTS_MEMBER)
    return verified


def _read(manager: CheckpointManager, record: Record) -> VerifiedFile:
    """`record`'s main file, read into memory and checked against the record."""
    entry = record.files[0]
    with manager.storage.local_path(record.path) as local:
        return VerifiedFile(local, SealedFile(entry.size, entry.checksum), name=record.path)


def _variables(hdf5: CheckedHDF5) -> dict[str, tuple[Any, Any]]:
    """Path -> (shape, dtype) of every model variable (every dataset outside the optimizer's
    group)."""
    return {
        path: (ds.shape, ds.dtype)
        for path, ds in hdf5.datasets.items()
        if path.split("/", 1)[0] not in NOT_MODEL
    }


def _mean(
    manager: CheckpointManager,
    records: Sequence[Record],
    newest: CheckedHDF5,
    names: Sequence[str],
) -> dict[str, np.ndarray]:
    """The float64 mean, cast back, of every floating-point model variable of `records`, read
    one checkpoint at a time (the newest is already open)."""
    reference = _variables(newest)
    totals = {
        key: np.zeros(shape, dtype=np.float64)
        for key, (shape, dtype) in reference.items()
        if np.issubdtype(dtype, np.floating)  # integers and booleans stay the newest's
    }
    for record, name in zip(records, names, strict=True):
        with contextlib.ExitStack() as stack:
            hdf5 = newest
            if record is not records[-1]:
                hdf5 = stack.enter_context(_read(manager, record).hdf5())
            current = _variables(hdf5)
            if current != reference:
                raise invalid(
                    "select",
                    "checkpoints of one architecture (the same variables with the same shapes); "
                    f"{name} differs from {names[-1]}: {_difference(current, reference)}",
                    list(names),
                )
            for key, total in totals.items():
                total += np.asarray(hdf5.array(key), dtype=np.float64)
    return {key: (total / len(records)).astype(reference[key][1]) for key, total in totals.items()}


def _difference(current: dict[str, Any], reference: dict[str, Any]) -> str:
    for key in sorted(set(current) | set(reference)):
        if key not in current:
            return f"no variable {key}"
        if key not in reference:
            return f"an extra variable {key}"
        if current[key] != reference[key]:
            (shape, dtype), (want_shape, want_dtype) = current[key], reference[key]
            return f"{key} is {shape} {dtype}, not {want_shape} {want_dtype}"
    return "unknown"
