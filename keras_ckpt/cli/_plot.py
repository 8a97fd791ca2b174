"""`plot`: monitored metrics over training, with the checkpoints that exist and those pruned.

Only what the directory says is drawn: the records of the checkpoints that exist, and the run
history (`CheckpointManager.history()`) for the ones retention deleted since. Each run is its own
line; a save replaced by a later save of the same name is a point of its line, not a pruned one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from keras_ckpt.cli._common import (
    CliError,
    open_manager,
    plural,
    recorded_monitor,
    resolve_mode,
    run_scope,
)
from keras_ckpt.records import Record
from keras_ckpt.runs import ALL, run_of

REPLACED = "replaced by a newer save of the same name"


def _default_metrics(records: Sequence[Record], monitor: str | None) -> list[str]:
    present = list(dict.fromkeys(m for r in records for m in r.metrics))
    if monitor in present:
        twin = monitor.removeprefix("val_")
        return [twin, monitor] if twin != monitor and twin in present else [monitor]
    losses = [m for m in present if m in ("loss", "val_loss")]
    return losses or present


def cmd_plot(args: argparse.Namespace) -> int:
    if os.path.lexists(args.output) and not args.force:
        raise CliError(f"{args.output} already exists; pass --force to overwrite it.")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise CliError("plot needs matplotlib: pip install 'keras-ckpt[plot]'") from None
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run)
    records = manager.checkpoints(run=run)
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
    gone: list[dict[str, Any]] = [
        {
            "epoch": e.epoch,
            "global_step": e.global_step,
            "metrics": e.metrics,
            "run": run_of(e),
            "replaced": e.deleted_reason == REPLACED,
        }
        for e in manager.history(run=run)
        if not e.exists
    ]
    pruned = [g for g in gone if not g["replaced"]]
    replaced = len(gone) - len(pruned)
    x_key = "epoch" if args.x == "epoch" else "global_step"
    run_ids = list(dict.fromkeys([run_of(r) for r in records] + [g["run"] for g in gone]))
    order = {r.id: i for i, r in enumerate(manager.runs())}
    run_ids.sort(key=lambda r: order.get(r, -1))
    several = len(run_ids) > 1

    families: dict[str, list[str]] = {}
    for metric in metrics:
        families.setdefault(metric.removeprefix("val_"), []).append(metric)
    fig = Figure(figsize=(8, 3.2 * len(families)), dpi=100, layout="constrained")
    axes = fig.subplots(len(families), 1, squeeze=False)[:, 0]
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    styles = ("-", "--", ":", "-.")
    for ax, (family, names) in zip(axes, families.items(), strict=True):
        everything = []
        for color, metric in zip(colors * 4, names, strict=False):
            for style, run_id in zip(styles * 8, run_ids, strict=False):
                points = sorted(
                    [
                        (getattr(r, x_key), r.metrics[metric], True)
                        for r in records
                        if metric in r.metrics and run_of(r) == run_id
                    ]
                    + [
                        (g[x_key], g["metrics"][metric], False if not g["replaced"] else None)
                        for g in gone
                        if metric in g["metrics"] and g["run"] == run_id
                    ],
                    key=lambda p: (p[0], p[1]),
                )
                if not points:
                    continue
                everything += points
                label = f"{metric}" + (f" (run {run_id})" if several else "")
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    style,
                    color=color,
                    alpha=0.6,
                )
                kept = [p for p in points if p[2] is True]
                ax.plot(
                    [p[0] for p in kept],
                    [p[1] for p in kept],
                    "o",
                    color=color,
                    label=f"{label}: kept ({len(kept)})",
                )
                crossed = [p for p in points if p[2] is False]
                if crossed:
                    ax.plot(
                        [p[0] for p in crossed],
                        [p[1] for p in crossed],
                        "x",
                        color="grey",
                        label=f"{label}: pruned ({len(crossed)})",
                    )
            if metric == monitor and everything:
                # Over every save drawn; ties go to the newer, and a kept best is the very
                # checkpoint `list`, `show best` and `best()` name.
                mine = [p for p in everything if p[1] is not None]
                sign = 1 if resolve_mode(metric, mode) == "min" else -1
                top = min(sign * p[1] for p in mine)
                record = manager.best(metric, resolve_mode(metric, mode), run=run or ALL)
                best: tuple[Any, float, bool | None]
                if record is not None and sign * record.metrics[metric] <= top:
                    best = (getattr(record, x_key), record.metrics[metric], True)
                else:
                    best = max((p for p in mine if sign * p[1] == top), key=lambda p: p[0])
                state = {True: "kept", False: "pruned", None: "replaced"}[best[2]]
                ax.plot(
                    best[0],
                    best[1],
                    "*",
                    color="gold",
                    markersize=16,
                    markeredgecolor="black",
                    label=f"best {metric} = {best[1]:.4g} ({state})",
                )
        ax.set_ylabel(family)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("epoch" if args.x == "epoch" else "global step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    kept_count = plural(len(records), "checkpoint")
    note_text = f"{kept_count} kept, {len(pruned)} pruned (from the run history)"
    if replaced:
        note_text += f", {replaced} replaced by a same-name save"
    scope = f"{plural(len(run_ids), 'run')}" if several else f"run {run_ids[0]}"
    axes[0].set_title(f"{args.directory} ({scope})\n{note_text}", fontsize="medium")
    fig.savefig(args.output)
    if note:
        print(note)
    print(f"Wrote {args.output}: {', '.join(metrics)} of {scope}, {note_text}.")
    return 0
