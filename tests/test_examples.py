"""Every script in examples/ runs offline, start to finish, and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
ENV.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")

EXPECTED = {
    "quickstart.py": [
        "kept: newest,",
        "best 2 by val_loss (min)",
        "reloaded with plain Keras",
        "All checkpoints verify: True",
    ],
    "finetune_best_k.py": [
        "kept 3 checkpoints",
        "best 3 by val_accuracy (max)",
        "mode resolved to max",
    ],
    "s3_checkpoints.py": [
        "started a local S3 server at http://127.0.0.1:",
        "all verify: True",
        "equals the trained one: True",
    ],
    "custom_callback_resume.py": [
        "sending SIGTERM",
        "2. BackupAndRestore: SIGTERM at ",
        "exit status 143",
        "3. BackupAndRestore: resuming from",
        "restored curriculum",
        "bit-identical: True",
    ],
    "resume_demo.py": ["Sent SIGKILL", "BackupAndRestore: resuming from", "bit-identical: True"],
    "average_last_5.py": [
        "averaged: epoch-11.keras, epoch-12.keras, epoch-13.keras, epoch-14.keras, epoch-15.keras",
        "best single checkpoint: ",
        "last 5 averaged  test loss ",
        "lower test loss: ",
        "history: 15 saves, ",
    ],
}


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for line in EXPECTED[script]:
        assert line in result.stdout, f"{script} did not print {line!r}:\n{result.stdout}"
    if script == "resume_demo.py":  # one checkpoint, one epoch number: on disk and on resume
        [on_disk] = re.findall(r"backup on disk: (\S+) \((step \d+ of epoch \d+)", result.stdout)
        [resumed] = re.findall(r"resuming from \S+/(\S+) at (step \d+ of epoch \d+)", result.stdout)
        assert on_disk == resumed, result.stdout
