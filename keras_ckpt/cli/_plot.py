"""`plot`: monitored metrics over training, with the checkpoints that exist and those pruned.

Only what the directory says is drawn: the records of the checkpoints that exist, and the run
history (`CheckpointManager.history()`) for the ones retention deleted since.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from keras_ckpt.cli._common import (
    CliError,
    open_manager,
    plural,
    recorded_monitor,
    resolve_mode,
)
from keras_ckpt.records import Record


def _default_metrics(records: Sequence[Record], monitor: str | None) -> list[str]:
    present = list(dict.fromkeys(m for r in records for m in r.metrics))
    if monitor in present:
        twin = monitor.removeprefix("val_")
        return [twin, monitor] if twin != monitor and twin in present else [monitor]
    losses = [m for m in present if m in ("loss", "val_loss")]
    return losses or present


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise CliError("plot needs matplotlib: pip install 'keras-ckpt[plot]'") from None
    manager = open_manager(args.directory)
    records = manager.checkpoints()
    if not records:
        raise CliError(f"No checkpoints in {args.directory} to plot.")
    monitor, mode = recorded_monitor(records)
    metrics = args.metric or _default_metrics(records, monitor)
    known = {m for r in records for m in r.metrics}
    missing = [m for m in metrics if m not in known]
    if not metrics or missing:
        raise CliError(
            f"No checkpoint in {args.directory} records {', '.join(missing) or 'any metric'}. "
            f"Recorded metrics: {', '.join(sorted(known)) or 'none'}"
        )
    pruned: list[dict[str, Any]] = [
        {"epoch": e.epoch, "global_step": e.global_step, "metrics": e.metrics}
        for e in manager.history()
        if not e.exists
    ]
    x_key = "epoch" if args.x == "epoch" else "global_step"

    families: dict[str, list[str]] = {}
    for metric in metrics:
        families.setdefault(metric.removeprefix("val_"), []).append(metric)
    fig = Figure(figsize=(8, 3.2 * len(families)), dpi=100, layout="constrained")
    axes = fig.subplots(len(families), 1, squeeze=False)[:, 0]
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for ax, (family, names) in zip(axes, families.items(), strict=True):
        for color, metric in zip(colors * 4, names, strict=False):
            points = sorted(
                [
                    (getattr(r, x_key), r.metrics[metric], True)
                    for r in records
                    if metric in r.metrics
                ]
                + [
                    (s[x_key], s["metrics"][metric], False)
                    for s in pruned
                    if metric in s["metrics"]
                ]
            )
            ax.plot([p[0] for p in points], [p[1] for p in points], color=color, alpha=0.6)
            kept = [p for p in points if p[2]]
            ax.plot(
                [p[0] for p in kept],
                [p[1] for p in kept],
                "o",
                color=color,
                label=f"{metric}: kept ({len(kept)})",
            )
            gone = [p for p in points if not p[2]]
            if gone:
                ax.plot(
                    [p[0] for p in gone],
                    [p[1] for p in gone],
                    "x",
                    color="grey",
                    label=f"{metric}: pruned ({len(gone)})",
                )
            if metric == monitor and points:
                # Over the whole history; ties go to the newer, and a kept best is the very
                # checkpoint `list`, `show best` and `best()` name.
                sign = 1 if resolve_mode(metric, mode) == "min" else -1
                top = min(sign * p[1] for p in points)
                record = manager.best(metric, resolve_mode(metric, mode))
                if record is not None and sign * record.metrics[metric] <= top:
                    best = (getattr(record, x_key), record.metrics[metric], True)
                else:
                    best = max((p for p in points if sign * p[1] == top), key=lambda p: p[0])
                ax.plot(
                    best[0],
                    best[1],
                    "*",
                    color="gold",
                    markersize=16,
                    markeredgecolor="black",
                    label=f"best {metric} = {best[1]:.4g} ({'kept' if best[2] else 'pruned'})",
                )
        ax.set_ylabel(family)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("epoch" if args.x == "epoch" else "global step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    kept_count = plural(len(records), "checkpoint")
    note = f"{kept_count} kept, {len(pruned)} pruned (from the run history)"
    axes[0].set_title(f"{args.directory}\n{note}", fontsize="medium")
    fig.savefig(args.output)
    print(f"Wrote {args.output}: {', '.join(metrics)} over {kept_count} ({note}).")
    return 0
