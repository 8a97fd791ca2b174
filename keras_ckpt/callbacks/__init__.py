"""The `fit` callbacks: they decide when to save; the manager does the I/O."""

from __future__ import annotations

from keras_ckpt.callbacks.model_checkpoint import ModelCheckpoint

__all__ = ["ModelCheckpoint"]
