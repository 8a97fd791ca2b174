"""Lines for the user, printed on the training thread in the order training reached them.

A background save finishes on the writer thread, at a moment that has nothing to do with what
training prints (Keras's progress bar, the next epoch's header). Its line waits here until the
callback's next hook on the training thread prints it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keras_ckpt.training.pipeline import Saved

__all__ = ["Announcements"]


class Announcements:
    """Lines queued from any thread and printed by `flush` on the training thread.

    Example:

    >>> lines = Announcements()
    >>> lines.add("saved m-1.keras")  # on the writer thread, say
    >>> lines.flush()
    saved m-1.keras
    >>> lines.flush()  # printed once
    """

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def saved(self, saved: Saved, when: str, display: str) -> None:
        """The lines of a committed `ModelCheckpoint` save, as Keras words them (`when`:
        "Epoch 3"): where it went, and what retention removed after it."""
        self.add(f"\n{when}: finished saving model to {display}")
        if saved.pruned is not None and saved.pruned.deleted:
            names = ", ".join(r.name for r in saved.pruned.deleted)
            self.add(f"{when}: retention removed {names}")

    def flush(self) -> None:
        """Prints the lines queued so far, oldest first."""
        with self._lock:
            lines, self._lines = self._lines, []
        for line in lines:
            print(line, flush=True)


def position(epoch: int, step: int, global_step: int) -> str:
    """Where training stood at a checkpoint, in the terms of Keras's progress bar (1-based
    epochs): inside an epoch, or at its end.

    Example:

    >>> position(1, 3, 13)
    'in epoch 2 after step 3 (global step 13)'
    >>> position(2, 0, 20)
    'after epoch 2 (global step 20)'
    """
    at = f"in epoch {epoch + 1} after step {step}" if step else f"after epoch {epoch}"
    return f"{at} (global step {global_step})"


def replaced_line(replaced: list[tuple[str, float, float]]) -> str:
    """What a resume put back over what the script set: `(name, script's, restored)` each.

    Example:

    >>> replaced_line([("learning_rate", 0.01, 0.001)])
    "the backup's optimizer settings replace this script's: learning_rate 0.01 -> 0.001"
    """
    values = ", ".join(f"{name} {old:g} -> {new:g}" for name, old, new in replaced)
    return f"the backup's optimizer settings replace this script's: {values}"
