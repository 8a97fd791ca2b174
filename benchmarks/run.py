"""keras-ckpt benchmark suite: one process, interleaved variants, medians with min-max, ratios.

Usage (from the repository root):

    .venv/bin/python -m benchmarks.run                 # full: 10M and 25M models (~15 min)
    .venv/bin/python -m benchmarks.run --quick         # 10M model, fewer repetitions (~3 min)
    .venv/bin/python -m benchmarks.run --sizes 100M --sections saving,resume   # ~10 min more
    .venv/bin/python -m benchmarks.run --sizes 25M --reps 5 --sections saving,resume
    .venv/bin/python -m benchmarks.run --json bench.json --markdown   # README tables

(`python benchmarks/run.py ...` works too.)

Sections, one table each (see each module's docstring for exactly what is timed and why):

- `saving` (benchmarks/saving.py): training-time overhead per save on `fit` of keras-ckpt's
  callbacks (sync and, when `async_save` exists, async) against Keras's `ModelCheckpoint`,
  `BackupAndRestore` and `OrbaxCheckpoint`, with the floors measured in the same repetitions:
  copying the state to host memory, and writing the same bytes with and without fsync.
- `resume` (benchmarks/resume.py): loading through `CheckpointManager` (and
  `keras_ckpt.BackupAndRestore`) against `model.load_weights` / `keras.saving.load_model`.
- `memory` (benchmarks/memory.py): peak extra resident memory of a fit that saves, per callback,
  one subprocess each.
- `listing` (benchmarks/listing.py): commit, list and prune with 10, 1,000 and 10,000
  checkpoints; must grow linearly.
- `profile` (benchmarks/profile_save.py): where one sync save of the 25M model spends its time.
- a final `targets` table: the project's speed targets, met or missed and by how much.

Models are Dense stacks with Adam sized to the parameter count (about 12 bytes of state per
parameter). Timings on a shared 2-core machine are noisy: the load average at the start and end is
printed; compare ratios from the same run, never numbers from different runs. There are no timing
assertions in the tests; speed lives here.

Files are written under $KERAS_CKPT_BENCH_DIR (default: a fresh folder in the temp dir), removed
at the end. Models over 50M parameters (100M: 1.2 GB written per save, about 6 GB of RAM) run
with at most 2 repetitions of 2 saves and only the `ModelCheckpoint` rows, so that they stay
within about 10 minutes; they are not in the default sizes for that reason alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402  (after the path fix above)
from benchmarks._common import Table, parse_size, print_table, size_label  # noqa: E402

SECTIONS = ("saving", "resume", "memory", "listing", "profile")
# Issue 12's table: (must reach, aim) per row, as ratios against Keras's own callback or function.
TARGETS = {
    "async_keras": (0.35, 0.2),  # ModelCheckpoint .keras, background / Keras ModelCheckpoint .keras
    "sync_keras": (0.5, 0.3),  # ModelCheckpoint .keras, async_save=False / Keras .keras
    "backup": (1.0, 0.5),  # BackupAndRestore per backup (default) / Keras BackupAndRestore
    "restore": (1.2, 1.0),  # BackupAndRestore restore at fit start / Keras's
    "load_model": (0.7, 0.5),  # CheckpointManager.load_model / keras.saving.load_model
    "sync_weights": (1.0, 0.6),  # .weights.h5, async_save=False / Keras save_weights
    "listing_10k_seconds": 1.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="keras-ckpt benchmarks: overhead per save, resume, listing, profile.",
    )
    parser.add_argument(
        "--sizes", help="Model sizes, e.g. 10M,25M,100M. Default: 10M,25M (10M with --quick)."
    )
    parser.add_argument(
        "--reps",
        type=int,
        help="Repetitions per measurement. "
        "Default: 3 (2 with --quick); at most 2 for models over 50M.",
    )
    parser.add_argument(
        "--saves",
        type=int,
        help="Saves per timed fit. Default: 3 (2 with --quick and for models over 50M).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="Training steps between two saves (batches per epoch). Default: 8 (4 with --quick).",
    )
    parser.add_argument("--quick", action="store_true", help="A smaller run, about 3 minutes.")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"Comma-separated subset of {', '.join(SECTIONS)}.",
    )
    parser.add_argument(
        "--listing-counts",
        default="10,1000,10000",
        help="Checkpoint counts for the listing section.",
    )
    parser.add_argument("--profile-size", default="25M", help="Model size for the profile.")
    parser.add_argument("--no-orbax", action="store_true", help="Leave OrbaxCheckpoint out.")
    parser.add_argument("--json", metavar="PATH", help="Also write every sample to this file.")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="Print Markdown tables (for the README) instead of rich ones.",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    default_sizes = "10M" if args.quick else "10M,25M"
    args.sizes = [parse_size(s) for s in (args.sizes or default_sizes).split(",")]
    args.listing_counts = tuple(int(c) for c in args.listing_counts.split(","))
    for name in ("reps", "saves", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    return args


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = _common.environment()
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    _log(f"{command.strip()}  |  load average {env['load_average_at_start']}")
    root = _common.scratch_root()
    tables: list[Table] = []
    started = time.perf_counter()
    show = (lambda t: print(_common.plain_text(t))) if args.markdown else print_table

    def emit(table: Table) -> None:
        tables.append(table)
        show(table)

    try:
        profile_params = parse_size(args.profile_size)
        sizes = list(args.sizes)
        if "profile" in args.sections and profile_params not in sizes and not args.quick:
            sizes.append(profile_params)
        results: dict[str, Any] = {}
        for params in sizes:
            needs_model = (
                {"saving", "resume", "memory"} & set(args.sections) and params in args.sizes
            ) or ("profile" in args.sections and _profiles(params, args))
            if not needs_model:
                continue
            results[size_label(params)] = _run_size(params, args, root, emit)
        if "listing" in args.sections:
            from benchmarks import listing

            _log("listing")
            emit(
                listing.run(
                    os.path.join(root, "listing"),
                    counts=args.listing_counts,
                    reps=3 if args.quick else 5,
                    durable_up_to=10 if args.quick else 1_000,
                    commit_up_to=1_000 if args.quick else 10_000,
                )
            )
        emit(_targets(tables))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    env["load_average_at_end"] = os.getloadavg()
    env["seconds"] = time.perf_counter() - started
    footer = (
        f"Command: `{command.strip()}`; {env['seconds'] / 60:.1f} min; {env['cpus']} CPUs; "
        f"load average {_load(env['load_average_at_start'])} at start, "
        f"{_load(env['load_average_at_end'])} at end; keras {env['keras']}, "
        f"tensorflow {env['tensorflow-cpu'] or env['tensorflow']}, "
        f"orbax-checkpoint {env['orbax-checkpoint'] or 'not installed'}."
    )
    print(footer)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": command.strip(),
                    "environment": env,
                    "tables": [t.to_json() for t in tables],
                },
                f,
                indent=1,
                default=str,
            )
    return 0


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _profiles(params: int, args: argparse.Namespace) -> bool:
    """The profile runs on --profile-size, or on the largest size of a --quick run."""
    if args.quick:
        return params == max(args.sizes)
    return params == parse_size(args.profile_size)


def _run_size(params: int, args: argparse.Namespace, root: str, emit: Any) -> dict[str, Any]:
    import gc

    from benchmarks import profile_save, resume, saving

    label = size_label(params)
    large = params > 50_000_000
    reps = args.reps or (2 if args.quick else 3)
    saves = args.saves or (2 if args.quick else 3)
    if large:
        reps, saves = min(reps, 2), min(saves, 2)
    _log(f"{label}: building the model")
    model = _common.build_model(params)
    x, y = _common.training_data(args.steps or (4 if args.quick else _common.STEPS_PER_EPOCH))
    folder = os.path.join(root, label)
    os.makedirs(folder)
    out: dict[str, Any] = {"parameters": model.count_params()}
    if "saving" in args.sections and params in args.sizes:
        emit(
            saving.run(
                model,
                x,
                y,
                folder,
                label,
                saves=saves,
                reps=reps,
                include_orbax=not args.no_orbax,
                core_only=large,
                log=_log,
            )
        )
    if "resume" in args.sections and params in args.sizes:
        emit(
            resume.run(
                model,
                x,
                y,
                params,
                os.path.join(folder, "resume"),
                label,
                reps=reps if large else max(reps, 3),
                log=_log,
            )
        )
    if "memory" in args.sections and params in args.sizes:
        from benchmarks import memory

        state_bytes = sum(v.numpy().nbytes for v in _common.state_variables(model))
        emit(memory.run(params, label, state_bytes, saves=saves, log=_log))
    if "profile" in args.sections and _profiles(params, args):
        out_dir = os.path.dirname(os.path.abspath(args.json)) if args.json else os.getcwd()
        emit(profile_save.run(model, folder, label, out_dir=out_dir, log=_log))
    del model
    gc.collect()
    _common.settle(folder)
    return out


def _targets(tables: list[Table]) -> Table:
    """Issue 12's table: every row against its "must reach" limit and its aim, from this run."""
    table = Table(
        title="Targets (ratios from this run)",
        columns=["row", "model", "measured (per-repetition range)", "must reach", "aim", "verdict"],
    )

    def verdict(value: float | None, limit: float, per_rep: list[float]) -> str:
        if value is None:
            return "not measured"
        if per_rep and min(per_rep) <= limit < max(per_rep):
            state = "met" if value <= limit else "missed"
            return f"inconclusive (median {state}; repetitions straddle the limit)"
        if value <= limit:
            return f"met ({1 - value / limit:.0%} under)"
        return f"MISSED by {value / limit - 1:.0%}"

    def add(row: str, label: str, key: str, ratio: dict[str, Any]) -> None:
        value = ratio.get("ratio_of_medians")
        per_rep = ratio.get("per_rep") or []
        limit, aim = TARGETS[key]
        spread = f" ({min(per_rep):.2f}-{max(per_rep):.2f})" if per_rep else ""
        table.add(
            row,
            label,
            _x(value) + spread,
            f"<= {limit:.2f}x",
            f"{aim:.2f}x" + ("" if value is None else (" met" if value <= aim else " missed")),
            verdict(value, limit, per_rep),
        )

    for t in tables:
        data = t.data
        if "overhead_per_save" in data:
            label, ratios = data["model"], data["ratios"]
            rows = (
                (
                    "MC .keras, background (default) / Keras MC .keras",
                    "async_keras",
                    "keras-ckpt ModelCheckpoint .keras (async)",
                    "keras_keras",
                ),
                (
                    "MC .keras, async_save=False / Keras MC .keras",
                    "sync_keras",
                    "keras-ckpt ModelCheckpoint .keras (sync)",
                    "keras_keras",
                ),
                (
                    "BackupAndRestore per backup (default) / Keras's",
                    "backup",
                    "keras-ckpt BackupAndRestore (async)",
                    "keras_backup",
                ),
                (
                    ".weights.h5, async_save=False / Keras save_weights",
                    "sync_weights",
                    "keras-ckpt ModelCheckpoint .weights.h5 (sync)",
                    "same_format",
                ),
            )
            for row, key, variant, column in rows:
                if variant in ratios:
                    add(row, label, key, ratios[variant].get(column, {}))
        elif t.title.startswith("Resume"):
            label, pairs = data["model"], data["pairs"]
            for what, row, key in (
                ("backup", "BackupAndRestore restore at fit start / Keras's", "restore"),
                ("full model", "CheckpointManager.load_model / keras load_model", "load_model"),
            ):
                if what in pairs:
                    add(row, label, key, pairs[what]["ratio"])
        elif t.title.startswith("Listing"):
            listed = data.get("10000", {}).get("list")
            if listed:
                seconds = listed["median"]
                table.add(
                    "list 10,000 checkpoints (fresh manager)",
                    "-",
                    _common.fmt(seconds),
                    "well under 1 s",
                    "",
                    "met" if seconds < 0.5 else ("borderline" if seconds < 1 else "MISSED"),
                )
    table.notes.append(
        "Verdicts compare ratios of medians; in brackets the per-repetition ratios, which show "
        "how far this machine's noise moves them."
    )
    return table


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
