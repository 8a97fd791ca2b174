"""The resume protocol other code sees: stateful callbacks, and what a running `fit` is doing.

`CheckpointStateful` is how a callback (or a `PyDataset`) of your own has its state saved in
`BackupAndRestore` backups. `is_replaying`, `is_preempted` and `resumed_from` tell a callback what
`BackupAndRestore` is doing to the running `fit`, so that it can ignore replayed batches, skip the
epoch end of an epoch a signal cut short, or continue the run it resumes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CheckpointStateful",
    "is_preempted",
    "is_replaying",
    "mark_preempted",
    "mark_resumed",
    "resumed_from",
    "set_replaying",
]

_REPLAY_FLAG = "_keras_ckpt_replaying"
_PREEMPTED_FLAG = "_keras_ckpt_preempted"
_RESUMED_FLAG = "_keras_ckpt_resumed_from"


@runtime_checkable
class CheckpointStateful(Protocol):
    """A callback (or `PyDataset`) whose state is saved in backups and restored on resume.

    `get_checkpoint_state` returns JSON-serialisable data. `set_checkpoint_state` receives it back
    in a resumed run: for a callback, when `BackupAndRestore.on_epoch_begin` of the resumed epoch
    runs (after every `on_train_begin`, so a callback that resets itself there is not undone); for
    a `PyDataset` given to `fit`, at the same moment, as it was when the interrupted epoch began.

    Example:

    >>> import keras
    >>> class CountEpochs(keras.callbacks.Callback):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.seen = 0
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         self.seen += 1
    ...     def get_checkpoint_state(self):
    ...         return {"seen": self.seen}
    ...     def set_checkpoint_state(self, state):
    ...         self.seen = state["seen"]
    >>> isinstance(CountEpochs(), CheckpointStateful)
    True

    `examples/custom_callback_resume.py` runs such a callback through a real SIGTERM and resume.
    """

    def get_checkpoint_state(self) -> dict[str, Any]: ...

    def set_checkpoint_state(self, state: dict[str, Any]) -> None: ...


def mark_preempted(model: Any, preempted: bool) -> None:
    """Records that a signal stopped this `fit` mid-epoch (the epoch end that follows is not
    real)."""
    setattr(model, _PREEMPTED_FLAG, preempted)


def is_preempted(model: Any) -> bool:
    """True after `BackupAndRestore` stopped `fit` on SIGTERM/SIGINT, until the next `fit`.

    Keras still runs validation and `on_epoch_end` for the cut-short epoch; callbacks that save
    at epoch ends should skip it, since the resumed run will finish that epoch for real.

    Example:

    >>> import keras
    >>> is_preempted(keras.Sequential())
    False
    """
    return bool(getattr(model, _PREEMPTED_FLAG, False))


def mark_resumed(model: Any, backup: str | None) -> None:
    """Records that `BackupAndRestore` restored backup `backup` in the running `fit` (None: not)."""
    setattr(model, _RESUMED_FLAG, backup)


def resumed_from(model: Any) -> str | None:
    """The backup `BackupAndRestore` resumed the running `fit` from, or None for a fresh start.

    Other callbacks read it from their first `on_epoch_begin` on (every `on_train_begin` has run
    by then): `keras_ckpt.ModelCheckpoint` continues the run it resumes instead of starting anew.

    Example:

    >>> import keras
    >>> resumed_from(keras.Sequential()) is None
    True
    """
    return getattr(model, _RESUMED_FLAG, None)


def is_replaying(model: Any) -> bool:
    """True while a resumed `fit` replays the input of batches trained before the interruption.

    Batch hooks still run for those steps (Keras has no way to skip them); callbacks that count or
    save on batches must ignore them.

    Example:

    >>> import keras
    >>> class CountSteps(keras.callbacks.Callback):
    ...     steps = 0
    ...     def on_train_batch_end(self, batch, logs=None):
    ...         if not is_replaying(self.model):  # a step trained now, not one re-read
    ...             self.steps += 1
    >>> is_replaying(keras.Sequential())
    False
    """
    return bool(getattr(model, _REPLAY_FLAG, False))


def set_replaying(model: Any, replaying: bool) -> None:
    """Records whether the running `fit` replays input instead of training (see `is_replaying`)."""
    setattr(model, _REPLAY_FLAG, replaying)
