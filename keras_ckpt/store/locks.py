"""The writer locks this process holds: one registry, shared by every writer of a directory.

A directory has one writer session per process (its lock and what it knows of the records), however
many managers or callbacks write into it: they share it by reference count here, and only here. The
lock itself is taken from the storage (`flock` on a local disk, a heartbeat object on an object
store) and implements `HeldLock`.

A forked child (a data-loader worker started with `use_multiprocessing=True`) inherits the parent's
descriptors, and with them a local `flock` that would outlive a killed parent. After a fork the
child therefore forgets every session: it closes its copies without unlocking (the parent keeps
its lock) and a manager that tries to write from the child gets `LockLostError`.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["HeldLock", "discard", "share", "unshare"]


class HeldLock(ABC):
    """A writer lock this process took; `release` gives it back once, later calls do nothing."""

    _released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    @abstractmethod
    def _release(self) -> None: ...

    @abstractmethod
    def check(self) -> None:
        """Raises `LockLostError` unless the lock is still this process's (called before writes)."""

    @abstractmethod
    def forget(self) -> None:
        """In a forked child: drop this copy without unlocking; later `check` calls raise."""


class _Shared(Protocol):
    def close(self) -> None: ...

    def forget(self) -> None: ...


T = TypeVar("T", bound=_Shared)

_mutex = threading.Lock()
_held: dict[str, list[Any]] = {}  # key -> [value: _Shared, users: int]


def share(key: str, open_: Callable[[], T]) -> T:
    """The value shared under `key`, opened with `open_()` by its first user."""
    with _mutex:
        entry = _held.get(key)
        if entry is None:
            entry = _held[key] = [open_(), 0]
        entry[1] += 1
        return entry[0]  # type: ignore[no-any-return]


def unshare(key: str, value: _Shared) -> None:
    """One user of `key` is done; the last one closes the value (and so releases its lock)."""
    with _mutex:
        entry = _held.get(key)
        if entry is None or entry[0] is not value:
            return  # forgotten after a fork, or already closed
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            entry[0].close()


def discard(key: str, value: _Shared) -> None:
    """Closes a value that went bad (its lock was lost): the next `share` opens a fresh one,
    while the users still holding this one keep getting its errors."""
    with _mutex:
        entry = _held.get(key)
        if entry is not None and entry[0] is value:
            del _held[key]
    value.close()


def _forget_all_in_child() -> None:
    global _mutex
    _mutex = threading.Lock()  # another thread may have held it at the fork
    for value, _users in _held.values():
        value.forget()
    _held.clear()


os.register_at_fork(after_in_child=_forget_all_in_child)
