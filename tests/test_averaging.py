"""`CheckpointManager.average` and `keras-ckpt average`: the float64 mean of kept checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import LIGHT_ENV, build_model, h5_datasets

from keras_ckpt import CheckpointManager, ModelCheckpoint
from keras_ckpt.errors import CorruptCheckpointError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Five full-model checkpoints of one real fit, every one kept, val_loss monitored."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    directory = tmp_path_factory.mktemp("avg") / "run"
    model = build_model()
    ckpt = ModelCheckpoint(str(directory / "m-{epoch:02d}.keras"), monitor="val_loss")
    model.fit(x, y, epochs=5, batch_size=16, validation_split=0.25, callbacks=[ckpt], verbose=0)
    return directory


def model_weights(path):
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path).weights]


def numpy_mean(directory, names):
    loaded = [model_weights(str(directory / n)) for n in names]
    return [
        np.mean(np.stack([w[i].astype(np.float64) for w in loaded]), axis=0).astype(
            loaded[-1][i].dtype
        )
        for i in range(len(loaded[0]))
    ]


def assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)


def test_last_n_is_the_float64_mean_of_the_newest_n(run, tmp_path):
    out = tmp_path / "avg.keras"
    records = CheckpointManager(run).average("last:3", out)
    names = ["m-03.keras", "m-04.keras", "m-05.keras"]
    assert [r.name for r in records] == names
    assert_same(model_weights(str(out)), numpy_mean(run, names))
    # and not simply one of them
    assert not np.allclose(model_weights(str(out))[0], model_weights(str(run / names[-1]))[0])


def test_best_n_ranks_by_the_monitored_metric_by_default(run, tmp_path):
    manager = CheckpointManager(run)
    ranked = sorted(manager.checkpoints(), key=lambda r: r.metrics["val_loss"])[:2]
    expected = [r.name for r in sorted(ranked, key=lambda r: r.sequence)]
    out = tmp_path / "best.keras"
    records = manager.average("best:2", out)
    assert [r.name for r in records] == expected
    assert_same(model_weights(str(out)), numpy_mean(run, expected))


def test_best_n_by_another_metric_and_mode(run, tmp_path):
    manager = CheckpointManager(run)
    ranked = sorted(manager.checkpoints(), key=lambda r: (-r.metrics["accuracy"], -r.sequence))[:2]
    records = manager.average("best:2", tmp_path / "acc.keras", monitor="accuracy", mode="max")
    assert {r.name for r in records} == {r.name for r in ranked}


def test_a_list_of_names_weights_output_loads_into_a_built_model(run, tmp_path):
    names = ["m-01.keras", "m-05.keras"]
    out = tmp_path / "avg.weights.h5"
    CheckpointManager(run).average(names[::-1], out)
    model = build_model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(out))
    assert_same([np.asarray(w) for w in model.weights], numpy_mean(run, names))


def test_optimizer_state_and_config_are_the_newest(run, tmp_path):
    import zipfile

    out = tmp_path / "avg.keras"
    CheckpointManager(run).average(["m-02.keras", "m-04.keras"], out)
    with zipfile.ZipFile(out) as a, zipfile.ZipFile(run / "m-04.keras") as b:
        assert a.read("config.json") == b.read("config.json")
        a.extract("model.weights.h5", tmp_path / "a")
        b.extract("model.weights.h5", tmp_path / "b")
    got = h5_datasets(tmp_path / "a" / "model.weights.h5")
    newest = h5_datasets(tmp_path / "b" / "model.weights.h5")
    optimizer = [k for k in newest if k.startswith("optimizer/")]
    assert optimizer
    for key in optimizer:
        np.testing.assert_array_equal(got[key], newest[key])


# ----------------------------------------------------------------- hand-made weights files


def commit_h5(manager, name, arrays, epoch):
    with manager.stage() as folder:
        path = os.path.join(folder, name)
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                f[key] = value
        return manager.commit({name: path}, name=name, kind="weights", epoch=epoch)


def test_integer_variables_come_from_the_newest(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    for epoch in (1, 2, 3):
        commit_h5(
            manager,
            f"w-{epoch}.weights.h5",
            {
                "layers/dense/vars/0": np.full((2, 2), epoch, dtype=np.float32),
                "layers/seed/vars/0": np.array([epoch, 7 * epoch], dtype=np.int64),
                "optimizer/vars/0": np.array(epoch * 10, dtype=np.int64),
                "optimizer/vars/1": np.full((2, 2), epoch * 1.5, dtype=np.float32),
            },
            epoch,
        )
    out = tmp_path / "avg.weights.h5"
    manager.average("last:3", out)
    got = h5_datasets(out)
    np.testing.assert_array_equal(got["layers/dense/vars/0"], np.full((2, 2), 2.0, np.float32))
    assert got["layers/dense/vars/0"].dtype == np.float32
    np.testing.assert_array_equal(got["layers/seed/vars/0"], [3, 21])
    assert got["optimizer/vars/0"] == 30  # the newest optimizer state, not averaged
    np.testing.assert_array_equal(got["optimizer/vars/1"], np.full((2, 2), 4.5, np.float32))
    manager.close()


def test_float16_is_accumulated_in_float64(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    values = [np.float16(60000), np.float16(60000), np.float16(1)]  # a float16 sum overflows
    for i, v in enumerate(values):
        commit_h5(manager, f"w-{i}.weights.h5", {"layers/d/vars/0": np.array([v])}, i)
    manager.average("last:3", tmp_path / "avg.weights.h5")
    got = h5_datasets(tmp_path / "avg.weights.h5")["layers/d/vars/0"]
    assert got.dtype == np.float16 and np.isfinite(got).all()
    assert got[0] == np.float16(np.mean(np.array(values, dtype=np.float64)))
    manager.close()


def test_bfloat16_variables_are_averaged(tmp_path):
    """Keras stores bfloat16 as `|V2` with a `dtype` attribute: not a float dtype to h5py."""
    import ml_dtypes

    manager = CheckpointManager(tmp_path / "run")
    for i, value in enumerate((1.0, 3.0)):
        with manager.stage() as folder:
            path = os.path.join(folder, "w")
            with h5py.File(path, "w") as f:
                kernel = np.full((2,), value, dtype=ml_dtypes.bfloat16).view("V2")
                f.create_dataset("layers/d/vars/0", data=kernel).attrs["dtype"] = "bfloat16"
            manager.commit({f"w-{i}.weights.h5": path}, name=f"w-{i}", kind="weights", epoch=i)
    manager.average("last:2", tmp_path / "avg.weights.h5")
    with h5py.File(tmp_path / "avg.weights.h5", "r") as f:
        dataset = f["layers/d/vars/0"]
        assert dataset.attrs["dtype"] == "bfloat16" and dataset.dtype.itemsize == 2
        got = dataset[()].view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(got, [2.0, 2.0])
    manager.close()


@pytest.fixture
def small(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    for epoch in (1, 2, 3):
        commit_h5(manager, f"w-{epoch}.weights.h5", {"layers/d/vars/0": np.ones((2, 3))}, epoch)
    yield manager
    manager.close()


@pytest.mark.parametrize(
    "select, message",
    [
        ("last:0", r'"last:N" with N a positive integer. Received: select=\'last:0\''),
        ("best:-1", r'"best:N" with N a positive integer'),
        ("last:2.5", r'"last:N" with N a positive integer'),
        ("last:x", r'"last:N" with N a positive integer'),
        ("first:2", r'Expected "last:N", "best:N" or a list of checkpoint names'),
        ("last:4", r"at most as many checkpoints as .* holds \(3\)"),
        ([], r"a list of checkpoint names"),
        (["w-1.weights.h5", "w-1.weights.h5"], r"distinct checkpoint names"),
    ],
)
def test_bad_selectors_are_refused_naming_the_argument(small, tmp_path, select, message):
    with pytest.raises(ValueError, match=r"Invalid value for argument `select`.*" + message):
        small.average(select, tmp_path / "out.weights.h5")
    assert not (tmp_path / "out.weights.h5").exists()


def test_best_without_a_recorded_monitor_asks_for_one(small, tmp_path):
    with pytest.raises(ValueError, match="`monitor`"):
        small.average("best:2", tmp_path / "out.weights.h5")


def test_different_shapes_are_refused(small, tmp_path):
    commit_h5(small, "w-4.weights.h5", {"layers/d/vars/0": np.ones((3, 3))}, 4)
    with pytest.raises(ValueError, match=r"one architecture.*w-3.weights.h5 differs.*\(2, 3\)"):
        small.average("last:2", tmp_path / "out.weights.h5")


def test_different_architectures_are_refused(small, tmp_path):
    commit_h5(small, "w-4.weights.h5", {"layers/other/vars/0": np.ones((2, 3))}, 4)
    with pytest.raises(ValueError, match="one architecture"):
        small.average(["w-1.weights.h5", "w-4.weights.h5"], tmp_path / "out.weights.h5")


def test_an_existing_path_needs_overwrite(small, tmp_path):
    out = tmp_path / "out.weights.h5"
    out.write_bytes(b"mine")
    with pytest.raises(ValueError, match="Invalid value for argument `path`.*overwrite=True"):
        small.average("last:2", out)
    assert out.read_bytes() == b"mine"
    small.average("last:2", out, overwrite=True)
    assert h5_datasets(out)["layers/d/vars/0"].shape == (2, 3)


@pytest.mark.parametrize("name", ["out.h5", "out.keras"])
def test_the_output_suffix_must_fit_the_checkpoints(small, tmp_path, name):
    with pytest.raises(ValueError, match="Invalid value for argument `path`"):
        small.average("last:2", tmp_path / name)
    assert not (tmp_path / name).exists()


def test_a_damaged_checkpoint_is_refused(small, tmp_path):
    path = tmp_path / "run" / "w-2.weights.h5"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(CorruptCheckpointError, match="w-2.weights.h5"):
        small.average("last:2", tmp_path / "out.weights.h5")
    assert not (tmp_path / "out.weights.h5").exists()


def test_cli_through_its_real_entry_point(run, tmp_path):
    out = tmp_path / "cli.keras"
    command = [sys.executable, "-m", "keras_ckpt.cli", "average", str(run), "last:2", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=LIGHT_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Averaged 2 checkpoints into {out} ")
    assert "m-04.keras  end of epoch 4," in result.stdout
    assert "m-05.keras  end of epoch 5," in result.stdout
    assert_same(model_weights(str(out)), numpy_mean(run, ["m-04.keras", "m-05.keras"]))
    again = subprocess.run(command, capture_output=True, text=True, env=LIGHT_ENV, timeout=120)
    assert again.returncode == 2 and "--force" in again.stderr
    forced = subprocess.run(
        command + ["--force"], capture_output=True, text=True, env=LIGHT_ENV, timeout=120
    )
    assert forced.returncode == 0, forced.stderr


def test_cli_names_joined_by_commas(run, tmp_path):
    from keras_ckpt.cli import main

    out = tmp_path / "names.weights.h5"
    assert main(["average", str(run), "m-01.keras,m-03.keras", str(out)]) == 0
    model = build_model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(out))
    assert_same(
        [np.asarray(w) for w in model.weights], numpy_mean(run, ["m-01.keras", "m-03.keras"])
    )


def test_backups_average_to_a_weights_file(tmp_path, data):
    from keras_ckpt import BackupAndRestore

    x, y = data
    backup = BackupAndRestore(tmp_path / "b", save_freq=4, keep_last=3, delete_checkpoint=False)
    build_model().fit(x, y, epochs=1, batch_size=4, callbacks=[backup], verbose=0)
    manager = CheckpointManager(tmp_path / "b")
    records = manager.average("last:3", tmp_path / "avg.weights.h5")
    assert [r.kind for r in records] == ["training_state"] * 3
    model = build_model()
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(tmp_path / "avg.weights.h5"))
    expected = []
    for record in records:
        m = build_model()
        m.optimizer.build(m.trainable_variables)
        m.load_weights(str(tmp_path / "b" / record.path))
        expected.append([np.asarray(w, dtype=np.float64) for w in m.weights])
    for i, weight in enumerate(model.weights):
        mean = np.mean([e[i] for e in expected], axis=0).astype(np.float32)
        np.testing.assert_allclose(np.asarray(weight), mean, rtol=1e-6)
    with h5py.File(tmp_path / "avg.weights.h5") as averaged:
        assert "__keras_ckpt__" not in averaged  # a backup's resume state is not averaged
    with pytest.raises(ValueError, match="hold weights only, not a full model"):
        manager.average("last:2", tmp_path / "avg.keras")
