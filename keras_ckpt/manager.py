"""`CheckpointManager`: the store both callbacks write through, and that users read from.

It lists and verifies checkpoints, decides what a retention policy prunes, and loads them back;
commits and deletes go through the directory's crash journal (`journal.py`). Only checkpoints with
a committed record exist for it; it never deletes a file that no record of its own names.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from keras_ckpt import runs as run_ids
from keras_ckpt import selection
from keras_ckpt._validate import check_bool, invalid
from keras_ckpt.errors import CheckpointNotFoundError, CorruptCheckpointError
from keras_ckpt.format import format_for
from keras_ckpt.policies import Policy, applicable, judge, ranked_metrics
from keras_ckpt.records import KINDS, Record, validate_name, validate_path
from keras_ckpt.results import KeptCheckpoint, PruneResult, VerifyResult
from keras_ckpt.runs import ALL, Run
from keras_ckpt.store import LocalStorage, SealedFile, Storage, storage_for
from keras_ckpt.store import history as run_history
from keras_ckpt.store.journal import Journal

__all__ = ["CheckpointManager", "VerifyResult", "PruneResult", "KeptCheckpoint", "Run"]

_REREADS = 4  # how often a check re-reads a checkpoint that changed under it
T = TypeVar("T")


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
        self._journal = Journal(self.storage, self.directory)
        self._protected: set[str] = set()
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"CheckpointManager({self.directory!r})"

    # ----------------------------------------------------------------- reading

    def checkpoints(self, owner: str | None = None, *, run: str | None = None) -> list[Record]:
        """Committed checkpoints of a run, oldest first; only `owner`'s when given.

        Args:
            owner: Only this callback's checkpoints (`ModelCheckpoint.owner`).
            run: A run id (`runs()`), `"all"` for the whole directory, or None (the default): the
                newest run, the run of the newest checkpoint (of `owner`'s, if given).

        An unreadable record is skipped with a warning naming its file (`verify` reports it too).
        """
        return self._scoped(self._all(owner), run)

    def _all(self, owner: str | None = None) -> list[Record]:
        """Every committed checkpoint (only `owner`'s, if given), oldest first."""
        _check_owner(owner)
        session = self._journal.session
        if session is not None:
            with session.mutex:
                records = list(session.records.values())
        else:
            records, problems = self._journal.read()
            for source, error in problems:
                if source not in self._warned:
                    self._warned.add(source)
                    warnings.warn(f"Skipping checkpoint: {error}", stacklevel=2)
        if owner is not None:
            records = [r for r in records if r.owner == owner]
        return sorted(records, key=lambda r: r.sequence)

    def _scoped(self, records: list[Record], run: str | None) -> list[Record]:
        """`records` (oldest first) of `run`: None the newest, `"all"` all, else that id."""
        if run == ALL:
            return records
        if run is None:
            newest = run_ids.newest_run(records)
            return [r for r in records if run_ids.run_of(r) == newest]
        if not isinstance(run, str) or not run:
            raise invalid("run", "None (the newest run), 'all' or a run id (`runs()`)", run)
        mine = [r for r in records if run_ids.run_of(r) == run]
        if not mine and run not in {r.id for r in self.runs()}:
            known = [r.id for r in self.runs()]
            raise invalid(
                "run",
                f"None (the newest run), 'all' or a run id of {self.directory} "
                f"({', '.join(known) or 'none: it holds no checkpoints'})",
                run,
            )
        return mine

    def runs(self) -> list[Run]:
        """The runs that saved here, oldest first: the last one is the newest (the default run).

        A fresh `fit` starts a run, shared by its keras-ckpt callbacks; a resumed one (or one
        continuing with `initial_epoch`) keeps its run. The checkpoints whose record names no run
        (backups, commits without a callback, older keras-ckpt versions) form one run together,
        `"unrecorded"`. Runs whose checkpoints were all pruned are listed too, from the run
        history.

        Example:

        >>> import os, tempfile
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> with manager.stage() as folder:
        ...     _ = open(os.path.join(folder, "w"), "wb").write(b"weights")
        ...     _ = manager.commit({"w.bin": os.path.join(folder, "w")}, name="w", kind="weights")
        >>> [(r.id, r.checkpoints, r.newest) for r in manager.runs()]
        [('unrecorded', 1, True)]
        >>> manager.close()
        """
        records = self._all()
        return run_ids.group(records, self._history(records))

    def get(self, name: str) -> Record:
        """The record called `name` (in any run), or `CheckpointNotFoundError` listing what
        exists."""
        return selection.named(self._all(), name, where=self.directory)

    def latest(self, owner: str | None = None, *, run: str | None = None) -> Record | None:
        """The newest committed checkpoint (of `run`: see `checkpoints`), or None."""
        records = self.checkpoints(owner, run=run)
        return records[-1] if records else None

    def best(
        self,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
        *,
        run: str | None = None,
    ) -> Record | None:
        """The checkpoint of a run with the best `monitor` value (newest on ties), or None.

        By default, the best of the newest run: when an older run holds a better one, a line says
        so (`run="all"` ranks the whole directory).

        Args:
            monitor: A metric name as it appears in the logs (`"val_loss"`); None: the metric the
                writing callback monitored, as recorded (what `load_model("best")` uses).
            mode: `"min"`, `"max"`, or `"auto"`: the mode the writing callback recorded for
                `monitor`, else inferred from the name.
            owner: Consider only this callback's checkpoints.
            run: A run id, `"all"`, or None: the newest run (see `checkpoints`).

        Raises:
            ValueError: `monitor` is None and no checkpoint records a monitored metric, or `mode`
                is `"auto"` and neither the records nor the name tell the direction.
            CheckpointNotFoundError: there are checkpoints, but none has `monitor`.
        """
        ranked = self.rank_by(monitor, mode, owner=owner, run=run)
        if not ranked:
            selection.check_ranked(self.checkpoints(owner, run=run), monitor, where=self.directory)
        if ranked and run is None:
            self._note_default_best(ranked[0], monitor, mode, owner)
        return ranked[0] if ranked else None

    def _note_default_best(
        self, chosen: Record, monitor: str | None, mode: str, owner: str | None
    ) -> None:
        """One line when the newest run's best is not the whole directory's best."""
        everything = self._all(owner)
        if len({run_ids.run_of(r) for r in everything}) < 2:
            return
        try:
            overall = selection.rank_by(
                everything,
                monitor or selection.recorded_monitor([chosen])[0],
                mode,
                where=self.directory,
            )
        except ValueError:
            return
        if overall and overall[0].name != chosen.name:
            other = overall[0]
            print(
                f"CheckpointManager: best of the newest run ({run_ids.run_of(chosen)}) in "
                f"{self.directory} is {chosen.name}; {other.name} of run "
                f'{run_ids.run_of(other)} ranks better (run="all" to rank every run).',
                flush=True,
            )

    def rank_by(
        self,
        monitor: str | None = None,
        mode: str = "auto",
        *,
        owner: str | None = None,
        run: str | None = None,
    ) -> list[Record]:
        """The checkpoints that have `monitor` in their metrics, best first (newest on ties).

        `best` is the first of these, `select("best:N")` the first N, and `load_model("best")` the
        first that verifies: one ranking, so "best" names the same checkpoint everywhere.

        Args:
            monitor: As for `best`.
            mode: As for `best`.
            owner: As for `best`.
            run: As for `best`.

        Raises:
            ValueError: as for `best`.
        """
        return selection.rank_by(
            self.checkpoints(owner, run=run), monitor, mode, where=self.directory
        )

    def verify(self, name: str | None = None, *, run: str | None = ALL) -> list[VerifyResult]:
        """Checks checkpoints against their records: every file present, right size, right checksum.

        Args:
            name: One checkpoint; all of them (and every unreadable record) when None.
            run: With `name` None: only this run's checkpoints (None: the newest run); `"all"`
                (the default) checks every checkpoint and reports every unreadable record.
        """
        if name is not None:
            checked = self._checked(self.get(name))
            if checked is None:
                raise CheckpointNotFoundError(f"Checkpoint {name!r} was deleted meanwhile")
            return [VerifyResult(checked[0].name, not checked[1], checked[1])]
        records, problems = self._journal.read()
        results = [VerifyResult(source, False, (str(error),)) for source, error in problems]
        if run != ALL:
            records = self._scoped(sorted(records, key=lambda r: r.sequence), run)
        for record in sorted(records, key=lambda r: r.sequence):
            checked = self._checked(record)
            if checked is not None:  # None: deleted while we looked
                results.append(VerifyResult(checked[0].name, not checked[1], checked[1]))
        return results

    def _checked(self, record: Record) -> tuple[Record, tuple[str, ...]] | None:
        """A checkpoint as it is now, and its problems; None if it was deleted meanwhile.

        A writer announces a change (pending record) before it touches a file, so a failed check
        followed by an unchanged record is real damage. A changed record is checked again (a few
        times at most), a vanished one was deleted, not damaged.
        """
        for _ in range(_REREADS):
            problems = self._journal.problems(record)
            if not problems:
                return record, ()
            again = self._journal.reread(record.name)
            if again is None:
                return None
            if again == record:
                return record, tuple(problems)
            record = again
        return record, tuple(self._journal.problems(record))

    def history(self, *, run: str | None = None) -> list[run_history.HistoryEntry]:
        """Every checkpoint a run ever committed here, oldest first, pruned ones included.

        Args:
            run: A run id, `"all"` for every run, or None: the newest run (see `checkpoints`).

        Each entry says whether the checkpoint still exists and, if not, why it was deleted (the
        retention policy that did not keep it). Read from `.keras_ckpt/history.jsonl`, the
        append-only log the manager writes at every commit and deletion; a line torn by a kill is
        skipped. Checkpoints committed before the log existed appear as long as they exist.

        Example:

        >>> import os, tempfile
        >>> from keras_ckpt.policies import KeepLast
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> for epoch in (1, 2):
        ...     with manager.stage() as folder:
        ...         _ = open(os.path.join(folder, "w"), "wb").write(b"weights")
        ...         _ = manager.commit({f"w-{epoch}.bin": os.path.join(folder, "w")},
        ...                            name=f"w-{epoch}.bin", kind="weights", epoch=epoch)
        >>> _ = manager.prune(KeepLast(1))
        >>> [(e.name, e.exists, e.deleted_reason) for e in manager.history()]
        [('w-1.bin', False, 'not kept by KeepLast(n=1)'), ('w-2.bin', True, None)]
        >>> manager.close()
        """
        records = self._all()
        saves = self._history(records)
        if run == ALL:
            return saves
        if run is None:
            newest = run_ids.newest_run(records)
            if newest is None and saves:
                newest = run_ids.run_of(saves[-1])
        else:
            self._scoped(records, run)  # an unknown id raises
            newest = run
        return [e for e in saves if run_ids.run_of(e) == newest]

    def _history(self, records: list[Record]) -> list[run_history.HistoryEntry]:
        events = run_history.parse(self.storage.read_log(run_history.HISTORY_PATH))
        return run_history.replay(events, records)

    def simulate(
        self, policy: Policy, *, owner: str | None = None, run: str | None = None
    ) -> run_history.Simulation:
        """What `policy` would have kept of every save in a run's history (only `owner`'s, if
        given), had it pruned after each one as a callback does; touches no file
        (`keras-ckpt prune --simulate`). `run`: as for `history`.

        Example:

        >>> import os, tempfile
        >>> from keras_ckpt.policies import KeepLast
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> for epoch in (1, 2, 3):
        ...     with manager.stage() as folder:
        ...         _ = open(os.path.join(folder, "w"), "wb").write(b"weights")
        ...         _ = manager.commit({f"w-{epoch}.bin": os.path.join(folder, "w")},
        ...                            name=f"w-{epoch}.bin", kind="weights", epoch=epoch)
        >>> result = manager.simulate(KeepLast(1))
        >>> [e.name for e in result.kept], result.peak_bytes
        (['w-3.bin'], 14)
        >>> manager.close()
        """
        _check_owner(owner)
        saves = [e for e in self.history(run=run) if owner is None or e.owner == owner]
        return run_history.simulate(policy, saves)

    def select(
        self,
        selector: str | Sequence[str],
        *,
        monitor: str | None = None,
        mode: str = "auto",
        run: str | None = None,
    ) -> list[Record]:
        """The records `selector` names, oldest first (not yet verified).

        Args:
            selector: `"last:N"` (the N newest), `"best:N"` (the N best by `monitor`, as `best`
                ranks them) or a list of checkpoint names.
            monitor: For `"best:N"`; defaults to the metric the writing callback monitored.
            mode: For `"best:N"`: `"min"`, `"max"` or `"auto"` (as for `best`).
            run: For `"last:N"` and `"best:N"`: a run id, `"all"`, or None: the newest run
                (see `checkpoints`). Names are looked up in every run.

        Raises:
            ValueError: an unknown selector, `N` not a positive int, or fewer checkpoints than `N`.

        Example:

        >>> import os, tempfile
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> for epoch in (1, 2, 3):
        ...     with manager.stage() as folder:
        ...         _ = open(os.path.join(folder, "w"), "wb").write(b"weights")
        ...         _ = manager.commit({f"w-{epoch}.bin": os.path.join(folder, "w")},
        ...                            name=f"w-{epoch}.bin", kind="weights", epoch=epoch,
        ...                            metrics={"loss": [3, 1, 2][epoch - 1]})
        >>> [r.name for r in manager.select("best:2", monitor="loss")]
        ['w-2.bin', 'w-3.bin']
        >>> manager.close()
        """
        records = self._all() if not isinstance(selector, str) else self.checkpoints(run=run)
        return selection.select(records, selector, monitor=monitor, mode=mode, where=self.directory)

    def average(
        self,
        select: str | Sequence[str],
        path: str | os.PathLike[str],
        *,
        monitor: str | None = None,
        mode: str = "auto",
        overwrite: bool = False,
        run: str | None = None,
    ) -> list[Record]:
        """Writes the element-wise mean of several checkpoints' model weights to `path`.

        Averaging the last few checkpoints of a run (SWA, model soups) often generalises better
        than any one of them, at no training cost. Every floating-point model variable is
        averaged in float64 and cast back; integer and boolean variables (counters, seeds) and
        the optimizer state are the newest checkpoint's (moments of a mean have no meaning;
        keeping the newest's lets `keras.saving.load_model` restore a compiled model). A `.keras`
        output also holds the newest checkpoint's config. Each checkpoint is read once and checked
        against its record on the way.

        Args:
            select: `"last:N"`, `"best:N"` or a list of checkpoint names (see `select`).
            path: Local file to write: `.keras` (every selected checkpoint must be a full model)
                or `.weights.h5` (any checkpoints; load it with `model.load_weights`).
            monitor: For `"best:N"` (see `select`).
            mode: For `"best:N"` (see `select`).
            overwrite: Replace an existing `path`. Defaults to `False`.
            run: For `"last:N"`/`"best:N"`: a run id, `"all"`, or None: the newest run.

        Returns:
            The averaged checkpoints' records, oldest first.

        Raises:
            ValueError: a bad selector or count, `path` exists (without `overwrite`) or has the
                wrong suffix, or the checkpoints differ in architecture or shapes.
            CorruptCheckpointError: a selected checkpoint fails verification.

        Example:

        >>> import keras, numpy as np, keras_ckpt
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> ckpt = keras_ckpt.ModelCheckpoint("runs/avg-doc/m-{epoch}.keras", keep_last=3)
        >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=3, callbacks=[ckpt], verbose=0)
        >>> manager = keras_ckpt.CheckpointManager("runs/avg-doc")
        >>> [r.name for r in manager.average("last:3", "runs/avg.keras", overwrite=True)]
        ['m-1.keras', 'm-2.keras', 'm-3.keras']
        >>> keras.saving.load_model("runs/avg.keras").count_params()
        3
        """
        from keras_ckpt.format import averaging

        check_bool("overwrite", overwrite)
        if not isinstance(path, (str, os.PathLike)) or "://" in os.fspath(path):
            raise invalid("path", "a local .keras or .weights.h5 file path", path)
        out = os.fspath(path)
        if not (out.endswith(".keras") or out.endswith(".weights.h5")):
            raise invalid("path", "a file name ending in .keras or .weights.h5", path)
        if os.path.exists(out) and not overwrite:
            raise invalid("path", "a path that does not exist yet (or `overwrite=True`)", path)
        records = self.select(select, monitor=monitor, mode=mode, run=run)
        if out.endswith(".keras") and any(r.kind != "model" for r in records):
            partial = [r.name for r in records if r.kind != "model"]
            raise invalid(
                "path",
                f"a .weights.h5 file: {', '.join(partial)} hold weights only, not a full model",
                path,
            )
        with contextlib.ExitStack() as stack:
            sources = []
            for record in records:
                entry = record.files[0]
                local = stack.enter_context(self.storage.local_path(record.path))
                sources.append((record.path, local, SealedFile(entry.size, entry.checksum)))
            averaging.average(sources, out)  # each read once, checked against its record
        return records

    def describe(
        self,
        which: str = "latest",
        *,
        monitor: str | None = None,
        mode: str = "auto",
        run: str | None = None,
    ) -> tuple[Record, dict[str, Any]]:
        """(record, contents) of a checkpoint: what its main file holds, read without building
        the model and without Keras (`keras-ckpt show`).

        `contents` has `format`, `parts` (zip members and sizes), and when the file holds them
        `architecture` (class, name, layer count), `compile` (optimizer, learning rate, loss,
        metrics), `weights` (arrays, parameters, bytes) and `optimizer` (variables, bytes,
        iterations). The file is read once and checked against its record as loading checks it.

        Args:
            which: As for `resolve`.
            monitor: As for `resolve`.
            mode: As for `resolve`.
            run: As for `resolve`.

        Raises:
            CheckpointNotFoundError: nothing matches.
            CorruptCheckpointError: the file differs from its record or fails a loading check.
        """
        from keras_ckpt.format import inspect
        from keras_ckpt.format.orbax_dir import is_orbax_record

        def read(record: Record, path: str) -> dict[str, Any]:
            entry = record.files[0]
            expected = SealedFile(entry.size, entry.checksum)
            if is_orbax_record(record):  # a sharded folder: its format reads its layout
                info = format_for(record).describe(path, expected, name=entry.path)
            else:  # a Keras file: read here, so that `show` never imports Keras
                info = inspect.inspect_file(path, expected, name=entry.path)
            if record.kind == "training_state":  # its main file is a weights file, but not one
                info["format"] = inspect.BACKUP_FORMAT
            return info

        return self.load(which, read, monitor=monitor, mode=mode, run=run)

    def export(
        self,
        which: str,
        path: str | os.PathLike[str],
        *,
        monitor: str | None = None,
        mode: str = "auto",
        run: str | None = None,
        overwrite: bool = False,
    ) -> Record:
        """Writes one checkpoint to a standalone local file that plain Keras loads.

        The checkpoint is read once and checked against its record as loading checks it; the
        bytes written are exactly those. The file is written beside `path` and renamed into place.

        Args:
            which: As for `resolve`.
            monitor: As for `resolve`.
            mode: As for `resolve`.
            run: As for `resolve`.
            path: `.keras` (a full model: `keras.saving.load_model`) or `.weights.h5` (any
                checkpoint: `model.load_weights`).
            overwrite: Replace an existing `path`. Defaults to `False`.

        Returns:
            The exported checkpoint's record.

        Raises:
            ValueError: `path` exists (without `overwrite`), is a folder, has the wrong suffix or
                lies in a missing folder, or the checkpoint holds weights only and `path` is a
                `.keras` file.
        """
        from keras_ckpt.format import inspect
        from keras_ckpt.store.local import atomic_local_file

        check_bool("overwrite", overwrite)
        if not isinstance(path, (str, os.PathLike)) or "://" in os.fspath(path):
            raise invalid("path", "a local .keras or .weights.h5 file path", path)
        out = os.fspath(path)
        if out.endswith(".keras"):
            target = "model"
        elif out.endswith(".weights.h5"):
            target = "weights"
        else:
            raise invalid(
                "path",
                "a file name ending in .keras (a full model for keras.saving.load_model) or "
                ".weights.h5 (weights for model.load_weights)",
                path,
            )
        if os.path.isdir(out):
            raise invalid("path", "a file name, not a folder (e.g. folder/model.keras)", path)
        if os.path.lexists(out) and not overwrite:
            raise invalid("path", "a path that does not exist yet (or `overwrite=True`)", path)
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise invalid("path", "a file in an existing folder", path)

        def read(record: Record, local: str) -> Any:
            entry = record.files[0]
            expected = SealedFile(entry.size, entry.checksum)
            return inspect.exportable(
                local, expected, name=entry.path, kind=record.kind, target=target
            )

        record, data = self.load(which, read, monitor=monitor, mode=mode, run=run)
        with atomic_local_file(out) as dest:
            dest.write(memoryview(data))
        return record

    def resolve(
        self,
        which: str = "latest",
        *,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
        kind: str | None = None,
        run: str | None = None,
    ) -> Record:
        """The verified record for a name, `"latest"` or `"best"`.

        Args:
            which: A checkpoint name, `"latest"` or `"best"`.
            monitor: For `"best"`: the metric; defaults to the one the writing callback monitored.
            mode: For `"best"`: `"min"`, `"max"` or `"auto"` (the mode the writing callback
                recorded for the metric, else from the metric's name).
            owner: Consider only the checkpoints of this callback (`ModelCheckpoint.owner`).
            kind: Consider only checkpoints of this kind (`"model"` for `load_model`).
            run: For `"latest"`/`"best"`: a run id, `"all"`, or None: the newest run (see
                `checkpoints`). A name is looked up in every run.

        For `"latest"` and `"best"` a damaged checkpoint is skipped with a warning that names the
        damaged file, and the next one that verifies is used. A damaged named checkpoint raises.

        Raises:
            CheckpointNotFoundError: nothing matches.
            CorruptCheckpointError: the named checkpoint, or every candidate, is damaged.
        """
        return self._pick(which, None, monitor=monitor, mode=mode, owner=owner, kind=kind, run=run)[
            0
        ]

    def _candidates(
        self,
        which: str,
        *,
        monitor: str | None,
        mode: str,
        owner: str | None,
        kind: str | None,
        run: str | None,
    ) -> list[Record]:
        if which not in ("latest", "best"):
            return [self.get(which)]
        found = selection.candidates(
            self.checkpoints(owner, run=run),
            which,
            monitor=monitor,
            mode=mode,
            kind=kind,
            where=self.directory,
        )
        if which == "best" and run is None:
            self._note_default_best(found[0], monitor, mode, owner)
        return found

    def load(
        self,
        which: str,
        reader: Callable[[Record, str], T],
        *,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
        kind: str | None = None,
        run: str | None = None,
    ) -> tuple[Record, T]:
        """`reader(record, local_path)` of the first candidate for `which` that is whole.

        `reader` gets the record and a local path holding its main file, reads it and checks its
        bytes against the record in the same pass (raising `CorruptCheckpointError` if they
        differ); the checkpoint's other files are verified first. For `"latest"` and `"best"` a
        damaged candidate is skipped, with one warning naming it and the checkpoint used instead;
        a damaged named checkpoint raises. `load_model` and `load_weights` are built on it.

        Args:
            which: A checkpoint name, `"latest"` or `"best"`.
            reader: Reads one checkpoint.
            monitor: As for `resolve`.
            mode: As for `resolve`.
            owner: As for `resolve`.
            kind: As for `resolve`.
            run: As for `resolve`.

        Raises:
            CheckpointNotFoundError: nothing matches.
            CorruptCheckpointError: the named checkpoint, or every candidate, is damaged.

        Example:

        >>> import os, tempfile
        >>> manager = CheckpointManager(tempfile.mkdtemp())
        >>> with manager.stage() as folder:
        ...     _ = open(os.path.join(folder, "w"), "wb").write(b"weights")
        ...     _ = manager.commit({"w.bin": os.path.join(folder, "w")}, name="w", kind="weights")
        >>> record, data = manager.load("latest", lambda r, path: open(path, "rb").read())
        >>> record.name, data
        ('w', b'weights')
        >>> manager.close()
        """

        def use(record: Record) -> T:
            with self.storage.local_path(record.path) as path:
                return reader(record, path)

        return self._pick(which, use, monitor=monitor, mode=mode, owner=owner, kind=kind, run=run)

    def _pick(
        self,
        which: str,
        use: Callable[[Record], Any] | None,
        *,
        monitor: str | None,
        mode: str,
        owner: str | None,
        kind: str | None,
        run: str | None = None,
    ) -> tuple[Record, Any]:
        """`_first_good` over the candidates, listed again while a writer deletes them all."""
        for _ in range(_REREADS):
            candidates = self._candidates(
                which, monitor=monitor, mode=mode, owner=owner, kind=kind, run=run
            )
            found = self._first_good(which, candidates, use)
            if found is not None:
                return found
        raise CheckpointNotFoundError(
            f"Every candidate for {which!r} in {self.directory} was deleted while it was read "
            "(a writer is pruning it); try again."
        )

    def _first_good(
        self, which: str, candidates: list[Record], use: Callable[[Record], Any] | None
    ) -> tuple[Record, Any] | None:
        """`use(record)` of the first candidate that is whole; a damaged one is skipped (for
        `"latest"`/`"best"`, with a warning naming the damaged file and the one used instead) or
        raises (a named one).

        With `use` None, each candidate is verified by reading its files. Otherwise `use` reads
        the main file and checks it against its record in the same pass (`h5read`); the other
        files are verified first. A record changed meanwhile is checked again
        (`_checked`). None if every candidate was deleted meanwhile (and none was damaged).
        """
        named = which not in ("latest", "best")
        damaged: list[str] = []
        for candidate in candidates:
            record, problems = candidate, []
            if use is None or len(candidate.files) > 1:
                checked = self._checked(candidate)
                if checked is None:
                    if named:
                        raise CheckpointNotFoundError(f"Checkpoint {which!r} was deleted meanwhile")
                    continue  # deleted while we looked
                record, problems = checked[0], list(checked[1])
            value: Any = None
            if use is not None and not problems:
                if not self.storage.exists(record.path):
                    if self._checked(record) is None and not named:
                        continue  # deleted while we looked
                    problems = [f"{record.path}: missing file"]
                else:
                    used = self._use(record, use)
                    if used is None:  # deleted while we read it
                        if named:
                            raise CheckpointNotFoundError(
                                f"Checkpoint {which!r} was deleted meanwhile"
                            )
                        continue
                    record, value, problems = used
            if not problems:
                if damaged:
                    warnings.warn(
                        "; ".join(damaged) + f"; using {record.name} instead.", stacklevel=4
                    )
                return record, value
            if named:
                raise CorruptCheckpointError(
                    f"Checkpoint {record.name} in {self.directory} is damaged: "
                    + "; ".join(problems)
                )
            damaged.append(
                f"Checkpoint {record.name} in {self.directory} is damaged ("
                + "; ".join(problems)
                + ")"
            )
        if not damaged:
            return None
        raise CorruptCheckpointError(
            "; ".join(damaged) + f". Every candidate for {which!r} in {self.directory} is "
            f"damaged; run `keras-ckpt verify {self.directory}` for details."
        )

    def _use(
        self, record: Record, use: Callable[[Record], Any]
    ) -> tuple[Record, Any, list[str]] | None:
        """(record, value, problems) of `use(record)`, or None if a writer deleted it meanwhile;
        a record a writer replaced meanwhile is read again (a few times at most), a damaged one
        reported as problems."""
        for _ in range(_REREADS):
            try:
                return record, use(record), []
            except CorruptCheckpointError as e:
                again = self._checked(record)  # a writer may have replaced it meanwhile
                if again is None:
                    return None
                if again[1] or again[0] == record:
                    return record, None, [str(e)]
                record = again[0]
        return record, None, [f"{record.path}: changed while it was read; try again"]

    def load_model(
        self,
        which: str = "latest",
        *,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
        run: str | None = None,
        **load_kwargs: Any,
    ) -> Any:
        """Loads a full-model checkpoint as `keras.saving.load_model` would.

        The file is read once: its checksum is checked on the bytes the model is loaded from
        (`keras_ckpt.format.h5read`), so a damaged `"latest"` or `"best"` is skipped for the
        previous good one, with a warning naming the damaged file.

        Args:
            which: A checkpoint name, `"latest"` or `"best"`.
            monitor: For `"best"`: the metric; defaults to the one the writing callback monitored.
            mode: For `"best"`: `"min"`, `"max"` or `"auto"`.
            owner: Only this callback's checkpoints (`ModelCheckpoint.owner`); `"latest"` and
                `"best"` consider full-model checkpoints only.
            run: For `"latest"`/`"best"`: a run id, `"all"`, or None: the newest run (see
                `checkpoints`); a line says so when an older run holds a better `"best"`.
            **load_kwargs: Passed to `keras.saving.load_model` (`custom_objects`, `compile`, ...).

        Raises:
            ValueError: the checkpoint holds weights only (use `load_weights` on a built model).
        """

        def load(record: Record, path: str) -> Any:
            entry = record.files[0]
            expected = SealedFile(entry.size, entry.checksum)
            return format_for(record).load_model(path, expected, name=entry.path, **load_kwargs)

        kind = "model" if which in ("latest", "best") else None
        return self.load(which, load, monitor=monitor, mode=mode, owner=owner, kind=kind, run=run)[
            1
        ]

    def load_weights(
        self,
        model: Any,
        which: str = "latest",
        *,
        monitor: str | None = None,
        mode: str = "auto",
        owner: str | None = None,
        run: str | None = None,
    ) -> Record:
        """Loads a checkpoint's weights (and optimizer state) into `model`; returns its record.

        Unlike a bare `model.load_weights`, the optimizer of a compiled model is built first, so its
        state (step count, moments) is restored instead of silently skipped. Any kind of
        checkpoint works: a full model, weights, or a `BackupAndRestore` backup.

        Args:
            model: A built Keras model with the checkpoint's architecture.
            which: A checkpoint name, `"latest"` or `"best"`.
            monitor: For `"best"`: the metric; defaults to the one the writing callback monitored.
            mode: For `"best"`: `"min"`, `"max"` or `"auto"`.
            owner: Only this callback's checkpoints (`ModelCheckpoint.owner`).
            run: For `"latest"`/`"best"`: a run id, `"all"`, or None: the newest run.
        """
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)

        def load(record: Record, path: str) -> None:
            entry = record.files[0]
            expected = SealedFile(entry.size, entry.checksum)
            format_for(record).load_weights(model, path, expected, name=entry.path)

        return self.load(which, load, monitor=monitor, mode=mode, owner=owner, run=run)[0]

    # ----------------------------------------------------------------- writing

    def open_for_writing(self) -> None:
        """Takes the directory's writer lock (once) and completes what a crashed writer left.

        Called by every writing method; call it yourself to fail early when another process holds
        the directory. `close()` gives the lock back.

        Raises:
            DirectoryLockedError: another live process writes into this directory.
            UnsafeDirectoryError: `.keras_ckpt` or its lock file is a symbolic link.
        """
        self._journal.open()

    def close(self) -> None:
        """Releases the writer lock taken by this manager (if any)."""
        self._journal.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def stage(self) -> Iterator[str]:
        """A fresh local folder to write a checkpoint's files into before `commit`.

        Example:
            with manager.stage() as folder:
                model.save(os.path.join(folder, "model.keras"))
                manager.commit({"model-001.keras": os.path.join(folder, "model.keras")},
                               name="model-001.keras", kind="model")
        """
        with self._journal.staging() as folder:
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
            sealed: Final path mapped to the `storage.SealedFile` (size, checksum) its writer
                computed while writing and fsyncing it; such a file is not read back again
                (only its size is checked).

        Raises:
            ForeignFileError: a final path holds a file no record of this directory names.
            LockLostError: the directory or its lock was deleted or replaced meanwhile.
            OSError: the files or the record could not be written. The checkpoint then does not
                exist and the files this commit placed are removed again.
        """
        validate_name(name)
        if kind not in KINDS:
            raise ValueError(
                f"Invalid value for argument `kind`. Expected one of {KINDS}. "
                f"Received: kind={kind!r}"
            )
        if not files:
            raise ValueError("A checkpoint needs at least one file. Received: files={}")
        for relpath in files:
            validate_path(relpath)
        sealed = dict(sealed or {})
        for relpath in sealed:
            if relpath not in files:
                raise ValueError(
                    "Invalid value for argument `sealed`. Expected paths among `files`. "
                    f"Received: sealed={sorted(sealed)!r}"
                )
        return self._journal.commit(
            {p: os.fspath(source) for p, source in files.items()},
            sealed=sealed,
            name=name,
            kind=kind,
            epoch=int(epoch),
            step=int(step),
            global_step=int(global_step),
            metrics=metrics,
            owner=owner,
            owner_state=dict(owner_state or {}),
        )

    def protect(self, name: str) -> None:
        """Never let `prune` delete checkpoint `name` here (the one a run resumed from, say)."""
        self._protected.add(validate_name(name))

    def prune(
        self,
        policy: Policy | None = None,
        *,
        dry_run: bool = False,
        owner: str | None = None,
        run: str | None = None,
    ) -> PruneResult:
        """Deletes the checkpoints a policy does not keep; returns what was kept and why.

        With `policy`, it judges the checkpoints of `run` together and keeps their newest. Without
        one, each run's recorded policy judges that run's checkpoints only, callback by callback,
        as the callback itself prunes: each keeps the newest checkpoint of its run, a `keep_best`
        whose metric no checkpoint holds yet waits, and a run whose callback recorded no policy
        keeps everything. Checkpoints of other runs are never candidates.

        Any protected checkpoint (`protect`) is kept. Only checkpoints with a record are
        candidates: files without one are never touched. A checkpoint whose files cannot be
        deleted (an immutable file, a read-only mount) stays, whole and listed: a warning names
        the file and the reason, `PruneResult.failed` lists it, and the next prune tries again, so
        retention never stops a training run.

        Args:
            policy: A `keras_ckpt.policies` policy (or several joined with `|`); None: the policy
                each run's callback recorded.
            dry_run: Only report what would be deleted.
            owner: Consider only this callback's checkpoints.
            run: A run id, `"all"`, or None: the newest run (see `checkpoints`).

        Raises:
            ValueError: `policy` is None and no checkpoint in scope records a policy that can
                judge (nothing is deleted then), or a `KeepBest` ranks by a metric no checkpoint
                records.
        """
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(
                "Invalid value for argument `policy`. Expected a keras_ckpt.policies policy or "
                f"None (the recorded ones). Received: policy={policy!r}"
            )
        check_bool("dry_run", dry_run)
        _check_owner(owner)
        if dry_run:
            return self._prune(policy, True, owner, run)
        # One prune at a time per directory in this process, judging the records as they are
        # (a commit or prune of another thread waits), so no thread deletes from a stale list.
        with self._journal.open().mutex:
            return self._prune(policy, False, owner, run)

    def _prune(
        self, policy: Policy | None, dry_run: bool, owner: str | None, run: str | None
    ) -> PruneResult:
        records = self.checkpoints(owner, run=run)
        verdicts: dict[str, tuple[str, ...]] = {}
        because: dict[str, str] = {}  # name -> the policy that did not keep it
        applied: list[tuple[str, str | None, Policy | None]] = []
        if policy is not None:
            recorded = set().union(*(r.metrics for r in records)) if records else set()
            for metric in sorted(ranked_metrics(policy) - recorded):
                if records:
                    raise ValueError(
                        f"KeepBest ranks by {metric!r}, which no checkpoint in {self.directory} "
                        f"records (metrics recorded: {', '.join(sorted(recorded)) or 'none'}). "
                        "Nothing was deleted; check the metric's name."
                    )
            verdict_list = judge(policy, records)
            for i, (record, reasons) in enumerate(zip(records, verdict_list, strict=True)):
                verdicts[record.name] = ("newest",) * (i == len(records) - 1) + tuple(reasons)
                because[record.name] = f"not kept by {policy!r}"
            scope = run if run is not None else run_ids.newest_run(records)
            applied.append((scope or ALL, owner, policy))
        else:
            groups: dict[tuple[str, str | None], list[Record]] = {}
            for record in records:
                groups.setdefault((run_ids.run_of(record), record.owner), []).append(record)
            judged = False
            for (run_id, group_owner), group in groups.items():
                try:
                    recorded_policy = group[-1].memory.retention_policy()
                except ValueError:
                    recorded_policy = None
                applied.append((run_id, group_owner, recorded_policy))
                metrics = {m for r in group for m in r.metrics}
                active = applicable(recorded_policy, metrics) if recorded_policy else None
                if active is None:
                    held = "waits for its metric" if recorded_policy else "no recorded policy"
                    for record in group:
                        verdicts[record.name] = (held,)
                    continue
                judged = True
                newest = "newest" if len(groups) == 1 else "newest of its run"
                for i, (record, reasons) in enumerate(
                    zip(group, judge(active, group), strict=True)
                ):
                    verdicts[record.name] = (newest,) * (i == len(group) - 1) + tuple(reasons)
                    because[record.name] = f"not kept by {recorded_policy!r} (run {run_id})"
            if records and not judged:
                raise ValueError(
                    f"No checkpoint in {self.directory} (run {run or 'newest'}) records a "
                    "retention policy that can judge it "
                    + (
                        f"({', '.join(sorted({repr(p) for _, _, p in applied if p}))} rank by a "
                        "metric no checkpoint records yet)"
                        if any(p for _, _, p in applied)
                        else "(no policy is recorded)"
                    )
                    + "; nothing was deleted. Pass a policy (e.g. KeepLast(3))."
                )
        kept, doomed = [], []
        for record in records:
            reasons = verdicts[record.name]
            if record.name in self._protected:
                reasons = ("resumed from",) + tuple(reasons)
            if reasons:
                kept.append(KeptCheckpoint(record, tuple(reasons)))
            else:
                doomed.append(record)
        failed = []
        if not dry_run:
            for record in doomed:
                try:
                    self.delete(record.name, reason=because[record.name])
                except OSError as error:
                    # Retention is never worth a run: the checkpoint stays, the next prune retries.
                    failed.append(record)
                    path = error.filename or f"{self.directory}/{record.path}"
                    warnings.warn(
                        f"Pruning {self.directory}: could not delete checkpoint {record.name} "
                        f"({path}: {error.strerror or error}). It is kept for now; the next "
                        "prune tries again.",
                        stacklevel=3,
                    )
        deleted = tuple(r for r in doomed if r not in failed)
        return PruneResult(
            tuple(kept), deleted, dry_run, failed=tuple(failed), policies=tuple(applied)
        )

    def delete(self, name: str, *, reason: str | None = None) -> None:
        """Deletes one checkpoint: its record first, then its files.

        A pending copy of the record covers a crash in between: the next writer restores the
        checkpoint if all its files are still there, or removes what is left of them.

        Args:
            name: The checkpoint.
            reason: Why (`prune` says which policy did not keep it); for the directory's history.
        """
        self._journal.delete(name, reason=reason)

    def remove_if_unused(self) -> bool:
        """Removes a local directory left with no checkpoint and nothing but keras-ckpt's own
        bookkeeping (its lock, its history, empty work folders); True if it did.

        What `BackupAndRestore(delete_checkpoint=True)` does with its emptied `backup_dir`, as
        Keras's does, but with the writer lock held and `rmdir`/`unlink` of our own names only:
        a file anyone else put there keeps the directory. Releases the lock.
        """
        if not isinstance(self.storage, LocalStorage):
            return False
        self.open_for_writing()
        try:
            if self._all():
                return False
            bookkeeping = ("lock", run_history.HISTORY_PATH.rsplit("/", 1)[-1])
            return self.storage.remove_if_only_bookkeeping(bookkeeping)
        finally:
            self.close()

    def update_owner_state(self, name: str, owner_state: Mapping[str, Any]) -> Record:
        """Rewrites a record's callback state (its files are untouched)."""
        return self._journal.rewrite(name, owner_state)


def _check_owner(owner: object) -> None:
    if owner is not None and (not isinstance(owner, str) or not owner):
        raise invalid("owner", "a callback's owner string (`ModelCheckpoint.owner`) or None", owner)
