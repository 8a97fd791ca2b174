"""Checkpoint averaging: the element-wise mean of the weights of checkpoints a run already kept.

Averaging the last few checkpoints of a run (fairseq's `average_checkpoints.py`, SWA, model soups)
often generalises better than any one of them, at no training cost. The weights are read straight
from the checkpoints' HDF5 bytes (no model is built), each checkpoint read into memory once and
checked against its record and by every check of the loader (`checked.VerifiedFile`), one at a
time; the result is written atomically as a file plain Keras loads. `CheckpointManager.average`
selects the checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from keras_ckpt._validate import invalid
from keras_ckpt.format.checked import WEIGHTS_MEMBER, CheckedHDF5, VerifiedFile
from keras_ckpt.store.base import SealedFile
from keras_ckpt.store.local import atomic_local_file

__all__ = ["average"]

# Top-level HDF5 groups of a weights file that hold no model variable: the optimizer's state, and
# a backup's training state (`backup_file.GROUP`, dropped from the averaged file).
NOT_MODEL = ("optimizer", "__keras_ckpt__")


def average(sources: Sequence[tuple[str, str, SealedFile | None]], out: str) -> None:
    """Writes the element-wise mean of the model weights in `sources` to local file `out`.

    Every floating-point model variable (bfloat16 included) is summed in float64 and divided by
    the number of sources, then cast back to its dtype. Integer and boolean variables (counters,
    seeds) are the last source's. The optimizer state is not averaged: the file holds the last
    source's optimizer state unchanged (moments of a mean have no meaning; keeping the newest's
    lets `keras.saving.load_model` restore a compiled model as usual). A `.keras` output also
    holds the last source's `config.json` and `metadata.json` (it must then be a `.keras` file).

    Args:
        sources: (name for messages, local `.keras` or `.weights.h5` file, its recorded size and
            checksum or None), newest last. Each is read once and checked on the way.
        out: The `.keras` or `.weights.h5` file to write, atomically.

    Raises:
        ValueError: the sources differ in architecture or shapes.
        CorruptCheckpointError: a source differs from its record or is not a Keras file.

    Example:

    >>> import keras, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    >>> sources = []
    >>> for value in (1.0, 3.0):
    ...     _ = model.layers[0].kernel.assign([[value]])
    ...     sources.append((str(value), os.path.join(folder, f"{value}.weights.h5"), None))
    ...     model.save_weights(sources[-1][1])
    >>> average(sources, os.path.join(folder, "mean.weights.h5"))
    >>> model.load_weights(os.path.join(folder, "mean.weights.h5"))
    >>> float(model.layers[0].kernel[0, 0])
    2.0
    """
    names = [name for name, _, _ in sources]
    newest = _read(*sources[-1])
    with contextlib.ExitStack() as stack:
        newest_hdf5 = stack.enter_context(newest.hdf5())
        means = _mean(sources, newest_hdf5, names)
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
            return
        newest.read_json("config.json")  # the output is a model only if this is one
        members = {
            n: newest.read_member(n) for n in newest.archive().namelist() if n != WEIGHTS_MEMBER
        }
        with atomic_local_file(out) as dest, zipfile.ZipFile(dest, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
            archive.write(weights, WEIGHTS_MEMBER)


def _read(name: str, local: str, expected: SealedFile | None) -> VerifiedFile:
    """A checkpoint's main file, read into memory and checked against its record."""
    return VerifiedFile(local, expected, name=name)


def _variables(hdf5: CheckedHDF5) -> dict[str, tuple[Any, Any]]:
    """Path -> (shape, dtype) of every model variable (every dataset outside the optimizer's
    group); Keras's bfloat16 (stored as 2-byte opaque values, marked by an attribute) as such."""
    out = {}
    for path, ds in hdf5.datasets.items():
        if path.split("/", 1)[0] in NOT_MODEL:
            continue
        marked = ds.attrs.get("dtype") if "dtype" in ds.attrs else None
        out[path] = (ds.shape, "bfloat16" if marked in ("bfloat16", b"bfloat16") else ds.dtype)
    return out


def _mean(
    sources: Sequence[tuple[str, str, SealedFile | None]],
    newest: CheckedHDF5,
    names: Sequence[str],
) -> dict[str, np.ndarray]:
    """The float64 mean, cast back, of every floating-point model variable of `sources`, read
    one checkpoint at a time (the newest is already open)."""
    reference = _variables(newest)
    totals = {
        key: np.zeros(shape, dtype=np.float64)
        for key, (shape, dtype) in reference.items()
        # integers and booleans stay the newest's
        if dtype == "bfloat16" or np.issubdtype(dtype, np.floating)
    }
    for index, (name, local, expected) in enumerate(sources):
        with contextlib.ExitStack() as stack:
            hdf5 = newest
            if index != len(sources) - 1:
                hdf5 = stack.enter_context(_read(name, local, expected).hdf5())
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
    return {key: _cast(total / len(sources), reference[key][1]) for key, total in totals.items()}


def _cast(mean: np.ndarray, dtype: Any) -> np.ndarray:
    """`mean` as the dataset's dtype; bfloat16 as the 2-byte opaque values Keras stores."""
    if dtype == "bfloat16":
        import ml_dtypes  # installed with Keras

        return mean.astype(ml_dtypes.bfloat16).view("V2")
    return mean.astype(dtype)


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
