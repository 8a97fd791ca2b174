"""Keras's own files as a format: `.keras` (full model) and `.weights.h5` (weights only).

What is written is exactly what `model.save` / `model.save_weights` would write (plain Keras loads
it), in one pass from a host snapshot (`snapshot`, `h5write`), and read back in place with its
checksum checked (`h5read`). A legacy `.h5` full model has no snapshot writer: Keras writes it from
the live model, so it is written inline.
"""

from __future__ import annotations

import os
from typing import Any

from keras_ckpt.format import h5read, h5write
from keras_ckpt.format.base import Format, Staged
from keras_ckpt.format.snapshot import Snapshot, Snapshotter
from keras_ckpt.store.base import SealedFile
from keras_ckpt.store.local import seal_file

__all__ = ["KerasFile"]


class KerasFile(Format):
    """`.keras` / `.weights.h5` checkpoints, one file each, named as the checkpoint.

    Args:
        weights_only: Write `.weights.h5` (True) or `.keras` (False).
        legacy_h5: The file is a legacy `.h5` full model, which Keras writes from the live model.
        copy: Take a snapshot at `capture` that stays as it is while training goes on (needed
            when `write` runs after training has moved on: held tensors on TensorFlow, host
            buffers elsewhere, see `snapshot.Snapshotter`); False writes straight from the
            variables' memory, for saves written inline before the next step.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> fmt = KerasFile(weights_only=True)
    >>> staged = fmt.write(fmt.capture(model), tempfile.mkdtemp(), "m.weights.h5")
    >>> list(staged.files), staged.sealed["m.weights.h5"].size > 0
    (['m.weights.h5'], True)
    """

    def __init__(self, *, weights_only: bool, legacy_h5: bool = False, copy: bool = True):
        self.kind = "weights" if weights_only else "model"
        self.weights_only = weights_only
        self.legacy_h5 = legacy_h5
        self.snapshots = not legacy_h5
        self._copy = copy
        self._snapshotter: Snapshotter | None = None

    def capture(self, model: Any, extra: Any = None) -> Any:
        if self.legacy_h5:
            return model  # written from the live model, inline
        if self._snapshotter is None:  # host buffers, reused from one save to the next
            self._snapshotter = Snapshotter(copy=self._copy)
        return self._snapshotter.take(model, weights_only=self.weights_only)

    def write(self, captured: Any, folder: str, name: str) -> Staged:
        staged = os.path.join(folder, os.path.basename(name))
        if isinstance(captured, Snapshot):
            sealed = h5write.write_snapshot(captured, staged)  # fsynced, checksummed
        else:
            captured.save(staged, overwrite=True)
            sealed = seal_file(staged)
        return Staged({name: staged}, {name: sealed})

    def discard(self, captured: Any) -> None:
        if isinstance(captured, Snapshot):
            captured.discard()

    def release(self) -> None:
        self._snapshotter = None

    def load_model(self, path: str, expected: SealedFile, *, name: str, **kwargs: Any) -> Any:
        if self.weights_only:
            return super().load_model(path, expected, name=name)
        return h5read.load_model(path, expected, name=name, **kwargs)

    def load_weights(self, model: Any, path: str, expected: SealedFile, *, name: str) -> None:
        h5read.load_weights(model, path, expected, name=name)
