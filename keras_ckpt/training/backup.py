"""What a `BackupAndRestore` backup holds, taken from and put back into the model being trained.

`keras_ckpt.format.backup_file` knows the backup's bytes; this module knows which of the model's,
optimizer's and callbacks' state goes into one (`keras_ckpt.state.training_variables` and the
stateful callbacks) and assigns it back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_ckpt import state as st
from keras_ckpt.format import snapshot as snap
from keras_ckpt.format.backup_file import FORMAT, GROUP, BackupContents, BackupSnapshot

__all__ = ["capture", "keep_only", "restore_variables"]


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
    """The same contents holding only the variables in `ids` (frees the rest, and the map)."""
    variables = st.training_variables(model)
    kept = {i: np.array(a) for i, a in contents.variables.items() if id(variables[i]) in ids}
    return BackupContents(
        contents.path, contents.state, contents.layout, kept, contents.callback_arrays
    )
