"""One process of the two-process JAX tests (`tests/test_distribute.py`, `-k jax`).

    python tests/multiworker_jax_child.py DIR --process-id I --port P [--pause-at STEP]

Starts `jax.distributed` through `keras.distribution.initialize` with two processes on 127.0.0.1
(CPU, gloo collectives), trains a tiny model data-parallel over both processes' CPU devices for 3
epochs of 8 steps with `keras_ckpt.BackupAndRestore` (DIR/backup, every 5 steps), each process
feeding its own half of the data. It reports on stdout, one line per event, flushed so a killed
process's lines survive:

    ROLE <worker_id> <is_chief>
    RESTORED <iterations> <checksum>   state at the start of fit (after BackupAndRestore resumed)
    PAUSED <step> <checksum>  with --pause-at: after that global step, then it sleeps
    FINAL <iterations> <checksum>

The checksum covers the model and optimizer variables (replicated on both processes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# The CPU client has no cross-process collectives unless told which implementation to use.
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402

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
    def __init__(self, pause_at: int | None):
        super().__init__()
        self.pause_at = pause_at
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pause-at", type=int)
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

    callbacks = [
        keras_ckpt.BackupAndRestore(os.path.join(args.directory, "backup"), save_freq=5),
        Report(args.pause_at),  # after BackupAndRestore: sees the restored state, pauses after it
    ]
    model.fit(
        x, y, batch_size=LOCAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks
    )
    say("FINAL", int(keras.ops.convert_to_numpy(model.optimizer.iterations)), checksum(model))


if __name__ == "__main__":
    main()
