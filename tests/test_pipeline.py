"""keras_ckpt.training.pipeline: capture, write, commit, prune and announce; and restore."""

from __future__ import annotations

import keras
import pytest
from conftest import build_model

from keras_ckpt.errors import LockLostError
from keras_ckpt.format.backup_file import BackupFile, BackupInputs
from keras_ckpt.format.keras_file import KerasFile
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import KeepLast
from keras_ckpt.training.pipeline import SavePipeline, SaveRequest


def model_with_assets():
    """A model whose `.keras` file has an assets folder (the lookup layer's vocabulary)."""
    inputs = keras.Input((1,), dtype="string")
    lookup = keras.layers.StringLookup(vocabulary=["a", "b", "c"])
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.ops.cast(lookup(inputs), "float32")))
    return model


@pytest.mark.parametrize("background", [False, True])
def test_saves_commit_in_order_and_prune_after_each(tmp_path, background):
    model = build_model()
    pipeline = SavePipeline(
        CheckpointManager(tmp_path), KerasFile(weights_only=True), background=background
    )
    announced = []
    for epoch in (1, 2, 3):
        request = SaveRequest(f"w-{epoch}.weights.h5", epoch=epoch, owner="me")
        pipeline.save(model, request, retention=KeepLast(2), on_saved=announced.append)
    pipeline.close()
    names = [r.name for r in CheckpointManager(tmp_path).checkpoints()]
    assert names == ["w-2.weights.h5", "w-3.weights.h5"]
    assert [s.record.name for s in announced] == [
        "w-1.weights.h5",
        "w-2.weights.h5",
        "w-3.weights.h5",
    ]
    assert [r.name for r in announced[-1].pruned.deleted] == ["w-1.weights.h5"]


@pytest.mark.parametrize("background", [False, True])
def test_a_failed_staging_frees_the_snapshots_temporary_assets(tmp_path, mocker, background):
    """Lost lock or full disk before the first byte is written: the snapshot's assets folder
    (made by Keras's saving walk) must not leak."""
    model = model_with_assets()
    fmt = KerasFile(weights_only=False)
    captured = []
    real_capture = fmt.capture
    mocker.patch.object(
        fmt, "capture", lambda m, e=None: captured.append(real_capture(m, e)) or captured[-1]
    )
    manager = CheckpointManager(tmp_path)
    mocker.patch.object(manager, "stage", side_effect=LockLostError("Lost the writer lock: gone"))
    pipeline = SavePipeline(manager, fmt, background=background)
    with pytest.raises(LockLostError):
        pipeline.save(model, SaveRequest("m.keras"))  # inline: raises here
        pipeline.wait()  # background: raises here
    assert captured and captured[0].assets_dir is None
    assert manager.checkpoints() == []


def test_close_frees_the_buffers_kept_between_background_saves(tmp_path):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64)])  # 16 KB: buffered
    fmt = KerasFile(weights_only=True, copy=True)
    pipeline = SavePipeline(CheckpointManager(tmp_path), fmt, background=True)
    pipeline.save(model, SaveRequest("w.weights.h5"))
    pipeline.wait()
    assert fmt._snapshotter is not None
    assert fmt._snapshotter._buffers  # host copies, kept for the next save until `close`
    pipeline.close()
    assert fmt._snapshotter is None


def test_restore_skips_a_damaged_newest_backup_for_the_one_before(tmp_path):
    model = build_model()
    pipeline = SavePipeline(CheckpointManager(tmp_path), BackupFile(), background=False)
    assert pipeline.restore(owner="me") is None  # nothing to restore from
    for step in (1, 2):
        inputs = BackupInputs(model.weights, {"step": step})
        request = SaveRequest(f"b-{step}", global_step=step, owner="me")
        pipeline.save(model, request, extra=inputs)
    pipeline.close()
    path = tmp_path / "b-2.weights.h5"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"b-2 in .* is damaged .*checksum.*; using b-1 instead"):
        record, contents = pipeline.restore(owner="me")
    assert record.name == "b-1" and contents.state["step"] == 1
