"""Capture and restore of training state: the one module allowed to touch private Keras attributes.

(Being written: see the BackupAndRestore issue.)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["CheckpointStateful", "is_replaying"]

_REPLAY_FLAG = "_keras_ckpt_replaying"


@runtime_checkable
class CheckpointStateful(Protocol):
    """A callback whose state is saved in backups and restored on resume.

    `get_checkpoint_state` returns JSON-serialisable data; `set_checkpoint_state` receives it back
    in a resumed run, after `on_train_begin` and before the first epoch begins.
    """

    def get_checkpoint_state(self) -> dict[str, Any]: ...

    def set_checkpoint_state(self, state: dict[str, Any]) -> None: ...


def is_replaying(model: Any) -> bool:
    """True while a resumed `fit` replays the input of batches trained before the interruption.

    Batch hooks still run for those steps (Keras has no way to skip them); callbacks that count or
    save on batches must ignore them.
    """
    return bool(getattr(model, _REPLAY_FLAG, False))
