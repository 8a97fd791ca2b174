"""Round-2 features: reading a long run history, and the overhead `save_freq="auto"` really costs.

- history: a directory whose `.keras_ckpt/history.jsonl` holds `count` entries (a save and, for
  all but the newest ten, a deletion: a long run pruned as it went), built with the real encoders
  and `Storage.append`, fsync skipped for the build only. Timed: a fresh
  `CheckpointManager(directory).history()` (read the log, parse, join with the records), `reps`
  times. The issue's target: 10,000 entries in well under a second.
- cadence: the same `fit` of one benchmark model with no callback and with
  `BackupAndRestore(save_freq="auto", max_overhead=m)`, `reps` pairs in ABBA order. Reported: the
  median of the pairs' whole-fit overheads `(with - without) / without` with their range, against
  `m` (target: within [0.5x, 1.5x] of `m`; inconclusive when the pairs straddle a bound), the
  intervals the callback chose and its own account of the overhead. Run it on a quiet machine:
  the difference of two fits is what is measured.

Run alone: `python -m benchmarks.features` (the benchmark model, 14.2M parameters, 2 epochs of
250 steps a fit)
(`--quick` for a tiny model and a short fit that only check that it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from typing import Any
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (  # noqa: E402
    BATCH_SIZE,
    Stat,
    Table,
    build_model,
    fit_data,
    fmt,
    print_table,
    settle,
    training_data,
)


def _build_history(directory: str, count: int) -> None:
    from keras_ckpt.records import FileEntry, Record
    from keras_ckpt.store import history, storage_for

    storage = storage_for(directory)
    lines = []
    for i in range(count):
        record = Record(
            name=f"ckpt-{i:05d}.keras",
            kind="model",
            files=(FileEntry(f"ckpt-{i:05d}.keras", 1_000_000, "crc32c:00000000"),),
            epoch=i + 1,
            global_step=(i + 1) * 100,
            wall_time=1.7e9 + i,
            metrics={"loss": 1 / (i + 1), "val_loss": 1.1 / (i + 1), "accuracy": 0.5},
            owner="ModelCheckpoint:ckpt-{epoch:05d}.keras",
            sequence=i + 1,
        )
        lines.append(history.encode_save(record))
        if i < count - 10:
            lines.append(
                history.encode_delete(
                    record.name, i + 1, 1.7e9 + i + 1, "not kept by KeepLast(n=10)"
                )
            )
    with mock.patch("os.fsync", lambda fd: None):
        chunk = 1000  # appends of many lines at once: the build is not what is measured
        for start in range(0, len(lines), chunk):
            storage.append(history.HISTORY_PATH, b"".join(lines[start : start + chunk]))


def history_listing(count: int = 10_000, reps: int = 5) -> Table:
    """Times `CheckpointManager.history()` over a log of `count` saves (most of them pruned)."""
    from keras_ckpt import CheckpointManager

    table = Table(
        f"Run history: reading {count:,} saves",
        ["entries", "history() (fresh manager)", "per entry", "target"],
    )
    with tempfile.TemporaryDirectory(prefix="bench-history-") as directory:
        _build_history(directory, count)
        stat = Stat()
        for _ in range(reps):
            start = time.perf_counter()
            entries = CheckpointManager(directory).history()
            stat.add(time.perf_counter() - start)
        if len(entries) != count:
            raise AssertionError(f"history() returned {len(entries)} entries, expected {count}")
        log_bytes = os.path.getsize(os.path.join(directory, ".keras_ckpt", "history.jsonl"))
    table.add(
        f"{count:,}",
        stat.cell(),
        fmt(stat.median / count, "s"),
        "well under 1 s" + (" (met)" if stat.median < 0.5 else " (NOT met)"),
    )
    table.notes.append(f"log size {log_bytes / 1e6:.1f} MB; {reps} reads")
    table.data = {"count": count, "history_seconds": stat.to_json(), "log_bytes": log_bytes}
    return table


def _fit(model: Any, data: dict[str, Any], epochs: int, callbacks: list[Any]) -> float:
    start = time.perf_counter()
    model.fit(**data, epochs=epochs, callbacks=callbacks, verbose=0)
    return time.perf_counter() - start


def _verdict(median: float, low: float, high: float, per_rep: list[float]) -> str:
    """Met or missed by the median; inconclusive when the repetitions straddle a bound (the
    rule of `benchmarks.run`'s targets table)."""
    state = "met" if low <= median <= high else "NOT met"
    if min(per_rep) < low <= max(per_rep) or min(per_rep) <= high < max(per_rep):
        return f"(inconclusive: median {state}, repetitions straddle the target)"
    return f"({state})"


def auto_cadence_overhead(
    params: int = 14_200_000,
    max_overhead: float = 0.05,
    epochs: int = 2,
    steps: int = 250,
    reps: int = 6,
) -> Table:
    """The whole-fit overhead of `BackupAndRestore(save_freq="auto", max_overhead=...)`."""
    from keras_ckpt import BackupAndRestore, CheckpointManager

    table = Table(
        f'BackupAndRestore(save_freq="auto", max_overhead={max_overhead:g}): measured overhead',
        [
            "params",
            "fit without",
            "fit with",
            "overhead",
            "target",
            "intervals chosen",
            "own estimate",
        ],
    )
    without, with_, estimates, chosen = Stat(), Stat(), [], []
    model = build_model(params)  # one model for every fit: it trains on, which costs the same
    data = fit_data(*training_data(steps))
    model.fit(**data, epochs=1, verbose=0)  # tracing and first-use costs outside the timing

    def fit_with_backup() -> float:
        with tempfile.TemporaryDirectory(prefix="bench-cadence-") as folder:
            backup = BackupAndRestore(
                os.path.join(folder, "backup"),
                save_freq="auto",
                max_overhead=max_overhead,
                delete_checkpoint=False,
            )
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                seconds = _fit(model, data, epochs, [backup])
            chosen.append([int(n) for n in re.findall(r"every (\d+) steps", out.getvalue())])
            records = CheckpointManager(os.path.join(folder, "backup")).checkpoints()
            cadence = records[-1].owner_state.get("cadence", {}) if records else {}
            estimates.append(cadence.get("measured_overhead"))
        settle()
        return seconds

    for rep in range(reps):  # ABBA order: a slow drift of the machine's speed cancels out
        for which in ("without", "with") if rep % 2 == 0 else ("with", "without"):
            if which == "without":
                without.add(_fit(model, data, epochs, []))
            else:
                with_.add(fit_with_backup())
    per_rep = [(w - b) / b for w, b in zip(with_.samples, without.samples, strict=True)]
    overhead = Stat(per_rep).median
    low, high = 0.5 * max_overhead, 1.5 * max_overhead
    table.add(
        f"{params:,}",
        without.cell(),
        with_.cell(),
        f"{overhead:.1%} ({min(per_rep):.1%} to {max(per_rep):.1%})",
        f"[{low:.1%}, {high:.1%}] " + _verdict(overhead, low, high, per_rep),
        "; ".join(",".join(map(str, c)) or "-" for c in chosen),
        ", ".join(f"{e:.1%}" if isinstance(e, float) else "-" for e in estimates),
    )
    table.notes.append(
        f"{epochs} epochs of {steps} steps, batch {BATCH_SIZE}, {reps} paired repetitions in ABBA "
        "order, one model trained on throughout; overhead: the median (min to max) of the "
        "paired repetitions' overheads. An overhead below the target means backups cost less "
        "than allowed (the interval is rounded up and `every_seconds` is not set)."
    )
    table.data = {
        "params": params,
        "max_overhead": max_overhead,
        "without": without.to_json(),
        "with": with_.to_json(),
        "overhead": overhead,
        "overhead_per_rep": per_rep,
        "intervals": chosen,
        "estimates": estimates,
    }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=10_000, help="history entries")
    parser.add_argument("--cadence-params", type=float, default=14.2e6, help="model parameters")
    parser.add_argument("--max-overhead", type=float, default=0.05)
    parser.add_argument("--reps", type=int, default=6, help="pairs (cadence), reads (history)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit (cadence)")
    parser.add_argument("--steps", type=int, default=250, help="steps per epoch (cadence)")
    parser.add_argument("--quick", action="store_true", help="tiny model, short fit: it runs")
    args = parser.parse_args(argv)
    print_table(history_listing(args.history, reps=args.reps))
    if args.quick:
        table = auto_cadence_overhead(20_000, args.max_overhead, epochs=3, steps=20, reps=1)
    else:
        table = auto_cadence_overhead(
            int(args.cadence_params), args.max_overhead, args.epochs, args.steps, args.reps
        )
    print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
