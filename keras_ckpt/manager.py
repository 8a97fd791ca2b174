"""`CheckpointManager`: the store both callbacks write through, and that users read from.

It commits checkpoints (files first, record last), lists and verifies them, prunes them by a retention
policy, and loads them back. Only checkpoints with a committed record exist for it; it never deletes a
file that no record of its own names.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from keras_ckpt._validate import check_choice
from keras_ckpt.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignFileError,
    RecordFormatError,
)
from keras_ckpt.policies import Policy, infer_mode, ranked_metrics
from keras_ckpt.records import (
    KINDS,
    FileEntry,
    Record,
    clean_metrics,
    validate_name,
    validate_path,
)
from keras_ckpt.storage import (
    META_DIR,
    DirectoryLockHandle,
    SealedFile,
    Storage,
    seal_file,
    storage_for,
)

__all__ = ["CheckpointManager", "VerifyResult", "PruneResult", "KeptCheckpoint"]

_PENDING = f"{META_DIR}/pending"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one checkpoint (or one unreadable record) against its files.

    Attributes:
        name: The checkpoint's name, or the record file's path if the record is unreadable.
        ok: True when every file exists with the recorded size and checksum.
        problems: One line per problem, naming the file and what is wrong.

    Example:

    >>> VerifyResult("model-001.keras", False, ("model-001.keras: missing file",)).ok
    False
    """

    name: str
    ok: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint `prune` kept, and every reason it was kept (`"newest"`, `"best 3 by ..."`).

    Example:

    >>> from keras_ckpt.records import FileEntry, Record
    >>> record = Record("m.keras", "model", (FileEntry("m.keras", 1, "crc32c:00000000"),))
    >>> KeptCheckpoint(record, ("newest",)).reasons
    ('newest',)
    """

    record: Record
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PruneResult:
    """What `prune` kept (with the reasons) and deleted (or would delete, with `dry_run`).

    Example:

    >>> PruneResult(kept=(), deleted=(), dry_run=True).dry_run
    True
    """

    kept: tuple[KeptCheckpoint, ...]
    deleted: tuple[Record, ...]
    dry_run: bool = False


@dataclass
class _WriterState:
    """State shared by every writing manager of one directory in this process.

    Besides the records it keeps which record names each file and the last sequence number, so a
    commit costs the same with 10 or 10,000 checkpoints in the directory.
    """

    lock: DirectoryLockHandle
    records: dict[str, Record] = field(default_factory=dict)
    users: int = 0
    mutex: threading.RLock = field(default_factory=threading.RLock)
    _owner_of: dict[str, str] = field(default_factory=dict)
    _sequence: int = 0

    def put(self, record: Record) -> None:
        self.drop(record.name)
        self.records[record.name] = record
        for entry in record.files:
            self._owner_of[entry.path] = record.name
        self._sequence = max(self._sequence, record.sequence)

    def drop(self, name: str) -> Record | None:
        record = self.records.pop(name, None)
        if record is not None:
            for entry in record.files:
                if self._owner_of.get(entry.path) == name:
                    del self._owner_of[entry.path]
        return record

    def owner_of(self, path: str) -> str | None:
        """Name of the record that names file `path`, if any."""
        return self._owner_of.get(path)

    def next_sequence(self) -> int:
        return self._sequence + 1


_writers: dict[str, _WriterState] = {}
_writers_mutex = threading.Lock()


class CheckpointManager:
    """A directory of checkpoints: commit, list, verify, prune and load.

    Both callbacks write through it; use it directly to inspect a run or load from it.

    Args:
        directory: Local path or fsspec URL of the checkpoint directory. It need not exist to read
            (it then holds no checkpoints); writing creates it.

    Example:

    >>> import os, tempfile
    >>> from keras_ckpt.policies import KeepLast
    >>> manager = CheckpointManager(tempfile.mkdtemp())
    >>> for epoch in (1, 2, 3):
    ...     with manager.stage() as folder:  # write the files here first...
    ...         path = os.path.join(folder, "w")
    ...         _ = open(path, "wb").write(b"weights")
    ...         _ = manager.commit({f"w-{epoch}.bin": path}, name=f"w-{epoch}.bin",
    ...                            kind="weights", epoch=epoch, metrics={"val_loss": 1 / epoch})
    >>> [r.name for r in manager.checkpoints()]
    ['w-1.bin', 'w-2.bin', 'w-3.bin']
    >>> manager.best("val_loss").name, manager.latest().epoch
    ('w-3.bin', 3)
    >>> [r.ok for r in manager.verify()]
    [True, True, True]
    >>> [r.name for r in manager.prune(KeepLast(1)).deleted]
    ['w-1.bin', 'w-2.bin']
    >>> manager.close()
    """

    def __init__(self, directory: str | os.PathLike[str], *, storage: Storage | None = None):
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(
                "Invalid value for argument `directory`. Expected a non-empty path or URL. "
                f"Received: directory={directory!r}"
            )
        self.directory = os.fspath(directory)
        self.storage = storage if storage is not None else storage_for(self.directory)
        self._writer: _WriterState | None = None
        self._protected: set[str] = set()
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"CheckpointManager({self.directory!r})"

    # ----------------------------------------------------------------- reading

    def checkpoints(self, owner: str | None = None) -> list[Record]:
        """Committed checkpoints, oldest first; only `owner`'s when given.

        An unreadable record is skipped with a warning naming its file (`verify` reports it too).
        """
        if self._writer is not None:
            with self._writer.mutex:
                records = list(self._writer.records.values())
        else:
            records, problems = self._read()
            for source, error in problems:
                if source not in self._warned:
                    self._warned.add(source)
                    warnings.warn(f"Skipping checkpoint: {error}", stacklevel=2)
        if owner is not None:
            records = [r for r in records if r.owner == owner]
        return sorted(records, key=lambda r: r.sequence)

    def get(self, name: str) -> Record:
        """The record called `name`, or `CheckpointNotFoundError` listing what exists."""
        for record in self.checkpoints():
            if record.name == name:
                return record
        names = [r.name for r in self.checkpoints()]
        shown = ", ".join(names[-10:]) if names else "none"
        raise CheckpointNotFoundError(
            f"No checkpoint named {name!r} in {self.directory}. Checkpoints there: {shown}"
            + (f" (last 10 of {len(names)})" if len(names) > 10 else "")
        )

    def latest(self, owner: str | None = None) -> Record | None:
        """The newest committed checkpoint, or None."""
        records = self.checkpoints(owner)
        return records[-1] if records else None

    def best(self, monitor: str, mode: str = "auto", owner: str | None = None) -> Record | None:
        """The checkpoint with the best `monitor` value (newest on ties), or None.

        Args:
            monitor: A metric name as it appears in the logs (`"val_loss"`).
            mode: `"min"`, `"max"`, or `"auto"` to infer it from the name.
        """
        ranked = self._ranked_by(monitor, mode, owner)
        return ranked[0] if ranked else None

    def _ranked_by(self, monitor: str, mode: str, owner: str | None) -> list[Record]:
        check_choice("mode", mode, ("auto", "min", "max"))
        if mode == "auto":
            mode = infer_mode(monitor)
        sign = 1.0 if mode == "min" else -1.0
        scored = [r for r in self.checkpoints(owner) if monitor in r.metrics]
        return sorted(scored, key=lambda r: (sign * r.metrics[monitor], -r.sequence))

    def verify(self, name: str | None = None) -> list[VerifyResult]:
        """Checks checkpoints against their records: every file present, right size, right checksum.

        Args:
            name: One checkpoint; all of them (and every unreadable record) when None.
        """
        if name is not None:
            return [self._verify_record(self.get(name))]
        records, problems = self._read()
        results = [VerifyResult(source, False, (str(error),)) for source, error in problems]
        results += [self._verify_record(r) for r in sorted(records, key=lambda r: r.sequence)]
        return results

    def _verify_record(self, record: Record) -> VerifyResult:
        problems = []
        for entry in record.files:
            if not self.storage.exists(entry.path):
                problems.append(f"{entry.path}: missing file")
                continue
            sealed = self.storage.seal(entry.path)
            if sealed.size != entry.size:
                problems.append(f"{entry.path}: size {sealed.size} bytes, record says {entry.size}")
            elif sealed.checksum != entry.checksum:
                problems.append(
                    f"{entry.path}: checksum mismatch ({sealed.checksum}, "
                    f"record says {entry.checksum})"
                )
        return VerifyResult(record.name, not problems, tuple(problems))

    def resolve(
        self,
        which: str = "latest",
        *,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
        kind: str | None = None,
    ) -> Record:
        """The verified record for a name, `"latest"` or `"best"`.

        Args:
            which: A checkpoint name, `"latest"` or `"best"`.
            monitor: For `"best"`: the metric; defaults to the one the writing callback monitored.
            mode: For `"best"`: `"min"`, `"max"` or `"auto"` (from the metric's name).
            owner: Consider only the checkpoints of this callback (`ModelCheckpoint.owner`).
            kind: Consider only checkpoints of this kind (`"model"` for `load_model`).

        For `"latest"` and `"best"` a damaged checkpoint is skipped with a warning that names the
        damaged file, and the next one that verifies is used. A damaged named checkpoint raises.

        Raises:
            CheckpointNotFoundError: nothing matches.
            CorruptCheckpointError: the named checkpoint, or every candidate, is damaged.
        """
        candidates = self._candidates(which, monitor=monitor, mode=mode, owner=owner, kind=kind)
        return self._first_good(which, candidates, None)[0]

    def _candidates(
        self, which: str, *, monitor: str | None, mode: str, owner: str | None, kind: str | None
    ) -> list[Record]:
        if which not in ("latest", "best"):
            return [self.get(which)]
        if which == "latest":
            candidates = list(reversed(self.checkpoints(owner)))
        else:
            monitor = monitor or self._default_monitor(owner)
            candidates = self._ranked_by(monitor, mode, owner)
        if kind is not None:
            candidates = [r for r in candidates if r.kind == kind]
        if not candidates:
            raise CheckpointNotFoundError(
                f"No checkpoint in {self.directory} to use as {which!r}"
                + (f" (none has {monitor!r} in its metrics)" if which == "best" else "")
            )
        return candidates

    def _first_good(
        self, which: str, candidates: list[Record], use: Callable[[Record], Any] | None
    ) -> tuple[Record, Any]:
        """`use(record)` of the first candidate that is whole; a damaged one is skipped (for
        `"latest"`/`"best"`, with a warning naming the damaged file) or raises (a named one).

        With `use` None, each candidate is verified by reading its files; otherwise `use` reads
        the main file and checks it against its record (`h5read`), the other files are verified.
        """
        for record in candidates:
            problems = []
            value: Any = None
            if use is None:
                problems = list(self._verify_record(record).problems)
            else:
                if len(record.files) > 1:  # side files: verified by reading them
                    rest = replace(record, files=record.files[1:])
                    problems = list(self._verify_record(rest).problems)
                if not problems and not self.storage.exists(record.path):
                    problems = [f"{record.path}: missing file"]
                if not problems:
                    try:
                        value = use(record)
                    except CorruptCheckpointError as e:
                        problems = [str(e)]
            if not problems:
                return record, value
            if which not in ("latest", "best"):
                raise CorruptCheckpointError(
                    f"Checkpoint {record.name} in {self.directory} is damaged: "
                    + "; ".join(problems)
                )
            warnings.warn(
                f"Checkpoint {record.name} in {self.directory} is damaged ("
                + "; ".join(problems)
                + f"); skipping it for {which!r}.",
                stacklevel=3,
            )
        raise CorruptCheckpointError(
            f"Every candidate for {which!r} in {self.directory} is damaged; run "
            f"`keras-ckpt verify {self.directory}` for details."
        )

    def _default_monitor(self, owner: str | None) -> str:
        for record in reversed(self.checkpoints(owner)):
            monitor = record.owner_state.get("monitor")
            if isinstance(monitor, str):
                return monitor
        raise ValueError(
            '`which="best"` needs `monitor=`: no checkpoint records the metric its callback '
            "monitored."
        )

    def load_model(
        self,
        which: str = "latest",
        *,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
        **load_kwargs: Any,
    ) -> Any:
        """Loads a full-model checkpoint as `keras.saving.load_model` would.

        The file is read once: its checksum is checked on the bytes the model is loaded from
        (`keras_ckpt.h5read`), so a damaged `"latest"` or `"best"` is skipped for the previous
        good one, with a warning naming the damaged file.

        Args:
            which: A checkpoint name, `"latest"` or `"best"`.
            monitor: For `"best"`: the metric; defaults to the one the writing callback monitored.
            mode: For `"best"`: `"min"`, `"max"` or `"auto"`.
            owner: Only this callback's checkpoints (`ModelCheckpoint.owner`); `"latest"` and
                `"best"` consider full-model checkpoints only.
            **load_kwargs: Passed to `keras.saving.load_model` (`custom_objects`, `compile`, ...).

        Raises:
            ValueError: the checkpoint holds weights only (use `load_weights` on a built model).
        """
        kind = "model" if which in ("latest", "best") else None
        candidates = self._candidates(which, monitor=monitor, mode=mode, owner=owner, kind=kind)
        for record in candidates:
            if record.kind != "model":
                raise ValueError(
                    f"Checkpoint {record.name} holds {record.kind.replace('_', ' ')} only, not a "
                    "full model: build the model in code and call `load_weights(model, ...)` "
                    "instead."
                )
        from keras_ckpt import h5read

        def load(record: Record) -> Any:
            entry = record.files[0]
            with self.storage.local_path(record.path) as path:
                expected = SealedFile(entry.size, entry.checksum)
                return h5read.load_model(path, expected, name=entry.path, **load_kwargs)

        return self._first_good(which, candidates, load)[1]

    def load_weights(
        self,
        model: Any,
        which: str = "latest",
        *,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
    ) -> Record:
        """Loads a checkpoint's weights (and optimizer state) into `model`; returns its record.

        Unlike a bare `model.load_weights`, the optimizer of a compiled model is built first, so its
        state (step count, moments) is restored instead of silently skipped. Any kind of
        checkpoint works: a full model, weights, or a `BackupAndRestore` backup.

        Args:
            model: A built Keras model with the checkpoint's architecture.
            which: A checkpoint name, `"latest"` or `"best"`.
            monitor, mode, owner: As for `load_model`.
        """
        candidates = self._candidates(which, monitor=monitor, mode=mode, owner=owner, kind=None)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        from keras_ckpt import h5read

        def load(record: Record) -> None:
            entry = record.files[0]
            with self.storage.local_path(record.path) as path:
                h5read.load_weights(
                    model, path, SealedFile(entry.size, entry.checksum), name=entry.path
                )

        return self._first_good(which, candidates, load)[0]

    def _read(self) -> tuple[list[Record], list[tuple[str, Exception]]]:
        """Records as a reader sees them, with replacements caught half-way settled.

        A writer replacing a checkpoint's files (a fixed path such as `best.keras`) announces the
        new record in `pending/` first. Until the record itself is written, the file on disk may
        already be the new one; whichever record matches the files is the checkpoint.
        """
        records, problems = self._scan()
        pending_names = {n.removesuffix(".json") for n in self.storage.list_files(_PENDING)}
        if not pending_names:
            return records, problems
        settled = []
        for record in records:
            if record.name in pending_names and not self._verify_record(record).ok:
                relpath = _pending_path(record.name)
                try:
                    pending = Record.from_json(self.storage.read_bytes(relpath), source=relpath)
                except (RecordFormatError, OSError):
                    pending = None
                if pending is not None and self._verify_record(pending).ok:
                    record = pending
            settled.append(record)
        return settled, problems

    def _scan(self) -> tuple[list[Record], list[tuple[str, Exception]]]:
        records: list[Record] = []
        problems: list[tuple[str, Exception]] = []
        for file_name in self.storage.list_files(META_DIR):
            if not file_name.endswith(".json"):
                continue
            source = f"{self.directory.rstrip('/')}/{META_DIR}/{file_name}"
            try:
                data = self.storage.read_bytes(f"{META_DIR}/{file_name}")
                record = Record.from_json(data, source=source)
                if _record_path(record.name) != f"{META_DIR}/{file_name}":
                    raise RecordFormatError(
                        f"Checkpoint record {source} holds checkpoint {record.name!r}; a record "
                        f"must be named after its checkpoint ({record.name}.json)."
                    )
            except RecordFormatError as e:
                problems.append((source, e))
                continue
            except OSError as e:
                problems.append((source, RecordFormatError(f"Cannot read {source}: {e}")))
                continue
            records.append(record)
        return records, problems

    # ----------------------------------------------------------------- writing

    def open_for_writing(self) -> None:
        """Takes the directory's writer lock (once) and completes what a crashed writer left.

        Called by every writing method; call it yourself to fail early when another process holds
        the directory. `close()` gives the lock back.

        Raises:
            DirectoryLockedError: another live process writes into this directory.
        """
        if self._writer is not None:
            return
        key = self.storage.url
        with _writers_mutex:
            state = _writers.get(key)
            if state is None:
                lock = self.storage.lock()
                try:
                    state = _WriterState(lock=lock)
                    self._recover(state)
                except BaseException:
                    lock.release()
                    raise
                _writers[key] = state
            state.users += 1
        self._writer = state

    def close(self) -> None:
        """Releases the writer lock taken by this manager (if any)."""
        state, self._writer = self._writer, None
        if state is None:
            return
        with _writers_mutex:
            state.users -= 1
            if state.users == 0:
                _writers.pop(self.storage.url, None)
                state.lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _recover(self, state: _WriterState) -> None:
        """Completes or undoes what a crashed writer left half-done; empties the staging area."""
        self.storage.clear_staging()
        records, problems = self._scan()
        for _source, error in problems:
            warnings.warn(f"Skipping checkpoint: {error}", stacklevel=3)
        for record in records:
            state.put(record)
        for file_name in self.storage.list_files(_PENDING):
            relpath = f"{_PENDING}/{file_name}"
            try:
                pending = Record.from_json(self.storage.read_bytes(relpath), source=relpath)
            except RecordFormatError:
                self.storage.remove(relpath)
                continue
            if self._verify_record(pending).ok:
                # Every file was in place when the writer died: finish its commit (or undo its
                # delete, which had not removed a file yet).
                self.storage.write_atomic(_record_path(pending.name), pending.to_json().encode())
                previous = state.records.get(pending.name)
                state.put(pending)
                if previous is not None:
                    self._remove_unnamed(state, previous.files)
            else:
                previous = state.records.get(pending.name)
                if previous is not None and not self._verify_record(previous).ok:
                    # It died while overwriting this checkpoint's files in place: neither the old
                    # nor the new version is whole, so the checkpoint is lost.
                    warnings.warn(
                        f"Dropping checkpoint {previous.name} in {self.directory}: a writer was "
                        "killed while replacing its files, and neither version is complete.",
                        stacklevel=3,
                    )
                    self.storage.remove(_record_path(previous.name))
                    state.drop(previous.name)
                    self._remove_unnamed(state, previous.files)
                # It died half-way through publishing (or deleting) these files: remove the ones no
                # record names; they were placed there by the interrupted operation.
                self._remove_unnamed(state, pending.files)
            self.storage.remove(relpath)

    def _remove_unnamed(self, state: _WriterState, entries: tuple[FileEntry, ...]) -> None:
        for entry in entries:
            if state.owner_of(entry.path) is None:
                self.storage.remove(entry.path)

    @contextlib.contextmanager
    def stage(self) -> Iterator[str]:
        """A fresh local folder to write a checkpoint's files into before `commit`.

        Example:
            with manager.stage() as folder:
                model.save(os.path.join(folder, "model.keras"))
                manager.commit({"model-001.keras": os.path.join(folder, "model.keras")},
                               name="model-001.keras", kind="model")
        """
        self.open_for_writing()
        with self.storage.staging() as folder:
            yield folder

    def commit(
        self,
        files: Mapping[str, str | os.PathLike[str]],
        *,
        name: str,
        kind: str,
        epoch: int = 0,
        step: int = 0,
        global_step: int = 0,
        metrics: Mapping[str, float] | None = None,
        owner: str | None = None,
        owner_state: Mapping[str, Any] | None = None,
        sealed: Mapping[str, SealedFile] | None = None,
    ) -> Record:
        """Publishes staged files and then their record: the checkpoint exists once this returns.

        Args:
            files: Final path (relative to the directory, `/`-separated; the first is the file
                Keras loads) mapped to the staged local file holding its bytes.
            name: Unique checkpoint name. Committing an existing name replaces that checkpoint
                atomically (its record is updated after its files).
            kind: `"model"`, `"weights"` or `"training_state"`.
            metrics: Logs at that moment; non-finite and non-numeric values are dropped.
            sealed: Size and checksum of staged files whose writer computed them (and fsynced
                the file), by relpath: those are not read back, only their size is checked.

        Raises:
            ForeignFileError: a final path holds a file no record of this directory names.
            OSError: the files or the record could not be written. The checkpoint then does not
                exist and the files this commit placed are removed again.
        """
        validate_name(name)
        if kind not in KINDS:
            raise ValueError(
                f"Invalid value for argument `kind`. Expected one of {KINDS}. Received: kind={kind!r}"
            )
        if not files:
            raise ValueError("A checkpoint needs at least one file. Received: files={}")
        for relpath in files:
            validate_path(relpath)
        self.open_for_writing()
        state = self._writer
        assert state is not None
        with state.mutex:
            previous = state.records.get(name)
            self._check_targets(state, name, files)
            if previous is not None and len(previous.files) > 1:
                raise ValueError(
                    f"Cannot replace checkpoint {name!r} in {self.directory} in place: it has "
                    f"{len(previous.files)} files, and a kill between their renames would leave "
                    "neither version whole. Commit it under a new name."
                )
            entries = []
            for relpath, source in files.items():
                known = (sealed or {}).get(relpath)
                seal = known if known is not None else seal_file(source)
                if known is not None and os.path.getsize(source) != known.size:
                    raise OSError(
                        f"Staged file {source} holds {os.path.getsize(source)} bytes, its writer "
                        f"reported {known.size}"
                    )
                entries.append(FileEntry(relpath, seal.size, seal.checksum))
            keras_version, backend = _keras_identity()
            record = Record(
                name=name,
                kind=kind,
                files=tuple(entries),
                epoch=int(epoch),
                step=int(step),
                global_step=int(global_step),
                wall_time=time.time(),
                metrics=clean_metrics(metrics),
                owner=owner,
                owner_state=dict(owner_state or {}),
                sequence=state.next_sequence(),
                keras_version=keras_version,
                backend=backend,
            )
            data = record.to_json().encode()  # fails here, before any file moves
            # The pending record announces the commit: if this process dies before the record is
            # written, the next writer finishes the commit or removes the files it placed.
            self.storage.write_atomic(_pending_path(name), data)
            try:
                self.storage.publish({p: os.fspath(s) for p, s in files.items()})
                self.storage.write_atomic(_record_path(name), data)
            except BaseException:
                self._abandon(state, record)
                raise
            state.put(record)
            if previous is not None:
                self._remove_unnamed(state, previous.files)
            self.storage.remove(_pending_path(name))
            return record

    def _abandon(self, state: _WriterState, record: Record) -> None:
        """Best effort after a failed commit: removes the files it placed where none was before.

        If it had begun to overwrite the files of a checkpoint of the same name, its pending record
        stays, and the next writer to open the directory settles it.
        """
        with contextlib.suppress(OSError):
            self._remove_unnamed(state, record.files)
            if not any(state.owner_of(f.path) is not None for f in record.files):
                self.storage.remove(_pending_path(record.name))

    def _check_targets(self, state: _WriterState, name: str, files: Mapping[str, object]) -> None:
        for relpath in files:
            holder = state.owner_of(relpath)
            if holder is not None and holder != name:
                raise ForeignFileError(
                    f"Cannot write {relpath} for checkpoint {name!r}: it belongs to checkpoint "
                    f"{holder!r} in {self.directory}."
                )
            if holder is None and self.storage.exists(relpath):
                raise ForeignFileError(
                    f"Refusing to overwrite {self.directory.rstrip('/')}/{relpath}: keras-ckpt did "
                    "not write it (no record names it). Move it away or choose another filepath."
                )

    def protect(self, name: str) -> None:
        """Never let `prune` delete checkpoint `name` in this manager (e.g. the one resumed from)."""
        self._protected.add(validate_name(name))

    def prune(
        self, policy: Policy, *, dry_run: bool = False, owner: str | None = None
    ) -> PruneResult:
        """Deletes the checkpoints `policy` does not keep; returns what was kept and why.

        The newest checkpoint and any protected one (`protect`) are always kept. Only checkpoints
        with a record are candidates: files without one are never touched.

        Args:
            policy: A `keras_ckpt.policies` policy (or several joined with `|`).
            dry_run: Only report what would be deleted.
            owner: Consider only this callback's checkpoints.
        """
        if not isinstance(policy, Policy):
            raise TypeError(
                "Invalid value for argument `policy`. Expected a keras_ckpt.policies policy. "
                f"Received: policy={policy!r}"
            )
        if not dry_run:
            self.open_for_writing()
        records = self.checkpoints(owner)
        recorded = set().union(*(r.metrics for r in records)) if records else set()
        for metric in sorted(ranked_metrics(policy) - recorded):
            if records:
                raise ValueError(
                    f"KeepBest ranks by {metric!r}, which no checkpoint in {self.directory} "
                    f"records (metrics recorded: {', '.join(sorted(recorded)) or 'none'}). "
                    "Nothing was deleted; check the metric's name."
                )
        verdicts = policy.reasons(records)
        kept, doomed = [], []
        for i, (record, reasons) in enumerate(zip(records, verdicts, strict=True)):
            if i == len(records) - 1:
                reasons = ("newest",) + tuple(reasons)
            if record.name in self._protected:
                reasons = ("resumed from",) + tuple(reasons)
            if reasons:
                kept.append(KeptCheckpoint(record, tuple(reasons)))
            else:
                doomed.append(record)
        if not dry_run:
            for record in doomed:
                self.delete(record.name)
        return PruneResult(tuple(kept), tuple(doomed), dry_run)

    def delete(self, name: str) -> None:
        """Deletes one checkpoint: its record first, then its files.

        A pending copy of the record covers a crash in between: the next writer restores the
        checkpoint if all its files are still there, or removes what is left of them.
        """
        self.open_for_writing()
        state = self._writer
        assert state is not None
        with state.mutex:
            record = state.records.get(name)
            if record is None:
                raise CheckpointNotFoundError(f"No checkpoint named {name!r} in {self.directory}")
            self.storage.write_atomic(_pending_path(name), record.to_json().encode())
            self.storage.remove(_record_path(name))
            state.drop(name)
            self._remove_unnamed(state, record.files)
            self.storage.remove(_pending_path(name))

    def update_owner_state(self, name: str, owner_state: Mapping[str, Any]) -> Record:
        """Rewrites a record's callback state (its files are untouched)."""
        self.open_for_writing()
        state = self._writer
        assert state is not None
        with state.mutex:
            if name not in state.records:
                raise CheckpointNotFoundError(f"No checkpoint named {name!r} in {self.directory}")
            record = replace(state.records[name], owner_state=dict(owner_state))
            self.storage.write_atomic(_record_path(name), record.to_json().encode())
            state.put(record)
            return record


def _record_path(name: str) -> str:
    return f"{META_DIR}/{name}.json"


def _pending_path(name: str) -> str:
    return f"{_PENDING}/{name}.json"


def _keras_identity() -> tuple[str, str]:
    """(Keras version, backend) of the writer; empty when the writer has not loaded Keras (a tool
    writing records needs no Keras, and importing it costs seconds of TensorFlow start-up)."""
    keras = sys.modules.get("keras")
    if keras is None:
        return "", ""
    return keras.__version__, keras.backend.backend()
