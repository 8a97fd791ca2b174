"""One process of the sharded-checkpoint tests (`tests/test_orbax_dir.py`), on 4 forced CPU devices.

    python tests/sharded_child.py DIR SCENARIO

JAX must see its device count before it starts, which a pytest process that imported JAX already
cannot change, so each scenario runs here and reports one JSON object on its last stdout line.

Scenarios:
    save     a 2x2 `DeviceMesh`, Dense kernels sharded by a `LayoutMap`; `ModelCheckpoint` into
             DIR/models/m-<epoch>/ (keep_last=2) and `BackupAndRestore(sharded=True)`; loads the
             newest through the manager, plain `keras.saving.load_model` and `load_weights`,
             then through the manager onto a 1x2 mesh; flips a byte in a shard file of the newest
             and loads "latest" again.
    resume   the same model trained 3 epochs with `BackupAndRestore(sharded=True, save_freq=3)`,
             killed (an exception) after step 7, then run again: the final weights against an
             uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402


def mesh_distribution(devices):
    shape = (2, 2) if len(devices) == 4 else (1, len(devices))
    mesh = keras.distribution.DeviceMesh(shape, ["batch", "model"], devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*kernel"] = (None, "model")
    return keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="dense1")(inputs)
    outputs = keras.layers.Dense(4, name="dense2")(keras.layers.Dropout(0.2)(hidden))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8)).astype("float32"), rng.normal(size=(64, 4)).astype("float32")


def values(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v.value) for v in model.weights + model.optimizer.variables]


def equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(a, b, strict=True)
    )


def save(directory: str) -> dict:
    keras.distribution.set_distribution(mesh_distribution(jax.devices()))
    model = build()
    x, y = data()
    checkpoint = keras_ckpt.ModelCheckpoint(f"{directory}/models/m-{{epoch}}/", keep_last=2)
    backup = keras_ckpt.BackupAndRestore(
        f"{directory}/backup", save_freq=4, sharded=True, delete_checkpoint=False
    )
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[checkpoint, backup], verbose=0)
    manager = keras_ckpt.CheckpointManager(f"{directory}/models")
    writers = [checkpoint._pipeline.background, backup._pipeline.background]
    saved = values(model)
    report: dict = {
        "background": writers,
        "names": [r.name for r in manager.checkpoints()],
        "files": [f.path for f in manager.latest().files],
        "verify": [r.ok for r in manager.verify()],
        "kernel_sharding": str(model.weights[0].value.sharding.spec),
        "backups": [
            r.name for r in keras_ckpt.CheckpointManager(f"{directory}/backup").checkpoints()
        ],
    }
    report["ours"] = equal(values(manager.load_model("latest")), saved)
    import contextlib
    import io

    from keras_ckpt.cli import main as cli

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        report["show_status"] = cli(["show", f"{directory}/models", "m-3"])
    report["show"] = shown.getvalue()
    report["plain_load_model"] = equal(
        values(keras.saving.load_model(f"{directory}/models/m-3")), saved
    )
    fresh = build()
    fresh.load_weights(f"{directory}/models/m-3")
    report["plain_load_weights"] = equal(
        [np.asarray(v.value) for v in fresh.weights], saved[: len(fresh.weights)]
    )
    backup_model = build()
    backup_model.load_weights(f"{directory}/backup/{report['backups'][-1]}")
    report["plain_load_backup"] = equal(
        [np.asarray(v.value) for v in backup_model.weights], saved[: len(backup_model.weights)]
    )
    # Onto another mesh: 2 of the 4 devices, 1x2.
    keras.distribution.set_distribution(mesh_distribution(jax.devices()[:2]))
    moved = manager.load_model("latest")
    report["other_mesh_equal"] = equal(values(moved), saved)
    report["other_mesh_devices"] = len(moved.weights[0].value.sharding.device_set)
    # BackupAndRestore onto the 1x2 mesh: the backup of the end of training, nothing left to train.
    resumed = build()
    again = keras_ckpt.BackupAndRestore(
        f"{directory}/backup", save_freq=4, sharded=True, delete_checkpoint=False
    )
    resumed.fit(x, y, batch_size=8, epochs=3, callbacks=[again], verbose=0)
    report["backup_other_mesh_equal"] = equal(values(resumed), saved)
    # A flipped byte in one shard file of the newest checkpoint.
    shard = next(
        f.path for f in manager.latest().files if "/d/" in f.path and "ocdbt.process_0" in f.path
    )
    path = os.path.join(directory, "models", shard)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    report["flipped"] = shard
    report["verify_after_flip"] = [[r.name, r.ok, list(r.problems)] for r in manager.verify()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["loaded_after_flip"] = manager.resolve("latest").name
        manager.load_model("latest")
    report["warnings"] = [str(w.message) for w in caught]
    return report


class Kill(keras.callbacks.Callback):
    def __init__(self, at: int):
        super().__init__()
        self.at, self.step = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == self.at:
            raise RuntimeError("killed")


def resume(directory: str) -> dict:
    keras.distribution.set_distribution(mesh_distribution(jax.devices()))
    x, y = data()
    reference = build()
    reference.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    model = build()
    backup = keras_ckpt.BackupAndRestore(f"{directory}/resume", save_freq=3, sharded=True)
    try:
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                  callbacks=[backup, Kill(7)])  # fmt: skip
    except RuntimeError:
        pass
    model = build()
    backup = keras_ckpt.BackupAndRestore(f"{directory}/resume", save_freq=3, sharded=True)
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[backup])
    return {
        "equal": equal(values(model), values(reference)),
        "kernel_sharding": str(model.weights[0].value.sharding.spec),
    }


if __name__ == "__main__":
    result = {"save": save, "resume": resume}[sys.argv[2]](sys.argv[1])
    sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")
