"""Runs: which `fit` wrote which checkpoints of a directory. Records in, runs out.

Every record a callback writes names its run (`CallbackMemory.run`): a fresh `fit` starts a new
run, shared by the keras-ckpt callbacks of that `fit`; a resumed one (or one continuing with
`initial_epoch`) keeps its run. The records that name no run (written by `BackupAndRestore`, by
`CheckpointManager.commit` without a callback, or by an older keras-ckpt) form one run together,
`"unrecorded"`: what the directory was before runs were recorded.

The newest run is the run of the newest checkpoint, so `latest` is the same in the newest run as
in the whole directory. The manager and the CLI default to the newest run; `run="all"` is the whole
directory. Pure: no files, no Keras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt.policies import Policy

__all__ = ["ALL", "UNRECORDED", "Run", "group", "newest_run", "run_of"]

ALL = "all"
UNRECORDED = "unrecorded"


def run_of(record: Any) -> str:
    """The run a record (or a history entry) belongs to.

    Example:

    >>> from keras_ckpt.records import CallbackMemory, FileEntry, Record
    >>> files = (FileEntry("m", 1, "crc32c:0"),)
    >>> run_of(Record("m", "model", files, owner_state=CallbackMemory(run="3f2a").to_owner_state()))
    '3f2a'
    >>> run_of(Record("m", "model", files, owner="BackupAndRestore"))
    'unrecorded'
    """
    run = getattr(record, "run", None)
    if run is None:
        memory = getattr(record, "memory", None)
        run = memory.run if memory is not None else None
    return str(run) if run else UNRECORDED


@dataclass(frozen=True)
class Run:
    """One run of a checkpoint directory (`CheckpointManager.runs()`).

    Attributes:
        id: The run id, as `run=` and `keras-ckpt --run` take it.
        first_time: Unix time of its first save (pruned saves included, as far as the run
            history reaches).
        last_time: Unix time of its last save.
        checkpoints: How many of its checkpoints exist now.
        saves: How many saves it made (as far as the run history reaches).
        owners: The callbacks that wrote its checkpoints.
        monitor: The metric "best" means in this run (the one its callback ranked by).
        mode: `"min"` or `"max"` for `monitor`, when recorded.
        policies: The retention policy each owner recorded (None: none, or not rebuildable).
        newest: True for the newest run (the default of every `run=`).

    Example:

    >>> Run("3f2a", 0.0, 60.0, checkpoints=3, saves=5).id
    '3f2a'
    """

    id: str
    first_time: float
    last_time: float
    checkpoints: int = 0
    saves: int = 0
    owners: tuple[str, ...] = ()
    monitor: str | None = None
    mode: str | None = None
    policies: Mapping[str, Policy | None] = field(default_factory=dict)
    newest: bool = False


def newest_run(records: Sequence[Any]) -> str | None:
    """The run of the newest record (records oldest first), or None without records."""
    return run_of(records[-1]) if records else None


def group(records: Sequence[Any], saves: Sequence[Any] = ()) -> list[Run]:
    """The runs of `records` (oldest first) and of `saves` (history entries), oldest run first:
    ordered by their newest existing checkpoint, runs whose checkpoints are all gone first.

    Example:

    >>> from keras_ckpt.records import CallbackMemory, FileEntry, Record
    >>> def record(name, run, sequence):
    ...     state = CallbackMemory(run=run, monitor="val_loss").to_owner_state()
    ...     return Record(name, "model", (FileEntry(name, 1, "crc32c:0"),),
    ...                   owner_state=state, sequence=sequence, wall_time=sequence)
    >>> runs = group([record("a", "r1", 1), record("b", "r2", 2), record("c", "r1", 3)])
    >>> [(r.id, r.checkpoints, r.newest) for r in runs]
    [('r2', 1, False), ('r1', 2, True)]
    """
    by_run: dict[str, list[Any]] = {}
    for record in records:
        by_run.setdefault(run_of(record), []).append(record)
    history: dict[str, list[Any]] = {}
    for save in saves:
        history.setdefault(run_of(save), []).append(save)
    newest = newest_run(records)
    out = []
    for run_id in set(by_run) | set(history):
        existing = by_run.get(run_id, [])
        everything = history.get(run_id) or existing
        times = [s.wall_time for s in everything] + [r.wall_time for r in existing]
        policies: dict[str, Policy | None] = {}
        for record in existing:  # the newest record of each owner says its policy
            try:
                policies[str(record.owner)] = record.memory.retention_policy()
            except ValueError:
                policies[str(record.owner)] = None
        monitor, mode = None, None
        for record in reversed(existing):
            monitor, mode = record.memory.ranked_monitor
            if monitor:
                break
        owners = tuple(dict.fromkeys(str(s.owner) for s in [*everything, *existing]))
        out.append(
            Run(
                id=run_id,
                first_time=min(times),
                last_time=max(times),
                checkpoints=len(existing),
                saves=max(len(everything), len(existing)),
                owners=owners,
                monitor=monitor,
                mode=mode,
                policies=policies,
                newest=run_id == newest,
            )
        )

    def order(run: Run) -> tuple[int, float, float]:
        existing = by_run.get(run.id, [])
        last = max((r.sequence for r in existing), default=-1)
        saved = max((s.sequence for s in history.get(run.id, [])), default=-1)
        return (last, saved, run.last_time)

    return sorted(out, key=order)
