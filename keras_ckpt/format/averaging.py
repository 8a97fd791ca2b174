"""Checkpoint averaging: the element-wise mean of the weights of checkpoints a run already kept.

Averaging the last few checkpoints of a run (fairseq's `average_checkpoints.py`, SWA, model soups)
often generalises better than any one of them, at no training cost. The weights are read straight
from the checkpoints' HDF5 files with h5py (no model is built, Keras is not imported), each
checkpoint verified against its record first (by `CheckpointManager.average`, which selects
them); the result is written atomically as a file plain Keras loads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np

from keras_ckpt._validate import invalid
from keras_ckpt.store.local import atomic_local_file

__all__ = ["average"]

WEIGHTS_MEMBER = "model.weights.h5"
# Top-level HDF5 groups of a weights file that hold no model variable: the optimizer's state, and
# a backup's training state (`backup_file.GROUP`, dropped from the averaged file).
NOT_MODEL = ("optimizer", "__keras_ckpt__")


def average(sources: Sequence[tuple[str, str]], out: str) -> None:
    """Writes the element-wise mean of the model weights in `sources` to local file `out`.

    Every floating-point model variable is summed in float64 and divided by the number of
    sources, then cast back to its dtype. Integer and boolean variables (counters, seeds) are the
    last source's. The optimizer state is not averaged: the file holds the last source's optimizer
    state unchanged (moments of a mean have no meaning; keeping the newest's lets
    `keras.saving.load_model` restore a compiled model as usual). A `.keras` output also holds the
    last source's `config.json` and `metadata.json` (every source must then be a `.keras` file).

    Args:
        sources: (name for messages, local `.keras` or `.weights.h5` file), newest last, each
            already verified against its record.
        out: The `.keras` or `.weights.h5` file to write, atomically.

    Raises:
        ValueError: the sources differ in architecture or shapes.

    Example:

    >>> import keras, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    >>> sources = []
    >>> for value in (1.0, 3.0):
    ...     _ = model.layers[0].kernel.assign([[value]])
    ...     sources.append((str(value), os.path.join(folder, f"{value}.weights.h5")))
    ...     model.save_weights(sources[-1][1])
    >>> average(sources, os.path.join(folder, "mean.weights.h5"))
    >>> model.load_weights(os.path.join(folder, "mean.weights.h5"))
    >>> float(model.layers[0].kernel[0, 0])
    2.0
    """
    names = [name for name, _ in sources]
    with contextlib.ExitStack() as stack:
        weight_files = [stack.enter_context(_weights_file(name, path)) for name, path in sources]
        files = [stack.enter_context(h5py.File(source, "r")) for source in weight_files]
        means = _mean(files, names)
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="keras_ckpt-avg-"))
        weights = os.path.join(folder, WEIGHTS_MEMBER)
        shutil.copyfile(weight_files[-1], weights)
        with h5py.File(weights, "r+") as target:
            for key, array in means.items():
                target[key][...] = array
            if NOT_MODEL[1] in target:  # a backup's resume state belongs to no average
                del target[NOT_MODEL[1]]
        if out.endswith(".weights.h5"):
            with open(weights, "rb") as src, atomic_local_file(out) as dest:
                shutil.copyfileobj(src, dest)
            return
        with zipfile.ZipFile(sources[-1][1]) as archive:
            members = {n: archive.read(n) for n in archive.namelist() if n != WEIGHTS_MEMBER}
        with atomic_local_file(out) as dest, zipfile.ZipFile(dest, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
            archive.write(weights, WEIGHTS_MEMBER)


@contextlib.contextmanager
def _weights_file(name: str, local: str) -> Iterator[str]:
    """A local HDF5 weights file of checkpoint `name`: its `.weights.h5`, or its `.keras`'s
    member."""
    if zipfile.is_zipfile(local):
        with tempfile.TemporaryDirectory(prefix="keras_ckpt-avg-") as folder:
            with zipfile.ZipFile(local) as archive:
                if WEIGHTS_MEMBER not in archive.namelist():
                    raise ValueError(f"{name} holds no {WEIGHTS_MEMBER} to average.")
                extracted = archive.extract(WEIGHTS_MEMBER, folder)
            yield extracted
    else:
        yield local


def _variables(file: h5py.File) -> dict[str, Any]:
    """Path -> dataset of every model variable (every dataset outside the optimizer's group)."""
    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name.split("/", 1)[0] not in NOT_MODEL:
            found[name] = obj

    file.visititems(visit)
    return found


def _mean(files: Sequence[h5py.File], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The float64 mean, cast back, of every floating-point model variable of `files`
    (bfloat16 ones included)."""
    layouts = [_variables(f) for f in files]
    reference = {k: (d.shape, d.dtype) for k, d in layouts[-1].items()}
    for name, layout in zip(names, layouts, strict=True):
        current = {k: (d.shape, d.dtype) for k, d in layout.items()}
        if current != reference:
            raise invalid(
                "select",
                "checkpoints of one architecture (the same variables with the same shapes); "
                f"{name} differs from {names[-1]}: {_difference(current, reference)}",
                list(names),
            )
    means = {}
    for key, (shape, dtype) in reference.items():
        # Keras stores bfloat16 as 2-byte opaque values (`|V2`) marked by a `dtype` attribute.
        bfloat16 = layouts[-1][key].attrs.get("dtype") == "bfloat16"
        if not (bfloat16 or np.issubdtype(dtype, np.floating)):
            continue  # integers and booleans stay the newest checkpoint's
        total = np.zeros(shape, dtype=np.float64)
        for layout in layouts:
            total += _as_float64(layout[key][()], bfloat16)
        mean = total / len(layouts)
        means[key] = mean.astype(_bfloat16()).view(dtype) if bfloat16 else mean.astype(dtype)
    return means


def _bfloat16() -> Any:
    import ml_dtypes  # installed with Keras

    return ml_dtypes.bfloat16


def _as_float64(value: np.ndarray, bfloat16: bool) -> np.ndarray:
    if bfloat16:
        value = np.asarray(value).view(_bfloat16())
    return np.asarray(value, dtype=np.float64)


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
