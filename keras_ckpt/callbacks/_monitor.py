"""The monitored metric: its direction, and what counts as an improvement."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from keras_ckpt._validate import check_choice, invalid
from keras_ckpt.policies import Policy, infer_mode, ranked_metrics, to_json
from keras_ckpt.records import CallbackMemory
from keras_ckpt.training import fit_state


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
        self.origin = ""  # where a `best` not set by this run came from, for messages

    def resolve(self, model: Any) -> str:
        """Settles `"auto"` from the compiled metric's direction, then from the name.

        Raises:
            ValueError: the direction cannot be told; the message says to set `mode`.
        """
        if self.mode != "auto":
            return self.mode
        direction = fit_state.compiled_direction(model, self.monitor.removeprefix("val_"))
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

    def improved(
        self, model: Any, logs: Mapping[str, Any], *, epoch: int, display: str, verbose: int
    ) -> bool:
        """Whether the logs of a save improve on the best (`save_best_only`); it becomes the
        best if so. Prints the verdict with `verbose`, as Keras's ModelCheckpoint does.

        A training metric missing from the logs is a typo and raises; a missing `val_` metric
        means validation did not run, and the save is skipped with a warning.
        """
        monitor = self.monitor
        if monitor in logs:
            self.resolve(model)  # "auto": from the compiled metric
        if monitor not in logs:
            keys = ", ".join(sorted(logs)) or "none"
            if not monitor.startswith("val_"):  # training metrics are in every save's logs
                raise ValueError(
                    f"ModelCheckpoint: `save_best_only` monitors `{monitor}`, which is not in the "
                    f"logs. Keys that exist: {keys}. Pass one of them as `monitor`."
                )
            warnings.warn(
                f"ModelCheckpoint did not save: `save_best_only` monitors `{monitor}`, which is "
                f"not in the logs of this save (keys: {keys}): validation did not run this "
                "epoch (`validation_freq`, or no validation data).",
                stacklevel=4,
            )
            return False
        try:
            current = float(logs[monitor])
        except (TypeError, ValueError):
            raise ValueError(
                f"ModelCheckpoint monitors `{monitor}`, which must be a scalar. "
                f"Received: {logs[monitor]!r}"
            ) from None
        if not math.isfinite(current):
            warnings.warn(
                f"ModelCheckpoint did not save: `{monitor}` is {current} (training diverged?); "
                "a non-finite value never counts as an improvement.",
                stacklevel=4,
            )
            return False
        origin = f" ({self.origin})" if self.origin else ""
        best = "" if self.best is None else f"{self.best:.5f}{origin}"
        if not self.is_improvement(current):
            if verbose:
                print(f"\nEpoch {epoch + 1}: {monitor} did not improve from {best}")
            return False
        if verbose:
            change = (
                f"is {current:.5f} (first value)"
                if self.best is None
                else f"improved from {best} to {current:.5f}"
            )
            print(f"\nEpoch {epoch + 1}: {monitor} {change}, saving model to {display}")
        self.best, self.origin = current, ""
        return True

    def better_of(self, a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return b if a is None else a
        return min(a, b) if self.mode == "min" else max(a, b)

    def get_state(self) -> dict[str, Any]:
        """The best value and settled mode, for backups (`CheckpointStateful`)."""
        return {"best": self.best, "mode": self.mode}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Takes a backup's mode (if still "auto") and its best value, if better."""
        if self.mode == "auto" and state.get("mode") in ("min", "max"):
            self.mode = state["mode"]
        if self.mode != "auto":
            self.best = self.better_of(self.best, state.get("best"))


def check_in_logs(callback: Any, logs: Mapping[str, Any], *, epoch: int) -> None:
    """A metric a `ModelCheckpoint` monitors (its `monitor`, whose name its records keep and
    "best" means, and what its retention ranks by) missing from an epoch end's logs is a typo,
    unless it is a `val_` metric and validation did not run this epoch (no `val_` key at all:
    `validation_freq`, or no validation data)."""
    monitor = callback.monitor
    retention = callback._retention
    wanted = {monitor} | (ranked_metrics(retention) if retention is not None else set())
    if callback.save_best_only:
        role = "`save_best_only` monitors"
    else:
        role = "`keep_best` monitors" if callback._keep["keep_best"] else "`monitor` names"
    validated = any(key.startswith("val_") for key in logs)
    for metric in sorted(wanted):
        if metric not in logs and (validated or not metric.startswith("val_")):
            raise ValueError(
                f"ModelCheckpoint: {role} `{metric}`, which is not in the logs at the end of "
                f"epoch {epoch + 1}. Keys that exist: {', '.join(sorted(logs)) or 'none'}. "
                "Pass one of them as `monitor`."
            )


def callback_memory(callback: Any, policy: Policy | None) -> CallbackMemory:
    """What a `ModelCheckpoint` save records about its callback: the run, the monitored metric
    (its direction once settled, the best value), the template and the retention policy."""
    monitor: Monitor = callback._monitor
    mode = monitor.mode
    if mode == "auto" and monitor.best is not None:
        mode = monitor.resolve(callback.model)
    return CallbackMemory(
        callback="ModelCheckpoint",
        run=callback._run,
        monitor=monitor.monitor,
        mode=mode if mode in ("min", "max") else None,
        best=monitor.best,
        uses_monitor=callback._uses_monitor(),
        save_best_only=callback.save_best_only,
        template=callback.template,
        retention=(to_json(policy) or {"custom": repr(policy)}) if policy else None,
    )


def warn_unranked(monitor: str, logs: Mapping[str, Any]) -> None:
    """`keep_best` cannot rank a save whose logs lack its metric: says so (a step save before the
    first epoch end, say), as the other keep options still prune meanwhile."""
    if monitor not in logs:
        warnings.warn(
            f"ModelCheckpoint: `keep_best` ranks by `{monitor}`, which is not in the logs "
            f"of this save (keys: {', '.join(sorted(logs)) or 'none'}); checkpoints without "
            "it are never kept by `keep_best`; until one has it, only the other keep options "
            "prune.",
            stacklevel=4,
        )
