"""Decisions every worker of a multi-worker job takes at the same step: stop on a signal, save on
the clock.

A save's host copy and a stop of `fit` must happen at the same step on every worker (the copy reads
metric variables through an all-reduce; a worker that leaves early leaves the others waiting in
the next step's collectives). A signal reaches one worker, and `every_seconds` is measured on each
worker's own clock, so neither may be acted on where it is observed. `StepAgreement` settles both
through `distribute.agree`, one small all-reduce that every worker joins at the same steps:

- a signal caught by any worker stops every worker (SIGTERM before SIGINT if both were caught);
- a time-based save happens when the chief's clock says it is due (the others' clocks are not
  asked), as every step- and epoch-based save already does on all workers alike.

The all-reduce costs about a network round trip, which can be much of a small step. So the workers
agree every `period` steps, a number the chief picks from what it measures (how much longer a step
after an agreement takes, and the step time) and announces in the same all-reduce: large enough
that agreeing costs at most `MAX_OVERHEAD` of training time, small enough that a signal or a due
save waits at most about `MAX_DELAY` seconds of training. Until it knows the step time (the first
two steps), they agree at every step. Epoch ends and the end of `fit` always agree. Measured costs:
`benchmarks/agreement.py`.

A single-process job creates no `StepAgreement` at all: no collective, no cost.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from typing import Any

from keras_ckpt import distribute

__all__ = ["MAX_DELAY", "MAX_OVERHEAD", "StepAgreement"]

MAX_OVERHEAD = 0.01  # of training time, spent agreeing
MAX_DELAY = 1.0  # seconds of training a signal or a due save may wait for the next agreement

_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # in order of precedence


class StepAgreement:
    """Agrees, every few steps, on the signal to stop on and on whether the chief's clock is due.

    Every worker must call `decide` at the same points of training: at every batch end (it agrees
    only at the steps the chief announced) and with `now=True` at epoch ends and at the end of
    `fit`.

    Args:
        model: The model being trained (its strategy performs the all-reduce on TensorFlow).
        chief: Whether this process is the chief.
        clock: Monotonic clock in seconds, for the chief's measurements (tests replace it).
    """

    def __init__(self, model: Any, *, chief: bool, clock: Callable[[], float] = time.perf_counter):
        self.model = model
        self.chief = chief
        self.clock = clock
        self.period = 1  # steps between agreements, as announced by the chief
        self.agreements = 0
        self._next_step: int | None = None  # the first `decide` agrees
        self._costs = _Costs()  # the chief's measurements

    @classmethod
    def needed(cls, model: Any, *, active: bool) -> bool:
        """Whether a job must agree: more than one worker, and something to agree on (`active`:
        a signal handler or a time-based trigger)."""
        return active and distribute.worker_count(model) > 1

    def decide(
        self, step: int, signum: int | None, seconds_due: bool, *, now: bool = False
    ) -> tuple[int | None, bool]:
        """(the signal every worker stops on or None, whether every worker saves on the clock).

        Between agreements it returns `(None, False)` on every worker: a signal caught meanwhile
        waits for the next agreement (it stays pending), and so does a due time.

        Args:
            step: The global step completed (the same on every worker).
            signum: The signal this worker caught, if any.
            seconds_due: Whether this worker's clock says a time-based save is due (only the
                chief's counts).
            now: Agree at this call whatever the period (epoch ends, the end of `fit`).
        """
        if self.chief and not now:
            self._costs.batch_end(self.clock(), step)
        if not now and self._next_step is not None and step < self._next_step:
            return None, False
        votes = [int(signum == s) for s in _SIGNALS]
        votes.append(int(self.chief and seconds_due))
        votes.append(self._costs.period() if self.chief else 0)
        started = self.clock() if self.chief else 0.0
        *signals, due, period = distribute.agree(votes, self.model)
        if self.chief:
            self._costs.agreed(forced=now, seconds=self.clock() - started)
        self.agreements += 1
        self.period = max(1, period)
        self._next_step = step + self.period
        agreed = next((s for s, n in zip(_SIGNALS, signals, strict=True) if n > 0), None)
        return (int(agreed) if agreed is not None else None), due > 0


class _Costs:
    """The chief's estimates of a training step's time and of what agreeing adds to it.

    Measured between consecutive batch ends, so they include what an all-reduce costs beyond its
    own call (on JAX it also ends the overlap of the next step's dispatch with this one): a step
    that followed an agreement, against the steps that did not. Until a step without one was seen,
    the all-reduce's own duration stands in. The interval across an epoch end (validation,
    epoch-end saves) is not counted.
    """

    _SMOOTHING = 0.25  # weight of the newest interval in the running estimates

    def __init__(self) -> None:
        self.step_time: float | None = None  # seconds per step, without agreeing
        self.extra: float | None = None  # seconds an agreement adds to the step after it
        self.call: float | None = None  # seconds the all-reduce itself takes
        self._alone = False  # whether a step without an agreement was measured
        self._last: tuple[float, int] | None = None  # (time, step) of the last batch end
        self._after: str | None = None  # what happened since it: None, "agreed", "forced"

    def batch_end(self, now: float, step: int) -> None:
        last, after = self._last, self._after
        self._last, self._after = (now, step), None
        if last is None or step <= last[1] or after == "forced":
            return
        steps, seconds = step - last[1], now - last[0]
        if after is None:
            self._alone = True
            self.step_time = _smooth(self.step_time, seconds / steps, self._SMOOTHING)
        elif not self._alone and self.call is not None:
            alone = max(0.0, seconds - self.call) / steps
            self.step_time = _smooth(self.step_time, alone, self._SMOOTHING)
        elif self.step_time is not None:
            extra = max(0.0, seconds - steps * self.step_time)
            self.extra = _smooth(self.extra, extra, self._SMOOTHING)

    def agreed(self, *, forced: bool, seconds: float) -> None:
        self._after = "forced" if forced else "agreed"
        self.call = _smooth(self.call, seconds, self._SMOOTHING)

    def period(self) -> int:
        """Steps until the next agreement: cheap enough (`MAX_OVERHEAD`) and soon enough
        (`MAX_DELAY`); 1 until the step time is known."""
        if self.step_time is None:
            return 1
        extra = self.extra if self.extra is not None else (self.call or 0.0)
        step_time = max(self.step_time, 1e-9)
        cheap_enough = math.ceil(extra / (MAX_OVERHEAD * step_time) - 1e-6)  # no ulp
        soon_enough = math.floor(MAX_DELAY / step_time)
        return max(1, min(cheap_enough, soon_enough))


def _smooth(estimate: float | None, sample: float, weight: float) -> float:
    return sample if estimate is None else (1 - weight) * estimate + weight * sample
