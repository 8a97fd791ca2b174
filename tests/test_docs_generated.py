"""The docs' generated parts match what their scripts produce now.

- docs/cli.md: every `keras-ckpt` output shown is what the command prints on a fresh run
  (docs/tools/cli_session.py), and every command of the CLI is shown there.
- docs/benchmarks.md: the table is the one docs/img/benchmarks.json gives, and the plot can be
  drawn from it (docs/tools/benchmarks_page.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "docs" / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli_session = _load("cli_session")
benchmarks_page = _load("benchmarks_page")


def _cli_commands() -> set[str]:
    from keras_ckpt.cli import build_parser

    [subparsers] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subparsers.choices)


def test_cli_page_shows_every_command():
    shown = {c.split()[1] for c in cli_session.commands(cli_session.PAGE.read_text())}
    missing = _cli_commands() - shown
    assert not missing, f"docs/cli.md shows no output of: {sorted(missing)}"
    assert "--help" in shown


def test_cli_page_matches_a_fresh_run():
    diff = cli_session.differences(cli_session.PAGE.read_text(), cli_session.fresh_page())
    assert not diff, (
        "docs/cli.md no longer shows what the commands print; "
        f"run `python docs/tools/cli_session.py` and review:\n{diff}"
    )


def test_cli_page_check_masks_only_ages_checksums_and_padding():
    page = "│ m.keras │ 16s ago │ crc32c:0645dab5 │ val_loss=0.1072 │\n"
    same = "│ m.keras   │ 3m ago │ crc32c:e97640b2 │ val_loss=0.1072 │\n"
    other = "│ m.keras │ 16s ago │ crc32c:0645dab5 │ val_loss=0.1073 │\n"
    assert cli_session.differences(page, same) == ""
    assert "0.1073" in cli_session.differences(page, other)


def test_benchmarks_table_is_the_summarys():
    assert benchmarks_page.main(["--check"]) == 0, (
        "docs/benchmarks.md's table differs from docs/img/benchmarks.json; "
        "run `python docs/tools/benchmarks_page.py`"
    )


def test_benchmarks_plot_is_drawn_from_the_summary(tmp_path):
    pytest.importorskip("matplotlib")
    summary = json.loads(benchmarks_page.SUMMARY.read_text())
    benchmarks_page.plot(summary, tmp_path / "benchmarks.png")
    assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert benchmarks_page.PLOT.is_file()
    assert "](img/benchmarks.png)" in benchmarks_page.PAGE.read_text()


def test_benchmarks_verdicts_follow_the_targets_rule():
    """benchmarks/targets.py: met or missed by the median ratio alone, the paired rounds under
    the limit shown; a row whose condition does not hold is not judged."""
    row = {"ratio": 0.7, "low": 0.66, "high": 0.78, "must_reach": 1.2, "rounds_met": "4/4"}
    assert benchmarks_page.verdict(row) == "met (4/4 rounds under)"
    assert benchmarks_page.verdict({**row, "must_reach": 0.5}).startswith("missed")
    assert benchmarks_page.verdict({**row, "must_reach": 0.7}).startswith("met")
    assert benchmarks_page.verdict({**row, "must_reach": None}) == ""
    assert benchmarks_page.verdict({**row, "must_reach": 0.7, "met": False}).startswith("missed")
    unjudged = {**row, "met": None, "condition": "write + fsync floor is 0.90x"}
    assert benchmarks_page.verdict(unjudged) == "not judged: write + fsync floor is 0.90x"
