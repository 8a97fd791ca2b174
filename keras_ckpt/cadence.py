"""How often to back up, chosen from measured costs: `BackupAndRestore(save_freq="auto")`. Pure.

A backup costs training the time its thread is blocked (the copy of the state to host memory; the
whole write, when saving inline), any wait for the previous background write still under way, and,
when writing in the background, the time the write takes from the training steps it overlaps: on a
machine whose cores training keeps busy, the writer's copies, checksums and system calls make
those steps slower (measured on 2 cores: a 65 ms copy, then ~300 ms more over the next steps).
Backing up every `I` steps of `s` seconds each (`s` measured while no write is under way), with
`stolen` the extra time of the steps a write overlapped, the overhead is
`(blocking + stolen) / (I * s)`, so the smallest interval that keeps it under `max_overhead` (`m`)
is

- inline writes: `I >= blocking / (m * s)` (`stolen` is 0);
- background writes (`write` seconds in the writer): `I >= (blocking + stolen) / (m * s)`, and,
  since the next backup waits `max(0, write - I * s)` for this one, `I >= (blocking + stolen +
  write) / ((1 + m) * s)`.

`Cadence` measures those costs (one backup early, then every backup and every step, sorting step
timings into those a write overlapped and the rest), decides the interval once it has a few step
timings and the first measured backup is written, and decides again when a new decision would
differ from the current one by more than `drift` (the costs drifted). The very first backups of a
process pay first-use costs (tracing, buffer allocation, imports: 84 ms against 10-20 ms for the
next ones, measured on an 18k-parameter model): `warmup` of them are taken but not measured.

What it says is for a person: the first interval, then only changes that last (an interval that
differs from the one last said by more than `announce_factor`, and keeps differing for as many
steps as the smaller of the two); every change with `verbose=2`, nothing with `verbose=0`.

No Keras, no files, no clock of its own: the callback passes durations in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt._validate import check_count, invalid

__all__ = ["Cadence", "check_max_overhead", "interval_for"]

DEFAULT_MAX_OVERHEAD = 0.02


def check_max_overhead(value: object) -> float:
    """`value` if it is a number strictly between 0 and 1 (not a bool, not a string).

    Example:

    >>> check_max_overhead(0.05)
    0.05
    >>> check_max_overhead(1)
    Traceback (most recent call last):
    ValueError: Invalid value for argument `max_overhead`. Expected a float in (0, 1), ...
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < 1  # also refuses NaN
    ):
        raise invalid("max_overhead", "a float in (0, 1), e.g. 0.02 for 2%", value)
    return float(value)


def interval_for(
    step_seconds: float,
    blocking_seconds: float,
    write_seconds: float,
    max_overhead: float,
    *,
    background: bool,
    stolen_seconds: float = 0.0,
) -> int:
    """The fewest steps between backups that keeps their cost at most `max_overhead` of training.

    `stolen_seconds`: how much longer the steps a background write overlaps take than steps
    without one (0 inline).

    Example:

    >>> interval_for(0.010, 0.002, 0.050, 0.02, background=True)  # 10 ms steps, spare cores
    10
    >>> # no spare core: the write makes the steps it overlaps 30 ms slower in all
    >>> interval_for(0.010, 0.002, 0.050, 0.02, background=True, stolen_seconds=0.03)
    160
    >>> interval_for(0.010, 0.052, 0.052, 0.02, background=False)  # the same backup, inline
    260
    """
    step = max(step_seconds, 1e-9)
    cost = blocking_seconds + max(stolen_seconds, 0.0)
    needed = cost / (max_overhead * step)
    if background:
        needed = max(needed, (cost + write_seconds) / ((1 + max_overhead) * step))
    # a hair below an integer is that integer: float noise must not add a step
    return max(1, math.ceil(needed - 1e-9))


def _mean(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1 - weight) * old + weight * new


@dataclass
class Cadence:
    """Measured costs and the interval chosen from them.

    Args:
        max_overhead: Fraction of training time backups may cost, in (0, 1).
        background: True if backups are written in a background thread.
        min_samples: Step timings (batch ends) with no write under way needed after the first
            backup before deciding.
        drift: Decide again when the interval the latest costs call for differs from the current
            one by more than this factor.
        weight: Weight of the newest backup's costs in their running means.
        step_weight: Weight of the newest step timing in the running mean of the step time
            (there are many more of them, and they are noisier).
        warmup: How many first backups only pay first-use costs and are not measured (a second
            backup then follows once the steps are timed). `BackupAndRestore` uses 1.
        verbose: What `batch_end` returns to print: 0 nothing, 1 the first interval and lasting
            changes, 2 every change.
        announce_factor: With `verbose=1`, a change is said once the interval has differed from
            the one last said by more than this factor for as many steps as the smaller of the
            two.

    Example:

    >>> cadence = Cadence(0.02, background=False, min_samples=2)
    >>> cadence.save_freq  # back up after the first step, to measure a backup
    1
    >>> cadence.record_save(blocking=0.05, waited=0.0)
    >>> cadence.record_write(0.05)
    >>> cadence.save_freq is None  # measuring steps now
    True
    >>> for _ in range(2):
    ...     cadence.record_steps(1, 0.01)
    >>> print(cadence.decide())
    backs up every 250 steps (a step takes 10.0 ms, a backup blocks training 50.0 ms and is
    written in 50.0 ms; max_overhead=0.02)
    >>> cadence.save_freq
    250

    In the background, the steps a write overlaps are timed apart; what they took beyond the
    step time is charged to the backup:

    >>> cadence = Cadence(0.02, background=True, min_samples=2)
    >>> cadence.record_save(blocking=0.005, waited=0.0)
    >>> for _ in range(3):
    ...     cadence.record_steps(1, 0.02, writing=True)  # 10 ms slower than...
    >>> cadence.record_write(0.05)
    >>> for _ in range(2):
    ...     cadence.record_steps(1, 0.01)  # ...a step with no write under way
    >>> print(cadence.decide())
    backs up every 175 steps (a step takes 10.0 ms, a backup blocks training 5.0 ms, slows the
    steps around it by 30.0 ms and is written in 50.0 ms; max_overhead=0.02)
    """

    max_overhead: float = DEFAULT_MAX_OVERHEAD
    background: bool = True
    min_samples: int = 5
    drift: float = 1.5
    weight: float = 0.3
    step_weight: float = 0.05
    warmup: int = 0
    verbose: int = 1
    announce_factor: float = 2.0
    interval: int | None = field(default=None, init=False)
    step_seconds: float | None = field(default=None, init=False)
    blocking_seconds: float | None = field(default=None, init=False)
    write_seconds: float | None = field(default=None, init=False)
    stolen_seconds: float | None = field(default=None, init=False)
    saves: int = field(default=0, init=False)
    warmup_blocking_seconds: float | None = field(default=None, init=False)
    _writes: int = field(default=0, init=False)
    _samples: int = field(default=0, init=False)
    _lost: float = field(default=0.0, init=False)
    _trained: float = field(default=0.0, init=False)
    # the steps the writes not yet settled overlapped: how many, and how long they took
    _busy_steps: int = field(default=0, init=False)
    _busy_seconds: float = field(default=0.0, init=False)
    _unsettled: int = field(default=0, init=False)  # writes whose overlap is counted there
    _warm_unsettled: bool = field(default=False, init=False)  # a warm-up write among them
    # announcing: the interval last said, since when the interval is far from it, the costs
    _said: int | None = field(default=None, init=False)
    _away_since: int | None = field(default=None, init=False)
    _costs: str = field(default="", init=False)
    # (time, global step, a background write under way) at the last batch end
    _tick: tuple[float, int, bool] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.max_overhead = check_max_overhead(self.max_overhead)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise invalid("warmup", "an int >= 0", self.warmup)
        if self.verbose not in (0, 1, 2) or isinstance(self.verbose, bool):
            raise invalid("verbose", "0 (silent), 1 or 2", self.verbose)
        check_count("min_samples", self.min_samples)

    @property
    def save_freq(self) -> int | None:
        """Steps between backups for the schedule: 1 until the first backup; after a warm-up
        backup, 1 again once the steps are timed and it is written; None while measuring; then
        the chosen interval."""
        if self.saves == 0:
            return 1
        if self.saves <= self.warmup:
            ready = self._samples >= self.min_samples and self._writes >= self.saves
            return 1 if ready else None
        return self.interval

    def record_steps(self, steps: int, seconds: float, *, writing: bool = False) -> None:
        """`steps` training steps took `seconds` (backup time excluded); `writing`: a background
        write was under way during some of them. Ignored before the first backup: the first steps
        include tracing and compilation."""
        if self.saves == 0 or steps < 1 or seconds <= 0:
            return
        self._trained += seconds
        if writing and self.background:
            self._busy_steps += steps
            self._busy_seconds += seconds
            return
        self.step_seconds = _mean(self.step_seconds, seconds / steps, self.step_weight)
        self._samples += 1

    def batch_end(self, now: float, global_step: int, writing: bool) -> str | None:
        """At a batch end, before the save decision: times the steps since the last `tick` and
        decides; returns the line to print about the interval, if any (see `verbose`).

        Args:
            now: The clock's time (seconds).
            global_step: Steps trained so far.
            writing: A background write is under way now.
        """
        if self._tick is not None:
            started, step, busy = self._tick
            # A write under way at either end slowed (some of) these steps.
            self.record_steps(global_step - step, now - started, writing=busy or writing)
        change = self.decide()
        if self.verbose == 0 or self.interval is None:
            return None
        if self._said is None or (change is not None and self.verbose == 2):
            self._said = self.interval
            return change
        said, factor = self._said, self.announce_factor
        if said / factor <= self.interval <= said * factor:
            self._away_since = None  # back near what was said: nothing lasting to say
            return None
        if self._away_since is None:
            self._away_since = global_step
        if global_step - self._away_since < min(said, self.interval):
            return None
        self._said, self._away_since = self.interval, None
        return f"now backs up every {self.interval} steps instead of {said}: {self._costs}"

    def tick(self, now: float | None, global_step: int = 0, writing: bool = False) -> None:
        """Where the next step timing starts: after the save decision of a batch end; None at an
        epoch's begin (Keras builds the epoch's iterator after it, which is no step's cost)."""
        self._tick = None if now is None else (now, global_step, writing)

    def _overlap_cost(self) -> float | None:
        """What the steps the unsettled writes overlapped took beyond the step time, per write
        (None before a step time is known)."""
        if self.step_seconds is None:
            return None
        excess = max(0.0, self._busy_seconds - self._busy_steps * self.step_seconds)
        return excess / max(self._unsettled, 1)

    def record_save(self, blocking: float, waited: float) -> None:
        """A backup blocked the training thread `blocking` seconds after waiting `waited` for the
        previous one (whose overlap with training is settled now, once a step time is known)."""
        stolen = self._overlap_cost()
        if stolen is not None and self._unsettled:
            if not self._warm_unsettled:  # a warm-up write's overlap is no measure
                self.stolen_seconds = _mean(self.stolen_seconds, stolen, self.weight)
            self._lost += stolen * self._unsettled
            self._trained -= stolen * self._unsettled
            self._busy_steps, self._busy_seconds, self._unsettled = 0, 0.0, 0
            self._warm_unsettled = False
        warm = self.saves < self.warmup
        self.saves += 1
        if self.background:
            self._unsettled += 1
            self._warm_unsettled |= warm
        if warm:
            self.warmup_blocking_seconds = max(blocking, 0.0)
        else:
            self.blocking_seconds = _mean(self.blocking_seconds, max(blocking, 0.0), self.weight)
        self._lost += max(blocking, 0.0) + max(waited, 0.0)

    def record_write(self, seconds: float) -> None:
        """A backup's whole write (in the writer thread when writing in the background) took
        `seconds`. The writes of warm-up backups are not measured."""
        self._writes += 1
        if self._writes > self.warmup:
            self.write_seconds = _mean(self.write_seconds, max(seconds, 0.0), self.weight)

    @property
    def measured_overhead(self) -> float | None:
        """What backups have cost so far (blocked, waited and overlapped time), as a fraction of
        the step time measured since the first backup (None before any step time is measured)."""
        return self._lost / self._trained if self._trained > 0 else None

    def decide(self) -> str | None:
        """Chooses or revises the interval; returns a one-line message when it changes."""
        if (
            self.saves <= self.warmup
            or self._samples < self.min_samples
            or self.step_seconds is None
            or self.write_seconds is None  # the first backup is still being written
        ):
            return None
        blocking = self.blocking_seconds or 0.0
        write = self.write_seconds
        settled = self.stolen_seconds  # None until the next backup settles the first's
        # (inline, nothing is ever counted as overlapped: 0)
        stolen = settled if settled is not None else (self._overlap_cost() or 0.0)
        ideal = interval_for(
            self.step_seconds,
            blocking,
            write,
            self.max_overhead,
            background=self.background,
            stolen_seconds=stolen,
        )
        previous = self.interval
        if previous is not None and previous / self.drift <= ideal <= previous * self.drift:
            return None
        self.interval = ideal
        slows = f", slows the steps around it by {stolen * 1e3:.1f} ms" if self.background else ""
        costs = (
            f"a step takes {self.step_seconds * 1e3:.1f} ms, a backup blocks training "
            f"{blocking * 1e3:.1f} ms{slows} and is written in {write * 1e3:.1f} ms; "
            f"max_overhead={self.max_overhead:g}"
        )
        self._costs = f"costs drifted ({costs})"
        if previous is None:
            return f"backs up every {ideal} steps ({costs})"
        return f"now backs up every {ideal} steps instead of {previous}: {self._costs}"

    def get_state(self) -> dict[str, Any]:
        """What a backup records about the cadence (JSON)."""
        return {
            "save_freq": "auto",
            "max_overhead": self.max_overhead,
            "interval": self.interval,
            "step_seconds": self.step_seconds,
            "blocking_seconds": self.blocking_seconds,
            "write_seconds": self.write_seconds,
            "stolen_seconds": self.stolen_seconds,
            "measured_overhead": self.measured_overhead,
            "warmup_blocking_seconds": self.warmup_blocking_seconds,
        }
