"""The monitored metric: its direction, and what counts as an improvement."""

from __future__ import annotations

import math
from typing import Any

from keras_ckpt._validate import check_choice, invalid
from keras_ckpt.policies import infer_mode


class Monitor:
    """Tracks the best value of one metric.

    Args:
        monitor: Metric name as it appears in the logs.
        mode: `"auto"`, `"min"` or `"max"`; `"auto"` is settled by `resolve(model)`.
        min_delta: An improvement must beat the best by more than this.
        best: The best value so far (Keras's `initial_value_threshold`), or None.
    """

    def __init__(self, monitor: str, mode: str, min_delta: float, best: float | None):
        if not isinstance(monitor, str) or not monitor:
            raise invalid("monitor", "a metric name such as 'val_loss'", monitor)
        self.monitor = monitor
        self.mode = check_choice("mode", mode, ("auto", "min", "max"))
        if (
            isinstance(min_delta, bool)
            or not isinstance(min_delta, (int, float))
            or not (math.isfinite(min_delta) and min_delta >= 0)
        ):
            raise invalid("min_delta", "a finite number >= 0", min_delta)
        self.min_delta = float(min_delta)
        if best is not None:
            try:
                number = float(best)  # numpy scalars too, as Keras accepts
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(best, (bool, str)) or not math.isfinite(number):
                raise invalid("initial_value_threshold", "a finite number or None", best)
            best = number
        self.best = best

    def resolve(self, model: Any) -> str:
        """Settles `"auto"` from the compiled metric's direction, then from the name.

        Raises:
            ValueError: the direction cannot be told; the message says to set `mode`.
        """
        if self.mode != "auto":
            return self.mode
        direction = _compiled_direction(model, self.monitor.removeprefix("val_"))
        if direction is not None:
            self.mode = "max" if direction == "up" else "min"
            return self.mode
        try:
            self.mode = infer_mode(self.monitor)
        except ValueError:
            raise ValueError(
                f"ModelCheckpoint cannot tell whether `{self.monitor}` should be minimised or "
                'maximised (mode="auto"). Pass mode="min" or mode="max".'
            ) from None
        return self.mode

    def is_improvement(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def better_of(self, a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return b if a is None else a
        return min(a, b) if self.mode == "min" else max(a, b)


def _compiled_direction(model: Any, name: str) -> str | None:
    """`"up"`/`"down"` as declared by the compiled Keras metric called `name`, if any.

    Keras keeps the direction in the private `Metric._direction`. Reading it (like the callbacks'
    reads of `Callback._model` in batch hooks) is a private touch outside `state.py`;
    `tests/test_model_checkpoint.py` checks that it still works.
    """
    pending = list(getattr(model, "metrics", []) or [])
    while pending:
        metric = pending.pop()
        pending.extend(getattr(metric, "metrics", []) or [])
        if getattr(metric, "name", None) == name:
            direction = getattr(metric, "_direction", None)
            if direction in ("up", "down"):
                return direction
    return None
