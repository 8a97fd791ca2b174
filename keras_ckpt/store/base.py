"""What a checkpoint directory's storage offers, whatever holds it.

`Storage` is the interface the journal writes through: `local.LocalStorage` for a local disk,
`remote.FsspecStorage` for URLs (object stores). Both checksum files the same way
(`checksum_stream`), and neither imports the other: `keras_ckpt.store.storage_for` chooses.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import google_crc32c

from keras_ckpt.store.locks import HeldLock

__all__ = ["CHECKSUM_ALGORITHM", "SealedFile", "Storage", "checksum_stream"]

_CHUNK = 8 * 1024 * 1024
CHECKSUM_ALGORITHM = "crc32c"


@dataclass(frozen=True)
class SealedFile:
    """Size and checksum of a file whose bytes are durable on disk."""

    size: int
    checksum: str


def checksum_stream(read: Callable[[int], bytes]) -> tuple[int, str]:
    """(size, `"crc32c:<hex>"`) of everything `read(n)` returns until it returns nothing."""
    crc = google_crc32c.Checksum()
    size = 0
    while chunk := read(_CHUNK):
        crc.update(chunk)
        size += len(chunk)
    return size, f"{CHECKSUM_ALGORITHM}:{crc.digest().hex()}"


class Storage(ABC):
    """The file operations the journal needs, relative to one checkpoint directory.

    Writing methods never follow a symbolic link below the directory: they refuse, or (`remove`)
    leave the link's target alone and report the link.
    """

    url: str  # names the directory; managers of one url in a process share one writer session

    @abstractmethod
    def exists(self, relpath: str) -> bool: ...

    @abstractmethod
    def list_files(self, reldir: str) -> list[str]:
        """Names of the regular files directly in `reldir`; empty if it does not exist."""

    @abstractmethod
    def read_bytes(self, relpath: str) -> bytes: ...

    @abstractmethod
    def seal(self, relpath: str) -> SealedFile:
        """Size and checksum of a stored file, read back from storage."""

    @abstractmethod
    def write_atomic(self, relpath: str, data: bytes) -> None:
        """Writes small data (a record): readers see the old or the new bytes, never a mix."""

    @abstractmethod
    def append(self, relpath: str, data: bytes) -> None:
        """Appends `data` (whole lines) to an append-only log, durably.

        If an earlier append was cut short (the log does not end with a newline), a newline is
        written first so the torn line stays alone and the new one parses.
        """

    @abstractmethod
    def read_log(self, relpath: str) -> bytes:
        """Everything `append` wrote to `relpath`, in order; empty if nothing was."""

    @abstractmethod
    def publish(self, staged: Mapping[str, str]) -> None:
        """Makes each staged local file visible at its final path, durably. Keys are relpaths."""

    @abstractmethod
    def remove(self, relpath: str) -> str | None:
        """Removes a file (missing is fine) and the folders it leaves empty below the root.

        Returns the relpath of a symbolic link met on the way (nothing is removed through it), or
        None.
        """

    @abstractmethod
    def staging(self) -> contextlib.AbstractContextManager[str]:
        """A new, empty local folder to write files into before `publish`; removed on exit."""

    @abstractmethod
    def clear_staging(self) -> None:
        """Removes what crashed writers left in the staging area (only the library writes there)."""

    @abstractmethod
    def local_path(self, relpath: str) -> contextlib.AbstractContextManager[str]:
        """A local path holding the file's bytes, for Keras to read."""

    @abstractmethod
    def lock(self) -> HeldLock:
        """Takes the writer lock of the directory or raises `DirectoryLockedError`."""
