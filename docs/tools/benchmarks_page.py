"""The benchmarks page's table and plot, from one JSON summary of a benchmark run.

    python docs/tools/benchmarks_page.py bench.json --date 2026-12-07 --machine "..."
        # bench.json from `python -m benchmarks.run --json bench.json`: rewrites the summary
        # docs/img/benchmarks.json, then the table in docs/benchmarks.md and docs/img/benchmarks.png
    python docs/tools/benchmarks_page.py            # the table and plot again from the summary
    python docs/tools/benchmarks_page.py --check    # exit 1 if the page's table is stale

The page's table lies between `<!-- benchmarks-table:begin -->` and `<!-- benchmarks-table:end -->`
and is never edited by hand; `tests/test_docs_pages.py` runs the check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "benchmarks.md"
SUMMARY = ROOT / "docs" / "img" / "benchmarks.json"
PLOT = ROOT / "docs" / "img" / "benchmarks.png"
BEGIN, END = "<!-- benchmarks-table:begin -->", "<!-- benchmarks-table:end -->"

# (row label, where the ratio comes from, Keras's figure, key of the "must reach" limit).
# Saving rows: (variant, ratio column) of the saving table; resume rows: the pair's name.
ROWS = (
    (
        "`ModelCheckpoint` `.keras`, background (default) / Keras's `.keras`",
        ("saving", "keras-ckpt ModelCheckpoint .keras (async)", "keras_keras"),
        ("saving", "Keras ModelCheckpoint .keras"),
        "async_keras",
    ),
    (
        "`ModelCheckpoint` `.keras`, `async_save=False` / Keras's `.keras`",
        ("saving", "keras-ckpt ModelCheckpoint .keras (sync)", "keras_keras"),
        ("saving", "Keras ModelCheckpoint .keras"),
        "sync_keras",
    ),
    (
        "`BackupAndRestore` per backup (default) / Keras's",
        ("saving", "keras-ckpt BackupAndRestore (async)", "keras_backup"),
        ("saving", "Keras BackupAndRestore"),
        "backup",
    ),
    (
        "`BackupAndRestore` restore at `fit` start / Keras's",
        ("resume", "backup"),
        ("resume", "backup"),
        "restore",
    ),
    (
        "`CheckpointManager.load_model` / `keras.saving.load_model`",
        ("resume", "full model"),
        ("resume", "full model"),
        "load_model",
    ),
    (
        "`.weights.h5`, `async_save=False` / Keras `save_weights`",
        ("saving", "keras-ckpt ModelCheckpoint .weights.h5 (sync)", "same_format"),
        ("saving", "Keras ModelCheckpoint .weights.h5"),
        "sync_weights",
    ),
    (
        "`CheckpointManager.load_weights` / `model.load_weights`",
        ("resume", "weights"),
        ("resume", "weights"),
        None,
    ),
)


def summary_from_run(run: dict[str, Any], date: str, machine: str) -> dict[str, Any]:
    """The summary of one `benchmarks.run --json` output: the rows of the page's table."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import TARGETS

    saving = next(t["data"] for t in run["tables"] if "overhead_per_save" in t["data"])
    resume = next(t["data"] for t in run["tables"] if t["title"].startswith("Resume"))
    rows = []
    for label, source, keras_source, target in ROWS:
        if source[0] == "saving":
            ratio = saving["ratios"].get(source[1], {}).get(source[2], {})
            keras = saving["overhead_per_save"].get(keras_source[1], {}).get("median")
        else:
            pair = resume["pairs"].get(source[1], {})
            ratio, keras = pair.get("ratio", {}), pair.get("keras", {}).get("median")
        per_rep = ratio.get("per_rep") or []
        rows.append(
            {
                "row": label,
                "keras_ms": None if keras is None else round(keras * 1000, 1),
                "ratio": _round(ratio.get("ratio_of_medians")),
                "low": _round(min(per_rep)) if per_rep else None,
                "high": _round(max(per_rep)) if per_rep else None,
                "must_reach": TARGETS[target][0] if target else None,
            }
        )
    env = run["environment"]
    return {
        "date": date,
        "machine": machine,
        "versions": f"keras {env.get('keras')}, "
        f"tensorflow {env.get('tensorflow-cpu') or env.get('tensorflow')}",
        "command": run["command"],
        "model": saving["model"],
        "rows": rows,
        "floors_ms": {
            name: round(stat["median"] * 1000) for name, stat in saving["floors"].items()
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def verdict(row: dict[str, Any]) -> str:
    """Met, missed or inconclusive, by the rule of `benchmarks.run`'s targets table."""
    limit, ratio = row["must_reach"], row["ratio"]
    if limit is None or ratio is None:
        return ""
    if row["low"] is not None and row["low"] <= limit < row["high"]:
        return "inconclusive (the repetitions straddle the limit)"
    return "met" if ratio <= limit else "missed"


def render_table(summary: dict[str, Any]) -> str:
    lines = [
        f"| per save or load, {summary['model']} | Keras | keras-ckpt / Keras: median "
        "(per-repetition range) | must reach | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for row in summary["rows"]:
        keras = "" if row["keras_ms"] is None else f"{row['keras_ms']:g} ms"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        if row["low"] is not None:
            ratio += f" ({row['low']:.2f}-{row['high']:.2f})"
        limit = "" if row["must_reach"] is None else f"<= {row['must_reach']:.2f}x"
        lines.append(f"| {row['row']} | {keras} | {ratio} | {limit} | {verdict(row)} |")
    floors = summary["floors_ms"]
    lines += [
        "",
        f"Floors measured in the same run: host copy of every variable {floors['copy']} ms, "
        f"writing the same bytes {floors['write']} ms, writing and fsyncing them "
        f"{floors['write+fsync']} ms.",
        "",
        f"Measured {summary['date']} on {summary['machine']} ({summary['versions']}) by:",
        "",
        "```bash",
        summary["command"],
        "```",
    ]
    return "\n".join(lines) + "\n"


def page_with_table(page: str, table: str) -> str:
    head, found, rest = page.partition(BEGIN + "\n")
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{PAGE} has no {BEGIN} ... {END} block")
    return head + BEGIN + "\n" + table + END + tail


def plot(summary: dict[str, Any], path: Path) -> None:
    """One horizontal bar per row: the ratio to Keras, its spread, and the limit it must reach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in summary["rows"] if r["ratio"] is not None][::-1]
    colors = {"met": "#2e7d32", "missed": "#c62828", "inconclusive": "#f9a825", "": "#78909c"}
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.6), dpi=110)
    for y, row in enumerate(rows):
        ax.barh(y, row["ratio"], color=colors[verdict(row).split(" ")[0]], height=0.55)
        if row["low"] is not None:
            ax.plot([row["low"], row["high"]], [y, y], color="black", linewidth=1.2)
        if row["must_reach"] is not None:
            ax.plot(row["must_reach"], y, marker="D", markersize=6, color="black")
        ax.text(row["ratio"], y + 0.3, f" {row['ratio']:.2f}x", fontsize=8, va="bottom")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [r["row"].replace("`", "") for r in rows], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.set_xlabel("time relative to Keras's own (1.0 = the same, lower is faster)")
    title = f"keras-ckpt / Keras, {summary['model']} parameters, {summary['date']}"
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(max(r["high"] or r["ratio"] for r in rows), 1.2) * 1.08)
    legend = [
        Patch(color=colors["met"], label="met"),
        Patch(color=colors["missed"], label="missed"),
        Patch(color=colors["inconclusive"], label="inconclusive"),
        Patch(color=colors[""], label="no target"),
        Line2D([], [], color="black", linewidth=1.2, label="per-repetition range"),
        Line2D([], [], color="black", marker="D", linestyle="", label="must reach"),
    ]
    ax.legend(handles=legend, fontsize=8, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="JSON written by `benchmarks.run --json`")
    parser.add_argument("--date", help="when the run was made (YYYY-MM-DD); with RUN")
    parser.add_argument("--machine", help="what it ran on, in a few words; with RUN")
    parser.add_argument("--check", action="store_true", help="only compare the page's table")
    args = parser.parse_args(argv)
    if args.run:
        if not (args.date and args.machine):
            parser.error("a RUN needs --date and --machine")
        summary = summary_from_run(json.loads(Path(args.run).read_text()), args.date, args.machine)
        SUMMARY.write_text(json.dumps(summary, indent=1) + "\n")
    summary = json.loads(SUMMARY.read_text())
    page = PAGE.read_text()
    expected = page_with_table(page, render_table(summary))
    if args.check:
        if expected != page:
            print(f"{PAGE} differs from {SUMMARY}: run python {Path(__file__).relative_to(ROOT)}")
            return 1
        return 0
    PAGE.write_text(expected)
    plot(summary, PLOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
