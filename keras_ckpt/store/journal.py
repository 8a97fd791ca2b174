"""The crash journal of one checkpoint directory: commits and deletes that a kill cannot tear.

A checkpoint exists once its record (`.keras_ckpt/<name>.json`) exists. Every change announces
itself first in a pending record (`.keras_ckpt/pending/<name>.json`), so whoever finds it after a
crash knows what was under way:

    commit   begin (pending record)  -> publish (files into place) -> finish (record; pending gone)
    delete   begin (pending copy)     -> record removed -> files removed -> pending gone

One rule, `decide`, settles a name that has a pending record: the pending version if all its files
are in place, else the committed record if all of its files are, else nothing. A reader applies it
in memory (`settle`), the next writer makes it durable (`recover`), so every process of a
multi-worker job resolves the same newest checkpoint. Recovery deletes only files whose bytes match
the record that announced them: a file placed by a user at such a path is not ours.

Writers of one directory in a process share one session (the lock and the known records) through
`locks`; before each change the lock is checked to be still ours (`LockLostError` otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from keras_ckpt.errors import (
    CheckpointNotFoundError,
    ForeignFileError,
    LockLostError,
    RecordFormatError,
)
from keras_ckpt.records import META_DIR, FileEntry, Record, clean_metrics
from keras_ckpt.store import history, locks
from keras_ckpt.store.base import SealedFile, Storage
from keras_ckpt.store.local import seal_file
from keras_ckpt.store.locks import HeldLock

__all__ = ["Journal", "decide", "pending_path", "record_path"]

PENDING_DIR = f"{META_DIR}/pending"
_NAME_MAX = 255  # bytes in one file name on common file systems


_HASHED = re.compile(r"~[0-9a-f]{16}\.json\Z")


def _file_name(name: str) -> str:
    """`<name>.json`, or for names too long for that a shorter one that still says which.

    A short name that looks like a shortened one (`...~<16 hex digits>`) is shortened too, so that
    no name can take another's record file.
    """
    file = f"{name}.json"
    if len(file.encode()) <= _NAME_MAX and not _HASHED.search(file):
        return file
    head = name.encode()[:200].decode("utf-8", "ignore")
    return f"{head}~{hashlib.sha256(name.encode()).hexdigest()[:16]}.json"


def record_path(name: str) -> str:
    """Where the committed record of checkpoint `name` lives, relative to the directory."""
    return f"{META_DIR}/{_file_name(name)}"


def pending_path(name: str) -> str:
    """Where a change to checkpoint `name` is announced while it is under way."""
    return f"{PENDING_DIR}/{_file_name(name)}"


def decide(
    record: Record | None, pending: Record | None, whole: Callable[[Record], bool]
) -> Record | None:
    """What checkpoint a name holds, given its committed record and a pending one (if any).

    The pending version once all its files are in place (its commit only lacked the record, or its
    delete had not removed a file yet); else the committed record if all its files are in place;
    else nothing (a delete half done, or a replacement that left neither version whole).
    """
    if pending is None:
        return record
    if whole(pending):
        return pending
    if record is not None and record != pending and whole(record):
        return record
    return None


@dataclass
class _Session:
    """What the writers of one directory in this process share: the lock and the records.

    It keeps which record names each file and the last sequence number, so a commit costs the same
    with 10 or 10,000 checkpoints in the directory.
    """

    lock: HeldLock
    records: dict[str, Record] = field(default_factory=dict)
    mutex: threading.RLock = field(default_factory=threading.RLock)
    _owners_of: dict[str, set[str]] = field(default_factory=dict)
    _sequence: int = 0

    def put(self, record: Record) -> None:
        self.drop(record.name)
        self.records[record.name] = record
        for entry in record.files:
            self._owners_of.setdefault(entry.path, set()).add(record.name)
        self._sequence = max(self._sequence, record.sequence)

    def drop(self, name: str) -> Record | None:
        record = self.records.pop(name, None)
        if record is not None:
            for entry in record.files:
                owners = self._owners_of.get(entry.path)
                if owners is not None:
                    owners.discard(name)
                    if not owners:
                        del self._owners_of[entry.path]
        return record

    def owners_of(self, path: str) -> set[str]:
        """Names of the records that name file `path` (two hand-edited records may share one)."""
        return set(self._owners_of.get(path, ()))

    def owner_of(self, path: str) -> str | None:
        """Name of a record that names file `path`, if any: the file stays until none does."""
        owners = self._owners_of.get(path)
        return min(owners) if owners else None

    def names_below(self, folder: str) -> bool:
        return any(path.startswith(f"{folder}/") for path in self._owners_of)

    def next_sequence(self) -> int:
        return self._sequence + 1

    def close(self) -> None:
        self.lock.release()

    def forget(self) -> None:
        self.lock.forget()


class Journal:
    """Reads and changes the records of one directory so that a kill leaves nothing half done.

    Args:
        storage: The directory's storage.
        label: How messages name the directory.
    """

    def __init__(self, storage: Storage, label: str):
        self.storage = storage
        self.label = label.rstrip("/") or label
        self.session: _Session | None = None

    # ------------------------------------------------------------- reading (any process)

    def problems(self, record: Record) -> list[str]:
        """What is wrong with a checkpoint's files: missing, wrong size, wrong checksum."""
        problems = []
        for entry in record.files:
            try:
                if not self.storage.exists(entry.path):
                    raise FileNotFoundError(entry.path)
                sealed = self.storage.seal(entry.path)
            except FileNotFoundError:
                problems.append(f"{entry.path}: missing file")
                continue
            except OSError as e:  # a folder or an unreadable file in its place: damage, reported
                problems.append(f"{entry.path}: cannot read it ({e.strerror or e})")
                continue
            if sealed.size != entry.size:
                problems.append(f"{entry.path}: size {sealed.size} bytes, record says {entry.size}")
            elif sealed.checksum != entry.checksum:
                problems.append(
                    f"{entry.path}: checksum mismatch ({sealed.checksum}, "
                    f"record says {entry.checksum})"
                )
        return problems

    def _whole(self, record: Record) -> bool:
        return not self.problems(record)

    def settle(self, record: Record | None, pending: Record | None) -> Record | None:
        """A reader's view of a name with a half-done change: `decide`, as recovery would."""
        return decide(record, pending, self._whole)

    def read(self) -> tuple[list[Record], list[tuple[str, Exception]]]:
        """The checkpoints as a reader sees them (settled), and the records it could not read."""
        records, problems = self._scan()
        by_name = {r.name: r for r in records}
        for name, pending in self._pending().items():
            settled = self.settle(by_name.get(name), pending)
            if settled is None:
                by_name.pop(name, None)
            else:
                by_name[name] = settled
        return list(by_name.values()), problems

    def reread(self, name: str) -> Record | None:
        """Checkpoint `name` as it is now (settled); None if it no longer exists."""
        record, pending = self._load(record_path(name)), self._load(pending_path(name))
        return self.settle(record, pending) if pending is not None else record

    def _load(self, relpath: str) -> Record | None:
        try:
            return Record.from_json(self.storage.read_bytes(relpath), source=relpath)
        except (OSError, RecordFormatError):
            return None

    def _source(self, relpath: str) -> str:
        return f"{self.label}/{relpath}"

    def _scan(self) -> tuple[list[Record], list[tuple[str, Exception]]]:
        records: list[Record] = []
        problems: list[tuple[str, Exception]] = []
        for file_name in self.storage.list_files(META_DIR):
            if not file_name.endswith(".json") or file_name.startswith("."):
                continue
            relpath = f"{META_DIR}/{file_name}"
            source = self._source(relpath)
            try:
                record = Record.from_json(self.storage.read_bytes(relpath), source=source)
                if record_path(record.name) != relpath:
                    raise RecordFormatError(
                        f"Checkpoint record {source} holds checkpoint {record.name!r}; a record "
                        f"must be named after its checkpoint ({_file_name(record.name)})."
                    )
            except FileNotFoundError:
                continue  # deleted since the listing: the checkpoint is gone, not damaged
            except RecordFormatError as e:
                problems.append((source, e))
                continue
            except OSError as e:
                problems.append((source, RecordFormatError(f"Cannot read {source}: {e}")))
                continue
            records.append(record)
        return records, problems

    def _pending(self) -> dict[str, Record]:
        pending = {}
        for file_name in self.storage.list_files(PENDING_DIR):
            record = self._load(f"{PENDING_DIR}/{file_name}")
            if record is not None and pending_path(record.name) == f"{PENDING_DIR}/{file_name}":
                pending[record.name] = record
        return pending

    # ------------------------------------------------------------- writing (the lock holder)

    def open(self) -> _Session:
        """Joins this process's writer session of the directory, taking its lock (and recovering
        what a crashed writer left) if it is the first."""
        if self.session is None:
            session = locks.share(self.storage.url, self._start)
            try:
                session.lock.check()
            except LockLostError:  # a forgotten writer's, whose directory was deleted: start anew
                locks.discard(self.storage.url, session)
                session = locks.share(self.storage.url, self._start)
            self.session = session
        return self.session

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            locks.unshare(self.storage.url, session)

    def _start(self) -> _Session:
        session = _Session(lock=self.storage.lock())
        try:
            self.recover(session)
            self._complete_history(session)
        except BaseException:
            session.close()
            raise
        return session

    def _live(self) -> _Session:
        session = self.open()
        try:
            session.lock.check()
        except BaseException:
            locks.discard(self.storage.url, session)  # a new manager may open the directory anew
            raise
        return session

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        """A fresh local folder for a checkpoint's files, before `commit`."""
        self._live()
        with self.storage.staging() as folder:
            yield folder

    def commit(
        self,
        files: Mapping[str, str],
        *,
        sealed: Mapping[str, SealedFile],
        name: str,
        metrics: Mapping[str, Any] | None,
        **fields: Any,
    ) -> Record:
        """Makes staged `files` a checkpoint (seal, begin, publish, finish); returns its record."""
        session = self._live()
        with session.mutex:
            previous = session.records.get(name)
            self._check_targets(session, name, files)
            overwritten = [e.path for e in previous.files if e.path in files] if previous else []
            if previous is not None and overwritten and max(len(previous.files), len(files)) > 1:
                raise ValueError(
                    f"Cannot replace checkpoint {name!r} in {self.label} in place: the old "
                    f"version has {len(previous.files)} files and the new one {len(files)}, and a "
                    "kill between their renames would leave neither version whole. Commit it under "
                    "a new name (or new file paths)."
                )
            keras_version, backend = _keras_identity()
            record = Record(
                name=name,
                files=tuple(
                    FileEntry(path, *_seal(source, sealed.get(path)))
                    for path, source in files.items()
                ),
                wall_time=time.time(),
                metrics=clean_metrics(metrics),
                sequence=session.next_sequence(),
                keras_version=keras_version,
                backend=backend,
                **fields,
            )
            record.to_json()  # fails here (unserialisable state), before any file moves
            self.begin(record)
            try:
                self.storage.publish(files)
                self._live()
                self.storage.write_atomic(record_path(record.name), record.to_json().encode())
            except BaseException as e:
                self.abort(record)
                if isinstance(e, OSError):
                    self._live()  # a folder vanished under us: say why (LockLostError) if so
                raise
            self.finish(record, previous)
            return record

    def _check_targets(self, session: _Session, name: str, files: Mapping[str, str]) -> None:
        for relpath in files:
            others = session.owners_of(relpath) - {name}
            holder = min(others) if others else session.owner_of(relpath)
            if holder is not None and holder != name:
                raise ForeignFileError(
                    f"Cannot write {relpath} for checkpoint {name!r}: it belongs to checkpoint "
                    f"{holder!r} in {self.label}."
                )
            if holder is None and self.storage.exists(relpath):
                raise ForeignFileError(
                    f"Refusing to overwrite {self.label}/{relpath}: keras-ckpt did not write it "
                    "(no record names it). Move it away or choose another filepath."
                )

    def begin(self, record: Record) -> None:
        """Announces a change: if this process dies now, the next writer settles it."""
        self.storage.write_atomic(pending_path(record.name), record.to_json().encode())

    def finish(self, record: Record, previous: Record | None) -> None:
        """The record is written: forget the pending one and the replaced files."""
        session = self.open()
        session.put(record)
        if previous is not None:
            self._remove_unnamed(session, previous.files)
        self.storage.remove(pending_path(record.name))
        self.committed(record)

    def committed(self, record: Record) -> None:
        """Logs a final, settled commit in the run history."""
        self.storage.append(history.HISTORY_PATH, history.encode_save(record))

    def abort(self, record: Record) -> None:
        """Best effort after a failed commit: removes the files it placed where none was before.

        If it had begun to overwrite the files of a checkpoint of the same name, its pending record
        stays, and the next writer to open the directory settles it.
        """
        session = self.open()
        with contextlib.suppress(OSError):
            self._remove_unnamed(session, record.files, links=False)
            if not any(session.owner_of(f.path) is not None for f in record.files):
                self.storage.remove(pending_path(record.name))

    def delete(self, name: str, *, reason: str | None = None) -> Record:
        """Deletes one checkpoint: its record first, then its files (announced, like a commit)."""
        session = self._live()
        with session.mutex:
            record = session.records.get(name)
            if record is None:
                raise CheckpointNotFoundError(f"No checkpoint named {name!r} in {self.label}")
            self.begin(record)
            self.storage.remove(record_path(name))
            session.drop(name)
            try:
                self._remove_unnamed(session, record.files)
            except OSError:
                self._undelete(record)
                raise
            self.storage.remove(pending_path(name))
            self.deleted(record, reason)
            return record

    def _undelete(self, record: Record) -> None:
        """Commits `record` again after its files could not all be removed (a file made
        immutable, a read-only mount): the checkpoint stays listed, so the next prune retries,
        and a file removed already is reported missing meanwhile. Best effort: if even this
        fails, the pending copy left behind restores it at the next writer's recovery."""
        session = self.open()
        with contextlib.suppress(OSError):
            self.storage.write_atomic(record_path(record.name), record.to_json().encode())
            session.put(record)
            self.storage.remove(pending_path(record.name))

    def deleted(self, record: Record, reason: str | None) -> None:
        """Logs a final delete, and why, in the run history."""
        self.storage.append(
            history.HISTORY_PATH,
            history.encode_delete(record.name, record.sequence, time.time(), reason),
        )

    def _complete_history(self, session: _Session) -> None:
        """Logs the saves a killed writer committed but did not get to log (records are the truth).

        Without this a checkpoint whose history line was torn would vanish from the history once
        pruned.
        """
        logged = {
            (e["name"], e.get("sequence"))
            for e in history.parse(self.storage.read_log(history.HISTORY_PATH))
            if e["event"] == "save"
        }
        missing = [r for r in session.records.values() if (r.name, r.sequence) not in logged]
        for record in sorted(missing, key=lambda r: r.sequence):
            self.storage.append(history.HISTORY_PATH, history.encode_save(record))

    def rewrite(self, name: str, owner_state: Mapping[str, Any]) -> Record:
        """Replaces the callback state in the record of an existing checkpoint (files unchanged)."""
        session = self._live()
        with session.mutex:
            if name not in session.records:
                raise CheckpointNotFoundError(f"No checkpoint named {name!r} in {self.label}")
            record = replace(session.records[name], owner_state=dict(owner_state))
            self.storage.write_atomic(record_path(name), record.to_json().encode())
            session.put(record)
            return record

    def _remove_unnamed(
        self,
        session: _Session,
        entries: tuple[FileEntry, ...],
        only_if: Callable[[FileEntry], bool] = lambda entry: True,
        *,
        links: bool = True,
    ) -> None:
        """Removes the files no record names; a symbolic link on the way is removed as a link
        once no record names anything below it, never followed. Without `links` (undoing a commit,
        which never wrote through a link) a link met on the way is left alone."""
        found = set()
        for entry in entries:
            if session.owner_of(entry.path) is None and only_if(entry):
                try:
                    link = self.storage.remove(entry.path)
                except OSError as e:  # say which file of which directory (the error names the leaf)
                    path = f"{self.label}/{entry.path}"
                    raise type(e)(e.errno, e.strerror or str(e), path) from e
                if link is not None:
                    found.add(link)
        for link in sorted(found) if links else ():
            if session.owner_of(link) is None and not session.names_below(link):
                self.storage.remove(link)
                warnings.warn(
                    f"{self.label}/{link} is a symbolic link: removed the link, left what it "
                    "points to untouched (keras-ckpt never deletes through a link).",
                    stacklevel=5,
                )

    def _matches(self, entry: FileEntry) -> bool:
        """The file at `entry.path` holds exactly the recorded bytes (so we wrote it)."""
        try:
            if not self.storage.exists(entry.path):
                return False
            sealed = self.storage.seal(entry.path)
        except OSError:
            return False
        return (sealed.size, sealed.checksum) == (entry.size, entry.checksum)

    def recover(self, session: _Session) -> None:
        """Settles durably what a crashed writer left half done, by `decide`; clears staging."""
        self.storage.clear_staging()
        records, problems = self._scan()
        for _source, error in problems:
            warnings.warn(f"Skipping checkpoint: {error}", stacklevel=6)
        for record in records:
            session.put(record)
        for file_name in self.storage.list_files(PENDING_DIR):
            relpath = f"{PENDING_DIR}/{file_name}"
            pending = self._load(relpath)
            if pending is None or pending_path(pending.name) != relpath:
                self.storage.remove(relpath)  # torn by a crash: it announced nothing yet
                continue
            previous = session.records.get(pending.name)
            current = decide(previous, pending, self._whole)
            if current is pending:
                if previous != pending:
                    self.storage.write_atomic(record_path(pending.name), pending.to_json().encode())
                session.put(pending)
                if previous is not None:
                    self._remove_unnamed(session, previous.files, only_if=self._matches)
            else:
                if current is None and previous is not None:
                    if previous != pending:  # equal: it was being deleted, which now completes
                        warnings.warn(
                            f"Dropping checkpoint {previous.name} in {self.label}: a writer was "
                            "killed while replacing its files, and neither version is complete.",
                            stacklevel=6,
                        )
                    self.storage.remove(record_path(previous.name))
                    session.drop(previous.name)
                    self._remove_unnamed(session, previous.files, only_if=self._matches)
                self._remove_unnamed(session, pending.files, only_if=self._matches)
            self.storage.remove(relpath)


def _seal(source: str, sealed: SealedFile | None) -> tuple[int, str]:
    """(size, checksum) of a staged file: read back and fsynced, or as its writer sealed it."""
    if sealed is None:
        sealed = seal_file(source)
    elif os.stat(source).st_size != sealed.size:
        raise ValueError(
            f"Staged file {source} has {os.stat(source).st_size} bytes, but its writer sealed "
            f"{sealed.size}: it changed after it was sealed."
        )
    return sealed.size, sealed.checksum


def _keras_identity() -> tuple[str, str]:
    """(Keras version, backend) of the writer; empty when the writer has not loaded Keras (a tool
    writing records needs no Keras, and importing it costs seconds of TensorFlow start-up)."""
    keras = sys.modules.get("keras")
    if keras is None:
        return "", ""
    return keras.__version__, keras.backend.backend()
