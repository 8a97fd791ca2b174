"""The run history: one JSON line per committed save and per deletion, kept after pruning.

Records describe the checkpoints that exist; the history remembers every one that ever did, so
`keras-ckpt plot` can draw the whole run and `keras-ckpt prune --simulate` can replay a retention
policy over it. This module owns the format and is pure (no files, no Keras): `encode_*` turn events
into lines, `parse` reads them back, `replay` joins saves with their deletions and `simulate` runs a
policy over the saves. The manager appends the lines through `Storage.append`.

A line is a JSON object with `"event"` (`"save"` or `"delete"`) and `"v"` (this format's version).
Appends are single writes of whole lines, so a kill can only leave the last line torn; `parse`
skips any line that is not a whole JSON object (and the writer starts a new line after a torn one),
so a torn line is ignored, never an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt.policies import Policy

__all__ = [
    "HISTORY_PATH",
    "HistoryEntry",
    "Simulation",
    "encode_delete",
    "encode_save",
    "parse",
    "replay",
    "simulate",
]

HISTORY_PATH = ".keras_ckpt/history.jsonl"
VERSION = 1


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One committed save, whether or not it still exists.

    Attributes:
        name, kind, owner, epoch, step, global_step, wall_time, metrics, size, sequence: As in the
            checkpoint's record when it was committed (`size` is the total of its files).
        run: The run that saved it, as its record named it (None if the log and the record do
            not say; `keras_ckpt.runs.run_of` then takes its owner's run).
        exists: True while the checkpoint is in the directory.
        deleted_reason: Why it was deleted (the retention policy that did not keep it, or
            `"replaced by a newer save of the same name"`), None while it exists or when unknown.
        deleted_time: Unix time of the deletion, when known.

    Example:

    >>> HistoryEntry("w-1.bin", "weights", epoch=1, size=7, exists=False,
    ...              deleted_reason="not kept by KeepLast(n=1)").exists
    False
    """

    name: str
    kind: str
    owner: str | None = None
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    wall_time: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    size: int = 0
    sequence: int = 0
    exists: bool = True
    deleted_reason: str | None = None
    deleted_time: float | None = None
    run: str | None = None


def _line(data: dict[str, Any]) -> bytes:
    return (
        json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
    ).encode()


def encode_save(record: Any) -> bytes:
    """The history line for a committed `keras_ckpt.records.Record`.

    Example:

    >>> from keras_ckpt.records import FileEntry, Record
    >>> record = Record("w.bin", "weights", (FileEntry("w.bin", 7, "crc32c:0"),), sequence=3)
    >>> parse(encode_save(record))[0]["name"]
    'w.bin'
    """
    return _line(
        {
            "v": VERSION,
            "event": "save",
            **_record_event(record),
        }
    )


def encode_delete(name: str, sequence: int, wall_time: float, reason: str | None) -> bytes:
    """The history line for the deletion of checkpoint `name` (its record's `sequence`).

    Example:

    >>> parse(encode_delete("w.bin", 3, 0.0, "not kept by KeepLast(n=1)"))[0]["reason"]
    'not kept by KeepLast(n=1)'
    """
    return _line(
        {
            "v": VERSION,
            "event": "delete",
            "name": name,
            "sequence": sequence,
            "wall_time": wall_time,
            "reason": reason,
        }
    )


def parse(data: bytes) -> list[dict[str, Any]]:
    """The events of a history log, in order; torn or foreign lines are skipped.

    Example:

    >>> log = encode_delete("a", 1, 0.0, None) + b'{"v":1,"event":"sa'  # killed mid-append
    >>> [e["name"] for e in parse(log)]
    ['a']
    """
    lines = [line for line in data.split(b"\n") if line.strip()]
    try:  # one parse of the whole log; line by line only if a line is torn or foreign
        decoded = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:  # UnicodeDecodeError is a ValueError too
        decoded = []
        for line in lines:
            try:
                decoded.append(json.loads(line))
            except ValueError:
                continue
    return [
        event
        for event in decoded
        if isinstance(event, dict)
        and event.get("v") == VERSION
        and event.get("event") in ("save", "delete")
        and isinstance(event.get("name"), str)
    ]


def _record_event(record: Any) -> dict[str, Any]:
    return {
        "name": record.name,
        "kind": record.kind,
        "owner": record.owner,
        "epoch": record.epoch,
        "step": record.step,
        "global_step": record.global_step,
        "wall_time": record.wall_time,
        "metrics": dict(record.metrics),
        "size": record.size,
        "sequence": record.sequence,
        "run": record.memory.run,
    }


def _entry(
    event: Mapping[str, Any], exists: bool, deleted: tuple[float | None, str | None]
) -> HistoryEntry | None:
    try:
        metrics = event.get("metrics") or {}
        return HistoryEntry(
            name=event["name"],
            kind=str(event.get("kind", "")),
            owner=event.get("owner"),
            epoch=int(event.get("epoch", 0)),
            step=int(event.get("step", 0)),
            global_step=int(event.get("global_step", 0)),
            wall_time=float(event.get("wall_time", 0.0)),
            metrics={
                k: float(v)
                for k, v in metrics.items()
                if type(v) in (float, int) and math.isfinite(v)
            },
            size=int(event.get("size", 0)),
            sequence=int(event.get("sequence", 0)),
            exists=exists,
            deleted_reason=None if exists else deleted[1],
            deleted_time=None if exists else deleted[0],
            run=run if isinstance(run := event.get("run"), str) and run else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _key(event: Mapping[str, Any]) -> tuple[str, int] | None:
    sequence = event.get("sequence", 0)
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        return None
    return event["name"], sequence


def replay(events: Iterable[Mapping[str, Any]], existing: Iterable[Any]) -> list[HistoryEntry]:
    """Every save, oldest first, joined with its deletion and with what exists now.

    Args:
        events: `parse`'s output.
        existing: The records in the directory now. One that the log does not hold (written
            before the history existed, or its line was lost to a kill) is added in its place.

    Example:

    >>> from keras_ckpt.records import FileEntry, Record
    >>> old = Record("a", "weights", (FileEntry("a", 1, "c"),), sequence=1)
    >>> new = Record("b", "weights", (FileEntry("b", 1, "c"),), sequence=2)
    >>> log = encode_save(old) + encode_save(new) + encode_delete("a", 1, 9.0, "not kept")
    >>> [(e.name, e.exists, e.deleted_reason) for e in replay(parse(log), [new])]
    [('a', False, 'not kept'), ('b', True, None)]
    """
    current = {(r.name, r.sequence): r for r in existing}
    saves: dict[tuple[str, int], Mapping[str, Any]] = {}
    deletions: dict[tuple[str, int], tuple[float | None, str | None]] = {}
    for event in events:
        key = _key(event)
        if key is None:
            continue  # JSON, but not a line this module wrote: skipped like a torn one
        if event["event"] == "save":
            saves[key] = event
            continue
        reason, when = event.get("reason"), event.get("wall_time")
        deletions[key] = (
            float(when) if isinstance(when, (int, float)) else None,
            reason if isinstance(reason, str) else None,
        )
    for key, record in current.items():
        if key not in saves:
            saves[key] = _record_event(record)
        elif not saves[key].get("run") and record.memory.run:  # a line older than runs
            saves[key] = {**saves[key], "run": record.memory.run}
    newest_of = {name: sequence for name, sequence in sorted(saves)}
    out = []
    for key in sorted(saves, key=lambda k: k[1]):
        exists = key in current
        deleted = deletions.get(key, (None, None))
        if not exists and deleted[1] is None and newest_of[key[0]] != key[1]:
            deleted = (deleted[0], "replaced by a newer save of the same name")
        entry = _entry(saves[key], exists, deleted)
        if entry is not None:
            out.append(entry)
    return out


@dataclass(frozen=True)
class Simulation:
    """What a retention policy would have done over a run's saves (`simulate`).

    Attributes:
        kept: The saves it would keep at the end, oldest first.
        deleted: The saves it would have deleted, in the order they were deleted.
        final_bytes: Disk the kept saves use at the end.
        peak_bytes: The most disk the saves would have used at any moment.

    Example:

    >>> Simulation(kept=(), deleted=(), final_bytes=0, peak_bytes=0).peak_bytes
    0
    """

    kept: tuple[HistoryEntry, ...]
    deleted: tuple[HistoryEntry, ...]
    final_bytes: int
    peak_bytes: int


def simulate(policy: Policy, saves: Sequence[HistoryEntry]) -> Simulation:
    """Replays `policy` as a callback applies it: after every save, prune what it does not keep.

    The newest save is always kept, as `CheckpointManager.prune` does. A save of a name that
    exists replaces it. Only the history is read: nothing is deleted.

    Example:

    >>> from keras_ckpt.policies import KeepLast
    >>> saves = [HistoryEntry(f"w-{i}", "weights", epoch=i, size=10, sequence=i)
    ...          for i in range(1, 6)]
    >>> result = simulate(KeepLast(2), saves)
    >>> [e.name for e in result.kept], result.final_bytes, result.peak_bytes
    (['w-4', 'w-5'], 20, 30)
    """
    live: list[HistoryEntry] = []
    deleted: list[HistoryEntry] = []
    peak = 0
    for save in sorted(saves, key=lambda e: e.sequence):
        live = [e for e in live if e.name != save.name] + [save]
        peak = max(peak, sum(e.size for e in live))
        verdicts = policy.reasons(live)
        survivors = []
        for i, (entry, reasons) in enumerate(zip(live, verdicts, strict=True)):
            if reasons or i == len(live) - 1:
                survivors.append(entry)
            else:
                deleted.append(entry)
        live = survivors
    return Simulation(tuple(live), tuple(deleted), sum(e.size for e in live), peak)
