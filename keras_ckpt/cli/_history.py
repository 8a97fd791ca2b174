"""`average` and `prune --simulate`: commands over several checkpoints or the run's history."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from keras_ckpt.cli._common import (
    CliError,
    format_metric,
    human_size,
    open_manager,
    policy_from_args,
)


def cmd_average(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    if os.path.exists(args.output) and not args.force:
        raise CliError(f"{args.output} exists; pass --force to overwrite it.")
    select: str | list[str] = args.select
    if not re.fullmatch(r"(last|best):.*", args.select):
        select = [name.strip() for name in args.select.split(",") if name.strip()]
    records = manager.average(
        select, args.output, monitor=args.monitor, mode=args.mode or "auto", overwrite=args.force
    )
    kind = "model" if args.output.endswith(".keras") else "weights"
    loader = "keras.saving.load_model" if kind == "model" else "model.load_weights"
    print(
        f"Averaged {len(records)} checkpoints into {args.output} "
        f"({human_size(os.path.getsize(args.output))}); load it with {loader}({args.output!r}):"
    )
    width = max(len(r.name) for r in records)
    for record in records:
        metrics = " ".join(f"{k}={format_metric(v)}" for k, v in record.metrics.items())
        print(f"  {record.name:{width}}  epoch {record.epoch:<4} {metrics}".rstrip())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    saves = [e for e in manager.history() if args.owner is None or e.owner == args.owner]
    owners = sorted({str(e.owner) for e in saves})
    policy = policy_from_args(args, manager.checkpoints(args.owner), owners, "simulate")
    if policy is None:
        raise CliError(
            "prune --simulate needs at least one keep option (--keep-last, --keep-best, "
            "--keep-every-n-epochs, --max-total-bytes)."
        )
    result = manager.simulate(policy, owner=args.owner)
    if args.json:
        data = {
            "directory": args.directory,
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
        print(f"  keep  {entry.name:{width}}  epoch {entry.epoch:<4} {state:11} {metrics}".rstrip())
    return 0
