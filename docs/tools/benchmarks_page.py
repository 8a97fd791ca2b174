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


def summary_from_run(
    run: dict[str, Any], date: str, machine: str, model: str | None = None
) -> dict[str, Any]:
    """The summary of one `benchmarks.run --json` output: the must-reach rows of one model
    (`model`, e.g. "9.2M"; default: the first measured), as `benchmarks/targets.py` judged them."""
    runs = [r for r in run["runs"] if r.get("rows")]
    if not runs:
        raise SystemExit("the run has no must-reach rows (sections saving or resume)")
    result = next((r for r in runs if r["model"] == model), None) if model else runs[0]
    if result is None:
        raise SystemExit(f"the run measured no model {model!r}: {[r['model'] for r in runs]}")
    rows = []
    for row in result["rows"]:
        if "ratio" not in row or row["ratio"] is None:
            continue
        paired = row.get("paired_ratios") or []
        rows.append(
            {
                "row": row["label"],
                "keras_ms": _ms(row["keras"]["median"]),
                "ours_ms": _ms(row["ours"]["median"]),
                "ratio": _round(row["ratio"]),
                "low": _round(min(paired)) if len(paired) > 1 else None,
                "high": _round(max(paired)) if len(paired) > 1 else None,
                "must_reach": row["must_reach"],
                "met": row.get("met"),  # the unrounded ratio's verdict
                "rounds_met": row.get("rounds_met"),
                "condition": row.get("condition") or "",
            }
        )
    env = run["environment"]
    floors = result.get("floors", {})
    return {
        "date": date,
        "machine": machine,
        "versions": f"keras {env.get('keras')}, "
        f"tensorflow {env.get('tensorflow-cpu') or env.get('tensorflow')}, "
        f"orbax-checkpoint {env.get('orbax-checkpoint') or 'not installed'}",
        "command": run["command"],
        "load_average": [
            _round(env["load_average_at_start"][0]),
            _round(env["load_average_at_end"][0]),
        ],
        "model": result["model"],
        "state_mb": round(result["state_bytes"] / 1e6),
        "cadence": result.get("config", {}).get("cadence", ""),
        "rows": rows,
        "floors_ms": {name: _ms(stat["median"]) for name, stat in floors.items()},
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1 if seconds < 0.1 else 0)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def verdict(row: dict[str, Any]) -> str:
    """Met or missed by the median ratio, as `benchmarks/targets.py` judges a row; with how many
    paired rounds were under the limit."""
    limit, ratio = row["must_reach"], row["ratio"]
    if limit is None or ratio is None:
        return ""
    met = row.get("met", ratio <= limit)
    if met is None:
        return f"not judged: {row['condition']}" if row.get("condition") else "not judged"
    rounds = f" ({row['rounds_met']} rounds under)" if row.get("rounds_met") else ""
    return ("met" if met else "missed") + rounds


def render_table(summary: dict[str, Any]) -> str:
    lines = [
        f"| per save or load, {summary['model']} ({summary['state_mb']} MB of state) | Keras | "
        "keras-ckpt | keras-ckpt / Keras: median (paired range) | must reach | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in summary["rows"]:
        ratio = f"{row['ratio']:.2f}x"
        if row["low"] is not None:
            ratio += f" ({row['low']:.2f}-{row['high']:.2f})"
        limit = "" if row["must_reach"] is None else f"<= {row['must_reach']:.2f}x"
        lines.append(
            f"| {row['row']} | {row['keras_ms']:g} ms | {row['ours_ms']:g} ms | {ratio} | {limit} "
            f"| {verdict(row)} |"
        )
    floors = summary["floors_ms"]
    start, end = summary["load_average"]
    lines += [
        "",
        f"Floors measured in the same run: host copy of every variable into reused buffers "
        f"{floors['copy_reused']:g} ms (into fresh arrays {floors['copy_fresh']:g} ms), writing "
        f"the same bytes {floors['write']:g} ms, writing and fsyncing them "
        f"{floors['write_fsync']:g} ms. Cadence: {summary['cadence']}.",
        "",
        f"Measured {summary['date']} on {summary['machine']} ({summary['versions']}; load "
        f"average {start:g} at the start, {end:g} at the end) by:",
        "",
        "```bash",
        summary["command"].replace("python -m", ".venv/bin/python -m", 1),
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
    colors = {"met": "#2e7d32", "missed": "#c62828", "not": "#78909c", "": "#78909c"}
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
        Patch(color=colors[""], label="no target, or not judged"),
        Line2D([], [], color="black", linewidth=1.2, label="paired range"),
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
    parser.add_argument("--model", help="which model's rows (e.g. 9.2M); default: the first")
    parser.add_argument("--check", action="store_true", help="only compare the page's table")
    args = parser.parse_args(argv)
    if args.run:
        if not (args.date and args.machine):
            parser.error("a RUN needs --date and --machine")
        summary = summary_from_run(
            json.loads(Path(args.run).read_text()), args.date, args.machine, args.model
        )
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
