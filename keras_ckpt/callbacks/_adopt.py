"""A file keras-ckpt did not write, at a fixed checkpoint name: kept, under a new name beside it.

The swap from Keras: `best.keras` written by Keras's own ModelCheckpoint sits where ours will write.
It is never overwritten and never deleted; it is moved aside (`best.pre-keras-ckpt.keras`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from keras_ckpt.callbacks._naming import split_extension
from keras_ckpt.errors import ForeignFileError
from keras_ckpt.store import LocalStorage

__all__ = ["adopt_foreign_file", "aside_names"]


def aside_names(name: str) -> list[str]:
    """Free-name candidates for moving `name` aside, in order.

    Example:

    >>> aside_names("best.keras")[:2]
    ['best.pre-keras-ckpt.keras', 'best.pre-keras-ckpt-2.keras']
    """
    stem, ext = split_extension(name)
    return [f"{stem}.pre-keras-ckpt{'' if n == 1 else f'-{n}'}{ext}" for n in range(1, 1000)]


def adopt_foreign_file(manager: Any, name: str, filepath: str) -> None:
    """Moves a file at `name` that no record names out of the way, with a warning saying where.

    Raises:
        ForeignFileError: the directory is remote (no rename there): the user must move it.
    """
    try:
        manager.get(name)
        return
    except LookupError:
        if not manager.storage.exists(name):
            return
    if not isinstance(manager.storage, LocalStorage):
        raise ForeignFileError(
            f"Refusing to overwrite {filepath}: keras-ckpt did not write it (no record names it). "
            "Move it away or choose another filepath."
        )
    new = manager.storage.move_aside(name, aside_names(name))
    warnings.warn(
        f"ModelCheckpoint: {filepath} was not written by keras-ckpt (no record names it, Keras's "
        f"own ModelCheckpoint perhaps); kept as {os.path.join(manager.directory, new)} so that "
        "this run can write there.",
        stacklevel=4,
    )
