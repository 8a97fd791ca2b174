"""Which format a `fit` saves through: Keras's files, or sharded checkpoints written by Orbax.

A callback is told explicitly (`ModelCheckpoint` with a folder-style `filepath`,
`BackupAndRestore(sharded=True)`), or finds out at `on_train_begin`: a model with a variable split
across processes cannot be written as a Keras file by any process, so it saves sharded checkpoints
instead and says so in one line.
"""

from __future__ import annotations

from typing import Any

from keras_ckpt.format.orbax_dir import OrbaxDir, check_available, process_sharded

__all__ = ["check_sharded", "choose_format"]


def check_sharded(sharded: object) -> bool | None:
    """`sharded` as validated (None, True or False); True needs JAX and orbax-checkpoint now.

    Raises:
        ValueError: not a bool or None.
        ImportError: True, but the JAX backend or orbax-checkpoint is missing.
    """
    if sharded is not None and not isinstance(sharded, bool):
        raise ValueError(
            "Invalid value for argument `sharded`. Expected True (sharded checkpoints written by "
            "Orbax), False (Keras files) or None (sharded only when the model's variables are "
            f"split across processes). Received: sharded={sharded!r}"
        )
    if sharded:
        check_available()
    return sharded


def choose_format(
    sharded: bool | None,
    model: Any,
    *,
    kind: str,
    directory: str,
    tag: str,
    chief: bool,
    who: str,
) -> OrbaxDir | None:
    """The sharded format this `fit` saves through, or None for the callback's Keras files.

    Raises:
        ValueError: `sharded` is False but the model's variables are split across processes.
    """
    if sharded is None or sharded is False:
        if not process_sharded(model):
            return None
        if sharded is False:
            raise ValueError(
                f"{who}: the model's variables are split across processes, so no process holds "
                "them whole and a Keras file cannot be written; use sharded=None or True."
            )
        check_available()
        if chief:
            print(
                f"{who}: the model's variables are split across processes; saving sharded "
                f"checkpoints (one folder each, written by Orbax) into {directory}.",
                flush=True,
            )
    return OrbaxDir(kind, directory=directory, tag=tag, chief=chief)
