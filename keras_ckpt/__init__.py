"""keras-ckpt: trustworthy checkpointing for Keras 3.

Atomic saves that a kill cannot corrupt, retention that never deletes what matters, and exact resume
of interrupted training, as drop-in callbacks for `model.fit`.
"""

from __future__ import annotations

from keras_ckpt import errors, policies
from keras_ckpt.callbacks import BackupAndRestore, ModelCheckpoint
from keras_ckpt.manager import CheckpointManager, KeptCheckpoint, PruneResult, VerifyResult
from keras_ckpt.records import FileEntry, Record

__version__ = "0.1.0"

__all__ = [
    "BackupAndRestore",
    "CheckpointManager",
    "FileEntry",
    "KeptCheckpoint",
    "ModelCheckpoint",
    "PruneResult",
    "Record",
    "VerifyResult",
    "errors",
    "policies",
    "__version__",
]
