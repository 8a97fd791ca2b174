"""One worker of the two-process MultiWorkerMirroredStrategy tests (`tests/test_distribute.py`).

    TF_CONFIG=... python tests/multiworker_child.py DIR [--pause-at STEP]
        [--every-seconds S --seconds-per-step X] [--wait-for-signal-at STEP] [--agree-every-step]

Trains a tiny model for 3 epochs of 8 steps with `keras_ckpt.ModelCheckpoint` (into DIR/models,
keep_last=2) and `keras_ckpt.BackupAndRestore` (DIR/backup, every 5 steps). With `--every-seconds`
both callbacks save on the clock instead (BackupAndRestore only on it and on signals), and this
worker's clock advances X seconds per step, so the workers' clocks disagree. It reports on stdout,
one line per event, flushed so a killed worker's lines survive:

    ROLE <worker_id> <is_chief>
    WRITE <event> <path>      every file system change this process makes under DIR (audit hook)
    PRUNE <owner> <deleted>   every retention pass (CheckpointManager.prune) this process runs
    RESTORED <iterations> <checksum>   state at the start of fit (after BackupAndRestore resumed)
    PAUSED <step> <checksum>  with --pause-at: after that global step, then it sleeps
    SAVE <callback> <step>    each save decision (every worker takes it, the chief writes)
    WAITING <step>            with --wait-for-signal-at: after that step, until a signal comes
    STOPPED <iterations> <checksum>   fit ended by a signal (then exits as BackupAndRestore says)
    FINAL <iterations> <checksum>

The checksum covers the model and optimizer variables (mirrored: read locally, no collective).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from multiworker_clock import StepClock, report_saves, wait_for_signal  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import distribute  # noqa: E402
from keras_ckpt.manager import CheckpointManager  # noqa: E402
from keras_ckpt.state import is_replaying  # noqa: E402

SAMPLES, FEATURES, GLOBAL_BATCH, EPOCHS = 64, 8, 8, 3  # 8 steps per epoch on every worker
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CHANGING_EVENTS = {
    "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.utime",
    "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move",
}  # fmt: skip


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def audit_writes_under(root: str) -> None:
    """Reports every Python-level file change under `root` (open for writing, rename, remove...)."""
    root = os.path.realpath(root)

    def inside(path: object) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return False
        full = os.path.realpath(os.fspath(path))
        return full == root or full.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args:
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing and inside(path):
                say("WRITE", event, path)
        elif event in _CHANGING_EVENTS and any(inside(a) for a in args[:2]):
            say("WRITE", event, args[0])

    sys.addaudithook(hook)


def count_prunes() -> None:
    real = CheckpointManager.prune

    def prune(self, policy, **kwargs):
        result = real(self, policy, **kwargs)
        say("PRUNE", kwargs.get("owner"), ",".join(r.name for r in result.deleted) or "-")
        return result

    CheckpointManager.prune = prune


def work_around_keras_20585(strategy: tf.distribute.Strategy) -> None:
    """Keras 3.15.1 `fit` under MultiWorkerMirroredStrategy calls `strategy.reduce` on a whole
    (x, y) batch (`_maybe_symbolic_build`) and with axis=0 on scalar losses
    (`reduce_per_replica`); with more than one worker TensorFlow rejects both
    (keras-team/keras#20585). Reduce each tensor on its own, over replicas only for scalars."""
    reduce = strategy.reduce

    def one(op, value, axis):
        if axis is not None and strategy.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return reduce(op, value, axis=axis)

    strategy.reduce = lambda op, value, axis=None: tf.nest.map_structure(
        lambda v: one(op, v, axis), value
    )


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
        self.step = int(self.model.optimizer.iterations.numpy())
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
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--every-seconds", type=float)
    parser.add_argument("--seconds-per-step", type=float, default=1.0)
    parser.add_argument("--wait-for-signal-at", type=int)
    parser.add_argument("--agree-every-step", action="store_true")
    args = parser.parse_args()
    if args.agree_every_step:
        # The workers then agree at every step (no period picked from timings), so the tests can
        # name the exact steps of the chief's clock.
        from keras_ckpt.training import agreement

        agreement.MAX_DELAY = 0.0

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    work_around_keras_20585(strategy)
    audit_writes_under(args.directory)
    count_prunes()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
             keras.layers.Dense(3, activation="softmax")]
        )  # fmt: skip
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
    say("ROLE", distribute.worker_id(model), distribute.is_chief(model))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)

    models_dir, backup_dir = (os.path.join(args.directory, sub) for sub in ("models", "backup"))
    if args.every_seconds is None:
        checkpoint = keras_ckpt.ModelCheckpoint(
            os.path.join(models_dir, "model-{epoch:02d}.weights.h5"),
            monitor="loss",
            save_weights_only=True,
            keep_last=2,
        )
        backup = keras_ckpt.BackupAndRestore(backup_dir, save_freq=5)
        callbacks = [checkpoint, backup]
    else:
        checkpoint = keras_ckpt.ModelCheckpoint(
            os.path.join(models_dir, "model-{epoch:02d}-{batch:02d}.weights.h5"),
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
        model.fit(data, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    except (SystemExit, KeyboardInterrupt):
        say("STOPPED", int(model.optimizer.iterations.numpy()), checksum(model))
        raise
    say("FINAL", int(model.optimizer.iterations.numpy()), checksum(model))


if __name__ == "__main__":
    main()
