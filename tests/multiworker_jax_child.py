"""One process of the two-process JAX tests (`tests/test_distribute.py`, `-k jax`).

    python tests/multiworker_jax_child.py DIR --process-id I --port P [--pause-at STEP]
        [--every-seconds S --seconds-per-step X] [--wait-for-signal-at STEP]

Starts `jax.distributed` through `keras.distribution.initialize` with two processes on 127.0.0.1
(CPU, gloo collectives), trains a tiny model data-parallel over both processes' CPU devices for 3
epochs of 8 steps with `keras_ckpt.BackupAndRestore` (DIR/backup, every 5 steps), each process
feeding its own half of the data. With `--every-seconds`, `keras_ckpt.ModelCheckpoint` (DIR/models)
and `BackupAndRestore` save on the clock instead (BackupAndRestore only on it and on signals), and
this process's clock advances X seconds per step, so the processes' clocks disagree. It reports on
stdout, one line per event, flushed so a killed process's lines survive:

    ROLE <worker_id> <is_chief>
    RESTORED <iterations> <checksum>   state at the start of fit (after BackupAndRestore resumed)
    PAUSED <step> <checksum>  with --pause-at: after that global step, then it sleeps
    SAVE <callback> <step>    each save decision (every process takes it, process 0 writes)
    WAITING <step>            with --wait-for-signal-at: after that step, until a signal comes
    STOPPED <iterations> <checksum>   fit ended by a signal (then exits as BackupAndRestore says)
    FINAL <iterations> <checksum>

The checksum covers the model and optimizer variables (replicated on both processes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# The CPU client has no cross-process collectives unless told which implementation to use.
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from multiworker_clock import StepClock, report_saves, wait_for_signal  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import distribute  # noqa: E402
from keras_ckpt.state import is_replaying  # noqa: E402

SAMPLES, FEATURES, LOCAL_BATCH, EPOCHS = 64, 8, 4, 3  # 32 samples each: 8 steps per epoch


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def checksum(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for variable in model.weights + model.optimizer.variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()[:16]


class Report(keras.callbacks.Callback):
    def __init__(self, pause_at: int | None, wait_at: int | None = None, backup=None):
        super().__init__()
        self.pause_at = pause_at
        self.wait_at = wait_at
        self.backup = backup
        self.step = 0

    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        say("RESTORED", self.step, checksum(self.model))

    def on_train_batch_end(self, batch, logs=None):
        if is_replaying(self.model):
            return
        self.step += 1
        if self.step == self.pause_at:
            say("PAUSED", self.step, checksum(self.model))
            time.sleep(600)
        if self.step == self.wait_at:
            say("WAITING", self.step)
            wait_for_signal(self.backup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--every-seconds", type=float)
    parser.add_argument("--seconds-per-step", type=float, default=1.0)
    parser.add_argument("--wait-for-signal-at", type=int)
    args = parser.parse_args()

    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{args.port}", num_processes=2, process_id=args.process_id
    )
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    distribution.auto_shard_dataset = False  # each process passes its own half below
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
         keras.layers.Dense(3, activation="softmax")]
    )  # fmt: skip
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    say("ROLE", distribute.worker_id(model), distribute.is_chief(model))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5)).astype("int32")
    x, y = x[args.process_id :: 2], y[args.process_id :: 2]

    backup_dir = os.path.join(args.directory, "backup")
    if args.every_seconds is None:
        backup = keras_ckpt.BackupAndRestore(backup_dir, save_freq=5)
        callbacks = [backup]
    else:
        checkpoint = keras_ckpt.ModelCheckpoint(
            os.path.join(args.directory, "models", "model-{epoch:02d}-{batch:02d}.weights.h5"),
            monitor="loss",
            save_weights_only=True,
            save_freq=None,
            every_seconds=args.every_seconds,
            keep_last=2,
        )
        backup = keras_ckpt.BackupAndRestore(
            backup_dir, save_freq=False, every_seconds=args.every_seconds
        )
        report_saves(say, checkpoint, backup)
        # The clock first: the callbacks after it read the clock of this step.
        callbacks = [StepClock(args.seconds_per_step, checkpoint, backup), checkpoint, backup]
    # After BackupAndRestore: sees the restored state, pauses or waits after it.
    callbacks.append(Report(args.pause_at, args.wait_for_signal_at, backup))
    try:
        model.fit(
            x, y, batch_size=LOCAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
            callbacks=callbacks,
        )  # fmt: skip
    except (SystemExit, KeyboardInterrupt):
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        say("STOPPED", iterations, checksum(model))
        raise
    say("FINAL", int(keras.ops.convert_to_numpy(model.optimizer.iterations)), checksum(model))


if __name__ == "__main__":
    main()
