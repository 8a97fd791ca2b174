"""When to save: training progress and save triggers. Pure: no Keras, no files.

`Progress` follows `fit` through its hooks (epochs completed, batches in the current epoch, global
steps). `Schedule` turns progress and the wall clock into "save now" decisions; the callbacks own
one each and ask it at every batch and epoch end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt._validate import check_optional_count, check_seconds, invalid

__all__ = ["Progress", "Schedule", "check_save_freq"]


def check_save_freq(value: object, *, allow_none: bool = False) -> str | int | None:
    """`"epoch"` or a positive int (not a bool); None too where another trigger is given."""
    if value == "epoch" and isinstance(value, str):
        return value
    if value is None and allow_none:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise invalid("save_freq", '"epoch" or a positive int', value)


@dataclass
class Progress:
    """Where training is, in the terms a checkpoint record uses.

    Attributes:
        epoch: Epochs completed.
        step: Batches completed in the epoch under way (0 at an epoch boundary).
        global_step: Batches completed since training started (restored on resume).
    """

    epoch: int = 0
    step: int = 0
    global_step: int = 0

    def begin_epoch(self, epoch_index: int) -> None:
        """Starts epoch `epoch_index`; a resumed epoch keeps the steps restored into it."""
        if epoch_index != self.epoch:
            self.epoch, self.step = epoch_index, 0

    def end_batch(self, batch_index: int) -> None:
        """`batch_index` is the last step of the execution just run (Keras's `end_step`)."""
        done = batch_index + 1
        self.global_step += done - self.step
        self.step = done

    def end_epoch(self, epoch_index: int) -> None:
        self.epoch, self.step = epoch_index + 1, 0

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.global_step = int(state["global_step"])


@dataclass
class Schedule:
    """Save triggers, combined by OR.

    Args:
        save_freq: `"epoch"`: at every epoch end (every `every_n_epochs` if given). An int: every
            that many global steps. None: no step or epoch trigger of its own.
        every_n_epochs: At the end of every n-th epoch.
        every_seconds: At the first batch or epoch end after this many seconds since the last
            save (or since training started).
        on_demand: No trigger is needed: the owner saves on its own occasions (a signal).
        clock: Monotonic clock, for tests.
    """

    save_freq: str | int | None = "epoch"
    every_n_epochs: int | None = None
    every_seconds: float | None = None
    on_demand: bool = False
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _last_step: int = field(default=0, init=False)
    _last_time: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        check_save_freq(self.save_freq, allow_none=True)
        check_optional_count("every_n_epochs", self.every_n_epochs)
        self.every_seconds = check_seconds("every_seconds", self.every_seconds)
        if (
            self.save_freq is None
            and self.every_n_epochs is None
            and self.every_seconds is None
            and not self.on_demand
        ):
            raise ValueError(
                "Nothing would ever be saved: `save_freq=None` needs `every_n_epochs` or "
                "`every_seconds`. Received: save_freq=None, every_n_epochs=None, "
                "every_seconds=None"
            )
        self._last_time = self.clock()

    @property
    def needs_batch_hooks(self) -> bool:
        return isinstance(self.save_freq, int) or self.every_seconds is not None

    def start(self, global_step: int) -> None:
        """Counts steps and seconds from here (training start or resume)."""
        self._last_step = global_step
        self._last_time = self.clock()

    def due_after_batch(self, global_step: int, *, seconds_due: bool | None = None) -> bool:
        """Whether to save after this batch; `seconds_due` replaces this process's clock (a
        multi-worker job saves on the chief's, as agreed)."""
        if isinstance(self.save_freq, int) and global_step - self._last_step >= self.save_freq:
            return self._fire(global_step)
        return self._time_due(global_step, seconds_due)

    def due_after_epoch(
        self, epochs_completed: int, global_step: int, *, seconds_due: bool | None = None
    ) -> bool:
        if self.save_freq == "epoch" and self.every_n_epochs is None:
            return self._fire(global_step)
        if self.every_n_epochs is not None and epochs_completed % self.every_n_epochs == 0:
            return self._fire(global_step)
        return self._time_due(global_step, seconds_due)

    def seconds_due(self) -> bool:
        """Whether `every_seconds` have passed since the last save, by this process's clock."""
        if self.every_seconds is None:
            return False
        return self.clock() - self._last_time >= self.every_seconds

    def _time_due(self, global_step: int, agreed: bool | None) -> bool:
        if self.seconds_due() if agreed is None else agreed:
            return self._fire(global_step)
        return False

    def _fire(self, global_step: int) -> bool:
        self._last_step = global_step
        self._last_time = self.clock()
        return True

    def get_state(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def set_state(self, state: dict[str, Any]) -> None:
        self._last_step = int(state.get("last_step", self._last_step))
        self._last_time = self.clock()
