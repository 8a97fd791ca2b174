"""Checkpoint directories on fsspec file systems: object stores (`s3://`, `gs://`) and `memory://`.

Object stores have no rename, so the commit protocol is "upload whole objects, record last":
`staging()` is a local temporary folder, `publish` uploads each staged file to its final key in one
PUT (a reader sees the old object or the new one, never a part), and the manager then writes the
record with `write_atomic`, itself a single PUT. A checkpoint exists only once its record does, so a
reader never loads a half-uploaded checkpoint. Deletion goes the other way: record first, then data.

There is no `flock` on an object store. The writer lock is an object, `.keras_ckpt/lock`, created
with an exclusive write (S3's `If-None-Match: *`), kept fresh by a heartbeat thread, and taken over
once its holder is provably dead or silent for longer than `lock_timeout`. "Provably dead" needs the
holder to be on this very machine: same host name, same boot (`/proc/sys/kernel/random/boot_id`)
and same process namespace, and its pid gone. Equal host names alone (`algo-1`, fixed pod names)
prove nothing, so such a lock is waited out.

The lock is a lease: since others may take it over `lock_timeout` seconds after its last heartbeat,
its holder stops writing at that moment too, by its own clock. A holder that was paused (SIGSTOP, a
suspended VM, a long garbage collection) or cut off from the store for that long finds its lock
lost at its next commit or delete (`LockLostError`), whether or not another process took it over
meanwhile, so two processes never both believe they hold it.

Credentials and endpoints come from the environment, as for any fsspec/boto client
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL_S3`,
`GOOGLE_APPLICATION_CREDENTIALS`, ...), or from `storage_options` passed by the caller; this
module never holds any.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from keras_ckpt._validate import check_seconds, invalid
from keras_ckpt.errors import DirectoryLockedError, LockLostError
from keras_ckpt.records import META_DIR
from keras_ckpt.store.base import SealedFile, Storage, checksum_stream
from keras_ckpt.store.locks import HeldLock

try:
    import fsspec
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "Checkpoint directories given as URLs need fsspec: pip install 'keras-ckpt[remote]' "
        "(fsspec and s3fs, for s3://), or 'keras-ckpt[gcs]' (fsspec and gcsfs, for gs://)"
    ) from e

__all__ = ["FsspecStorage", "install_hint"]

_LOCK = f"{META_DIR}/lock"
# The extra that installs each protocol's file system (others: that file system's own package).
_EXTRAS = {"s3": "remote", "s3a": "remote", "gs": "gcs", "gcs": "gcs"}
# The lock's clock: wall time, compared across processes and hosts (tests replace it).
_clock = time.time


def _now() -> float:
    return _clock()


def install_hint(url: str) -> str:
    """What to install for `url`'s file system.

    Example:

    >>> install_hint("gs://bucket/runs")
    "pip install 'keras-ckpt[gcs]'"
    """
    protocol = url.split("://", 1)[0].lower()
    extra = _EXTRAS.get(protocol)
    if extra is None:
        return f"install the fsspec file system for {protocol}://"
    return f"pip install 'keras-ckpt[{extra}]'"


class FsspecStorage(Storage):
    """A checkpoint directory on any fsspec file system, addressed by URL.

    Args:
        url: The directory, e.g. `"s3://bucket/runs/exp1"`, `"gs://bucket/exp1"`, `"memory://exp1"`.
        lock_timeout: Seconds without a heartbeat after which another process may take the writer
            lock over, and after which its holder stops writing (a lease). Must exceed
            `heartbeat_interval` by a wide margin (network hiccups, clock skew between hosts).
            Defaults to `600.0`.
        heartbeat_interval: Seconds between refreshes of the lock's heartbeat while it is held.
            Defaults to `60.0`.
        clock: Wall clock (seconds since the epoch) for the lock's heartbeats and their age, for
            tests. Defaults to `time.time`.
        **storage_options: Passed to the fsspec file system (e.g. `anon=True`). Credentials
            belong in the environment, not in code.

    Raises:
        ValueError: `url` is not a URL, a duration is not a positive finite number of seconds
            (`nan` and `inf` included), or `heartbeat_interval` is not shorter than
            `lock_timeout`.
    """

    def __init__(
        self,
        url: str,
        *,
        lock_timeout: float = 600.0,
        heartbeat_interval: float = 60.0,
        clock: Callable[[], float] | None = None,
        **storage_options: Any,
    ):
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(
                f"Invalid value for argument `url`. Expected an fsspec URL such as "
                f"'s3://bucket/run'. Received: url={url!r}"
            )
        for arg, value in (
            ("lock_timeout", lock_timeout),
            ("heartbeat_interval", heartbeat_interval),
        ):
            # A nan timeout would never expire (every comparison with it is False): a dead
            # holder's lock would block the directory forever, and a paused one never stop.
            if value is None or check_seconds(arg, value) is None:
                raise invalid(arg, "a positive number of seconds", value)
        if clock is not None and not callable(clock):
            raise invalid("clock", "a function returning seconds since the epoch", clock)
        if heartbeat_interval >= lock_timeout:
            raise ValueError(
                "Invalid value for argument `heartbeat_interval`. Expected it to be shorter than "
                f"`lock_timeout` ({lock_timeout!r}), or every live lock would look stale. "
                f"Received: heartbeat_interval={heartbeat_interval!r}"
            )
        try:
            self.fs, path = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as e:
            raise ImportError(
                f"{url} needs its file system's package ({e}): {install_hint(url)}"
            ) from e
        self.root = path.rstrip("/")
        self.url = url.rstrip("/")
        self.lock_timeout = float(lock_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.clock = clock if clock is not None else _now
        self._lock_key = self.fs.unstrip_protocol(self._full(_LOCK))
        self._last_append = 0

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"

    def _full(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def _forget(self, path: str) -> None:
        # fsspec caches listings per folder; another process may have changed the folder since.
        self.fs.invalidate_cache(path)
        self.fs.invalidate_cache(path.rsplit("/", 1)[0])

    # ----------------------------------------------------------------- reading

    def exists(self, relpath: str) -> bool:
        path = self._full(relpath)
        self._forget(path)
        return bool(self.fs.isfile(path))

    def list_files(self, reldir: str) -> list[str]:
        path = self._full(reldir).rstrip("/")
        self._forget(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "file"]

    def read_bytes(self, relpath: str) -> bytes:
        return bytes(self.fs.cat_file(self._full(relpath)))

    def seal(self, relpath: str) -> SealedFile:
        with self.fs.open(self._full(relpath), "rb") as f:
            size, checksum = checksum_stream(f.read)
        return SealedFile(size=size, checksum=checksum)

    @contextlib.contextmanager
    def local_path(self, relpath: str) -> Iterator[str]:
        # Keras picks the format from the file name, so the download keeps it.
        with tempfile.TemporaryDirectory(prefix="keras_ckpt-") as folder:
            local = os.path.join(folder, relpath.rsplit("/", 1)[-1])
            self.fs.get_file(self._full(relpath), local)
            yield local

    # ----------------------------------------------------------------- writing

    def write_atomic(self, relpath: str, data: bytes) -> None:
        path = self._full(relpath)
        self.fs.pipe_file(path, bytes(data))  # one PUT: the old object or the new one
        self._forget(path)

    def append(self, relpath: str, data: bytes) -> None:
        """Writes `data` as a new object `<relpath>.d/<time>-<random>`.

        Object stores cannot append, and rewriting the whole log at every save would cost time
        and bandwidth that grow with the run (quadratic over it). One small object per append is a
        single PUT, all-or-nothing, and a kill never tears one; `read_log` joins them in name
        order, which is time order: the writer holds the directory's lock and names increase.
        """
        stamp = max(time.time_ns(), self._last_append + 1)
        self._last_append = stamp
        path = self._full(f"{relpath}.d/{stamp:020d}-{uuid.uuid4().hex[:8]}")
        self.fs.pipe_file(path, bytes(data))
        self._forget(path)

    def read_log(self, relpath: str) -> bytes:
        folder = self._full(f"{relpath}.d")
        self._forget(folder + "/x")
        try:
            names = sorted(
                e["name"] for e in self.fs.ls(folder, detail=True) if e["type"] == "file"
            )
        except FileNotFoundError:
            return b""
        if not names:
            return b""
        parts = self.fs.cat(names)  # fetched concurrently where the store allows it
        chunks = (parts[key] for key in sorted(parts))
        return b"".join(c if c.endswith(b"\n") else c + b"\n" for c in chunks)

    def publish(self, staged: Mapping[str, str]) -> None:
        """Uploads each staged file as one whole object.

        If an upload fails, the objects this call created are removed again (best effort) and the
        error is raised, so the manager writes no record and a retry is not refused as a foreign
        file. Objects that existed before (a checkpoint being replaced) cannot be restored; the
        manager's pending record covers that case.
        """
        created = []
        try:
            for relpath, source in staged.items():
                path = self._full(relpath)
                existed = self.exists(relpath)
                self.fs.put_file(os.fspath(source), path)
                self._forget(path)
                if not existed:
                    created.append(path)
        except BaseException:
            for path in created:
                with contextlib.suppress(Exception):
                    self.fs.rm_file(path)
                    self._forget(path)
            raise

    def remove(self, relpath: str) -> str | None:
        """Removes an object. Object stores have no folders to clean up, nor links."""
        path = self._full(relpath)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
        self._forget(path)
        return None

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="keras_ckpt-staging-") as folder:
            yield folder

    def clear_staging(self) -> None:
        """Nothing to do: staging folders are local to the writing process, never in the store."""

    # ----------------------------------------------------------------- locking

    def lock(self) -> HeldLock:
        lock = _ObjectLock(self)
        lock.take()
        return lock


class _ObjectLock(HeldLock):
    """The writer lock object of one directory, held as a lease.

    The object holds JSON `{pid, host, since, heartbeat, token}`. It is created with an exclusive
    write, so of two processes racing for a free lock exactly one wins, on S3 and on servers that
    honour `If-None-Match: *` (MinIO, moto); fsspec file systems without it fall back to
    check-then-write. A stale lock is replaced with a conditional write on S3 (`If-Match` on the
    ETag that was judged stale), elsewhere by delete-then-create; after either, the lock is read
    back and only counts as taken if it holds our token.

    Others may take the lock over `timeout` seconds after the heartbeat it last recorded, so the
    holder counts it lost from the same moment: `check` raises once the last heartbeat that was
    written successfully is older than `timeout`, measured on the wall clock the heartbeats carry
    and on the monotonic clock, whichever says more (a wall clock set back must not extend it).
    A lock lost that way is never renewed: the heartbeat thread stops.
    """

    def __init__(self, storage: FsspecStorage):
        self.fs = storage.fs
        self.path = storage._full(_LOCK)
        self.directory = storage.url
        self.timeout = storage.lock_timeout
        self.interval = storage.heartbeat_interval
        self.clock = storage.clock
        self.conditional = "s3" in _protocols(self.fs)
        self.token = uuid.uuid4().hex
        self.since = self.clock()
        self.etag: str | None = None
        self.lost: str | None = None
        self.taken_over = False
        # When the last heartbeat that reached the store was stamped: (wall, monotonic).
        self._beat = (self.since, time.monotonic())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        if self.lost is None:
            self._expire()
        if self.lost is not None:
            raise LockLostError(
                f"{self.directory} lost its writer lock: {self.lost}. Stopping writes so the two "
                "writers do not corrupt each other's checkpoints."
            )

    def _expire(self) -> bool:
        """Marks the lock lost once its lease ran out; True if it did."""
        wall, monotonic = self._beat
        silent = max(self.clock() - wall, time.monotonic() - monotonic)
        if silent <= self.timeout:
            return False
        self.lost = (
            f"its last heartbeat reached the store {silent:.0f} s ago, more than lock_timeout "
            f"({self.timeout:g} s; this process was paused or could not reach the store), so "
            "another process may have taken it over"
        )
        self._stop.set()
        return True

    def forget(self) -> None:
        self._released = True  # the heartbeat thread did not survive the fork; the parent's does
        self.lost = "this process is a fork of the writer that holds it"
        self.taken_over = True  # not ours to delete: the parent still holds it

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.taken_over:
            # Check-then-delete: a takeover in between (only possible after `timeout` without
            # a heartbeat) would lose its lock here; the taker notices at its next heartbeat.
            # An expired lease that nobody took over is removed too, so no one waits it out.
            with contextlib.suppress(FileNotFoundError):
                if self._read().get("token") == self.token:
                    self.fs.rm_file(self.path)
        self.fs.invalidate_cache(self.path)

    def _body(self, now: float) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "machine": _machine(),
                "since": self.since,
                "heartbeat": now,
                "token": self.token,
            }
        ).encode()

    def _read(self) -> dict[str, Any]:
        self.fs.invalidate_cache(self.path)
        try:
            info = json.loads(self.fs.cat_file(self.path))
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def _put(self, **conditions: Any) -> None:
        stamp = (self.clock(), time.monotonic())  # before the write: the lease counts from here
        result = self.fs.pipe_file(self.path, self._body(stamp[0]), **conditions)
        self.fs.invalidate_cache(self.path)
        self.etag = result.get("ETag") if isinstance(result, dict) else None
        self._beat = stamp

    def take(self) -> None:
        for _ in range(5):
            try:
                self._put(mode="create")
            except FileExistsError:
                pass
            else:
                return self._confirm()
            self.fs.invalidate_cache(self.path)
            try:
                etag = self.fs.info(self.path).get("ETag")
                holder = self._read()
            except FileNotFoundError:
                continue  # released between our write and our read: try again
            now = self.clock()
            stale = _staleness(holder, self.timeout, now)
            if stale is None:
                raise DirectoryLockedError(
                    f"{self.directory} is being written by {_describe(holder, now)}. Two writers "
                    "on one checkpoint directory would corrupt each other's retention; give each "
                    "run its own directory or stop the other process. A lock whose holder died is "
                    f"taken over after {self.timeout:g} s without a heartbeat (at once if it ran "
                    "on this machine)."
                )
            try:
                if self.conditional and etag:
                    self._put(IfMatch=etag)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(self.path)
                    self._put(mode="create")
            except OSError as e:
                if not _is_precondition_failure(e):
                    raise
                continue  # someone else took it over first (or released and re-took it)
            self._confirm()
            warnings.warn(
                f"Took over the writer lock of {self.directory} from {_describe(holder, now)}: "
                f"{stale}.",
                stacklevel=4,
            )
            return None
        raise DirectoryLockedError(
            f"Could not take the writer lock of {self.directory}: other processes keep changing "
            "it. Make sure only one run writes into this directory."
        )

    def _confirm(self) -> None:
        holder = self._read()
        if holder.get("token") != self.token:
            raise DirectoryLockedError(
                f"{self.directory} was locked by {_describe(holder, self.clock())} at the same "
                "moment as this process. Only one run may write into a checkpoint directory."
            )
        self._thread = threading.Thread(
            target=self._beat_until_stopped, name=f"keras_ckpt-lock-{self.directory}", daemon=True
        )
        self._thread.start()

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            if self.lost is not None or self._expire():
                return  # an expired lease is not renewed: others may already count it free
            try:
                if self.conditional and self.etag:
                    self._put(IfMatch=self.etag)
                else:
                    holder = self._read()
                    if holder.get("token") != self.token:
                        raise FileExistsError
                    self._put()
            except Exception as e:
                gone = isinstance(e, FileNotFoundError)  # deleted by someone else
                replaced = isinstance(e, OSError) and _is_precondition_failure(e)
                if gone or replaced:
                    self._mark_lost(e)
                    return
                # Anything else is a hiccup (network, throttling): try again at the next beat.
                # Others see the lock as stale only after `timeout` seconds without a beat, and
                # so does `check`.

    def _mark_lost(self, error: BaseException) -> None:
        self.taken_over = True
        with contextlib.suppress(Exception):
            holder = self._read()
            self.lost = f"taken over by {_describe(holder, self.clock())}"
            return
        self.lost = f"the lock object changed or vanished ({error!r})"


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _is_precondition_failure(error: OSError) -> bool:
    # s3fs raises FileExistsError for a failed If-None-Match, OSError(EINVAL) for If-Match.
    return (
        isinstance(error, FileExistsError)
        or error.errno == errno.EINVAL
        or "precondition" in str(error).lower()
    )


def _staleness(holder: Mapping[str, Any], timeout: float, now: float | None = None) -> str | None:
    """Why the lock `holder` is stale at wall time `now`, or None while it may still be alive."""
    try:
        pid, host, heartbeat = int(holder["pid"]), str(holder["host"]), float(holder["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return "the lock object is not a keras-ckpt lock (unreadable JSON)"
    if not math.isfinite(heartbeat):  # nan would never look old
        return f"the lock object's heartbeat is not a time ({heartbeat!r})"
    machine = _machine()
    if host == socket.gethostname() and machine is not None and holder.get("machine") == machine:
        if pid == os.getpid():
            # This process holds no such lock (it would be in the registry): a previous process
            # with the same pid, e.g. a restarted container, left it.
            return f"process {pid} on this host is a restarted process, not the holder"
        if not _pid_alive(pid):
            return f"process {pid} on this host has exited"
    silent = (time.time() if now is None else now) - heartbeat
    if silent > timeout:
        return f"no heartbeat for {silent:.0f} s (timeout {timeout:g} s)"
    return None


def _machine() -> str | None:
    """This boot of this machine, as seen from this pid namespace; None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: Mapping[str, Any], now: float | None = None) -> str:
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["since"])))
        beat = (time.time() if now is None else now) - float(holder["heartbeat"])
        return (
            f"process {holder['pid']} on host {holder['host']} (since {since}, "
            f"last heartbeat {beat:.0f} s ago)"
        )
    except (KeyError, TypeError, ValueError):
        return "an unknown writer"
