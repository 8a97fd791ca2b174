"""keras-ckpt benchmarks: what checkpointing costs training and resuming, against Keras, one run.

Usage (from the repository root):

    .venv/bin/python -m benchmarks.run                   # 9.2M model, 4 rounds (~30 min on 2 cores)
    .venv/bin/python -m benchmarks.run --sizes 25M,100M  # the same table at 25M and 100M
    .venv/bin/python -m benchmarks.run --quick           # tiny model, 1 round: checks that it runs
    .venv/bin/python -m benchmarks.plot bench.json       # redraws bench.png from the JSON

(`python benchmarks/run.py ...` works too.)

Output: the tables printed (rich, or Markdown with `--markdown`), every raw measurement in a JSON
file (`--json`, default `bench.json`) and a PNG of the tables drawn from that JSON by
`benchmarks/plot.py` (`--png`, default: the JSON's path ending `.png`).

Sections, per model size:

- `saving` (benchmarks/saving.py): per save, the time training was blocked in each callback's
  hooks (timed directly, the final flush at `fit` end included) and the whole-fit overhead (fit
  with the callback minus the fits without around it), from paired fits in ABBA-like order, for
  keras-ckpt's callbacks and Keras's (unsynced, and followed by an fsync: equal durability), with
  the floors of the same run (host copy, write, write + fsync) and a save interval where the disk
  keeps up.
- `resume` (benchmarks/resume.py): restoring at `fit` start and loading, against Keras.
- `memory` (benchmarks/memory.py, not in the default): peak extra resident memory of a fit that
  saves, per callback, one subprocess each.
- `listing` (benchmarks/listing.py, not in the default, not per size): commit, list and prune
  with 10, 1,000 and 10,000 checkpoints.

Then the must-reach table (benchmarks/targets.py): every row a ratio keras-ckpt / Keras from this
run, with its spread and a met/missed verdict by the median.

Timings on a shared 2-core machine are noisy: the load average at the start and end is printed and
stored; compare ratios from the same run, never numbers from different runs. There are no timing
assertions in the tests; speed lives here. Files are written under $KERAS_CKPT_BENCH_DIR (default:
a fresh folder in the temp dir), removed at the end. Models over 50M parameters run 2 rounds of 3
saves unless told otherwise (100M: 1.2 GB written per save, about 6 GB of RAM).
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

SECTIONS = ("saving", "resume", "memory", "listing")
DEFAULT_SECTIONS = ("saving", "resume")
QUICK_PARAMS = 20_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="keras-ckpt benchmarks: blocked time and overhead per save, resume, floors.",
    )
    parser.add_argument("--sizes", help="Model sizes, e.g. 9.2M,25M,100M. Default: 9.2M.")
    parser.add_argument(
        "--rounds",
        type=int,
        help="Rounds of paired fits (and at least 5 repetitions of each load). Default: 4; "
        "2 for models over 50M; 1 with --quick.",
    )
    parser.add_argument(
        "--saves", type=int, help="Saves per fit. Default: 6; 3 over 50M; 2 with --quick."
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="Training steps between two saves. Default: chosen so the disk keeps up (at least "
        "12 steps, --min-seconds of training and 4x the write + fsync floor); 2 with --quick.",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="Least training time between saves when --steps is not given. Default: 2.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A tiny model, 1 round of 2 saves: proves the code runs (the numbers mean nothing).",
    )
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"Comma-separated subset of {', '.join(SECTIONS)}. Default: "
        f"{','.join(DEFAULT_SECTIONS)}.",
    )
    parser.add_argument(
        "--variants", help="Only these callbacks (keys of benchmarks.saving.variants)."
    )
    parser.add_argument("--no-orbax", action="store_true", help="Leave OrbaxCheckpoint out.")
    parser.add_argument(
        "--listing-counts", default="10,1000,10000", help="Checkpoint counts for `listing`."
    )
    parser.add_argument(
        "--json", default="bench.json", help="Raw measurements. Default: %(default)s."
    )
    parser.add_argument("--png", help="The plot. Default: the --json path ending .png.")
    parser.add_argument(
        "--markdown", action="store_true", help="Print Markdown tables instead of rich ones."
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.quick:
        args.sizes = [QUICK_PARAMS] if args.sizes is None else _sizes(args.sizes)
    else:
        args.sizes = _sizes(args.sizes or "9.2M")
    for name in ("rounds", "saves", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    args.variants = args.variants.split(",") if args.variants else None
    args.listing_counts = tuple(int(c) for c in args.listing_counts.split(","))
    args.png = args.png or os.path.splitext(args.json)[0] + ".png"
    return args


def _sizes(text: str) -> list[int]:
    return [parse_size(s) for s in text.split(",")]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = _common.environment()
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    command = command.strip()
    _log(f"{command}  |  load average {_load(env['load_average_at_start'])}")
    root = _common.scratch_root()
    tables: list[Table] = []
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    show = (lambda t: print(_common.plain_text(t))) if args.markdown else print_table

    def emit(table: Table) -> None:
        tables.append(table)
        show(table)

    try:
        if {"saving", "resume", "memory"} & set(args.sections):
            for params in args.sizes:
                runs.append(_run_size(params, args, os.path.join(root, size_label(params)), emit))
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
    finally:
        shutil.rmtree(root, ignore_errors=True)
    env["load_average_at_end"] = os.getloadavg()
    env["seconds"] = time.perf_counter() - started
    print(
        f"Command: `{command}`; {env['seconds'] / 60:.1f} min; {env['cpus']} CPUs; "
        f"load average {_load(env['load_average_at_start'])} at start, "
        f"{_load(env['load_average_at_end'])} at end; keras {env['keras']}, "
        f"tensorflow {env['tensorflow-cpu'] or env['tensorflow']}, "
        f"orbax-checkpoint {env['orbax-checkpoint'] or 'not installed'}."
    )
    data = {
        "command": command,
        "environment": env,
        "runs": runs,
        "tables": [t.to_json() for t in tables],
    }
    with open(args.json, "w") as f:
        json.dump(data, f, indent=1, default=str)
    print(f"Raw measurements: {args.json}")
    if runs and any(run.get("rows") for run in runs):
        from benchmarks import plot

        print(f"Plot: {plot.plot(json.loads(json.dumps(data, default=str)), args.png)}")
    return 0


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _run_size(params: int, args: argparse.Namespace, folder: str, emit: Any) -> dict[str, Any]:
    import gc

    from benchmarks import resume, saving, targets

    label = size_label(params)
    large = params > 50_000_000
    rounds = args.rounds or (1 if args.quick else 2 if large else 4)
    saves = args.saves or (2 if args.quick else 3 if large else 6)
    steps = args.steps or (2 if args.quick else None)
    _log(f"{label}: building the model")
    model = _common.build_model(params)
    os.makedirs(folder)
    result: dict[str, Any] = {
        "model": label,
        "parameters": model.count_params(),
        "state_bytes": sum(v.numpy().nbytes for v in _common.state_variables(model)),
    }
    if "saving" in args.sections:
        result.update(
            saving.measure(
                model,
                folder,
                label,
                saves=saves,
                rounds=rounds,
                steps=steps,
                min_seconds=args.min_seconds,
                include_orbax=not args.no_orbax,
                only=args.variants,
                log=_log,
            )
        )
        emit(saving.table(result))
    if "resume" in args.sections:
        x, y = _common.training_data(2 if args.quick else _common.STEPS_PER_EPOCH)
        table = resume.run(
            model,
            x,
            y,
            params,
            os.path.join(folder, "resume"),
            label,
            reps=max(rounds, 1 if args.quick else 5),
            log=_log,
        )
        result["resume"] = table.data["pairs"]
        emit(table)
    if "memory" in args.sections:
        from benchmarks import memory

        emit(memory.run(params, label, result["state_bytes"], saves=saves, log=_log))
    if {"saving", "resume"} & set(args.sections):
        result["rows"] = targets.evaluate(result)
        emit(targets.table(result, result["rows"]))
    del model
    gc.unfreeze()  # `saving.measure` froze the model's objects
    gc.collect()
    _common.settle(folder)
    return result


if __name__ == "__main__":
    sys.exit(main())
