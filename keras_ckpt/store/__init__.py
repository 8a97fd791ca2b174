"""The store: where a checkpoint directory's bytes live, and the crash journal that commits them.

The only layer that touches the checkpoint directory. `Storage` (`base`) is the interface;
`LocalStorage` (`local`) and `FsspecStorage` (`remote`, the `remote` extra) implement it; the
`journal` commits, deletes and recovers through it under the directory's writer lock (`locks`), and
`history` is its append-only log of every save and deletion.
"""

from __future__ import annotations

import os

from keras_ckpt.store.base import SealedFile, Storage, checksum_stream
from keras_ckpt.store.local import LocalStorage

__all__ = ["LocalStorage", "SealedFile", "Storage", "checksum_stream", "storage_for"]


def storage_for(directory: str | os.PathLike[str]) -> Storage:
    """The storage for a local path or an fsspec URL (`s3://...`, `memory://...`).

    Example:

    >>> type(storage_for("runs/exp1")).__name__
    'LocalStorage'
    """
    text = os.fspath(directory)
    if "://" in text and not text.startswith("file://"):
        from keras_ckpt.store.remote import FsspecStorage  # needs the `remote` extra

        return FsspecStorage(text)
    return LocalStorage(text.removeprefix("file://"))
