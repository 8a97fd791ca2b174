"""Exceptions raised by keras-ckpt.

Everything the library raises on purpose derives from `KerasCkptError`, except bad arguments,
which raise the built-in `ValueError` or `TypeError` as Keras does.
"""

from __future__ import annotations

__all__ = [
    "KerasCkptError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "RecordFormatError",
    "DirectoryLockedError",
    "ForeignFileError",
    "ResumeError",
]


class KerasCkptError(Exception):
    """Base class of every error keras-ckpt raises on purpose."""


class CheckpointNotFoundError(KerasCkptError, LookupError):
    """No committed checkpoint matches what was asked for."""


class CorruptCheckpointError(KerasCkptError):
    """A checkpoint's files do not match its record (missing, truncated or altered)."""


class RecordFormatError(CorruptCheckpointError):
    """A record file cannot be read: bad JSON, missing fields, or an unknown format version."""


class DirectoryLockedError(KerasCkptError):
    """Another live process is writing checkpoints into the same directory."""


class ForeignFileError(KerasCkptError):
    """A save would overwrite a file that keras-ckpt did not write."""


class ResumeError(KerasCkptError):
    """Training state could not be restored consistently."""
