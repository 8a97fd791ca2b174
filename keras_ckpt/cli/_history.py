"""`average`, `prune --simulate` and `history`: commands over several checkpoints or a run's
history."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from keras_ckpt.cli._common import (
    CliError,
    format_metric,
    human_age,
    human_size,
    open_manager,
    plural,
    policy_from_args,
    run_scope,
    where,
)
from keras_ckpt.runs import ALL, run_of


def cmd_average(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    if os.path.exists(args.output) and not args.force:
        raise CliError(f"{args.output} exists; pass --force to overwrite it.")
    run, note = run_scope(manager, args.run)
    select: str | list[str] = args.select
    if not re.fullmatch(r"(last|best):.*", args.select):
        select = [name.strip() for name in args.select.split(",") if name.strip()]
        note = None  # names pick from every run
    records = manager.average(
        select,
        args.output,
        monitor=args.monitor,
        mode=args.mode or "auto",
        overwrite=args.force,
        run=run,
    )
    if note:
        print(note)
    kind = "model" if args.output.endswith(".keras") else "weights"
    loader = "keras.saving.load_model" if kind == "model" else "model.load_weights"
    print(
        f"Averaged {len(records)} checkpoints into {args.output} "
        f"({human_size(os.path.getsize(args.output))}); load it with {loader}({args.output!r}):"
    )
    width = max(len(r.name) for r in records)
    for record in records:
        metrics = " ".join(f"{k}={format_metric(v)}" for k, v in record.metrics.items())
        print(f"  {record.name:{width}}  {where(record):34} {metrics}".rstrip())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run)
    saves = [e for e in manager.history(run=run) if args.owner is None or e.owner == args.owner]
    owners = sorted({str(e.owner) for e in saves})
    records = manager.checkpoints(args.owner, run=run)
    policy = policy_from_args(args, records, owners, "simulate")
    if policy is None:
        raise CliError(
            "prune --simulate needs at least one keep option (--keep-last, --keep-best, "
            "--keep-every-n-epochs, --max-total-bytes)."
        )
    result = manager.simulate(policy, owner=args.owner, run=run)
    if args.json:
        data = {
            "directory": args.directory,
            "run": run,
            "simulated": True,
            "policy": repr(policy),
            "saves": len(saves),
            "kept": [e.name for e in result.kept],
            "deleted": [e.name for e in result.deleted],
            "final_bytes": result.final_bytes,
            "peak_bytes": result.peak_bytes,
        }
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    if note:
        print(note)
    existing = sum(e.exists for e in saves)
    print(f"Policy: {policy!r}")
    print(
        f"Replayed over the {len(saves)} saves of the run's history ({existing} exist now, "
        f"{len(saves) - existing} were deleted) - simulation, no file was touched."
    )
    print(
        f"Would have deleted {len(result.deleted)} during the run. Kept {len(result.kept)}, using "
        f"{human_size(result.final_bytes)} at the end and {human_size(result.peak_bytes)} at most:"
    )
    width = max((len(e.name) for e in result.kept), default=0)
    for entry in result.kept:
        metrics = " ".join(f"{k}={format_metric(v)}" for k, v in entry.metrics.items())
        state = "exists" if entry.exists else "deleted now"
        print(f"  keep  {entry.name:{width}}  {where(entry):34} {state:11} {metrics}".rstrip())
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run)
    entries = manager.history(run=run)
    runs = [r for r in manager.runs() if run == ALL or r.id == run]
    now = time.time()
    if args.json:
        data = {
            "directory": args.directory,
            "run": run,
            "runs": [
                {
                    "id": r.id,
                    "newest": r.newest,
                    "first_time": r.first_time,
                    "last_time": r.last_time,
                    "saves": r.saves,
                    "checkpoints": r.checkpoints,
                    "owners": list(r.owners),
                    "monitor": r.monitor,
                    "policies": {o: repr(p) if p else None for o, p in r.policies.items()},
                }
                for r in runs
            ],
            "saves": [
                {
                    "name": e.name,
                    "run": run_of(e),
                    "kind": e.kind,
                    "owner": e.owner,
                    "epoch": e.epoch,
                    "step": e.step,
                    "global_step": e.global_step,
                    "metrics": dict(e.metrics),
                    "size": e.size,
                    "wall_time": e.wall_time,
                    "exists": e.exists,
                    "deleted_reason": e.deleted_reason,
                }
                for e in entries
            ],
        }
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    if note:
        print(note)
    if not entries:
        print(f"No saves in the history of {args.directory}.")
        return 0
    from rich.table import Table

    from keras_ckpt.cli._commands import Printer

    out = Printer()
    for summary in runs:
        mine = [e for e in entries if run_of(e) == summary.id]
        if not mine:
            continue
        policies = "; ".join(
            f"{repr(p) if p else 'no retention policy'}" for p in summary.policies.values()
        )
        title = (
            f"Run {summary.id}{' (newest)' if summary.newest else ''}: "
            f"{plural(summary.saves, 'save')}, {summary.checkpoints} still on disk; "
            f"{human_age(summary.first_time, now)} to {human_age(summary.last_time, now)}"
            + (f"; {policies}" if policies else "")
        )
        metric_names = list(dict.fromkeys(m for e in mine for m in e.metrics))
        table = Table(title=title, title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("epoch", justify="right")
        table.add_column("step of epoch", justify="right")
        table.add_column("global step", justify="right")
        for name in metric_names:
            table.add_column(name, justify="right")
        table.add_column("size", justify="right")
        table.add_column("status")
        for entry in mine:
            mid_epoch = entry.step > 0
            status = "exists" if entry.exists else f"deleted: {entry.deleted_reason or 'unknown'}"
            table.add_row(
                entry.name,
                str(entry.epoch + 1 if mid_epoch else entry.epoch),
                str(entry.step) if mid_epoch else "end",
                str(entry.global_step),
                *(
                    format_metric(entry.metrics[m]) if m in entry.metrics else "-"
                    for m in metric_names
                ),
                human_size(entry.size),
                status,
            )
        out.print(table)
    return 0
