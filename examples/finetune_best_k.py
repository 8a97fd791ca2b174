"""Fine-tuning that keeps the best 3 models by validation accuracy (and never a worse one).

Pre-trains a small network on digits 0-4, then fine-tunes it on all ten digits with the first
layer frozen. keras_ckpt.ModelCheckpoint keeps the 3 best full models by `val_accuracy`
(`mode="auto"` reads "maximise" from the compiled metric) plus the newest; a second fine-tuning
run into the same folder remembers the best values of the first and prunes across both.

Run: python examples/finetune_best_k.py [RUN_DIR]   (offline, scikit-learn's digits, ~20 s)
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_ckpt  # noqa: E402


def main(run_dir: str) -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")

    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu")])
    pretrain = keras.Sequential([base, keras.layers.Dense(10, activation="softmax")])
    pretrain.compile("adam", "sparse_categorical_crossentropy")
    first_half = y < 5
    pretrain.fit(x[first_half], y[first_half], epochs=5, batch_size=64, verbose=0)

    base.trainable = False  # fine-tune only the new head
    model = keras.Sequential([base, keras.layers.Dense(10, activation="softmax")])
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    checkpoint = keras_ckpt.ModelCheckpoint(
        os.path.join(run_dir, "finetune-{epoch:02d}-{val_accuracy:.4f}.keras"),
        monitor="val_accuracy",
        keep_best=3,
        keep_last=1,
    )
    # The second fit continues the first (initial_epoch past the records): one ranking, one
    # retention. Starting again at epoch 0 would be a new run, ranked and pruned on its own.
    for run in (1, 2):
        model.fit(
            x,
            y,
            initial_epoch=8 * (run - 1),
            epochs=8 * run,
            batch_size=64,
            validation_split=0.25,
            verbose=0,
            callbacks=[checkpoint],
        )
        kept = keras_ckpt.CheckpointManager(run_dir).checkpoints(owner=checkpoint.owner)
        print(f"after fine-tuning run {run}: kept {len(kept)} checkpoints")
    verdict = keras_ckpt.CheckpointManager(run_dir).prune(
        checkpoint.retention_policy(), dry_run=True, owner=checkpoint.owner
    )
    for kept in verdict.kept:
        r = kept.record
        print(
            f"  {r.name}  val_accuracy {r.metrics['val_accuracy']:.4f}  kept: "
            + ", ".join(kept.reasons)
        )
    best = keras_ckpt.CheckpointManager(run_dir).best("val_accuracy", owner=checkpoint.owner)
    print(f"best: {best.name} (mode resolved to {best.owner_state['mode']})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="keras-ckpt-finetune-"))
