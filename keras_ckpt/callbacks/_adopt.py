"""Moving a file keras-ckpt did not write out of the way of a fixed checkpoint name.

The swap from Keras: `best.keras` written by Keras's own ModelCheckpoint sits where ours will write.
It is kept, under a new name beside it; nothing is ever overwritten.
"""

from __future__ import annotations

import os

from keras_ckpt.callbacks._naming import split_extension

__all__ = ["move_aside"]


def move_aside(directory: str, name: str) -> str:
    """Renames `directory/name` to a free name beside it; returns the new name.

    `best.keras` becomes `best.pre-keras-ckpt.keras` (then `-2`, `-3`, ...). `os.link` fails if the
    new name exists, so nothing is overwritten even if another process races us; the old name is
    unlinked only once the new one holds the file. Local directories only.
    """
    stem, ext = split_extension(name)
    for n in range(1, 1000):
        new = f"{stem}.pre-keras-ckpt{'' if n == 1 else f'-{n}'}{ext}"
        try:
            os.link(os.path.join(directory, name), os.path.join(directory, new))
        except FileExistsError:
            continue
        os.unlink(os.path.join(directory, name))
        return new
    raise FileExistsError(f"No free name beside {os.path.join(directory, name)}")
