"""Draws a benchmark run's tables as a PNG, from the JSON file `benchmarks.run` wrote.

One row of two panels per model size:

- left, the must-reach table: each row's ratio keras-ckpt / Keras (bar: ratio of the medians;
  whisker: min-max of the paired ratios; black tick: the limit it must reach), green where the
  median meets it, red where it misses, grey where there is no limit or the row is not judged;
- right, every callback's blocked time, whole-fit overhead and extra CPU per save (median,
  min-max whiskers), with the floors of the same run as vertical lines.

    python -m benchmarks.plot bench.json              # writes bench.png next to it
    python -m benchmarks.plot bench.json -o docs/bench.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any

CLIP = 3.0  # the ratio axis ends here at most
GREEN, RED, GREY = "#2e7d32", "#c62828", "#9e9e9e"
BLOCKED, OVERHEAD, CPU = "#1565c0", "#ef6c00", "#6a1b9a"
FLOORS = (
    ("copy_reused", "host copy", ":"),
    ("write", "write", "--"),
    ("write_fsync", "write + fsync", "-."),
)


def plot(data: dict[str, Any], path: str) -> str:
    """Writes the PNG for `data` (the parsed JSON of a run) to `path`; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    if not runs:
        raise ValueError(f"Nothing to plot: {path!r} would be empty (the run measured no model).")
    heights = [max(len(r.get("rows", [])), len(r.get("variants", {}))) for r in runs]
    fig, axes = plt.subplots(
        len(runs),
        2,
        figsize=(18, sum(1.5 + 0.42 * h for h in heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": [max(h, 1) for h in heights]},
    )
    for (left, right), run in zip(axes, runs, strict=True):
        _rows(left, run)
        _variants(right, run)
    env = data.get("environment", {})
    load = env.get("load_average_at_start")
    fig.suptitle(
        f"{data.get('command', '')}\nkeras {env.get('keras')}, {env.get('cpus')} CPUs, "
        f"load average at start {', '.join(f'{v:.1f}' for v in load) if load else '?'}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 58) -> str:
    return "\n".join(textwrap.wrap(text.replace("`", ""), width))


def _rows(ax: Any, run: dict[str, Any]) -> None:
    rows = [r for r in run.get("rows", []) if r.get("ratio") is not None]
    labels, values, low, high, colors = [], [], [], [], []
    for row in rows:
        labels.append(_wrap(row["label"]))
        ratio = row["ratio"]
        paired = row.get("paired_ratios") or [ratio]
        values.append(ratio)
        low.append(max(0.0, ratio - min(paired)))
        high.append(max(0.0, max(paired) - ratio))
        met = row.get("met")
        colors.append(GREY if met is None else (GREEN if met else RED))
    y = list(range(len(rows)))
    ax.barh(y, values, xerr=[low, high], color=colors, capsize=3, alpha=0.85)
    # Ratios past CLIP (a noisy overhead can reach 10x) would squeeze every other bar: cut off,
    # the value still written.
    right = min(CLIP, max([v + h for v, h in zip(values, high, strict=True)] + [1.2]) + 0.1)
    left = min([0.0] + [v - lo for v, lo in zip(values, low, strict=True)])
    ax.set_xlim(max(left - 0.05, -0.5), right)
    for i, row in enumerate(rows):
        if row.get("must_reach") is not None:
            ax.plot([row["must_reach"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2.5)
        ax.text(min(values[i], right * 0.9), i, f" {values[i]:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.6)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("keras-ckpt / Keras (lower is better); black tick: must reach")
    config = run.get("config", {})
    ax.set_title(
        f"{run['model']} model, {run['state_bytes'] / 1e6:.0f} MB of state: must-reach rows\n"
        f"a save every {config.get('steps_per_save', '?')} steps "
        f"({config.get('training_between_saves_seconds', 0):.1f} s of training), "
        f"{config.get('saves_per_fit', '?')} saves a fit, {config.get('rounds', '?')} rounds",
        fontsize=10,
    )


def _variants(ax: Any, run: dict[str, Any]) -> None:
    entries = list(run.get("variants", {}).values())
    y = list(range(len(entries)))
    bars = [
        (-0.27, "blocked_per_save", BLOCKED, "blocked"),
        (0.0, "overhead_per_save", OVERHEAD, "overhead (fit with - without)"),
        (0.27, "cpu_per_save", CPU, "extra CPU (process)"),
    ]
    for offset, measure, color, name in bars:
        if not all(measure in e for e in entries):
            continue  # a JSON file from before that figure existed
        medians = [e[measure]["median"] * 1e3 for e in entries]
        low = [max(0.0, (e[measure]["median"] - e[measure]["min"]) * 1e3) for e in entries]
        high = [max(0.0, (e[measure]["max"] - e[measure]["median"]) * 1e3) for e in entries]
        ax.barh(
            [i + offset for i in y],
            medians,
            height=0.27,
            xerr=[low, high],
            color=color,
            capsize=2,
            label=name,
            alpha=0.85,
        )
    for key, title, style in FLOORS:
        floor = run.get("floors", {}).get(key)
        if floor:
            ms = floor["median"] * 1e3
            ax.axvline(
                ms, color="black", linestyle=style, linewidth=1, label=f"{title} {ms:.3g} ms"
            )
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_yticks(y, [_wrap(e["name"], 44) for e in entries], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("per save (ms): median, min-max whiskers")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("every callback, with the floors of the same run", fontsize=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path", help="the JSON file `python -m benchmarks.run` wrote")
    parser.add_argument("-o", "--output", help="PNG path (default: the JSON's, ending .png)")
    args = parser.parse_args(argv)
    with open(args.json_path) as f:
        data = json.load(f)
    output = args.output or os.path.splitext(args.json_path)[0] + ".png"
    print(plot(data, output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
