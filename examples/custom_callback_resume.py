"""A callback of your own taking part in exact resume, with a real SIGTERM (preemption).

`Curriculum` raises the loss weight of hard examples as training goes on; its state (the level
and when it last changed) must survive a restart, or the resumed run would train on a different
curriculum. It implements keras-ckpt's two-method protocol (`keras_ckpt.state.CheckpointStateful`):

    def get_checkpoint_state(self) -> dict: ...        # JSON, saved in every backup
    def set_checkpoint_state(self, state: dict): ...   # given back on resume

The script trains in a child process, sends it SIGTERM mid-epoch (what a preempting scheduler
does), runs it again, and checks the callback's state and the final weights against an
uninterrupted run.

Run: python examples/custom_callback_resume.py   (offline, ~30 s)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

STOP_AT_STEP = 9


def train(backup_dir: str, out: str) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_ckpt

    class Curriculum(keras.callbacks.Callback):
        """Every 4 steps, one level harder (here: just counted and reported)."""

        def __init__(self):
            super().__init__()
            self.level, self.changed_at = 0, 0

        def on_train_batch_end(self, batch, logs=None):
            if keras_ckpt.state.is_replaying(self.model):
                return  # resumed run re-reading its input: not a training step
            step = int(self.model.optimizer.iterations)
            if step - self.changed_at >= 4:
                self.level, self.changed_at = self.level + 1, step
            print(f"step {step} level {self.level}", flush=True)

        def get_checkpoint_state(self):
            return {"level": self.level, "changed_at": self.changed_at}

        def set_checkpoint_state(self, state):
            self.level, self.changed_at = state["level"], state["changed_at"]
            print(f"restored curriculum: {state}", flush=True)

    keras.utils.set_random_seed(3)
    tf.config.experimental.enable_op_determinism()
    x = np.random.default_rng(0).normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] * x[:, 1] > 0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    curriculum = Curriculum()
    backup = keras_ckpt.BackupAndRestore(backup_dir, save_freq=5, delete_checkpoint=False)
    # On SIGTERM, fit backs up, prints where, and raises SystemExit(143): the script ends there,
    # with the exit status a scheduler reads as "killed", not "done".
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[backup, curriculum])
    np.savez(out, *[np.asarray(v) for v in model.weights])
    with open(out + ".json", "w") as f:
        json.dump(curriculum.get_checkpoint_state(), f)


def run(*args: str) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, __file__, "--train", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    import numpy as np

    work = tempfile.mkdtemp(prefix="keras-ckpt-curriculum-")
    reference = run(os.path.join(work, "reference-backup"), os.path.join(work, "reference.npz"))
    victim = run(os.path.join(work, "backup"), os.path.join(work, "resumed.npz"))
    for line in victim.stdout:
        if line.startswith(f"step {STOP_AT_STEP} "):
            print(f"1. {line.strip()}: sending SIGTERM, as a preempting scheduler would")
            victim.send_signal(signal.SIGTERM)
        elif line.startswith("BackupAndRestore:"):
            print(f"2. {line.strip()}")
    victim.wait()
    print(f"   exit status {victim.returncode} (128 + SIGTERM: not a completed job)")
    resumed = run(os.path.join(work, "backup"), os.path.join(work, "resumed.npz"))
    out, _ = resumed.communicate()
    print("3. " + next(line for line in out.splitlines() if line.startswith("BackupAndRestore:")))
    print("   " + next(line for line in out.splitlines() if line.startswith("restored")))
    reference.communicate()
    with (
        np.load(os.path.join(work, "reference.npz")) as a,
        np.load(os.path.join(work, "resumed.npz")) as b,
    ):
        same = all(np.array_equal(a[k], b[k]) for k in a.files)
    with (
        open(os.path.join(work, "reference.npz.json")) as f1,
        open(os.path.join(work, "resumed.npz.json")) as f2,
    ):
        states = json.load(f1), json.load(f2)
    print(f"4. final curriculum: uninterrupted {states[0]}, resumed {states[1]}")
    print(f"   final weights bit-identical: {same}")
    sys.exit(0 if same and states[0] == states[1] else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train"]:
        train(sys.argv[2], sys.argv[3])
    else:
        main()
