"""The `keras-ckpt` session shown in README.md, run for real on a directory made by `fit`.

The README pastes the output of one run; metric values differ between runs, so this checks the
commands in the order shown, their exit status and the lines that do not depend on the values.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_model

import keras_ckpt

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = [
    line[2:].split("  #")[0].strip()
    for line in README.read_text().splitlines()
    if line.startswith("$ keras-ckpt ")
]
EXPECTED = {  # command -> (exit status, a line its output must hold)
    "list": (0, "checkpoints in runs/exp1"),
    "show": (0, "holds            full model"),
    "verify": (1, " checkpoints damaged in runs/exp2."),
    "prune": (0, "Kept "),
    "export": (0, "to best.keras"),
    "average": (0, "Averaged 2 checkpoints into last2.keras"),
    "plot": (0, ""),
}


@pytest.fixture(scope="module")
def session(tmp_path_factory, data_module):
    """runs/exp1 as the README's run made it (12 epochs, keep_best=3, keep_last=1), and
    runs/exp2: a copy with one byte flipped in the third checkpoint."""
    root = tmp_path_factory.mktemp("readme-cli")
    x, y = data_module
    checkpoint = keras_ckpt.ModelCheckpoint(
        str(root / "runs/exp1/model-{epoch:03d}-{val_loss:.4f}.keras"),
        monitor="val_loss",
        keep_best=3,
        keep_last=1,
    )
    build_model().fit(
        x, y, epochs=12, batch_size=16, validation_split=0.25, verbose=0, callbacks=[checkpoint]
    )
    shutil.copytree(root / "runs/exp1", root / "runs/exp2")
    records = keras_ckpt.CheckpointManager(root / "runs/exp2").checkpoints()
    assert len(records) >= 3  # the three best and the newest, which may be one of them
    damaged = root / "runs/exp2" / records[2].path
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    return root


@pytest.fixture(scope="module")
def data_module():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, y


def test_readme_shows_every_command():
    assert {c.split()[1] for c in COMMANDS} == set(EXPECTED)


def test_readme_cli_session_runs_as_shown(session):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for command in COMMANDS:  # in order: the README's prune changes what export finds
        args = shlex.split(command)[1:]
        result = subprocess.run(
            [sys.executable, "-m", "keras_ckpt.cli", *args],
            cwd=session,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        status, line = EXPECTED[args[0]]
        assert result.returncode == status, f"{command}\n{result.stdout}\n{result.stderr}"
        assert line in result.stdout, f"{command} printed:\n{result.stdout}"
    assert (session / "best.keras").stat().st_size > 0
    assert (session / "run.png").stat().st_size > 0
