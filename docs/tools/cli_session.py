"""The outputs on the command-line page, made by running every command shown there for real.

    python docs/tools/cli_session.py           # run the session, rewrite docs/cli.md's outputs
    python docs/tools/cli_session.py --check   # exit 1 if the page differs from a fresh run

Each `<!-- cli-output: keras-ckpt ARGS -->` line of docs/cli.md is followed by a ```console block
that this script writes: the command and what it printed (and `echo $?` when it exits non-zero).
The commands run in page order (the page's `prune` changes what later commands find) in a fresh
folder holding `runs/exp1`, made by a real `fit` with a fixed seed, `runs/exp2`, a copy of it
with one byte of one checkpoint flipped, and `runs/exp3`, two runs of one script in one folder.
Outputs that change from run to run (ages such as `16s ago`, checksums of files that record their
save time, run ids) are compared with those parts masked;
everything else, metrics included, must match. `tests/test_docs_pages.py` runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "cli.md"
PLOT = ROOT / "docs" / "img" / "cli-plot.png"
MARKER = re.compile(
    r"^<!-- cli-output: (keras-ckpt[^\n]*?) -->\n```console\n.*?^```\n", re.M | re.S
)
_VOLATILE = (
    (re.compile(r"\b\d+(?:\.\d+)?[smhd] ago\b"), "<age> ago"),
    (re.compile(r"crc32c:[0-9a-f]{8}"), "crc32c:<checksum>"),
    (re.compile(r"\b[0-9a-f]{12}\b"), "<run id>"),
)


def make_runs(folder: Path) -> None:
    """runs/exp1: 12 epochs keeping the 3 best by val_loss and the newest; runs/exp2: damaged;
    runs/exp3: a 6-epoch run keeping its last 2, then a rerun there keeping its best 2."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import keras_ckpt

    keras.utils.set_random_seed(0)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    noisy = rng.random(len(y)) < 0.3  # label noise: the model overfits, val_loss turns back up
    y[noisy] = rng.integers(0, 3, noisy.sum())
    model = keras.Sequential(
        [
            keras.Input((8,), name="features"),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="classes"),
        ],
        name="classifier",  # not Keras's counted default names, which `show` would print
    )
    # No extra metrics: `list` shows one column per metric, and the page has 100 columns or so.
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    checkpoint = keras_ckpt.ModelCheckpoint(
        str(folder / "runs/exp1/model-{epoch:03d}-{val_loss:.4f}.keras"),
        monitor="val_loss",
        keep_best=3,
        keep_last=1,
    )
    model.fit(
        x, y, epochs=12, batch_size=16, validation_split=0.25, verbose=0, callbacks=[checkpoint]
    )
    shutil.copytree(folder / "runs/exp1", folder / "runs/exp2")
    records = keras_ckpt.CheckpointManager(folder / "runs/exp2").checkpoints()
    damaged = folder / "runs/exp2" / records[2].path
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    for epochs, keep in ((6, {"keep_last": 2}), (3, {"keep_best": 2})):
        rerun = keras.models.clone_model(model)
        rerun.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        keras_ckpt_run = keras_ckpt.ModelCheckpoint(
            str(folder / "runs/exp3/model-{epoch:03d}-{val_loss:.4f}.keras"),
            monitor="val_loss",
            **keep,
        )
        rerun.fit(
            x,
            y,
            epochs=epochs,
            batch_size=16,
            validation_split=0.25,
            verbose=0,
            callbacks=[keras_ckpt_run],
        )


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "COLUMNS": "100",  # argparse wraps help text to the terminal's width
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def run_command(command: str, cwd: Path) -> str:
    """The console block's text for one `keras-ckpt ...` command run in `cwd`."""
    args = shlex.split(command)[1:]
    result = subprocess.run(
        [sys.executable, "-m", "keras_ckpt.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode not in (0, 1):
        raise RuntimeError(f"{command} failed ({result.returncode}):\n{result.stderr}")
    text = f"$ {command}\n{result.stdout}"
    if not text.endswith("\n"):
        text += "\n"
    if result.returncode:
        text += f"$ echo $?\n{result.returncode}\n"
    return text


def render(page: str, cwd: Path) -> str:
    """`page` with every command's output block replaced by a fresh run's, in page order."""

    def block(match: re.Match[str]) -> str:
        command = match.group(1)
        return f"<!-- cli-output: {command} -->\n```console\n{run_command(command, cwd)}```\n"

    return MARKER.sub(block, page)


def commands(page: str) -> list[str]:
    return MARKER.findall(page)


def masked(text: str) -> list[str]:
    """Lines with the volatile parts masked and table padding collapsed (widths follow ages)."""
    lines = []
    for line in text.splitlines():
        for pattern, replacement in _VOLATILE:
            line = pattern.sub(replacement, line)
        line = re.sub(r" +", " ", line)
        line = re.sub(r"([━─┄═])\1+", r"\1", line)
        lines.append(line.rstrip())
    return lines


def fresh_page(plot_to: Path | None = None) -> str:
    """docs/cli.md as a run now would write it; `plot_to` receives the `plot` command's image."""
    with tempfile.TemporaryDirectory(prefix="keras-ckpt-cli-") as folder:
        cwd = Path(folder)
        # A fresh interpreter: the caller's Keras state (seeds, counted names) must not leak in.
        subprocess.run(
            [sys.executable, __file__, "--make-runs", folder], env=_env(), check=True, timeout=600
        )
        page = render(PAGE.read_text(), cwd)
        if plot_to is not None and (cwd / "run.png").exists():
            shutil.copyfile(cwd / "run.png", plot_to)
    return page


def differences(committed: str, fresh: str) -> str:
    """A unified diff of the two pages after masking; empty when they agree."""
    return "\n".join(
        difflib.unified_diff(
            masked(committed), masked(fresh), "docs/cli.md", "fresh run", lineterm=""
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    parser.add_argument("--make-runs", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_runs:
        make_runs(Path(args.make_runs))
        return 0
    committed = PAGE.read_text()
    if args.check:
        diff = differences(committed, fresh_page())
        print(diff or "docs/cli.md matches a fresh run.")
        return 1 if diff else 0
    fresh = fresh_page(plot_to=PLOT)
    PAGE.write_text(fresh)
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(commands(fresh))} commands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
