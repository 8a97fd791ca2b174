"""The benchmark code runs end to end: `--quick` writes valid JSON and a PNG (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "KERAS_CKPT_BENCH_DIR": str(tmp_path / "scratch"),
    }
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_quick_benchmark_writes_every_measurement_and_a_plot(tmp_path):
    out = tmp_path / "bench.json"
    done = _run("benchmarks.run", "--quick", "--json", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    data = json.loads(out.read_text())
    assert data["environment"]["load_average_at_end"]
    (run,) = data["runs"]
    variants = run["variants"]
    assert {
        "keras_mc",
        "keras_mc_fsync",
        "keras_backup",
        "keras_backup_fsync",
        "ours_keras",
        "ours_keras_inline",
        "ours_weights",
        "ours_backup",
        "ours_backup_inline",
    } <= set(variants)
    # One round: a fit with no callback before, between and after the variants' fits.
    fits = run["fits"]
    assert len(fits) == 2 * len(variants) + 1
    assert [f["variant"] for f in fits[::2]] == [None] * (len(variants) + 1)
    for fit in fits[1::2]:
        # Every save's hooks were timed, the end of fit (the final flush) included.
        assert len(fit["hooks"]["on_epoch_end"]) == fit["saves"] == 2
        assert fit["hooks"]["on_train_end"]
        assert fit["bytes_on_disk"] > 0
    for entry in variants.values():
        assert entry["blocked_per_save"]["median"] > 0
        assert len(entry["overhead_per_save"]["samples"]) == 1
    for name in ("copy_fresh", "copy_reused", "write", "write_fsync"):
        assert run["floors"][name]["median"] > 0
    assert run["config"]["steps_per_save"] == 2
    assert set(run["resume"]) == {"weights", "full model", "backup"}

    rows = {row["key"]: row for row in run["rows"]}
    judged = [row for row in rows.values() if row["must_reach"] is not None]
    assert len(judged) == 9
    for row in judged:
        if row["key"] == "keras_background_vs_orbax" and "keras_orbax" not in variants:
            assert row["verdict"] == "not measured"
            continue
        assert row["ratio"] > 0
        assert row["verdict"].startswith(("met", "MISSED", "not judged"))

    png = tmp_path / "bench.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    # The plot is drawn from the JSON alone, so the docs can redraw it.
    again = tmp_path / "again.png"
    done = _run("benchmarks.plot", str(out), "-o", str(again), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert again.read_bytes()[:8] == PNG_SIGNATURE
