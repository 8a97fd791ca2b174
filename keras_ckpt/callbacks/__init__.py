"""The `fit` callbacks: they decide when to save; the manager does the I/O."""

from __future__ import annotations

from keras_ckpt.callbacks.backup_and_restore import BackupAndRestore
from keras_ckpt.callbacks.model_checkpoint import ModelCheckpoint

__all__ = ["BackupAndRestore", "ModelCheckpoint"]
