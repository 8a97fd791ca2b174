"""Average the last 5 epochs' checkpoints and compare the mean with the best single checkpoint.

Trains a small classifier on scikit-learn's digits with a learning rate high enough that the weights
bounce around the optimum at the end of training; keras_ckpt.ModelCheckpoint keeps the newest 5 full
models and the best one by `val_loss`. `CheckpointManager.average("last:5", ...)` writes the
element-wise mean of the last 5 (float64 accumulation, the newest's optimizer state), which plain
Keras loads; both it and the best single checkpoint are then evaluated on a held-out test split.
Which one wins depends on the run: the point is the recipe and a fair comparison.

Run: python examples/average_last_5.py [RUN_DIR]   (offline, scikit-learn's digits, ~20 s)
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
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:400], order[400:]

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.2, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    checkpoint = keras_ckpt.ModelCheckpoint(
        os.path.join(run_dir, "epoch-{epoch:02d}.keras"),
        monitor="val_loss",
        keep_last=5,
        keep_best=1,
    )
    model.fit(
        x[train],
        y[train],
        validation_split=0.2,
        epochs=15,
        batch_size=32,
        callbacks=[checkpoint],
        verbose=0,
    )

    manager = keras_ckpt.CheckpointManager(run_dir)
    averaged = manager.average("last:5", os.path.join(run_dir, "last5.keras"), overwrite=True)
    print("averaged:", ", ".join(r.name for r in averaged))
    best = manager.best("val_loss")
    print(f"best single checkpoint: {best.name} (val_loss={best.metrics['val_loss']:.4f})")

    results = {}
    for label, path in (("last 5 averaged", "last5.keras"), ("best single", best.path)):
        loaded = keras.saving.load_model(os.path.join(run_dir, path))  # plain Keras
        loss, accuracy = loaded.evaluate(x[test], y[test], verbose=0)
        results[label] = loss
        print(f"{label:16} test loss {loss:.4f}  test accuracy {accuracy:.4f}")
    winner = min(results, key=results.get)
    print(f"lower test loss: {winner}")
    # the history still lists every epoch, also those retention deleted since
    pruned = [e.name for e in manager.history() if not e.exists]
    print(f"history: {len(manager.history())} saves, {len(pruned)} pruned by retention")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="average-"))
