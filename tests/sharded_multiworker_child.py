"""One process of the two-process sharded test (`tests/test_orbax_dir.py`): 2 processes x 2 CPU
devices, `jax.distributed` on 127.0.0.1, Dense kernels split across the processes.

    python tests/sharded_multiworker_child.py DIR --process-id I --port P [--pause-at STEP]

Trains 3 epochs of 8 steps with `keras_ckpt.BackupAndRestore(DIR/backup, save_freq=5)`, which
finds the model's variables split across processes and saves sharded checkpoints. With
`--pause-at`, the process sleeps right after the backup of that step started (mid-save). Prints
`ROLE`, `RESTORED <iterations>`, `PAUSED <step>`, `FINAL <iterations> <checksum>` (the checksum of
this process's own shards) and `BYTES <n>` (what this process wrote under DIR/backup, by its
`ocdbt.process_<i>` folders).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt.state import is_replaying  # noqa: E402


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def checksum(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for variable in model.weights + model.optimizer.variables:
        for shard in sorted(variable.value.addressable_shards, key=lambda s: str(s.index)):
            digest.update(np.ascontiguousarray(np.asarray(shard.data)).tobytes())
    return digest.hexdigest()[:16]


class Pause(keras.callbacks.Callback):
    def __init__(self, at: int | None):
        super().__init__()
        self.at, self.step = at, 0

    def on_train_begin(self, logs=None):
        self.step = int(np.asarray(self.model.optimizer.iterations.value.addressable_data(0)))
        say("RESTORED", self.step)

    def on_train_batch_end(self, batch, logs=None):
        if is_replaying(self.model):
            return
        self.step += 1
        if self.step == self.at:
            say("PAUSED", self.step)
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
    devices = np.array(jax.devices()).reshape(2, 2)  # rows: processes
    mesh = keras.distribution.DeviceMesh((2, 2), ["model", "batch"], devices.flatten().tolist())
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*kernel"] = (None, "model")  # split across the two processes
    distribution = keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")
    distribution.auto_shard_dataset = False  # the batch axis is inside each process: same data
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(256, activation="relu", name="dense1")(inputs)
    outputs = keras.layers.Dense(4, name="dense2")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    say("ROLE", jax.process_index())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    backup = keras_ckpt.BackupAndRestore(
        os.path.join(args.directory, "backup"), save_freq=5, delete_checkpoint=False
    )
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[backup, Pause(args.pause_at)])  # fmt: skip
    iterations = int(np.asarray(model.optimizer.iterations.value.addressable_data(0)))
    say("FINAL", iterations, checksum(model))
    written = 0
    for folder, _dirs, files in os.walk(os.path.join(args.directory, "backup")):
        parts = folder.split(os.sep)
        if ".keras_ckpt" not in parts and f"ocdbt.process_{args.process_id}" in parts:
            written += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    say("BYTES", written)


if __name__ == "__main__":
    main()
