"""Which checkpoints a name, `"latest"`, `"best"` or `"best:N"` means: records in, records out.

The manager, averaging and the CLI all pick checkpoints through these functions, so "best" names
the same checkpoint everywhere: the metric is the one the writing callback ranked by
(`CallbackMemory.ranked_monitor`) unless one is given, ties go to the newest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from keras_ckpt._validate import check_choice, invalid
from keras_ckpt.errors import CheckpointNotFoundError
from keras_ckpt.policies import infer_mode, rank
from keras_ckpt.records import Record

__all__ = ["candidates", "check_ranked", "named", "rank_by", "recorded_monitor", "select"]

_SELECTOR = re.compile(r"(last|best):(.*)")
_KIND_NAMES = {"model": "full model", "weights": "weights file", "training_state": "backup"}


def recorded_monitor(records: Sequence[Record]) -> tuple[str | None, str | None]:
    """The (metric, mode) "best" means for `records`: what the newest one's callback ranked by;
    mode None if not settled, (None, None) if no record says.

    Example:

    >>> from keras_ckpt.records import CallbackMemory, FileEntry
    >>> memory = CallbackMemory(monitor="val_loss", mode="min", uses_monitor=True)
    >>> record = Record("m", "model", (FileEntry("m", 1, "crc32c:0"),),
    ...                 owner_state=memory.to_owner_state())
    >>> recorded_monitor([record])
    ('val_loss', 'min')
    """
    for record in reversed(records):
        monitor, mode = record.memory.ranked_monitor
        if monitor:
            return monitor, mode
    return None, None


def rank_by(
    records: Sequence[Record], monitor: str | None, mode: str, *, where: str
) -> list[Record]:
    """`records` that hold `monitor`, best first (newest on ties).

    Args:
        records: Oldest first.
        monitor: A metric name; None: the recorded one (`recorded_monitor`).
        mode: `"min"`, `"max"`, or `"auto"`: the recorded mode for the recorded metric, else
            inferred from the name.
        where: The directory, for messages.

    Raises:
        ValueError: no metric given or recorded, or no way to tell its direction.

    Example:

    >>> from keras_ckpt.records import FileEntry
    >>> records = [Record(n, "model", (FileEntry(n, 1, "crc32c:0"),), metrics={"loss": v})
    ...            for n, v in (("a", 0.5), ("b", 0.2), ("c", 0.2))]
    >>> [r.name for r in rank_by(records, "loss", "auto", where="runs")]
    ['c', 'b', 'a']
    """
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise invalid("monitor", "a metric name, or None for the recorded one", monitor)
    check_choice("mode", mode, ("auto", "min", "max"))
    recorded, recorded_mode = recorded_monitor(records)
    if monitor is None:
        if recorded is None:
            raise ValueError(
                'The best checkpoint needs `monitor=` (e.g. monitor="val_loss"): no checkpoint '
                f"in {where} records the metric its callback monitored."
            )
        monitor = recorded
    if mode == "auto":
        mode = recorded_mode if monitor == recorded and recorded_mode else infer_mode(monitor)
    return [records[i] for i in rank(records, monitor, mode)]


def check_ranked(records: Sequence[Record], monitor: str | None, *, where: str) -> None:
    """Raises if `records` exist but none has `monitor` (None: the recorded one), naming the
    metrics they have: "best" then means nothing, which must not pass for "no checkpoint".

    Example:

    >>> from keras_ckpt.records import FileEntry
    >>> check_ranked([Record("a", "model", (FileEntry("a", 1, "crc32c:0"),),
    ...               metrics={"loss": 0.5})], "val_loss", where="runs")
    Traceback (most recent call last):
    keras_ckpt.errors.CheckpointNotFoundError: No checkpoint in runs has `val_loss` in its
    metrics (1 checkpoints have: loss). ...
    """
    if not records:
        return
    metric = monitor if monitor is not None else recorded_monitor(records)[0]
    if metric is None or any(metric in r.metrics for r in records):
        return
    have = sorted({m for r in records for m in r.metrics})
    raise CheckpointNotFoundError(
        f"No checkpoint in {where} has `{metric}` in its metrics ({len(records)} checkpoints "
        f"have: {', '.join(have) or 'none'}). Pass one of those as `monitor`; a callback "
        "records only the metrics in the logs of its saves (no `val_` metrics without validation)."
    )


def named(records: Sequence[Record], name: str, *, where: str) -> Record:
    """The record called `name`.

    Raises:
        CheckpointNotFoundError: none is; the message lists (the newest of) those that exist.
    """
    for record in records:
        if record.name == name:
            return record
    names = [r.name for r in records]
    shown = ", ".join(names[-10:]) if names else "none"
    raise CheckpointNotFoundError(
        f"No checkpoint named {name!r} in {where}. Checkpoints there: {shown}"
        + (f" (last 10 of {len(names)})" if len(names) > 10 else "")
    )


def select(
    records: Sequence[Record],
    selector: str | Sequence[str],
    *,
    monitor: str | None,
    mode: str,
    where: str,
) -> list[Record]:
    """The records `selector` names (`"last:N"`, `"best:N"` or a list of names), oldest first.

    Raises:
        ValueError: an unknown selector, `N` not a positive int, or fewer checkpoints than `N`.
    """
    check_choice("mode", mode, ("auto", "min", "max"))
    expected = '"last:N", "best:N" or a list of checkpoint names'
    if isinstance(selector, str):
        match = _SELECTOR.fullmatch(selector)
        if match is None:
            raise invalid("select", expected, selector)
        how, count_text = match.groups()
        if not count_text.isascii() or not count_text.isdigit() or int(count_text) < 1:
            raise invalid("select", f'"{how}:N" with N a positive integer', selector)
        count = int(count_text)
        scope = ""
        if how == "best":
            metric = monitor or recorded_monitor(records)[0]
            if metric is None:
                raise invalid(
                    "monitor",
                    '`select="best:N"` needs the metric to rank by: no checkpoint records the one '
                    "its callback monitored. Pass it as `monitor`",
                    monitor,
                )
            chosen = rank_by(records, monitor, mode, where=where)[:count]
            scope = f"with {metric!r} in their metrics"
        else:
            chosen = list(records[-count:])
        if len(chosen) < count:
            raise invalid(
                "select",
                f"at most as many checkpoints as {where} holds {scope}".rstrip()
                + f" ({len(chosen)})",
                selector,
            )
        return sorted(chosen, key=lambda r: r.sequence)
    if not isinstance(selector, Sequence) or not selector:
        raise invalid("select", expected, selector)
    names = list(selector)
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise invalid("select", "a list of distinct checkpoint names", selector)
    return sorted((named(records, n, where=where) for n in names), key=lambda r: r.sequence)


def candidates(
    records: Sequence[Record],
    which: str,
    *,
    monitor: str | None,
    mode: str,
    kind: str | None,
    where: str,
) -> list[Record]:
    """The records to try for `"latest"` or `"best"`, in order (only those of `kind`, if given).

    Raises:
        CheckpointNotFoundError: none fits; the message says why.
    """
    check_choice("mode", mode, ("auto", "min", "max"))
    if kind is not None and records and not any(r.kind == kind for r in records):
        kinds = " or ".join(sorted({r.kind.replace("_", " ") for r in records}))
        count = f"{len(records)} checkpoint" + ("" if len(records) == 1 else "s")
        raise CheckpointNotFoundError(
            f"No checkpoint in {where} to use as {which!r}: none of its {count} is a "
            f"{_KIND_NAMES.get(kind, kind)} (they hold {kinds} only)."
            + (
                " Build the model in code and call `load_weights(model, ...)` instead."
                if kind == "model"
                else ""
            )
        )
    if which == "latest":
        found = list(reversed(records))
    else:
        found = rank_by(records, monitor, mode, where=where)
        monitor = monitor or recorded_monitor(records)[0]
    found = [r for r in found if kind is None or r.kind == kind]
    if not found:
        raise CheckpointNotFoundError(
            f"No checkpoint in {where} to use as {which!r}"
            + (f" (none has {monitor!r} in its metrics)" if which == "best" else "")
        )
    return found
