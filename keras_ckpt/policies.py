"""Retention policies: which checkpoints to keep, and why.

A policy is a small frozen dataclass with one method over plain records, `reasons(records)`, that
returns for each record the reasons it is kept (an empty tuple: the policy does not keep it).
Records come oldest first. Policies touch no files and import no Keras; `CheckpointManager.prune`
applies them and always keeps the newest checkpoint, whatever the policy says.

Combine policies with `|`: the result keeps what any of them keeps.

Example:

>>> from keras_ckpt.policies import KeepBest, KeepLast
>>> policy = KeepBest(3, monitor="val_loss") | KeepLast(1)
>>> policy
AnyOf(policies=(KeepBest(n=3, monitor='val_loss', mode='min'), KeepLast(n=1)))
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from keras_ckpt._validate import check_choice, check_count, check_seconds, invalid

__all__ = [
    "CheckpointInfo",
    "Policy",
    "KeepLast",
    "KeepBest",
    "KeepEvery",
    "MaxTotalBytes",
    "AnyOf",
    "applicable",
    "from_json",
    "from_keep_args",
    "infer_mode",
    "judge",
    "rank",
    "ranked_metrics",
    "to_json",
]

Reasons = tuple[str, ...]

# Metrics whose larger values are better; anything else needs an explicit mode.
_MAXIMISED = (
    "acc",
    "accuracy",
    "auc",
    "precision",
    "recall",
    "f1",
    "f1_score",
    "fbeta_score",
    "iou",
    "mean_iou",
    "r2_score",
)


class CheckpointInfo(Protocol):
    """What a policy may look at; `keras_ckpt.records.Record` provides it.

    Example:

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Info:  # any object with these five attributes will do
    ...     epoch: int = 0
    ...     global_step: int = 0
    ...     wall_time: float = 0.0
    ...     metrics: dict = field(default_factory=dict)
    ...     size: int = 1
    >>> KeepLast(1).reasons([Info(epoch=1), Info(epoch=2)])
    [(), ('last 1',)]
    """

    @property
    def epoch(self) -> int: ...
    @property
    def global_step(self) -> int: ...
    @property
    def wall_time(self) -> float: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def size(self) -> int: ...


def infer_mode(monitor: str) -> str:
    """`"min"` or `"max"` for a metric name, judged by its name alone.

    Example:

    >>> infer_mode("val_loss"), infer_mode("val_accuracy")
    ('min', 'max')

    Raises:
        ValueError: if the name does not tell (pass `mode` explicitly then).
    """
    name = monitor.removeprefix("val_")
    if name == "loss" or name.endswith("_loss") or name.endswith("error"):
        return "min"
    if name in _MAXIMISED or name.endswith("accuracy"):
        return "max"
    raise ValueError(
        f"Cannot tell whether `{monitor}` should be minimised or maximised. "
        'Pass mode="min" or mode="max".'
    )


def rank(records: Sequence[CheckpointInfo], monitor: str, mode: str) -> list[int]:
    """Indices of the records (oldest first) that hold `monitor`, best first; ties go to the newer.

    The one ranking behind `KeepBest`, `CheckpointManager.best` and the CLI's `list`, `show best`
    and `plot`, so they agree on ties. Records without `monitor` (or with NaN) are not ranked.

    Args:
        records: Oldest first.
        monitor: A metric name.
        mode: `"min"` or `"max"`.

    Example:

    >>> from types import SimpleNamespace as R
    >>> rank([R(metrics={"val_loss": v}) for v in (0.3, 0.2, 0.2, 0.5)], "val_loss", "min")
    [2, 1, 0, 3]
    """
    check_choice("mode", mode, ("min", "max"))
    sign = 1.0 if mode == "min" else -1.0
    scored = [
        (sign * value, -i)
        for i, r in enumerate(records)
        if (value := r.metrics.get(monitor)) is not None and not math.isnan(value)
    ]
    return [-negative for _, negative in sorted(scored)]


class Policy:
    """Base class: `reasons(records)` says why each record (oldest first) is kept.

    A policy of your own subclasses it and returns, for each record, a tuple of reasons (empty:
    not kept by this policy); it combines with the built-in ones by `|`.

    Example:

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class KeepMilestones(Policy):
    ...     epochs: tuple
    ...     def reasons(self, records):
    ...         return [("milestone",) if r.epoch in self.epochs else () for r in records]
    >>> policy = KeepMilestones((10, 20)) | KeepLast(1)
    >>> type(policy).__name__
    'AnyOf'
    """

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        raise NotImplementedError

    def __or__(self, other: Policy) -> AnyOf:
        if not isinstance(other, Policy):
            return NotImplemented
        left = self.policies if isinstance(self, AnyOf) else (self,)
        right = other.policies if isinstance(other, AnyOf) else (other,)
        return AnyOf(left + right)


@dataclass(frozen=True)
class KeepLast(Policy):
    """Keeps the `n` newest checkpoints.

    Example:

    >>> KeepLast(2)
    KeepLast(n=2)
    >>> KeepLast(0)
    Traceback (most recent call last):
    ValueError: Invalid value for argument `n`. Expected a positive int. Received: n=0
    """

    n: int

    def __post_init__(self) -> None:
        check_count("n", self.n)

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        first_kept = len(records) - self.n
        return [(f"last {self.n}",) if i >= first_kept else () for i in range(len(records))]


@dataclass(frozen=True)
class KeepBest(Policy):
    """Keeps the `n` checkpoints with the best `monitor` value; ties go to the newer one.

    `mode="auto"` (the default) is settled from the name when the policy is built: losses and
    errors are minimised, accuracy-like metrics maximised; any other name needs an explicit mode.
    Records that lack `monitor` (or hold NaN) are not ranked and so not kept by this policy;
    `CheckpointManager.prune` refuses a metric that no checkpoint records.

    Example:

    >>> KeepBest(3, monitor="val_accuracy")
    KeepBest(n=3, monitor='val_accuracy', mode='max')
    """

    n: int
    monitor: str
    mode: str = "auto"

    def __post_init__(self) -> None:
        check_count("n", self.n)
        if not isinstance(self.monitor, str) or not self.monitor:
            raise invalid("monitor", "a metric name", self.monitor)
        check_choice("mode", self.mode, ("auto", "min", "max"))
        if self.mode == "auto":
            object.__setattr__(self, "mode", infer_mode(self.monitor))

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        best = set(rank(records, self.monitor, self.mode)[: self.n])
        label = f"best {self.n} by {self.monitor} ({self.mode})"
        return [(label,) if i in best else () for i in range(len(records))]


@dataclass(frozen=True)
class KeepEvery(Policy):
    """Keeps one checkpoint per interval: the first taken at or after each multiple of it.

    Exactly one of `epochs` (epochs completed), `steps` (global steps) or `seconds` (wall time)
    sets the interval. `KeepEvery(epochs=5)` with a save per epoch keeps epochs 5, 10, ...
    Seconds count from the Unix epoch (`seconds=3600`: the first checkpoint of each clock hour), not
    from the oldest checkpoint, so what is kept stays kept when older checkpoints are deleted.

    Example:

    >>> KeepEvery(epochs=5)
    KeepEvery(epochs=5, steps=None, seconds=None)
    >>> KeepEvery(epochs=5, steps=100)
    Traceback (most recent call last):
    ValueError: KeepEvery takes exactly one of `epochs`, `steps` or `seconds`.
    Received: {'epochs': 5, 'steps': 100}
    """

    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        given = {
            k: v
            for k, v in (("epochs", self.epochs), ("steps", self.steps), ("seconds", self.seconds))
            if v is not None
        }
        if len(given) != 1:
            raise ValueError(
                "KeepEvery takes exactly one of `epochs`, `steps` or `seconds`. "
                f"Received: {given or 'none'}"
            )
        if self.seconds is not None:
            check_seconds("seconds", self.seconds)
        else:
            name, value = next(iter(given.items()))
            check_count(name, value)

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        if self.epochs is not None:
            interval, label = float(self.epochs), f"every {self.epochs} epochs"
            position = [float(r.epoch) for r in records]
        elif self.steps is not None:
            interval, label = float(self.steps), f"every {self.steps} steps"
            position = [float(r.global_step) for r in records]
        else:
            assert self.seconds is not None
            interval, label = float(self.seconds), f"every {self.seconds:g} s"
            position = [float(r.wall_time) for r in records]
        seen: set[int] = set()
        out: list[Reasons] = []
        for value in position:
            bucket = math.floor(value / interval)
            if bucket >= 1 and bucket not in seen:
                seen.add(bucket)
                out.append((label,))
            else:
                out.append(())
        return out


@dataclass(frozen=True)
class MaxTotalBytes(Policy):
    """Keeps the newest checkpoints whose sizes add up to at most `n` bytes.

    Combined with other policies by `|`, the union may hold more than `n` bytes; the manager keeps
    the newest checkpoint even when it alone is larger.

    Example:

    >>> MaxTotalBytes(2 * 10**9)
    MaxTotalBytes(n=2000000000)
    """

    n: int

    def __post_init__(self) -> None:
        check_count("n", self.n)

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        out: list[Reasons] = [()] * len(records)
        total = 0
        for i in range(len(records) - 1, -1, -1):
            total += records[i].size
            if total > self.n:
                break
            out[i] = (f"within {self.n} bytes",)
        return out


@dataclass(frozen=True)
class AnyOf(Policy):
    """Keeps what any of `policies` keeps, with all their reasons. Made by `a | b`.

    Example:

    >>> KeepLast(1) | KeepEvery(epochs=10) == AnyOf((KeepLast(1), KeepEvery(epochs=10)))
    True
    """

    policies: tuple[Policy, ...]

    def __post_init__(self) -> None:
        if (
            not isinstance(self.policies, tuple)
            or not self.policies
            or not all(isinstance(p, Policy) for p in self.policies)
        ):
            raise invalid("policies", "a non-empty tuple of policies", self.policies)

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        merged: list[Reasons] = [()] * len(records)
        for policy in self.policies:
            for i, reasons in enumerate(judge(policy, records)):
                merged[i] += reasons
        return merged


def judge(policy: Policy, records: Sequence[CheckpointInfo]) -> list[Reasons]:
    """`policy.reasons(records)`, checked: one tuple of strings per record, or `ValueError`.

    A policy of your own that answers for too few records would otherwise shift every verdict
    (and `prune` would delete what it meant to keep); `AnyOf` and `CheckpointManager.prune` call
    this instead of `reasons` and so refuse such an answer before anything is deleted.

    Example:

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Forgetful(Policy):
    ...     def reasons(self, records):
    ...         return [("kept",)] * (len(records) - 1)
    >>> judge(Forgetful(), [object(), object()])
    Traceback (most recent call last):
    ValueError: Policy Forgetful() answered for 1 checkpoints, expected 2 (...); nothing was ...
    """
    answer = policy.reasons(records)
    if not isinstance(answer, (list, tuple)) or len(answer) != len(records):
        got = f"{len(answer)} checkpoints" if isinstance(answer, (list, tuple)) else repr(answer)
        raise ValueError(
            f"Policy {policy!r} answered for {got}, expected {len(records)} (one tuple of reasons "
            "per checkpoint, oldest first); nothing was deleted."
        )
    if not all(
        isinstance(reasons, (tuple, list)) and all(isinstance(r, str) for r in reasons)
        for reasons in answer
    ):
        raise ValueError(
            f"Policy {policy!r} answered {answer!r}; each checkpoint's reasons must be a tuple of "
            "strings (empty: not kept by this policy). Nothing was deleted."
        )
    verdicts = [tuple(reasons) for reasons in answer]
    return verdicts


def from_keep_args(
    *,
    keep_last: int | None = None,
    keep_best: int | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    keep_every_n_epochs: int | None = None,
    max_total_bytes: int | None = None,
) -> Policy | None:
    """The union the callbacks' `keep_*` arguments (and the CLI's `--keep-*`) stand for.

    Example:

    >>> from_keep_args(keep_last=1, keep_best=3, monitor="val_loss")
    AnyOf(policies=(KeepBest(n=3, monitor='val_loss', mode='min'), KeepLast(n=1)))
    >>> from_keep_args() is None
    True

    None when no argument is set: nothing is pruned.
    """
    parts: list[Policy] = []
    if keep_best is not None:
        if not monitor:
            raise invalid("monitor", "a metric name to rank `keep_best` by", monitor)
        parts.append(KeepBest(keep_best, monitor, mode))
    if keep_last is not None:
        parts.append(KeepLast(keep_last))
    if keep_every_n_epochs is not None:
        parts.append(KeepEvery(epochs=keep_every_n_epochs))
    if max_total_bytes is not None:
        parts.append(MaxTotalBytes(max_total_bytes))
    policy: Policy | None = None
    for part in parts:
        policy = part if policy is None else policy | part
    return policy


_TYPES: dict[str, type[Policy]] = {
    cls.__name__: cls for cls in (KeepLast, KeepBest, KeepEvery, MaxTotalBytes, AnyOf)
}


def to_json(policy: Policy) -> dict[str, object] | None:
    """A JSON description of a built-in policy (for records), or None for a user's own class.

    Example:

    >>> to_json(KeepLast(2) | KeepEvery(epochs=5))
    {'type': 'AnyOf',
     'policies': [{'type': 'KeepLast', 'n': 2}, {'type': 'KeepEvery', 'epochs': 5}]}
    """
    if type(policy) not in _TYPES.values():
        return None
    if isinstance(policy, AnyOf):
        parts = [to_json(p) for p in policy.policies]
        if any(p is None for p in parts):
            return None
        return {"type": "AnyOf", "policies": parts}
    fields = {k: v for k, v in vars(policy).items() if v is not None}
    return {"type": type(policy).__name__, **fields}


def from_json(data: object) -> Policy:
    """The policy `to_json` described; `ValueError` for anything else.

    Example:

    >>> from_json({"type": "KeepLast", "n": 2})
    KeepLast(n=2)
    """
    if not isinstance(data, dict) or data.get("type") not in _TYPES:
        raise invalid("policy description", f"a dict with a type among {sorted(_TYPES)}", data)
    fields = {k: v for k, v in data.items() if k != "type"}
    if data["type"] == "AnyOf":
        return AnyOf(tuple(from_json(p) for p in fields.get("policies", ())))
    try:
        return _TYPES[str(data["type"])](**fields)
    except TypeError as e:
        raise invalid("policy description", f"the fields of {data['type']}", data) from e


def ranked_metrics(policy: Policy) -> set[str]:
    """The metrics `KeepBest` parts of `policy` rank by.

    Example:

    >>> sorted(ranked_metrics(KeepBest(1, "val_loss") | KeepBest(1, "val_accuracy") | KeepLast(1)))
    ['val_accuracy', 'val_loss']
    """
    if isinstance(policy, AnyOf):
        return set().union(*(ranked_metrics(p) for p in policy.policies))
    return {policy.monitor} if isinstance(policy, KeepBest) else set()


def applicable(policy: Policy, recorded: Collection[str]) -> Policy | None:
    """`policy` without the `KeepBest` parts whose metric is in none of the records yet.

    Such a part would keep nothing, and the records it cannot rank will never hold the metric, so
    the other parts (`KeepLast`, `MaxTotalBytes`, ...) can judge them alone: this is what the
    callbacks prune by while validation has not run yet. None when nothing is left (a lone
    `KeepBest` waits for its metric).

    Args:
        policy: A policy, possibly joined with `|`.
        recorded: The metric names the records hold.

    Example:

    >>> applicable(KeepBest(2, "val_loss") | MaxTotalBytes(10**9), recorded={"loss"})
    MaxTotalBytes(n=1000000000)
    >>> applicable(KeepBest(2, "val_loss"), recorded={"loss"}) is None
    True
    """
    if isinstance(policy, KeepBest):
        return policy if policy.monitor in recorded else None
    if not isinstance(policy, AnyOf):
        return policy
    parts = [p for p in (applicable(p, recorded) for p in policy.policies) if p is not None]
    if len(parts) == len(policy.policies):
        return policy
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))
