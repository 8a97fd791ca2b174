"""Quickstart: train on scikit-learn's digits with keras_ckpt.ModelCheckpoint and retention.

Keeps the 2 best full models by validation loss plus the newest one, and the best weights under a
fixed name; then lists what was kept and why, and loads the best model back with plain Keras.

Run: python examples/quickstart.py [RUN_DIR]   (offline, about 15 s on 2 cores)
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_ckpt  # noqa: E402


def main(run_dir: str) -> None:
    digits = load_digits()  # 1,797 8x8 images, shipped inside scikit-learn
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    callbacks = [
        keras_ckpt.ModelCheckpoint(
            os.path.join(run_dir, "model-{epoch:02d}-{val_loss:.4f}.keras"),
            monitor="val_loss",
            keep_best=2,
            keep_last=1,
        ),
        keras_ckpt.ModelCheckpoint(
            os.path.join(run_dir, "best.weights.h5"),
            save_weights_only=True,
            save_best_only=True,
            monitor="val_accuracy",
        ),
    ]
    model.fit(x, y, epochs=12, batch_size=64, validation_split=0.2, callbacks=callbacks, verbose=0)

    manager = keras_ckpt.CheckpointManager(run_dir)
    models = callbacks[0]
    print(f"Checkpoints in {run_dir} (12 epochs trained):")
    # A dry run of the callback's own policy over its own files says why each one is kept.
    verdict = manager.prune(models.retention_policy(), dry_run=True, owner=models.owner)
    for kept in verdict.kept:
        record = kept.record
        print(
            f"  {record.name:28s} epoch {record.epoch:2d}  "
            f"val_loss {record.metrics['val_loss']:.4f}  "
            f"{record.size / 1024:6.1f} KiB  kept: {', '.join(kept.reasons)}"
        )
    best = manager.best("val_loss", owner=models.owner)
    model = keras.saving.load_model(os.path.join(run_dir, best.path))  # plain Keras loads it
    accuracy = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y)
    print(f"Best model {best.name} reloaded with plain Keras: accuracy {accuracy:.3f}")
    print(f"Also kept: {manager.get('best.weights.h5').name} (best val_accuracy, weights only)")
    print(f"All checkpoints verify: {all(r.ok for r in manager.verify())}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="keras-ckpt-quickstart-"))
