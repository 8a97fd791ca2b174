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
        """Prints the lines queued so far, oldest first (called at every batch end: with nothing
        queued it takes no lock; a line queued meanwhile is printed at the next call)."""
        if not self._lines:
            return
        with self._lock:
            lines, self._lines = self._lines, []
        for line in lines:
            print(line, flush=True)


def replaced_line(replaced: list[tuple[str, float, float]]) -> str:
    """What a resume put back over what the script set: `(name, script's, restored)` each.

    Example:

    >>> replaced_line([("learning_rate", 0.01, 0.001)])
    "the backup's optimizer settings replace this script's: learning_rate 0.01 -> 0.001"
    """
    values = ", ".join(f"{name} {old:g} -> {new:g}" for name, old, new in replaced)
    return f"the backup's optimizer settings replace this script's: {values}"
