"""keras-ckpt: trustworthy checkpointing for Keras 3.

Atomic saves that a kill cannot corrupt, retention that never deletes what matters, and exact resume
of interrupted training, as drop-in callbacks for `model.fit`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from keras_ckpt import errors, policies
from keras_ckpt.manager import CheckpointManager, KeptCheckpoint, PruneResult, Run, VerifyResult
from keras_ckpt.records import FileEntry, Record

if TYPE_CHECKING:
    from keras_ckpt.callbacks import BackupAndRestore, ModelCheckpoint

__version__ = "0.1.0"

_CALLBACKS = ("BackupAndRestore", "ModelCheckpoint")
_LAZY_MODULES = ("callbacks", "distribute", "state")


def __getattr__(name: str) -> Any:
    # The callbacks import Keras (and its backend, seconds for TensorFlow); the manager, the
    # policies and the CLI's `list`/`verify` do not need it, so it loads on first use.
    if name in _CALLBACKS:
        from keras_ckpt import callbacks

        return getattr(callbacks, name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"keras_ckpt.{name}")
    raise AttributeError(f"module 'keras_ckpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BackupAndRestore",
    "CheckpointManager",
    "FileEntry",
    "KeptCheckpoint",
    "ModelCheckpoint",
    "PruneResult",
    "Record",
    "Run",
    "VerifyResult",
    "distribute",
    "errors",
    "policies",
    "state",
    "__version__",
]
