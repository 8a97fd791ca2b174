"""Trains forever with ModelCheckpoint saving every step; the test SIGKILLs it mid-save.

Usage: python mc_crash_child.py DIRECTORY sync|async
Two callbacks write into DIRECTORY: `last.keras` (a fixed path, replaced at every step) and
`step-{batch:04d}-{epoch:03d}.keras` (new names, keep_last=2, so retention deletes while it runs).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import build_model  # noqa: E402

import keras_ckpt  # noqa: E402


def main(directory: str, mode: str) -> None:
    async_save = {"sync": False, "async": True}[mode]
    model = build_model()
    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    callbacks = [
        keras_ckpt.ModelCheckpoint(
            os.path.join(directory, "last.keras"), save_freq=1, async_save=async_save
        ),
        keras_ckpt.ModelCheckpoint(
            os.path.join(directory, "step-{batch:04d}-{epoch:03d}.keras"),
            save_freq=1,
            keep_last=2,
            async_save=async_save,
        ),
    ]
    model.fit(x, y, batch_size=32, epochs=1000, callbacks=[*callbacks, Ready()], verbose=0)


class Ready(keras.callbacks.Callback):
    """Tells the test each step that training (and saving at every step) has reached."""

    def on_train_batch_end(self, batch, logs=None):
        print(f"step {batch + 1}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
