"""File operations of one checkpoint directory: the only module that touches files.

The commit protocol is "stage, then publish": writers put complete files into a local staging
folder, `publish` makes each one visible at its final path in one step, and the record is written
last. On a local disk a staged file is fsynced and moved with `os.replace` (the staging folder lives
inside the checkpoint directory, so the move never crosses file systems), then the folder is fsynced.
A store without rename (an object store) implements `publish` as an upload of whole objects, which is
also all-or-nothing per file; the record, uploaded last, is what makes the checkpoint exist.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO

import google_crc32c

from keras_ckpt.errors import DirectoryLockedError
from keras_ckpt.records import META_DIR

__all__ = [
    "META_DIR",
    "Storage",
    "LocalStorage",
    "SealedFile",
    "seal_file",
    "storage_for",
]

_CHUNK = 8 * 1024 * 1024
CHECKSUM_ALGORITHM = "crc32c"


@dataclass(frozen=True)
class SealedFile:
    """Size and checksum of a file whose bytes are durable on disk."""

    size: int
    checksum: str


def _checksum_stream(read) -> tuple[int, str]:
    crc = google_crc32c.Checksum()
    size = 0
    while chunk := read(_CHUNK):
        crc.update(chunk)
        size += len(chunk)
    return size, f"{CHECKSUM_ALGORITHM}:{crc.digest().hex()}"


def seal_file(path: str | os.PathLike[str], *, sync: bool = True) -> SealedFile:
    """Checksums a local file and, with `sync`, flushes it to disk in the same pass."""
    with open(path, "rb", buffering=0) as f:
        size, checksum = _checksum_stream(f.read)
        if sync:
            os.fsync(f.fileno())
    return SealedFile(size=size, checksum=checksum)


@contextlib.contextmanager
def atomic_local_file(path: str) -> Iterator[IO[bytes]]:
    """A file that appears at local `path` complete and durable, or not at all.

    Written beside `path` under a temporary name, fsynced, renamed over `path`, and the folder
    fsynced; on any error the temporary file is removed and `path` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage(ABC):
    """The file operations the manager needs, relative to one checkpoint directory."""

    url: str  # names the directory; managers of one url in a process share one writer state

    @abstractmethod
    def exists(self, relpath: str) -> bool: ...

    @abstractmethod
    def list_files(self, reldir: str) -> list[str]:
        """Names of the files directly in `reldir`; empty if it does not exist."""

    @abstractmethod
    def read_bytes(self, relpath: str) -> bytes: ...

    @abstractmethod
    def seal(self, relpath: str) -> SealedFile:
        """Size and checksum of a stored file, read back from storage."""

    @abstractmethod
    def write_atomic(self, relpath: str, data: bytes) -> None:
        """Writes small data (a record) so that readers see the old or the new bytes, never a mix."""

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
    def remove(self, relpath: str) -> None:
        """Removes a file (missing is fine) and the folders it leaves empty below the root."""

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
    def lock(self) -> DirectoryLockHandle:
        """Takes the writer lock of the directory or raises `DirectoryLockedError`."""


class DirectoryLockHandle(ABC):
    """A held writer lock; `release` gives it back once, later calls do nothing."""

    _released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    @abstractmethod
    def _release(self) -> None: ...


class LocalStorage(Storage):
    """A directory on a local (POSIX) file system."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.path.abspath(os.fspath(root))
        self.url = os.path.realpath(self.root)  # one directory reached by two paths is one url

    def _abs(self, relpath: str) -> str:
        return os.path.join(self.root, *relpath.split("/"))

    def exists(self, relpath: str) -> bool:
        return os.path.exists(self._abs(relpath))

    def list_files(self, reldir: str) -> list[str]:
        try:
            with os.scandir(self._abs(reldir)) as entries:
                return [e.name for e in entries if e.is_file()]
        except FileNotFoundError:
            return []

    def read_bytes(self, relpath: str) -> bytes:
        with open(self._abs(relpath), "rb") as f:
            return f.read()

    def seal(self, relpath: str) -> SealedFile:
        return seal_file(self._abs(relpath), sync=False)

    def write_atomic(self, relpath: str, data: bytes) -> None:
        final = self._abs(relpath)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        with atomic_local_file(final) as f:
            f.write(data)

    def append(self, relpath: str, data: bytes) -> None:
        final = self._abs(relpath)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fd = os.open(final, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            os.write(fd, data)  # O_APPEND: one write lands whole at the end
            os.fsync(fd)
            if size == 0:
                fsync_dir(os.path.dirname(final))
        finally:
            os.close(fd)

    def read_log(self, relpath: str) -> bytes:
        try:
            return self.read_bytes(relpath)
        except FileNotFoundError:
            return b""

    def publish(self, staged: Mapping[str, str]) -> None:
        folders = set()
        for relpath, source in staged.items():
            final = self._abs(relpath)
            folder = os.path.dirname(final)
            os.makedirs(folder, exist_ok=True)
            os.replace(source, final)
            folders.add(folder)
        for folder in folders:
            fsync_dir(folder)

    def remove(self, relpath: str) -> None:
        path = self._abs(relpath)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        folder = os.path.dirname(path)
        while folder != self.root and folder.startswith(self.root + os.sep):
            try:
                os.rmdir(folder)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    break
                raise
            folder = os.path.dirname(folder)
        fsync_dir(folder if os.path.isdir(folder) else self.root)

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        folder = os.path.join(self.root, META_DIR, "staging", uuid.uuid4().hex)
        os.makedirs(folder)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def clear_staging(self) -> None:
        shutil.rmtree(os.path.join(self.root, META_DIR, "staging"), ignore_errors=True)
        for reldir in (META_DIR, f"{META_DIR}/pending"):  # temp files of interrupted write_atomic
            for name in self.list_files(reldir):
                if name.startswith(".tmp-"):
                    self.remove(f"{reldir}/{name}")

    @contextlib.contextmanager
    def local_path(self, relpath: str) -> Iterator[str]:
        yield self._abs(relpath)

    def lock(self) -> DirectoryLockHandle:
        os.makedirs(os.path.join(self.root, META_DIR), exist_ok=True)
        return _FlockRegistry.acquire(os.path.join(self.root, META_DIR, "lock"))


class _FlockHandle(DirectoryLockHandle):
    def __init__(self, path: str):
        self._path = path

    def _release(self) -> None:
        _FlockRegistry.release(self._path)


class _FlockRegistry:
    """`flock` locks shared by every writer of one directory inside this process.

    `flock` belongs to an open file, so a second open in the same process would lock against
    itself; writers in one process (two callbacks on one folder) share one lock by reference count.
    The kernel drops the lock when its holder dies, so a lock is never stale.
    """

    _mutex = threading.Lock()
    _held: dict[str, list[int]] = {}  # realpath -> [fd, count]

    @classmethod
    def acquire(cls, path: str) -> _FlockHandle:
        key = os.path.realpath(path)
        with cls._mutex:
            if key in cls._held:
                cls._held[key][1] += 1
                return _FlockHandle(key)
            fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise DirectoryLockedError(
                    f"{os.path.dirname(os.path.dirname(key))} is being written by {holder}. "
                    "Two writers on one checkpoint directory would corrupt each other's "
                    "retention; give each run its own directory or stop the other process."
                ) from None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            cls._held[key] = [fd, 1]
            return _FlockHandle(key)

    @classmethod
    def release(cls, key: str) -> None:
        with cls._mutex:
            entry = cls._held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del cls._held[key]
                os.ftruncate(entry[0], 0)
                os.close(entry[0])  # closing the last descriptor drops the flock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"process {info['pid']} on host {info['host']} (since {since})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def storage_for(directory: str | os.PathLike[str]) -> Storage:
    """The storage for a local path or an fsspec URL (`s3://...`, `memory://...`)."""
    text = os.fspath(directory)
    if "://" in text and not text.startswith("file://"):
        from keras_ckpt.remote import FsspecStorage  # needs the `remote` extra

        return FsspecStorage(text)
    return LocalStorage(text.removeprefix("file://"))
