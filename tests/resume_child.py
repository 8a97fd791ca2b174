"""The training script the resume tests run in subprocesses (and kill, and run again).

    python tests/resume_child.py BACKUP_DIR OUT.npz [--input numpy|tfdata|pydataset]
        [--save-freq epoch|N] [--pause-at STEP] [--crash-at STEP] [--no-backup]

Seeded, deterministic ops, Dropout, shuffled data, EarlyStopping and ReduceLROnPlateau that act.
`--pause-at STEP` prints `PAUSED <step>` after that global step and sleeps, so the parent can send
a real signal at a known step. Writes every model and optimizer variable to OUT.npz when `fit`
returns, and prints `INTERRUPTED <signum>` if a signal stopped it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402

SAMPLES, FEATURES, BATCH, EPOCHS = 48, 8, 8, 4  # 6 steps per epoch, 24 steps


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5)).astype("int32")
    return x, y


class ShuffledBatches(keras.utils.PyDataset):
    """Reshuffles itself at every epoch end and adds NumPy noise: state a resume must restore."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        super().__init__()
        self.x, self.y = x, y
        self.order = np.arange(len(x))

    def __len__(self) -> int:
        return len(self.x) // BATCH

    def __getitem__(self, i: int):
        idx = self.order[i * BATCH : (i + 1) * BATCH]
        noise = np.random.normal(scale=0.01, size=(len(idx), FEATURES)).astype("float32")
        return self.x[idx] + noise, self.y[idx]

    def on_epoch_end(self) -> None:
        self.order = np.random.permutation(len(self.x))

    def get_checkpoint_state(self) -> dict:
        return {"order": self.order.tolist()}

    def set_checkpoint_state(self, state: dict) -> None:
        self.order = np.asarray(state["order"])


class Pause(keras.callbacks.Callback):
    """Announces a global step on stdout and waits there for the parent's signal."""

    def __init__(self, backup, pause_at: int | None, crash_at: int | None):
        super().__init__()
        self.backup, self.pause_at, self.crash_at, self.step = backup, pause_at, crash_at, 0

    def on_train_batch_end(self, batch, logs=None):
        if keras_ckpt.state.is_replaying(self.model):
            return
        self.step += 1
        if self.step == self.crash_at:
            raise RuntimeError(f"crash at step {self.step}")
        if self.step == self.pause_at:
            print(f"PAUSED {self.step}", flush=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not self.backup.interrupted:
                time.sleep(0.01)

    def get_checkpoint_state(self) -> dict:
        return {"step": self.step}

    def set_checkpoint_state(self, state: dict) -> None:
        self.step = state["step"]


def make_deterministic() -> None:
    """Deterministic CPU kernels: TensorFlow needs op determinism, PyTorch deterministic
    algorithms; JAX (XLA) on the CPU is deterministic as it is."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif keras.backend.backend() == "torch":
        import torch

        torch.use_deterministic_algorithms(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir")
    parser.add_argument("out")
    parser.add_argument("--input", default="numpy", choices=["numpy", "tfdata", "pydataset"])
    parser.add_argument("--save-freq", default="epoch")
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--no-backup", action="store_true")
    args = parser.parse_args(argv)
    save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)

    keras.utils.set_random_seed(1)
    make_deterministic()
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = make_data()
    fit_args: dict = {"epochs": EPOCHS, "verbose": 0}
    if args.input == "numpy":
        fit_args.update(x=x, y=y, batch_size=BATCH, shuffle=True)
    elif args.input == "tfdata":
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        dataset = dataset.shuffle(SAMPLES, seed=7, reshuffle_each_iteration=True).batch(BATCH)
        fit_args.update(x=dataset)
    else:
        fit_args.update(x=ShuffledBatches(x, y))

    backup = keras_ckpt.BackupAndRestore(args.backup_dir, save_freq=save_freq)
    callbacks = [
        # Before the backup: a signal received while it waits is handled at this same step.
        Pause(backup, args.pause_at, args.crash_at),
        # Acts on every epoch (min_delta too large to ever improve): its counters matter.
        keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=2, min_delta=10.0),
        keras.callbacks.EarlyStopping("loss", patience=10),
    ]
    if not args.no_backup:
        callbacks.insert(1, backup)
    model.fit(callbacks=callbacks, **fit_args)
    variables = model.variables + model.optimizer.variables
    np.savez(args.out, *[np.asarray(v) for v in variables])
    if backup.interrupted:
        print(f"INTERRUPTED {backup.interrupted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
