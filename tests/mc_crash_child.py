"""Trains forever with ModelCheckpoint saving every step; the test SIGKILLs it mid-save.

Usage: python mc_crash_child.py DIRECTORY
Two callbacks write into DIRECTORY: `last.keras` (a fixed path, replaced at every step) and
`step-{batch:04d}-{epoch:03d}.keras` (new names, keep_last=2, so retention deletes while it runs).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import build_model  # noqa: E402

import keras_ckpt  # noqa: E402


def main(directory: str) -> None:
    model = build_model()
    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    callbacks = [
        keras_ckpt.ModelCheckpoint(os.path.join(directory, "last.keras"), save_freq=1),
        keras_ckpt.ModelCheckpoint(
            os.path.join(directory, "step-{batch:04d}-{epoch:03d}.keras"),
            save_freq=1,
            keep_last=2,
        ),
    ]
    print("ready", flush=True)
    model.fit(x, y, batch_size=32, epochs=1000, callbacks=callbacks, verbose=0)


if __name__ == "__main__":
    main(sys.argv[1])
