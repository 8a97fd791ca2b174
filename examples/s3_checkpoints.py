"""Checkpoints to S3: ModelCheckpoint and BackupAndRestore on an `s3://` URL.

Credentials and the endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL_S3 for S3-compatible servers). With no endpoint set, this example starts moto's
S3 server on 127.0.0.1 (the one the tests use) and points the environment at it, so it runs
offline. Needs `pip install "keras-ckpt[remote]" "moto[server]"`.

Run: python examples/s3_checkpoints.py [s3://bucket/prefix]   (~15 s)
"""

from __future__ import annotations

import os
import sys
import uuid

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def local_s3_server() -> str:
    """Starts moto's S3 server on loopback and returns a fresh bucket URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="example",
        AWS_SECRET_ACCESS_KEY="example",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=f"http://{host}:{port}",
    )
    import fsspec

    bucket = f"keras-ckpt-example-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(bucket)
    print(f"started a local S3 server at http://{host}:{port}, bucket {bucket}")
    return f"s3://{bucket}/runs/exp1"


def main(url: str) -> None:
    import keras
    import numpy as np

    import keras_ckpt

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [
        keras_ckpt.ModelCheckpoint(f"{url}/model-{{epoch:02d}}.keras", keep_last=2),
        keras_ckpt.BackupAndRestore(f"{url}/backup", save_freq=5, delete_checkpoint=False),
    ]
    model.fit(x, y, epochs=4, batch_size=32, validation_split=0.25, verbose=0, callbacks=callbacks)

    manager = keras_ckpt.CheckpointManager(url)
    print(f"models in {url}: {[r.name for r in manager.checkpoints()]}")
    print(f"all verify: {all(r.ok for r in manager.verify())}")
    restored = manager.load_model("latest")  # downloaded to a temp file, loaded by plain Keras
    pairs = zip(restored.get_weights(), model.get_weights(), strict=False)
    same = all(np.array_equal(a, b) for a, b in pairs)
    print(f"latest model reloaded from S3 equals the trained one: {same}")
    backups = keras_ckpt.CheckpointManager(f"{url}/backup").checkpoints()
    print(f"backups in {url}/backup: {[r.name for r in backups]}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        target = sys.argv[1]
    elif os.environ.get("AWS_ENDPOINT_URL_S3"):
        target = f"s3://keras-ckpt-example/{uuid.uuid4().hex[:8]}"
    else:
        target = local_s3_server()
    main(target)
