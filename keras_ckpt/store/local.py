"""A checkpoint directory on a local (POSIX) disk: `LocalStorage`, and its `flock` writer lock.

Files are published by "stage, then rename": writers put complete, fsynced files into a staging
folder inside the directory, and `publish` moves each one into place with `os.replace` (never across
file systems), then fsyncs the folders that changed, and the parent of every folder it created.
Records are written the same way (`write_atomic`).

Nothing is written, truncated or deleted through a symbolic link below the directory: every path
is walked one folder at a time with `O_NOFOLLOW`, and a link met on the way is reported, not
followed. The directory itself may be reached through a link (the user chose that path).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import IO

from keras_ckpt.errors import DirectoryLockedError, LockLostError, UnsafeDirectoryError
from keras_ckpt.records import META_DIR
from keras_ckpt.store.base import SealedFile, Storage, checksum_stream
from keras_ckpt.store.locks import HeldLock

__all__ = [
    "META_DIR",
    "LocalStorage",
    "SealedFile",
    "Storage",
    "atomic_local_file",
    "cannot_write",
    "file_in_the_way",
    "open_regular",
    "seal_file",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def seal_file(path: str | os.PathLike[str], *, sync: bool = True) -> SealedFile:
    """Checksums a local file and, with `sync`, flushes it to disk in the same pass."""
    with open(path, "rb", buffering=0) as f:
        size, checksum = checksum_stream(f.read)
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


def open_regular(path: str) -> IO[bytes]:
    """Opens a file for reading, refusing anything but a regular file: a FIFO or a device put in
    place of a checkpoint file (or of a record) would block a reader or never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def file_in_the_way(path: str | os.PathLike[str]) -> str | None:
    """The nearest existing one of local `path` and its parents, if it is not a folder (then no
    directory can be created at `path`); None otherwise.

    Example:

    >>> import os, tempfile
    >>> file = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> _ = open(file, "w").write("x")
    >>> file_in_the_way(os.path.join(file, "runs")) == file
    True
    """
    existing = os.path.abspath(os.fspath(path))
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    return None if os.path.isdir(existing) else existing


# File systems that hold no files of ours: the kernel's views (`/proc`, `/sys`, ...).
_VIRTUAL_FILE_SYSTEMS = frozenset(
    {"proc", "sysfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "debugfs", "tracefs",
     "securityfs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "binfmt_misc"}
)  # fmt: skip


def cannot_write(path: str | os.PathLike[str]) -> str | None:
    """Why keras-ckpt could not create its folders under local `path` (None: as far as can be
    told without writing, it can).

    Looks at the nearest existing one of `path/.keras_ckpt` and its parents, and changes nothing:
    a virtual file system (`/proc`, `/sys`: no new entries, even for root), a read-only mount, or
    no write permission. A file in the way, or a `.keras_ckpt` that is a link, is left to the
    checks that name them.

    Example:

    >>> cannot_write("/proc/runs")
    '/proc is on a virtual file system (proc) that takes no new folders'
    """
    meta = existing = os.path.join(os.path.abspath(os.fspath(path)), META_DIR)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if (existing == meta and os.path.islink(meta)) or not os.path.isdir(existing):
        return None  # a link or a file in the way: the checks that name them say so
    kind = _file_system_type(existing)
    if kind in _VIRTUAL_FILE_SYSTEMS:
        return f"{existing} is on a virtual file system ({kind}) that takes no new folders"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to create folders in {existing}"
    return None


def _file_system_type(path: str) -> str | None:
    """The type of the file system `path` is on, from `/proc/self/mountinfo` (None elsewhere)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    real, best, kind = os.path.realpath(path), "", None
    for line in mounts:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, rest.split()[0]
    return kind


def _make_root(root: str) -> None:
    """Creates the checkpoint directory `root` if needed; a file in the way is named."""
    try:
        os.makedirs(root, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = file_in_the_way(root) or root
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"Cannot create the checkpoint directory {root}: a file is in the way (move it away "
            "or choose another path)",
            blocker,
        ) from None
    except OSError as e:
        reason = f"Cannot create the checkpoint directory: {e.strerror or e}"
        raise type(e)(e.errno, reason, e.filename or root) from None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LinkInPath(Exception):
    """A folder on the way to a path is a symbolic link (`relpath` names it)."""

    def __init__(self, relpath: str):
        super().__init__(relpath)
        self.relpath = relpath


class _Folders:
    """The open folders from the root down to one folder, each opened without following links."""

    def __init__(self, root: str, parts: list[str], *, create: bool):
        if create:
            _make_root(root)  # writers check first that their lock still exists
        self.root = root
        self.fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        try:
            for i, part in enumerate(parts):
                self.fds.append(self._open(part, "/".join(parts[: i + 1]), create))
        except BaseException:
            self.close()
            raise

    def _open(self, part: str, relpath: str, create: bool) -> int:
        try:
            return self._open_once(part, relpath, create)
        except (_LinkInPath, NotADirectoryError):
            raise
        except OSError as e:  # the bare error names only `part`, or nothing (`dir_fd`)
            if isinstance(e, FileNotFoundError) and not create:
                raise  # callers that only read take a missing folder for an empty one
            full = os.path.join(self.root, *relpath.split("/"))
            reason = e.strerror or str(e)
            if create:
                reason += ": keras-ckpt cannot create or open its folder"
            raise type(e)(e.errno, reason, full) from None

    def _open_once(self, part: str, relpath: str, create: bool) -> int:
        parent = self.fds[-1]
        for _ in range(3):
            try:
                return os.open(part, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=parent)
                    os.fsync(parent)  # the new folder survives a power loss with its contents
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if stat.S_ISLNK(os.lstat(part, dir_fd=parent).st_mode):
                    raise _LinkInPath(relpath) from None
                if e.errno == errno.ENOTDIR:  # say which: the bare error names only `part`
                    raise NotADirectoryError(
                        errno.ENOTDIR,
                        "Not a folder, where keras-ckpt needs one (move it away)",
                        os.path.join(self.root, *relpath.split("/")),
                    ) from None
                raise
        raise FileNotFoundError(errno.ENOENT, "folder keeps vanishing", relpath)

    @property
    def last(self) -> int:
        return self.fds[-1]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> _Folders:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _parts(reldir: str) -> list[str]:
    return [p for p in reldir.split("/") if p not in ("", ".")]


class LocalStorage(Storage):
    """A directory on a local (POSIX) file system."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.path.abspath(os.fspath(root))
        self.url = os.path.realpath(self.root)  # one directory reached by two paths is one url

    def _abs(self, relpath: str) -> str:
        return os.path.join(self.root, *relpath.split("/"))

    def _unsafe(self, relpath: str) -> UnsafeDirectoryError:
        return UnsafeDirectoryError(
            f"{self._abs(relpath)} is a symbolic link. keras-ckpt never writes through a link it "
            "did not create; replace the link with a real folder (or file), or choose another "
            "directory."
        )

    # ----------------------------------------------------------------- reading

    def exists(self, relpath: str) -> bool:
        return os.path.lexists(self._abs(relpath))

    def list_files(self, reldir: str) -> list[str]:
        try:
            with _Folders(self.root, _parts(reldir), create=False) as folders:
                with os.scandir(folders.last) as entries:
                    return [e.name for e in entries if e.is_file(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError, _LinkInPath):
            return []

    def read_bytes(self, relpath: str) -> bytes:
        with open_regular(self._abs(relpath)) as f:
            return f.read()

    def seal(self, relpath: str) -> SealedFile:
        with open_regular(self._abs(relpath)) as f:
            size, checksum = checksum_stream(f.read)
        return SealedFile(size=size, checksum=checksum)

    @contextlib.contextmanager
    def local_path(self, relpath: str) -> Iterator[str]:
        yield self._abs(relpath)

    # ----------------------------------------------------------------- writing

    def write_atomic(self, relpath: str, data: bytes) -> None:
        *folder, name = relpath.split("/")
        try:
            folders = _Folders(self.root, folder, create=True)
        except _LinkInPath as e:
            raise self._unsafe(e.relpath) from None
        with folders:
            tmp = f".tmp-{uuid.uuid4().hex}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o666, dir_fd=folders.last)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, name, src_dir_fd=folders.last, dst_dir_fd=folders.last)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=folders.last)
                raise
            os.fsync(folders.last)

    def append(self, relpath: str, data: bytes) -> None:
        final = self._abs(relpath)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        # Never through a link: a log replaced by a symlink would make us append to its target.
        fd = os.open(final, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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
        by_folder: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for relpath, source in staged.items():
            *folder, name = relpath.split("/")
            by_folder.setdefault(tuple(folder), []).append((name, os.fspath(source)))
        for parts, moves in by_folder.items():
            try:
                folders = _Folders(self.root, list(parts), create=True)
            except _LinkInPath as e:
                raise self._unsafe(e.relpath) from None
            with folders:
                for name, source in moves:
                    os.replace(source, name, dst_dir_fd=folders.last)
                os.fsync(folders.last)

    def remove(self, relpath: str) -> str | None:
        *folder, name = relpath.split("/")
        try:
            folders = _Folders(self.root, folder, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except _LinkInPath as e:
            return e.relpath
        with folders:
            try:
                os.unlink(name, dir_fd=folders.last)  # a link goes as a link; its target stays
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                return None  # a folder where a file was recorded: not ours to remove
            changed = len(folder)
            while changed > 0:
                try:
                    os.rmdir(folder[changed - 1], dir_fd=folders.fds[changed - 1])
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        break
                    raise
                changed -= 1
            os.fsync(folders.fds[changed])
        return None

    def move_aside(self, relpath: str, names: Iterable[str]) -> str:
        """Renames a file to the first of `names` (same folder) that is free; returns it.

        `os.link` fails if the new name exists, so nothing is overwritten even if another
        process races us; the old name is unlinked only once the new one holds the file. A
        symbolic link on the way is refused.

        Raises:
            FileExistsError: every name is taken.
        """
        *folder, name = relpath.split("/")
        try:
            folders = _Folders(self.root, folder, create=False)
        except _LinkInPath as e:
            raise self._unsafe(e.relpath) from None
        with folders:
            for new in names:
                try:
                    os.link(
                        name,
                        new,
                        src_dir_fd=folders.last,
                        dst_dir_fd=folders.last,
                        follow_symlinks=False,
                    )
                except FileExistsError:
                    continue
                os.unlink(name, dir_fd=folders.last)
                os.fsync(folders.last)
                return "/".join([*folder, new])
        raise FileExistsError(f"No free name beside {self._abs(relpath)}")

    def remove_if_only_bookkeeping(self, bookkeeping: Iterable[str]) -> bool:
        """Removes the directory if it holds only `.keras_ckpt/` with the `bookkeeping` files
        named (relative to it) and empty folders; True if it did. Only `rmdir` and `unlink` of
        those names: a file that appears meanwhile makes it stop, and nothing else goes.

        Call it with the writer lock held (the lock file may be among `bookkeeping`).
        """
        ours = set(bookkeeping)
        try:
            with _Folders(self.root, [], create=False) as root:
                if os.listdir(root.last) != [META_DIR]:
                    return False
            with _Folders(self.root, [META_DIR], create=False) as meta:
                empty: list[str] = []
                for entry in os.scandir(meta.last):
                    if entry.is_dir(follow_symlinks=False):
                        if os.listdir(os.path.join(self.root, META_DIR, entry.name)):
                            return False
                        empty.append(entry.name)
                    elif entry.name not in ours:
                        return False
                for name in empty:
                    os.rmdir(name, dir_fd=meta.last)
                for name in ours:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=meta.last)
            os.rmdir(self._abs(META_DIR))
            os.rmdir(self.root)
        except (OSError, _LinkInPath):
            return False  # something else is there now (or a link): leave the rest
        return True

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        try:
            folders = _Folders(self.root, [META_DIR, "staging"], create=True)
        except _LinkInPath as e:
            raise self._unsafe(e.relpath) from None
        name = uuid.uuid4().hex
        with folders:
            os.mkdir(name, dir_fd=folders.last)
        folder = os.path.join(self.root, META_DIR, "staging", name)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def clear_staging(self) -> None:
        try:
            folders = _Folders(self.root, [META_DIR], create=False)
        except (FileNotFoundError, NotADirectoryError, _LinkInPath):
            return
        with folders:
            for own in ("staging", "pending"):  # the library's own folders: a link there is no data
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISLNK(os.lstat(own, dir_fd=folders.last).st_mode):
                        target = os.readlink(own, dir_fd=folders.last)
                        os.unlink(own, dir_fd=folders.last)
                        warnings.warn(
                            f"Removed the symbolic link {self._abs(f'{META_DIR}/{own}')} -> "
                            f"{target} (left untouched): keras-ckpt keeps its own folder there.",
                            stacklevel=4,
                        )
        shutil.rmtree(self._abs(f"{META_DIR}/staging"), ignore_errors=True)
        for reldir in (META_DIR, f"{META_DIR}/pending"):  # temp files of interrupted write_atomic
            for name in self.list_files(reldir):
                if name.startswith(".tmp-"):
                    self.remove(f"{reldir}/{name}")

    def lock(self) -> HeldLock:
        _make_root(self.root)
        try:
            folders = _Folders(self.root, [META_DIR], create=True)
        except _LinkInPath as e:
            raise self._unsafe(e.relpath) from None
        path = self._abs(f"{META_DIR}/lock")
        with folders:
            try:
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open("lock", flags, 0o644, dir_fd=folders.last)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise self._unsafe(f"{META_DIR}/lock") from None
                if e.errno != errno.EISDIR:  # a read-only mount, say: name the file, not 'lock'
                    raise type(e)(
                        e.errno,
                        f"{e.strerror or e}: keras-ckpt cannot take the writer lock of {self.root}",
                        path,
                    ) from None
                fd = None
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd is not None:
                os.close(fd)
            raise UnsafeDirectoryError(
                f"{path} is not a regular file. keras-ckpt keeps its writer lock there; remove it."
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DirectoryLockedError(
                f"{self.root} is being written by {holder}. Two writers on one checkpoint "
                "directory would corrupt each other's retention; give each run its own directory "
                "or stop the other process."
            ) from None
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except BaseException:
            os.close(fd)  # a disk fault here must not leave the directory locked by nobody
            raise
        return _FileLock(fd, path)


class _FileLock(HeldLock):
    """A `flock` on `.keras_ckpt/lock`. The kernel drops it when its holder dies: never stale."""

    def __init__(self, fd: int, path: str):
        self._fd = fd
        self._path = path
        self._lost: str | None = None

    def check(self) -> None:
        if self._lost is None:
            try:
                now = os.stat(self._path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            held = os.fstat(self._fd)
            if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                self._lost = (
                    f"{self._path} was deleted or replaced while this process held it (was the "
                    "directory removed?), so another process may now write there"
                )
        if self._lost is not None:
            raise LockLostError(
                f"Lost the writer lock: {self._lost}. Nothing more is written through this "
                "manager; open a new CheckpointManager to write again."
            )

    def forget(self) -> None:
        if not self._released:
            self._released = True
            os.close(self._fd)  # the parent's descriptor keeps the flock
            self._lost = "this process is a fork of the writer that holds it"

    def _release(self) -> None:
        try:
            if self._lost is None:
                os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the last descriptor drops the flock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"process {info['pid']} on host {info['host']} (since {since})"
    except (ValueError, KeyError, TypeError):
        return "another process"
