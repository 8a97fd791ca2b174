"""Kill a training job with SIGKILL mid-epoch, run it again, and get bit-identical weights.

    python examples/resume_demo.py

Runs the same training script three times as child processes: once uninterrupted, once killed
with a real SIGKILL in the middle of an epoch, and once more to resume from its backup. Then it
compares the final weights of the resumed run with the uninterrupted one and lists the backups
that were kept. Offline, a few seconds per child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

KILL_AT_STEP = 11  # epoch 2 of 4, step 5 of 6


def train(backup_dir: str | None, out: str) -> None:
    """The user's training script: seeded, deterministic, with Dropout and shuffled data."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_ckpt

    keras.utils.set_random_seed(42)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 10)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    class AnnounceSteps(keras.callbacks.Callback):
        """Prints each trained step, so the demo knows when to pull the plug."""

        def on_train_batch_end(self, batch, logs=None):
            if not keras_ckpt.state.is_replaying(self.model):
                print(f"step {int(self.model.optimizer.iterations)}", flush=True)
                time.sleep(0.05)

    callbacks: list = [AnnounceSteps()]
    if backup_dir:
        callbacks.insert(
            0, keras_ckpt.BackupAndRestore(backup_dir, save_freq=4, delete_checkpoint=False)
        )
    model.fit(x, y, batch_size=16, epochs=4, shuffle=True, verbose=0, callbacks=callbacks)
    np.savez(out, *[np.asarray(v) for v in model.weights])


def child(*args: str) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, __file__, "--train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def main() -> None:
    import numpy as np

    import keras_ckpt
    from keras_ckpt.records import position

    work = tempfile.mkdtemp(prefix="keras-ckpt-demo-")
    backup_dir = os.path.join(work, "backup")
    print(f"1. Uninterrupted run (reference), and the run we are going to kill, in {work}")
    reference = child("", os.path.join(work, "reference.npz"))
    victim = child(backup_dir, os.path.join(work, "never-written.npz"))
    for line in victim.stdout:
        if line.strip() == f"step {KILL_AT_STEP}":
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait()
    print(f"2. Sent SIGKILL at step {KILL_AT_STEP} (mid-epoch): exit code {victim.returncode}")
    for record in keras_ckpt.CheckpointManager(backup_dir).checkpoints():
        at = position(record.epoch, record.step, record.global_step)
        print(f"   backup on disk: {record.name} ({at})")
    print("3. Running the same script again: it resumes from the backup")
    resumed = child(backup_dir, os.path.join(work, "resumed.npz"))
    lines = iter(resumed.stdout)
    said = next(lines, "").strip()  # BackupAndRestore's own line: which backup, epoch, step
    first = next(lines, "").strip()
    resumed.communicate()
    reference.communicate()
    print(f"   {said}")
    print(f"   first step trained after resume: {first}")
    with np.load(os.path.join(work, "reference.npz")) as a:
        with np.load(os.path.join(work, "resumed.npz")) as b:
            diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
            same = all(np.array_equal(a[k], b[k]) for k in a.files)
    print(f"4. Max abs difference of the final weights vs. the uninterrupted run: {diff}")
    print(f"   bit-identical: {same}")
    print("   backups kept:")
    for record in keras_ckpt.CheckpointManager(backup_dir).checkpoints():
        print(
            f"   {record.name}: {position(record.epoch, record.step, record.global_step)}, "
            f"{record.size} bytes, files " + ", ".join(f.path for f in record.files)
        )
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train"]:
        train(sys.argv[2] or None, sys.argv[3])
    else:
        main()
