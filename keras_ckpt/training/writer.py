"""Runs saves inline or on one background thread, never losing an error.

`run(prepare, write)` calls `prepare()` on the calling (training) thread, the only part that blocks
training, and `write(prepared)` inline or in the background. At most one save is in flight: a new
one first waits for the last, so at most one extra copy of the state exists. An error raised in the
background is raised again on the training thread by the next `run`, `check` or `wait`.
Background threads are not daemons: the interpreter waits for a save under way before it exits.
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Writer", "WriterStats"]


@dataclass
class WriterStats:
    """How often the training thread had to wait for the previous background save."""

    saves: int = 0
    waits: int = 0
    waited_seconds: float = 0.0


class Writer:
    """Inline (`background=False`) or single-thread background execution of saves."""

    _all: weakref.WeakSet[Writer] = weakref.WeakSet()

    def __init__(self, background: bool, name: str = "keras-ckpt-writer"):
        self.background = background
        self.name = name
        self.stats = WriterStats()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        Writer._all.add(self)

    @classmethod
    def settle_all(cls) -> None:
        """Waits for every save in flight in this process, whichever callback started it.

        A `fit` that raised skips `on_train_end` (TensorFlow, PyTorch), so its last save may still
        be running when the next `fit` (a notebook re-run) reads the same directory.
        """
        for writer in list(cls._all):
            thread = writer._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join()

    def run(self, prepare: Callable[[], Any], write: Callable[[Any], None]) -> None:
        self.wait()
        prepared = prepare()
        self.stats.saves += 1
        if not self.background:
            write(prepared)
            return
        self._thread = threading.Thread(
            target=self._work, args=(write, prepared), name=self.name, daemon=False
        )
        self._thread.start()

    def _work(self, write: Callable[[Any], None], prepared: Any) -> None:
        try:
            write(prepared)
        except BaseException as e:  # kept for the training thread, never lost
            with self._error_lock:
                self._error = e
            # Also said at once: if fit has already ended by an exception, no hook will raise it.
            warnings.warn(
                f"keras-ckpt background save failed: {type(e).__name__}: {e} (raised again at "
                "the next batch or epoch end of the callback that started it)",
                RuntimeWarning,
                stacklevel=1,
            )

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Blocks until the save in flight is committed; raises its error, if any."""
        thread = self._thread
        if thread is not None:
            if thread.is_alive():
                start = time.perf_counter()
                thread.join()
                self.stats.waits += 1
                self.stats.waited_seconds += time.perf_counter() - start
            self._thread = None
        self.check()

    def check(self) -> None:
        """Raises the error of a finished background save, once."""
        with self._error_lock:
            error, self._error = self._error, None
        if error is not None:
            raise error
