"""Save now? Stop now? What a callback's `fit` hooks decide, from everything that can trigger it.

A callback asks its `Triggers` at every batch end and epoch end, and gets one `Decision`. It
combines:

- the schedule (`save_freq`, `every_n_epochs`, `every_seconds`; `keras_ckpt.schedule`);
- the auto cadence (`save_freq="auto"`; `keras_ckpt.cadence`): its interval becomes the
  schedule's, and the step and save timings it needs are taken here, on `_clock`;
- SIGTERM and SIGINT, caught by a `SignalCatcher` until the next step boundary;
- in a multi-worker job, `StepAgreement`: the signal any worker caught and the chief's clock,
  acted on at the same step by every worker.

No files, no Keras internals: the callback does what the decision says.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keras_ckpt import distribute
from keras_ckpt.cadence import Cadence
from keras_ckpt.schedule import Schedule
from keras_ckpt.training.agreement import StepAgreement
from keras_ckpt.training.signals import SignalCatcher

if TYPE_CHECKING:
    from keras_ckpt.training.pipeline import Saved
    from keras_ckpt.training.writer import WriterStats

__all__ = ["Decision", "SaveTimer", "Triggers"]

_clock = time.perf_counter  # the auto cadence's clock (tests replace it)


@dataclass(frozen=True)
class Decision:
    """What a batch or epoch end calls for.

    Attributes:
        save: Save now.
        stop: The signal to stop `fit` on (None: go on).
        message: The auto cadence's line about a new interval, if it chose one.
    """

    save: bool = False
    stop: int | None = None
    message: str | None = None


class Triggers:
    """The triggers of one callback, asked at every batch and epoch end.

    Args:
        schedule: The step, epoch and time triggers.
        name: Who asks, for the warning when signals cannot be caught.
        max_overhead: With `save_freq="auto"`: the cadence's budget (None: no cadence).
        background: Whether saves are written in the background (for the cadence's costs).
        verbose: What the cadence says (`Cadence.verbose`).

    Example:

    >>> from keras_ckpt.schedule import Schedule
    >>> triggers = Triggers(Schedule(save_freq=2), name="ModelCheckpoint")
    >>> triggers.start(None, chief=True, global_step=0)
    >>> [triggers.after_batch(step).save for step in (1, 2, 3, 4)]
    [False, True, False, True]
    """

    def __init__(
        self,
        schedule: Schedule,
        *,
        name: str,
        max_overhead: float | None = None,
        background: bool = True,
        verbose: int = 1,
    ):
        self.schedule = schedule
        self.name = name
        self.max_overhead = max_overhead
        self.background = background
        self.verbose = verbose
        self.cadence: Cadence | None = None
        self.signals: SignalCatcher | None = None
        self.agreement: StepAgreement | None = None

    @property
    def interrupted(self) -> int | None:
        """The signal caught (or agreed on) during this `fit`, or None."""
        return self.signals.pending if self.signals is not None else None

    def check_workers(self, model: Any) -> None:
        """Refuses the auto cadence in a multi-worker job: every worker must take its copy at the
        same steps (an all-reduce), and each would choose its own interval from its own timings.
        """
        if self.max_overhead is not None and (workers := distribute.worker_count(model)) > 1:
            raise ValueError(
                'Invalid value for argument `save_freq`. save_freq="auto" is for single-process '
                f'training; this job has {workers} workers. Expected "epoch" or a positive '
                'int. Received: save_freq="auto"'
            )

    def start(
        self, model: Any, *, chief: bool, global_step: int, catch_signals: bool = False
    ) -> None:
        """At `on_train_begin`, once training's position is known (after a resume).

        Args:
            model: The model being trained (not synced: signals must not read variables).
            chief: Whether this process is the chief of a multi-worker job (or alone).
            global_step: Steps trained so far.
            catch_signals: Catch SIGTERM/SIGINT until `end`.
        """
        self.schedule.start(global_step)
        if self.max_overhead is not None:
            # The first backup of a process pays first-use costs: measure from the second on.
            self.cadence = Cadence(
                self.max_overhead, self.background, warmup=1, verbose=self.verbose
            )
        self.signals = SignalCatcher(model, self.name)
        if catch_signals:
            self.signals.install()
        self.agreement = None
        active = catch_signals or self.schedule.every_seconds is not None
        if StepAgreement.needed(model, active=active):
            self.agreement = StepAgreement(model, chief=chief)

    def end(self) -> None:
        """Gives the signals back to the handlers that had them before `start`."""
        if self.signals is not None:
            self.signals.uninstall()

    def epoch_begins(self) -> None:
        """An epoch's first step is not timed (Keras builds its iterator after the hook)."""
        if self.cadence is not None:
            self.cadence.tick(None)

    def after_batch(self, global_step: int, *, writing: bool = False) -> Decision:
        """At a batch end (after replay): stop, save, or go on.

        Args:
            global_step: Steps trained so far.
            writing: A background save is under way (the cadence times those steps apart).
        """
        message = None
        if self.cadence is not None:
            message = self.cadence.batch_end(_clock(), global_step, writing)
            self.schedule.save_freq = self.cadence.save_freq
        signum, seconds_due = self._agree(global_step, now=False)
        save = self.schedule.due_after_batch(global_step, seconds_due=seconds_due)
        return Decision(save=save, stop=signum, message=message)

    def batch_done(self, global_step: int, *, writing: bool = False) -> None:
        """After a batch end's save, if any: the next step's timing starts here."""
        if self.cadence is not None:
            self.cadence.tick(_clock(), global_step, writing)

    def after_epoch(self, epochs_completed: int, global_step: int) -> Decision:
        """At an epoch end: stop, save, or go on (every worker agrees here)."""
        signum, seconds_due = self._agree(global_step, now=True)
        save = self.schedule.due_after_epoch(epochs_completed, global_step, seconds_due=seconds_due)
        return Decision(save=save, stop=signum)

    def final_signal(self, global_step: int) -> int | None:
        """At `on_train_end`: the signal that stopped `fit` (agreed by every worker), or None."""
        if self.agreement is None:
            return self.interrupted
        return self._agree(global_step, now=True)[0]

    def time_save(self, stats: WriterStats) -> SaveTimer | None:
        """A timer for the save about to start, for the auto cadence (None without one)."""
        return SaveTimer(self.cadence, stats) if self.cadence is not None else None

    def _agree(self, global_step: int, *, now: bool) -> tuple[int | None, bool | None]:
        """(the signal to stop on, whether the clock says save; None: ask the schedule's clock).

        In a single process, this process's own signal and clock. In a multi-worker job, what the
        workers agree on (`StepAgreement`): any worker's signal, the chief's clock, at the same
        step everywhere; every worker then stops as if it had caught the signal itself.
        """
        if self.agreement is None:
            return self.interrupted, None
        signum, seconds_due = self.agreement.decide(
            global_step, self.interrupted, self.schedule.seconds_due(), now=now
        )
        if signum is not None and self.signals is not None:
            self.signals.pending = signum
        return signum, seconds_due


class SaveTimer:
    """Measures one save for the auto cadence: what it blocked training, and its whole write.

    Made before the save starts (it may first wait for the previous background write); call
    `captured` once the save call returned, and pass `written` as its `on_saved`.
    """

    def __init__(self, cadence: Cadence, stats: WriterStats):
        self.cadence = cadence
        self.stats = stats
        self.started = _clock()
        self.waited = stats.waited_seconds

    def written(self, saved: Saved) -> None:
        self.cadence.record_write(saved.write_seconds)

    def captured(self) -> None:
        waited = self.stats.waited_seconds - self.waited
        self.cadence.record_save(_clock() - self.started - waited, waited)
