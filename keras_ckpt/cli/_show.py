"""`show`: what one checkpoint holds (`CheckpointManager.describe`), and how to load it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from keras_ckpt.cli._commands import Printer, record_json
from keras_ckpt.cli._common import (
    format_metric,
    human_age,
    human_size,
    open_manager,
    resolve_which,
    run_scope,
    where,
)
from keras_ckpt.records import Record

BACKUP_FORMAT = "BackupAndRestore backup (weights + training state)"


def cmd_show(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run)
    monitor, mode = resolve_which(manager, args.which, args.monitor, args.mode, run)
    record, info = manager.describe(args.which, monitor=monitor, mode=mode or "auto", run=run)
    if args.json:
        data = {"checkpoint": record_json(record, time.time()), "run": run, "contents": info}
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
        return 0
    if note and args.which in ("latest", "best"):
        print(note)
    _render(record, info, args.which)
    return 0


def _render(record: Record, info: dict[str, Any], which: str) -> None:
    out = Printer()
    from rich.table import Table

    weights, optimizer = info.get("weights"), info.get("optimizer")
    arch, comp = info.get("architecture"), info.get("compile")
    full = arch is not None
    title = f"{record.name}" + (f"  ({which})" if which in ("latest", "best") else "")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    what = {
        "model": "full model" if full else "model",
        "weights": "weights only",
    }.get(record.kind, record.kind)
    files = f" in {len(record.files)} files" if len(record.files) > 1 else ""
    if record.kind == "training_state":
        holds = f"{BACKUP_FORMAT}, {human_size(record.size)}{files}, for exact resume"
    else:
        holds = f"{what}, {human_size(record.size)}{files} ({info['format']})"
    grid.add_row("holds", holds)
    grid.add_row(
        "taken at",
        f"{where(record)} ({human_age(record.wall_time)})",
    )
    if record.metrics:
        grid.add_row(
            "metrics", "  ".join(f"{k}={format_metric(v)}" for k, v in record.metrics.items())
        )
    saved_by = f"Keras {record.keras_version or '?'}, {record.backend or '?'} backend"
    grid.add_row("written by", saved_by + (f", callback {record.owner}" if record.owner else ""))
    grid.add_row("", "")
    if arch is not None:
        layers = f", {arch['layers']} layers" if arch["layers"] is not None else ""
        grid.add_row("architecture", f"yes: {arch['class_name']} {arch['name']!r}{layers}")
    else:
        grid.add_row("architecture", "no: rebuild the model in code before loading these weights")
    if weights:
        grid.add_row(
            "weights",
            f"{weights['parameters']:,} parameters in {weights['arrays']} arrays of "
            f"{weights['layers_with_weights']} layers ({human_size(weights['bytes'])})",
        )
    if optimizer:
        cls = comp["optimizer"] if comp and comp.get("optimizer") else None
        named = cls or f"{optimizer['name']!r} (its class is not stored in a weights file)"
        grid.add_row(
            "optimizer state",
            f"yes: {named}, {optimizer['variables']} variables ({human_size(optimizer['bytes'])})"
            + (
                f", iterations={optimizer['iterations']}"
                if optimizer["iterations"] is not None
                else ""
            ),
        )
    else:
        grid.add_row("optimizer state", "no: training would restart the optimizer from scratch")
    if comp:
        lr = (
            f", learning_rate={comp['learning_rate']:.4g}"
            if isinstance(comp["learning_rate"], float)
            else ""
        )
        grid.add_row(
            "compile config",
            f"yes: {comp['optimizer']}{lr}, loss={comp['loss']}, metrics={comp['metrics']}",
        )
    else:
        grid.add_row("compile config", "no: call model.compile(...) yourself after loading")
    if record.kind == "training_state":
        grid.add_row("resume state", f"yes: written by {record.owner} for exact resume")
    else:
        grid.add_row(
            "resume state",
            "position only (epoch/step in the record); no RNG or data-pipeline state, so "
            "continuing from it is not bit-exact (keras_ckpt.BackupAndRestore saves those)",
        )
    grid.add_row("", "")
    for f in record.files:
        grid.add_row("file", f"{f.path}  {human_size(f.size)}  {f.checksum}")
    for part, size in info["parts"].items():
        grid.add_row("  part", f"{part}  {human_size(size)}")
    out.print(f"[bold]{title}[/]")
    out.print(grid)
    out.print()
    out.print(_difference(record, info))


def _difference(record: Record, info: dict[str, Any]) -> str:
    """Whole model versus weights only, in numbers from this very file."""
    loads = info.get("load_path", record.path)  # a sharded checkpoint loads from its folder
    weights, optimizer = info.get("weights") or {}, info.get("optimizer")
    numbers = f"{weights.get('parameters', 0):,} parameters ({human_size(weights.get('bytes', 0))})"
    opt = f" plus optimizer state ({human_size(optimizer['bytes'])})" if optimizer else ""
    if info.get("architecture") is not None:
        config = sum(v for k, v in info["parts"].items() if k.endswith(".json"))
        return (
            f"Whole model: this file has the numbers, {numbers}{opt}, and also the architecture "
            f"and compile settings ({human_size(config)} of JSON). keras.saving.load_model("
            f"'{loads}') rebuilds it ready to predict or keep training, without your model "
            "code (custom layers need custom_objects). A weights-only save would drop that JSON: "
            "it loads only with model.load_weights() into a model your code builds the same way."
        )
    if record.kind == "training_state":
        return (
            f"Training state: {record.path} has the numbers, {numbers}{opt}; the other files hold "
            "what exact resume also needs (RNG and callback state, position in the epoch). "
            "keras_ckpt.BackupAndRestore restores all of it on the next fit. The weights file "
            "alone loads with model.load_weights() into a model your code builds; it has no "
            "architecture, so it cannot become a .keras file."
        )
    return (
        f"Weights only: this file has the numbers, {numbers}{opt}, but no architecture or "
        "compile settings. Build and compile the same model in code, then call model.load_weights("
        f"'{loads}') (build the optimizer first, or its state is skipped; "
        "CheckpointManager.load_weights does that). A whole-model .keras save would add the "
        "architecture so keras.saving.load_model works without your code."
    )
