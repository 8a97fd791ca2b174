"""`list`, `verify`, `prune` and `export`: what they read from the manager and how they print it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from keras_ckpt.cli._common import (
    CliError,
    format_metric,
    human_age,
    human_size,
    open_manager,
    plural,
    policy_from_args,
    recorded_monitor,
    resolve_mode,
    resolve_which,
    retention_reasons,
    run_scope,
    where,
)
from keras_ckpt.policies import infer_mode, rank
from keras_ckpt.records import Record
from keras_ckpt.runs import ALL, run_of

_COLUMNS = {
    "name": lambda r: r.name,
    "epoch": lambda r: (r.epoch, r.step),
    "step": lambda r: (r.epoch, r.step),  # the record's `step` is the step in its epoch
    "global_step": lambda r: r.global_step,
    "size": lambda r: r.size,
    "age": lambda r: -r.wall_time,
    "time": lambda r: r.wall_time,
}


class Printer:
    """Prints rich renderables; piped output gets a fixed width and no trailing spaces."""

    def __init__(self) -> None:
        try:
            from rich.console import Console
        except ImportError:
            raise CliError(
                "Tables need the rich package: pip install 'keras-ckpt[cli]' (or use --json)."
            ) from None
        # A pipe or a file has no width; whatever COLUMNS says, never cut a name or a value there.
        piped = not sys.stdout.isatty()
        self.console = Console(width=200 if piped else None, highlight=False)

    def print(self, *renderables: Any) -> None:
        if self.console.is_terminal:
            self.console.print(*renderables)
            return
        with self.console.capture() as captured:
            self.console.print(*renderables)
        for line in captured.get().splitlines():
            print(line.rstrip())


def record_json(record: Record, now: float) -> dict[str, Any]:
    return {
        "name": record.name,
        "kind": record.kind,
        "epoch": record.epoch,
        "step": record.step,
        "global_step": record.global_step,
        "metrics": dict(record.metrics),
        "size": record.size,
        "wall_time": record.wall_time,
        "age_seconds": round(now - record.wall_time, 3),
        "files": [{"path": f.path, "size": f.size, "checksum": f.checksum} for f in record.files],
        "owner": record.owner,
        "run": run_of(record),
        "keras_version": record.keras_version,
        "backend": record.backend,
    }


def sort_records(records: Sequence[Record], key: str) -> list[Record]:
    """Sorted by a column, or by a metric best first as `CheckpointManager.best` ranks (ties:
    newer first; records without it last). Records come oldest first."""
    if key in _COLUMNS:
        return sorted(records, key=_COLUMNS[key])
    if not any(key in r.metrics for r in records):
        known = sorted({m for r in records for m in r.metrics} | set(_COLUMNS))
        raise CliError(
            f"Cannot sort by {key!r}: no checkpoint has it. Known keys: {', '.join(known)}"
        )
    monitor, recorded_mode = recorded_monitor(records)
    try:
        mode = recorded_mode if key == monitor and recorded_mode else infer_mode(key)
    except ValueError:
        mode = "min"
    order = rank(records, key, mode)
    return [records[i] for i in order] + [r for i, r in enumerate(records) if i not in order]


def missing_files(manager: Any, records: Sequence[Record]) -> dict[str, list[str]]:
    """For each checkpoint whose record exists: the files it names that are gone (deleted by
    hand, say). Only existence is checked; `verify` reads the bytes."""
    out = {}
    for record in records:
        gone = [f.path for f in record.files if not manager.storage.exists(f.path)]
        if gone:
            out[record.name] = gone
    return out


def cmd_list(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run)
    records = oldest_first = manager.checkpoints(run=run)
    why = retention_reasons(manager, records, run) if args.why else {}
    missing = missing_files(manager, records)
    if args.sort:
        records = sort_records(records, args.sort)
    now = time.time()
    if args.json:
        rows = []
        for record in records:
            row = record_json(record, now)
            row["missing_files"] = missing.get(record.name, [])
            if args.why:
                policy = why[record.name]["policy"]
                row["kept_because"] = why[record.name]["reasons"]
                row["retention_policy"] = repr(policy) if policy is not None else None
            rows.append(row)
        data = {"directory": args.directory, "run": run, "checkpoints": rows}
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    if note:
        print(note)
    if not records:
        print(f"No checkpoints in {args.directory}.")
        return 0
    out = Printer()
    from rich.table import Table

    metric_names = list(dict.fromkeys(m for r in records for m in r.metrics))
    monitor, mode = recorded_monitor(oldest_first)
    best = None
    if monitor in metric_names:
        with contextlib.suppress(CliError):  # the metric's direction is unknown: mark nothing
            best_record = manager.best(monitor, resolve_mode(monitor, mode), run=run or ALL)
            best = best_record.name if best_record is not None else None
    several = len({run_of(r) for r in records}) > 1
    scope = "" if run in (None, ALL) or note is None else f" (run {run})"
    table = Table(
        title=f"{plural(len(records), 'checkpoint')} in {args.directory}{scope}",
        title_justify="left",
    )
    table.add_column("name", no_wrap=True)
    if several:
        table.add_column("run")
    table.add_column("kind")
    table.add_column("epoch", justify="right")
    table.add_column("step of epoch", justify="right")
    table.add_column("global step", justify="right")
    for name in metric_names:
        table.add_column(name, justify="right", style="bold" if name == monitor else None)
    table.add_column("size", justify="right")
    table.add_column("age", justify="right")
    if args.why:
        table.add_column("kept because")
    for record in records:
        mark = " *" if record.name == best else ""
        if record.name in missing:
            mark += " [red](missing)[/]"
        cells = [record.name + mark]
        if several:
            cells.append(run_of(record))
        mid_epoch = record.step > 0
        cells += [
            record.kind,
            str(record.epoch + 1 if mid_epoch else record.epoch),
            str(record.step) if mid_epoch else "end",
            str(record.global_step),
        ]
        cells += [
            format_metric(record.metrics[m]) if m in record.metrics else "-" for m in metric_names
        ]
        cells += [human_size(record.size), human_age(record.wall_time, now)]
        if args.why:
            cells.append(", ".join(why[record.name]["reasons"]) or "[dim]no policy keeps it[/]")
        table.add_row(*cells)
    out.print(table)
    if best is not None:
        runs_word = "every run" if run == ALL and several else "this run"
        out.print(f"* best by {monitor} (the metric its callback monitors) in {runs_word}")
    if missing:
        out.print(
            f"(missing): {plural(len(missing), 'checkpoint')} whose record remains but whose file "
            f"is gone (deleted by hand?); `keras-ckpt verify {args.directory}` checks every byte."
        )
    if args.why:
        unpoliced = sorted({str(r.owner) for r in records if why[r.name]["policy"] is None})
        if unpoliced:
            out.print(
                f"No retention policy in the records of {', '.join(unpoliced)}: "
                "'kept because' can only show which checkpoint is the newest."
            )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run) if args.name is None else (ALL, None)
    results = manager.verify(args.name, run=run)
    damaged = [r for r in results if not r.ok]
    if args.json:
        rows = [{"name": r.name, "ok": r.ok, "problems": list(r.problems)} for r in results]
        data = {"directory": args.directory, "run": run, "results": rows}
        json.dump(data, sys.stdout, indent=2)
        print()
        return 1 if damaged else 0
    if note:
        print(note)
    for result in results:
        print(f"{'ok' if result.ok else 'DAMAGED':8} {result.name}")
        for problem in result.problems:
            print(f"         {problem}")
    if not results:
        print(f"No checkpoints in {args.directory}.")
    elif damaged:
        print(
            f"{len(damaged)} of {plural(len(results), 'checkpoint')} damaged in {args.directory}."
        )
    elif len(results) == 1:
        print("The checkpoint verified (sizes and checksums match its record).")
    else:
        print(f"All {len(results)} checkpoints verified (sizes and checksums match their records).")
    return 1 if damaged else 0


def cmd_prune(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run)
    records = manager.checkpoints(args.owner, run=ALL)
    if args.owner is not None and not records:
        everything = manager.checkpoints(run=ALL)
        owners = sorted({r.owner for r in everything if r.owner is not None})
        unowned = sum(r.owner is None for r in everything)
        listed = owners + ([f"{plural(unowned, 'checkpoint')} without one"] if unowned else [])
        raise CliError(
            f"No checkpoint in {args.directory} has owner {args.owner!r}. Owners there: "
            f"{', '.join(listed) or 'none (the directory holds no checkpoints)'}"
        )
    if args.owner is not None and args.run is None:  # that callback's newest run
        run = run_of(records[-1])
        note = None
        if len({run_of(r) for r in records}) > 1:
            note = f"Run {run}, the newest of {args.owner} (--run all for every run)."
    records = manager.checkpoints(args.owner, run=run)
    owners = sorted({str(r.owner) for r in records})
    policy = policy_from_args(args, records, owners, "prune")
    recorded = policy is None
    try:
        result = manager.prune(policy, dry_run=args.dry_run, owner=args.owner, run=run)
    except ValueError as e:
        if not recorded or not records:
            raise
        if any(p is not None for p in _recorded_policies(records)):
            raise CliError(
                f"The recorded retention policy ranks by a metric no checkpoint records yet, so "
                f"it keeps nothing it can judge ({e}); nothing was deleted. Pass keep options "
                "(e.g. --keep-last 3)."
            ) from None
        raise CliError(
            "prune needs at least one keep option (--keep-last, --keep-best, "
            "--keep-every-n-epochs, --max-total-bytes): no retention policy is recorded with "
            "these checkpoints, and with none, every checkpoint but the newest would be deleted."
        ) from None
    finally:
        manager.close()
    described = _policy_text(result.policies) if recorded else repr(policy)
    if args.json:
        data = {
            "directory": args.directory,
            "run": run,
            "dry_run": result.dry_run,
            "policy": described,
            "policy_source": "recorded" if recorded else "options",
            "deleted": [r.name for r in result.deleted],
            "kept": [{"name": k.record.name, "reasons": list(k.reasons)} for k in result.kept],
            "failed": [r.name for r in result.failed],
        }
        json.dump(data, sys.stdout, indent=2)
        print()
        return 2 if result.failed else 0
    if note:
        print(note)
    freed = human_size(sum(r.size for r in result.deleted))
    total = len(result.deleted) + len(result.kept) + len(result.failed)
    verb = "Would delete" if result.dry_run else "Deleted"
    if recorded and len(result.policies) > 1:
        print("Policies (recorded by the callbacks, each judging its own run's checkpoints):")
        owners_of: dict[str, int] = {}
        for run_id, _, _ in result.policies:
            owners_of[run_id] = owners_of.get(run_id, 0) + 1
        for run_id, owner, each in result.policies:
            whose = f" {owner}" if owners_of[run_id] > 1 and owner else ""
            print(f"  run {run_id}{whose}: {each!r}" if each else f"  run {run_id}{whose}: none")
    else:
        source = "recorded by the callback that wrote them" if recorded else "from the options"
        print(f"Policy ({source}): {described}")
    print(
        f"{verb} {len(result.deleted)} of {plural(total, 'checkpoint')} ({freed})"
        + (" - dry run, nothing was deleted:" if result.dry_run else ":")
    )
    width = max((len(r.name) for r in records), default=0)
    for record in result.deleted:
        print(f"  delete  {record.name:{width}}  {where(record):34} {human_size(record.size)}")
    print(f"Kept {len(result.kept)}:")
    for kept in result.kept:
        record = kept.record
        print(f"  keep    {record.name:{width}}  {where(record):34} {', '.join(kept.reasons)}")
    if result.failed:  # each was warned about, with the reason
        print(f"Could not delete {len(result.failed)} (see the warnings above):")
        for record in result.failed:
            print(f"  failed  {record.name:{width}}  {where(record)}")
        return 2
    return 0


def _recorded_policies(records: Sequence[Record]) -> list[Any]:
    newest: dict[tuple[str, str | None], Record] = {}
    for record in records:
        newest[(run_of(record), record.owner)] = record
    out = []
    for record in newest.values():
        try:
            out.append(record.memory.retention_policy())
        except ValueError:
            out.append(None)
    return out


def _policy_text(policies: Sequence[tuple[str, str | None, Any]]) -> str:
    """One policy as its repr; several as `run R (owner): policy; ...`."""
    if len(policies) == 1:
        return repr(policies[0][2]) if policies[0][2] is not None else "none recorded"
    return "; ".join(
        f"run {run}" + (f" ({owner})" if owner else "") + f": {policy!r}"
        for run, owner, policy in policies
    )


def cmd_export(args: argparse.Namespace) -> int:
    out = args.output
    if not (out.endswith(".keras") or out.endswith(".weights.h5")):
        raise CliError(
            f"Cannot export to {out}: the name must end in .keras (a full model for "
            "keras.saving.load_model) or .weights.h5 (weights for model.load_weights)."
        )
    if os.path.isdir(out):
        raise CliError(f"{out} is a directory; give the file name to write, e.g. {out}/model.keras")
    if os.path.lexists(out) and not args.force:
        raise CliError(f"{out} already exists; pass --force to overwrite it.")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CliError(f"Cannot write {out}: no such directory {parent}")
    manager = open_manager(args.directory)
    run, note = run_scope(manager, args.run)
    monitor, mode = resolve_which(manager, args.which, args.monitor, args.mode, run)
    try:
        record = manager.export(
            args.which, out, monitor=monitor, mode=mode or "auto", run=run, overwrite=args.force
        )
    except ValueError as e:
        raise CliError(f"Checkpoint {e}") from None
    if note:
        print(note)
    loader = "keras.saving.load_model" if out.endswith(".keras") else "model.load_weights"
    metrics = " ".join(f"{k}={format_metric(v)}" for k, v in record.metrics.items())
    print(
        f"Exported {record.name} ({where(record)}{', ' + metrics if metrics else ''}) to "
        f"{out} ({human_size(os.path.getsize(out))}); load it with {loader}({out!r})."
    )
    return 0
