"""The `keras-ckpt` command line, on directories written by real `model.fit` runs.

Most tests call `keras_ckpt.cli.main` in-process (milliseconds each); the `entry_point` fixture runs
every command once more through `python -m keras_ckpt.cli` in real subprocesses, started together
because each one pays the interpreter and import start-up.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import LIGHT_ENV, build_model, fail_removing

import keras_ckpt
from keras_ckpt import CheckpointManager
from keras_ckpt.cli import main
from keras_ckpt.cli._common import parse_size
from keras_ckpt.policies import KeepBest, KeepEvery, KeepLast, MaxTotalBytes
from keras_ckpt.records import clean_metrics

COMMANDS = ("list", "show", "verify", "prune", "export", "average", "plot")

pytest_plugins = ["s3_server"]  # `s3_url`: a fresh directory on a moto S3 server on loopback


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(*args: object) -> Run:
    """Runs `keras-ckpt ARGS` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, usage errors
            code = int(e.code or 0)
    return Run(code, out.getvalue(), err.getvalue())


def fit_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, y


def write_weights_run(directory: Path, epochs: int) -> None:
    """Weights-only checkpoints committed by hand, with no retention policy in their records."""
    import keras

    manager = CheckpointManager(directory)

    class Saver(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            name = f"weights-{epoch + 1:02d}.weights.h5"
            with manager.stage() as folder:
                staged = os.path.join(folder, name)
                self.model.save_weights(staged)
                manager.commit(
                    {name: staged},
                    name=name,
                    kind="weights",
                    epoch=epoch + 1,
                    global_step=self.steps,
                    metrics=clean_metrics(logs),
                    owner="test",
                    owner_state={"monitor": "val_loss", "mode": "min"},
                )

    x, y = fit_data()
    build_model().fit(
        x, y, epochs=epochs, batch_size=16, validation_split=0.25, callbacks=[Saver()], verbose=0
    )
    manager.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`models`: ModelCheckpoint with retention, 6 epochs; `weights`: 4 saved by hand; `backup`."""
    root = tmp_path_factory.mktemp("runs")
    x, y = fit_data()
    checkpoint = keras_ckpt.ModelCheckpoint(
        str(root / "models" / "model-{epoch:02d}.keras"),
        monitor="val_loss",
        keep_best=2,
        keep_last=1,
        keep_every_n_epochs=3,
    )
    build_model().fit(
        x, y, epochs=6, batch_size=16, validation_split=0.25, callbacks=[checkpoint], verbose=0
    )
    write_weights_run(root / "weights", epochs=4)
    backup = keras_ckpt.BackupAndRestore(str(root / "backup"), save_freq=2, delete_checkpoint=False)
    build_model().fit(x, y, epochs=2, batch_size=16, callbacks=[backup], verbose=0)
    return root


@pytest.fixture
def copy_of(runs, tmp_path):
    """A private copy of a fixture directory, for tests that damage or prune it."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(runs / name, tmp_path / name))

    return copy


def names(directory: Path) -> list[str]:
    return [r.name for r in CheckpointManager(directory).checkpoints()]


# ------------------------------------------------------------------------------------------ list


def test_list_shows_every_checkpoint_with_its_metrics(runs):
    result = cli("list", runs / "models")
    assert result.code == 0, result.err
    header = result.out.splitlines()[2]
    for column in ("name", "epoch", "step", "val_loss", "size", "age"):
        assert column in header
    for name in names(runs / "models"):
        assert name in result.out
    assert "model-01.keras" not in result.out  # pruned by its callback during fit


def test_list_names_the_step_of_the_epoch_and_the_global_step_apart_in_keras_epochs(copy_of):
    directory = copy_of("backup")  # backups are taken mid-epoch: step in epoch is not 0
    records = CheckpointManager(directory).checkpoints()
    assert any(r.step != r.global_step for r in records)
    lines = cli("list", directory).out.splitlines()
    header = lines[2]
    assert "step of epoch" in header and "global step" in header
    assert not re.search(
        r"\bstep\b", header.replace("step of epoch", "").replace("global step", "")
    )
    for record in records:
        [row] = [line for line in lines if record.name in line]
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        # Keras's 1-based epochs: a backup 2 steps into the second epoch is step 2 of epoch 2.
        expected = (
            [str(record.epoch + 1), str(record.step)]
            if record.step
            else [
                str(record.epoch),
                "end",
            ]
        )
        assert cells[2:5] == [*expected, str(record.global_step)]
    rows = json.loads(cli("list", directory, "--json").out)["checkpoints"]
    assert [(r["step"], r["global_step"]) for r in rows] == [
        (r.step, r.global_step) for r in records
    ]


def test_list_marks_a_file_deleted_by_hand_as_missing(copy_of):
    directory = copy_of("weights")
    (directory / "weights-02.weights.h5").unlink()
    result = cli("list", directory)
    assert result.code == 0, result.err
    [row] = [line for line in result.out.splitlines() if "weights-02" in line]
    assert "(missing)" in row
    assert sum("(missing)" in line for line in result.out.splitlines()) == 2  # row and legend
    rows = json.loads(cli("list", directory, "--json").out)["checkpoints"]
    assert [r["missing_files"] for r in rows] == [[], ["weights-02.weights.h5"], [], []]


def test_list_json_matches_the_records(runs):
    result = cli("list", runs / "models", "--json")
    rows = json.loads(result.out)["checkpoints"]
    records = CheckpointManager(runs / "models").checkpoints()
    assert [r["name"] for r in rows] == [r.name for r in records]
    for row, record in zip(rows, records, strict=True):
        assert (row["epoch"], row["global_step"], row["size"]) == (
            record.epoch,
            record.global_step,
            record.size,
        )
        assert row["metrics"] == record.metrics
        assert "kept_because" not in row


def test_list_why_applies_the_policy_the_callback_recorded(runs):
    rows = json.loads(cli("list", runs / "models", "--why", "--json").out)["checkpoints"]
    records = CheckpointManager(runs / "models").checkpoints()
    policy = KeepBest(2, "val_loss", "min") | KeepLast(1) | KeepEvery(epochs=3)
    expected = [list(reasons) for reasons in policy.reasons(records)]
    expected[-1] = ["newest"] + expected[-1]
    assert [set(row["kept_because"]) for row in rows] == [set(e) for e in expected]
    assert "every 3 epochs" in rows[[r["epoch"] for r in rows].index(3)]["kept_because"]
    assert all("KeepBest" in row["retention_policy"] for row in rows)
    table = cli("list", runs / "models", "--why").out
    assert "kept because" in table and "every 3 epochs" in table


def test_list_why_without_a_recorded_policy_keeps_only_the_newest(runs):
    rows = json.loads(cli("list", runs / "weights", "--why", "--json").out)["checkpoints"]
    assert [row["kept_because"] for row in rows] == [[], [], [], ["newest"]]
    assert (
        "No retention policy in the records of test" in cli("list", runs / "weights", "--why").out
    )


def test_list_why_while_the_keep_best_metric_is_missing_shows_what_the_callback_prunes_by(
    tmp_path,
):
    x, y = fit_data()
    checkpoint = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), monitor="val_loss", keep_best=2, keep_last=2
    )
    with pytest.warns(UserWarning):
        build_model().fit(x, y, epochs=3, batch_size=32, callbacks=[checkpoint], verbose=0)
    result = cli("list", tmp_path, "--why", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)["checkpoints"]
    assert [row["kept_because"] for row in rows] == [["last 2"], ["newest", "last 2"]]


@pytest.mark.parametrize(("key", "best_first"), [("val_loss", min), ("val_accuracy", max)])
def test_list_sort_puts_the_best_value_first(runs, key, best_first):
    rows = json.loads(cli("list", runs / "weights", "--sort", key, "--json").out)["checkpoints"]
    values = [row["metrics"][key] for row in rows]
    assert values[0] == best_first(values)
    assert values == sorted(values, reverse=best_first is max)


@pytest.mark.parametrize(("key", "order"), [("epoch", [1, 2, 3, 4]), ("age", [4, 3, 2, 1])])
def test_list_sort_by_a_column(runs, key, order):
    rows = json.loads(cli("list", runs / "weights", "--sort", key, "--json").out)["checkpoints"]
    assert [row["epoch"] for row in rows] == order


def test_list_sort_by_an_unknown_key_names_the_known_ones(runs):
    result = cli("list", runs / "weights", "--sort", "val_f1")
    assert result.code == 2
    assert "val_f1" in result.err and "val_loss" in result.err


# ------------------------------------------------------------------------------------------ show


def test_show_full_model_names_what_the_file_holds(runs):
    manager = CheckpointManager(runs / "models")
    record = manager.latest()
    contents = json.loads(cli("show", runs / "models", "latest", "--json").out)["contents"]
    architecture = contents["architecture"]
    # Keras numbers model names per process (sequential, sequential_1, ...): match the stem.
    assert re.fullmatch(r"sequential(_\d+)?", architecture.pop("name"))
    assert architecture == {"class_name": "Sequential", "layers": 3}
    assert contents["weights"]["parameters"] == build_model().count_params()
    assert contents["optimizer"]["iterations"] == record.global_step
    assert contents["compile"]["optimizer"] == "Adam"
    assert set(contents["parts"]) == {"metadata.json", "config.json", "model.weights.h5"}
    text = cli("show", runs / "models", "latest").out
    assert "full model" in text and "optimizer state  yes: Adam" in text
    assert f"iterations={record.global_step}" in text and "Keras 3." in text
    assert "keras.saving.load_model" in text  # the whole-model vs weights explanation


def test_show_weights_only_says_what_is_missing(runs):
    text = cli("show", runs / "weights", "weights-02.weights.h5").out
    assert "weights only" in text
    assert "architecture     no" in text and "compile config   no" in text
    assert "its class is not stored in a weights file" in text
    assert "model.load_weights" in text


def test_show_training_state_names_every_file(runs):
    record = CheckpointManager(runs / "backup").latest()
    text = cli("show", runs / "backup", "latest").out
    assert "holds            BackupAndRestore backup (weights + training state)" in text
    assert "HDF5 weights file" not in text
    for entry in record.files:
        assert entry.path in text
    assert f"iterations={record.global_step}" in text


def test_show_json_calls_a_backup_a_backup(runs):
    contents = json.loads(cli("show", runs / "backup", "latest", "--json").out)["contents"]
    assert contents["format"] == "BackupAndRestore backup (weights + training state)"


def test_show_best_uses_the_monitor_the_callback_recorded(runs):
    data = json.loads(cli("show", runs / "weights", "best", "--json").out)
    best = CheckpointManager(runs / "weights").best("val_loss", "min")
    assert data["checkpoint"]["name"] == best.name
    by_accuracy = json.loads(
        cli("show", runs / "weights", "best", "--monitor", "val_accuracy", "--json").out
    )
    assert (
        by_accuracy["checkpoint"]["name"]
        == CheckpointManager(runs / "weights").best("val_accuracy", "max").name
    )


def test_show_best_with_mode_max_takes_the_largest_value(runs):
    data = json.loads(
        cli(
            "show", runs / "weights", "best", "--monitor", "val_loss", "--mode", "max", "--json"
        ).out
    )
    worst = CheckpointManager(runs / "weights").best("val_loss", "max")
    assert data["checkpoint"]["name"] == worst.name


# ---------------------------------------------------------------------------------------- verify


def test_verify_passes_on_intact_checkpoints(runs):
    result = cli("verify", runs / "models")
    assert result.code == 0
    assert f"All {len(names(runs / 'models'))} checkpoints verified" in result.out


def test_verify_finds_a_flipped_byte_and_names_the_file(copy_of):
    directory = copy_of("weights")
    damaged = directory / "weights-02.weights.h5"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    result = cli("verify", directory)
    assert result.code == 1
    assert "DAMAGED  weights-02.weights.h5" in result.out
    assert "weights-02.weights.h5: checksum mismatch" in result.out
    assert "ok       weights-01.weights.h5" in result.out
    assert "1 of 4 checkpoints damaged" in result.out
    rows = json.loads(cli("verify", directory, "--json").out)["results"]
    assert [row["ok"] for row in rows] == [True, False, True, True]


def test_verify_reports_a_missing_file(copy_of):
    directory = copy_of("weights")
    (directory / "weights-04.weights.h5").unlink()
    result = cli("verify", directory, "weights-04.weights.h5")
    assert result.code == 1
    assert "weights-04.weights.h5: missing file" in result.out


def test_an_unreadable_record_is_a_warning_for_list_and_damage_for_verify(copy_of):
    directory = copy_of("weights")
    record = directory / ".keras_ckpt" / "weights-01.weights.h5.json"
    record.write_text("{not json")
    listed = cli("list", directory, "--json")
    assert listed.code == 0
    assert len(json.loads(listed.out)["checkpoints"]) == 3
    assert listed.err.startswith("keras-ckpt: warning: Skipping checkpoint: ")
    assert str(record) in listed.err
    verified = cli("verify", directory)
    assert verified.code == 1 and f"DAMAGED  {record}" in verified.out


# ----------------------------------------------------------------------------------------- prune


def test_prune_dry_run_deletes_nothing(copy_of):
    directory = copy_of("weights")
    before = sorted(p.name for p in directory.rglob("*"))
    result = cli("prune", directory, "--keep-last", "1", "--dry-run")
    assert result.code == 0, result.err
    assert "Would delete 3 of 4 checkpoints" in result.out and "nothing was deleted" in result.out
    assert "keep    weights-04.weights.h5  end of epoch 4, global step 12" in result.out
    assert result.out.rstrip().endswith("newest, last 1")
    assert sorted(p.name for p in directory.rglob("*")) == before


def test_prune_deletes_what_no_option_keeps_and_says_why_the_rest_stays(copy_of):
    directory = copy_of("weights")
    records = CheckpointManager(directory).checkpoints()
    best = min(records, key=lambda r: r.metrics["val_loss"]).name
    result = cli("prune", directory, "--keep-best", "1", "--keep-last", "1")
    assert result.code == 0, result.err
    assert "Deleted" in result.out and "best 1 by val_loss (min)" in result.out
    kept = {best, records[-1].name}
    assert set(names(directory)) == kept
    assert {p.name for p in directory.iterdir() if p.is_file()} == kept


def test_prune_keep_every_and_max_total_bytes_match_the_library(copy_of):
    directory = copy_of("weights")
    records = CheckpointManager(directory).checkpoints()
    budget = records[-1].size + records[-2].size
    policy = KeepEvery(epochs=3) | MaxTotalBytes(budget)
    expected = [r.name for r, why in zip(records, policy.reasons(records), strict=True) if why]
    result = cli(
        "prune", directory, "--keep-every-n-epochs", 3, "--max-total-bytes", budget, "--json"
    )
    data = json.loads(result.out)
    assert [k["name"] for k in data["kept"]] == expected
    assert names(directory) == expected


def test_prune_owner_limits_it_to_one_callbacks_checkpoints(copy_of):
    directory = copy_of("weights")
    manager = CheckpointManager(directory)
    with manager.stage() as folder:
        staged = os.path.join(folder, "other.weights.h5")
        shutil.copyfile(directory / "weights-01.weights.h5", staged)
        manager.commit({"other.weights.h5": staged}, name="other", kind="weights", owner="other")
    manager.close()
    mixed = cli("prune", directory, "--keep-last", "1")
    assert mixed.code == 2 and "2 owners (other, test)" in mixed.err and "--owner" in mixed.err
    result = cli("prune", directory, "--keep-last", "1", "--owner", "test")
    assert result.code == 0, result.err
    assert names(directory) == ["weights-04.weights.h5", "other"]


def test_prune_keep_best_mode_max_keeps_the_largest_value(copy_of):
    directory = copy_of("weights")
    records = CheckpointManager(directory).checkpoints()
    worst = max(records, key=lambda r: r.metrics["val_loss"]).name
    result = cli(
        "prune", directory, "--keep-best", 1, "--monitor", "val_loss", "--mode", "max", "--json"
    )
    kept = {k["name"]: k["reasons"] for k in json.loads(result.out)["kept"]}
    assert "best 1 by val_loss (max)" in kept[worst]


def test_prune_without_a_keep_option_or_a_recorded_policy_refuses(copy_of):
    directory = copy_of("weights")
    result = cli("prune", directory, "--dry-run")
    assert result.code == 2
    assert "at least one keep option" in result.err and len(result.err.splitlines()) == 1
    assert "no retention policy is recorded" in result.err
    assert len(names(directory)) == 4


def recorded_keep_last_1(directory: Path) -> None:
    """Gives the newest record of `directory` the retention a `keep_last=1` callback records."""
    manager = CheckpointManager(directory)
    newest = manager.latest()
    manager.update_owner_state(
        newest.name, {**newest.owner_state, "retention": {"type": "KeepLast", "n": 1}}
    )
    manager.close()


def test_prune_without_keep_options_dry_run_shows_the_recorded_policy(copy_of):
    directory = copy_of("weights")
    recorded_keep_last_1(directory)
    result = cli("prune", directory, "--dry-run")
    assert result.code == 0, result.err
    assert "Policy (recorded by the callback that wrote them): KeepLast(n=1)" in result.out
    assert "Would delete 3 of 4 checkpoints" in result.out
    assert len(names(directory)) == 4


def test_prune_without_keep_options_applies_the_recorded_policy(copy_of):
    directory = copy_of("weights")
    recorded_keep_last_1(directory)
    data = json.loads(cli("prune", directory, "--json").out)
    assert data["policy_source"] == "recorded" and data["policy"] == "KeepLast(n=1)"
    assert names(directory) == ["weights-04.weights.h5"]


def test_prune_without_keep_options_applies_what_the_model_checkpoint_recorded(copy_of):
    directory = copy_of("models")
    records = CheckpointManager(directory).checkpoints()
    expected = json.loads(cli("list", directory, "--why", "--json").out)["checkpoints"]
    kept = [row["name"] for row in expected if row["kept_because"]]
    result = cli("prune", directory, "--json")
    assert result.code == 0, result.err
    assert [k["name"] for k in json.loads(result.out)["kept"]] == kept == names(directory)
    assert len(records) >= len(kept)


def test_prune_without_keep_options_refuses_a_recorded_keep_best_that_cannot_rank(copy_of):
    directory = copy_of("weights")
    manager = CheckpointManager(directory)
    newest = manager.latest()
    retention = {"type": "KeepBest", "n": 1, "monitor": "val_f1", "mode": "max"}
    manager.update_owner_state(newest.name, {**newest.owner_state, "retention": retention})
    manager.close()
    result = cli("prune", directory)
    assert result.code == 2
    assert "ranks by a metric no checkpoint records yet" in result.err
    assert len(names(directory)) == 4


def test_prune_of_an_empty_owner_names_the_option(copy_of):
    directory = copy_of("weights")
    result = cli("prune", directory, "--keep-last", "1", "--owner", "")
    assert result.code == 2
    assert "argument --owner: expected a callback's owner" in result.err
    assert "None" not in result.err
    assert len(names(directory)) == 4


def test_prune_lists_checkpoints_without_an_owner_as_such(copy_of):
    directory = copy_of("weights")
    manager = CheckpointManager(directory)
    with manager.stage() as folder:
        staged = Path(folder) / "x"
        staged.write_bytes(b"x")
        manager.commit({"x.bin": staged}, name="x.bin", kind="weights")
    manager.close()
    result = cli("prune", directory, "--keep-last", "1", "--owner", "nosuch")
    assert result.code == 2
    assert "Owners there: test, 1 checkpoint without one" in result.err


def test_prune_that_cannot_delete_a_checkpoint_says_so_and_fails(copy_of, mocker):
    directory = copy_of("weights")
    fail_removing(mocker, "weights-01.weights.h5")
    result = cli("prune", directory, "--keep-last", "1")
    assert result.code == 2
    assert "could not delete checkpoint weights-01.weights.h5" in result.err
    assert "Could not delete 1 (see the warnings above):" in result.out
    assert names(directory) == ["weights-01.weights.h5", "weights-04.weights.h5"]


def test_prune_of_an_owner_no_checkpoint_has_lists_the_owners(copy_of):
    directory = copy_of("weights")
    result = cli("prune", directory, "--keep-last", "1", "--owner", "nosuch")
    assert result.code == 2
    assert "No checkpoint in" in result.err and "has owner 'nosuch'" in result.err
    assert "Owners there: test" in result.err
    assert len(names(directory)) == 4


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1048576", 2**20), ("1.5 kb", 1500)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "2XB", "5k", "MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="Invalid size"):
        parse_size(text)


# ---------------------------------------------------------------------------------------- export


def test_export_model_is_a_file_plain_keras_loads(runs, tmp_path):
    import keras

    out = tmp_path / "best.keras"
    result = cli("export", runs / "models", "best", out)
    assert result.code == 0, result.err
    manager = CheckpointManager(runs / "models")
    record = manager.best("val_loss", "min")
    assert out.read_bytes() == (runs / "models" / record.path).read_bytes()
    x, _ = fit_data()
    np.testing.assert_allclose(
        keras.saving.load_model(out).predict(x, verbose=0),
        manager.load_model(record.name).predict(x, verbose=0),
    )


@pytest.mark.parametrize(
    ("run", "which"), [("models", "latest"), ("weights", "best"), ("backup", "latest")]
)
def test_export_weights_h5_loads_into_a_built_model(runs, tmp_path, run, which):
    out = tmp_path / "w.weights.h5"
    assert cli("export", runs / run, which, out).code == 0
    exported, reference = build_model(seed=1), build_model(seed=2)
    exported.optimizer.build(exported.trainable_variables)
    exported.load_weights(out)
    CheckpointManager(runs / run).load_weights(reference, which)
    for a, b in zip(exported.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(exported.optimizer.iterations) == int(reference.optimizer.iterations) > 0


def test_export_never_overwrites_without_force(runs, tmp_path):
    out = tmp_path / "model.keras"
    out.write_bytes(b"mine")
    result = cli("export", runs / "models", "latest", out)
    assert result.code == 2 and "--force" in result.err
    assert out.read_bytes() == b"mine"
    assert cli("export", runs / "models", "latest", out, "--force").code == 0
    assert out.read_bytes() != b"mine"


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["export", "models", "latest"], "out.keras"),
        (["average", "models", "last:2"], "out.keras"),
        (["plot", "models", "-o"], "out.png"),
    ],
)
def test_every_file_writing_command_refuses_to_overwrite_without_force(
    runs, tmp_path, command, name
):
    out = tmp_path / name
    out.write_bytes(b"my notes")
    verb, directory, *rest = command
    result = cli(verb, runs / directory, *rest, out)
    assert result.code == 2 and "--force" in result.err
    assert out.read_bytes() == b"my notes"
    result = cli(verb, runs / directory, *rest, out, "--force")
    assert result.code == 0, result.err
    assert out.read_bytes() != b"my notes"


@pytest.mark.parametrize("run", ["weights", "backup"])
def test_export_without_architecture_to_keras_explains_what_is_missing(runs, tmp_path, run):
    out = tmp_path / "model.keras"
    result = cli("export", runs / run, "latest", out)
    assert result.code == 2
    assert "architecture" in result.err and ".weights.h5" in result.err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ plot


def test_plot_writes_a_png_of_the_monitored_metric(runs, tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "run.png"
    result = cli("plot", runs / "models", "-o", out)
    assert result.code == 0, result.err
    assert "loss, val_loss" in result.out and "pruned (from the run history)" in result.out
    image = imread(out)
    assert image.shape[:2] == (320, 800)
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05  # not a blank canvas
    assert len(np.unique(rgb.round(2), axis=0)) > 50  # lines, markers, text


def test_plot_marks_pruned_saves_from_the_run_history(copy_of, tmp_path):
    from matplotlib.image import imread

    directory = copy_of("weights")
    manager = CheckpointManager(directory)
    manager.prune(KeepLast(1))
    manager.close()
    out = tmp_path / "run.png"
    result = cli("plot", directory, "-o", out, "--metric", "val_loss", "--x", "step")
    assert result.code == 0, result.err
    assert "1 checkpoint kept, 3 pruned" in result.out
    assert imread(out).shape[:2] == (320, 800)


def test_plot_an_unknown_metric_is_an_error(runs, tmp_path):
    result = cli("plot", runs / "models", "-o", tmp_path / "x.png", "--metric", "val_f1")
    assert result.code == 2 and "val_f1" in result.err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("output", ["", "run", "run.txt"])
def test_plot_needs_an_image_file_name(runs, tmp_path, monkeypatch, output):
    """`-o ""` once wrote `./.png`."""
    monkeypatch.chdir(tmp_path)
    result = cli("plot", runs / "models", "-o", output)
    assert result.code == 2
    assert "argument -o/--output: expected an image file name ending in .png, .svg or .pdf" in (
        result.err
    )
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- fsspec URLs


@pytest.fixture
def s3_run(s3_url):
    """Three ModelCheckpoint saves (keep_last=2) of a real `fit` into an s3:// directory."""
    x, y = fit_data()
    checkpoint = keras_ckpt.ModelCheckpoint(
        f"{s3_url}/model-{{epoch:02d}}.keras", monitor="val_loss", keep_last=2
    )
    build_model().fit(
        x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0, callbacks=[checkpoint]
    )
    return s3_url


def test_list_and_verify_read_an_s3_directory(s3_run):
    listed = cli("list", s3_run)
    assert listed.code == 0, listed.err
    assert "2 checkpoints in s3://" in listed.out and "model-03.keras *" in listed.out
    rows = json.loads(cli("list", s3_run, "--why", "--json").out)["checkpoints"]
    assert [r["name"] for r in rows] == ["model-02.keras", "model-03.keras"]
    verified = cli("verify", s3_run)
    assert verified.code == 0, verified.err
    assert "All 2 checkpoints verified" in verified.out


def test_show_reads_a_checkpoint_in_an_s3_directory(s3_run):
    result = cli("show", s3_run, "latest", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["checkpoint"]["name"] == "model-03.keras"
    assert data["contents"]["architecture"]["class_name"] == "Sequential"


def test_prune_deletes_in_an_s3_directory(s3_run):
    result = cli("prune", s3_run, "--keep-last", "1")
    assert result.code == 0, result.err
    assert "Deleted 1 of 2 checkpoints" in result.out
    assert names(s3_run) == ["model-03.keras"]


def test_an_s3_prefix_without_records_is_no_checkpoint_directory(s3_url):
    import fsspec

    assert cli("list", s3_url).err.strip().endswith(f"No such directory: {s3_url}")
    fs, root = fsspec.core.url_to_fs(s3_url)
    fs.pipe_file(f"{root}/notes.txt", b"not a checkpoint")
    assert "is not a keras-ckpt checkpoint directory" in cli("list", s3_url).err
    assert "is a file, not a directory" in cli("list", f"{s3_url}/notes.txt").err


# ------------------------------------------------------------------- one answer everywhere


@pytest.fixture
def tied(tmp_path):
    """Epochs 11..15 with val_loss tied at the minimum for epochs 13 and 15."""
    directory = tmp_path / "tied"
    with CheckpointManager(directory) as manager:
        for epoch, value in zip(range(11, 16), (0.5, 0.4, 0.2, 0.3, 0.2), strict=True):
            name = f"m-{epoch}.weights.h5"
            with manager.stage() as folder:
                staged = os.path.join(folder, name)
                build_model().save_weights(staged)
                manager.commit(
                    {name: staged}, name=name, kind="weights", epoch=epoch,
                    global_step=10 * epoch, metrics={"loss": value + 0.1, "val_loss": value},
                    owner="mc", owner_state={"monitor": "val_loss", "mode": "min"},
                )  # fmt: skip
    return directory


def test_list_show_best_best_and_plot_agree_on_a_tie(tied, tmp_path, mocker):
    from matplotlib.axes import Axes

    best = CheckpointManager(tied).best()
    assert best.name == "m-15.weights.h5"  # ties go to the newer
    listed = cli("list", tied).out
    assert [line.split()[1] for line in listed.splitlines() if " * " in line] == [best.name]
    shown = json.loads(cli("show", tied, "best", "--json").out)["checkpoint"]["name"]
    assert shown == best.name
    rows = json.loads(cli("list", tied, "--sort", "val_loss", "--json").out)["checkpoints"]
    assert [r["epoch"] for r in rows] == [15, 13, 14, 12, 11]
    spy = mocker.spy(Axes, "plot")
    assert cli("plot", tied, "-o", tmp_path / "tied.png").code == 0
    stars = [c.args[1:3] for c in spy.call_args_list if "*" in c.args[3:4]]
    assert stars == [(15, 0.2)]


def test_one_checkpoint_is_not_called_checkpoints(tied, tmp_path):
    with CheckpointManager(tied) as manager:
        manager.prune(KeepLast(1))
    assert "1 checkpoint in" in cli("list", tied).out
    assert "The checkpoint verified" in cli("verify", tied).out
    pruned = cli("prune", tied, "--keep-last", 1, "--dry-run").out
    assert "Would delete 0 of 1 checkpoint (" in pruned
    plotted = cli("plot", tied, "-o", tmp_path / "one.png").out
    assert ", 1 checkpoint kept, 4 pruned" in plotted
    for text in (cli("list", tied).out, pruned, plotted):
        assert "1 checkpoints" not in text


def test_plot_help_says_pruned_saves_come_from_the_history():
    text = " ".join(cli("plot", "--help").out.split())
    assert "a cross per save retention pruned (from the run history)" in text
    assert "not drawn" not in text


# ---------------------------------------------------------------------------- errors and help


def test_list_of_a_file_says_it_is_a_file(runs):
    path = runs / "weights" / "weights-01.weights.h5"
    result = cli("list", path)
    assert result.code == 2
    assert f"{path} is a file, not a directory" in result.err
    assert "No such directory" not in result.err


@pytest.mark.parametrize(
    ("modules", "args", "extra"),
    [
        (("rich", "rich.console", "rich.table"), ("list", "{dir}"), "keras-ckpt[cli]"),
        (("rich", "rich.console", "rich.table"), ("show", "{dir}", "best"), "keras-ckpt[cli]"),
        (("matplotlib",), ("plot", "{dir}", "-o", "{tmp}/x.png"), "keras-ckpt[plot]"),
    ],
)
def test_a_missing_extra_names_what_to_install(runs, tmp_path, monkeypatch, modules, args, extra):
    for module in modules:  # None in sys.modules makes `import module` raise ImportError
        monkeypatch.setitem(sys.modules, module, None)
    result = cli(*(a.format(dir=runs / "weights", tmp=tmp_path) for a in args))
    assert result.code == 2 and f"pip install '{extra}'" in result.err


def test_version():
    assert cli("--version").out == f"keras-ckpt {keras_ckpt.__version__}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "example:\n  keras-ckpt " + command in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("list", "{tmp}/nope"), "No such directory"),
        (("verify", "{tmp}"), "not a keras-ckpt checkpoint directory"),
        (("show", "{weights}", "weights-99.weights.h5"), "No checkpoint named 'weights-99"),
        (("export", "{weights}", "latest", "{tmp}/out.txt"), "must end in .keras"),
    ],
)
def test_errors_are_one_line_on_stderr(runs, tmp_path, args, message):
    result = cli(*(a.format(tmp=tmp_path, weights=runs / "weights") for a in args))
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("keras-ckpt: error: ") and message in result.err
    assert result.err.count("\n") == 1


# --------------------------------------------------------------- the real entry point, end to end


@pytest.fixture(scope="module")
def entry_point(runs, tmp_path_factory):
    """Each command once through `python -m keras_ckpt.cli`, in parallel subprocesses."""
    out = tmp_path_factory.mktemp("entry")
    damaged = Path(shutil.copytree(runs / "weights", out / "damaged"))
    victim = damaged / "weights-03.weights.h5"
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    models, weights = str(runs / "models"), str(runs / "weights")
    commands = {
        "list": ["list", models, "--why"],
        "show": ["show", weights, "best"],
        "verify": ["verify", str(damaged)],
        "prune": ["prune", weights, "--keep-last", "2", "--dry-run"],
        "export": ["export", models, "best", str(out / "best.keras")],
        "plot": ["plot", models, "-o", str(out / "run.png")],
        "error": ["show", str(out / "missing"), "latest"],
    }
    # What running `list` and `verify` adds to the modules `import keras_ckpt` already loaded.
    imports = (
        "import sys, keras_ckpt; before = set(sys.modules)\n"
        "from keras_ckpt.cli import main\n"
        f"main(['list', {models!r}, '--why']); main(['verify', {models!r}])\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new & {'keras', 'tensorflow', 'matplotlib', 'h5py'}))\n"
    )
    commands["imports"] = ["-c", imports]
    # `show` and `export` read the files (h5py), but never need Keras or its backend.
    commands["show_imports"] = [
        "-c",
        "import sys\n"
        "from keras_ckpt.cli import main\n"
        f"main(['show', {models!r}, 'best'])\n"
        f"main(['export', {models!r}, 'best', {str(out / 'imports.weights.h5')!r}])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow'}))\n",
    ]
    procs = {
        key: subprocess.Popen(
            [sys.executable, *(argv if "imports" in key else ["-m", "keras_ckpt.cli", *argv])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=LIGHT_ENV,
        )
        for key, argv in commands.items()
    }
    results = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[key] = Run(proc.returncode, stdout, stderr)
    return results, out


def test_entry_point_list(entry_point):
    result = entry_point[0]["list"]
    assert result.code == 0, result.err
    assert "kept because" in result.out and "newest" in result.out


def test_entry_point_show(entry_point):
    result = entry_point[0]["show"]
    assert result.code == 0, result.err
    assert "weights only" in result.out and "optimizer state" in result.out


def test_entry_point_verify_exits_1_and_names_the_damaged_file(entry_point):
    result = entry_point[0]["verify"]
    assert result.code == 1
    assert "weights-03.weights.h5: checksum mismatch" in result.out


def test_entry_point_prune_dry_run(entry_point, runs):
    result = entry_point[0]["prune"]
    assert result.code == 0, result.err
    assert "Would delete 2 of 4" in result.out
    assert len(names(runs / "weights")) == 4


def test_entry_point_export_and_plot(entry_point):
    results, out = entry_point
    assert results["export"].code == 0, results["export"].err
    assert (out / "best.keras").stat().st_size > 0
    assert results["plot"].code == 0, results["plot"].err
    assert (out / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_entry_point_error_is_one_line(entry_point):
    result = entry_point[0]["error"]
    assert result.code == 2 and result.out == ""
    assert result.err.splitlines()[-1].startswith("keras-ckpt: error: No such directory")
    assert sum("keras-ckpt" in line for line in result.err.splitlines()) == 1


def test_list_and_verify_import_neither_keras_nor_matplotlib(entry_point):
    result = entry_point[0]["imports"]
    assert result.code == 0, result.err
    assert result.out.strip().splitlines()[-1] == "[]"


def test_show_and_export_import_no_keras(entry_point):
    result = entry_point[0]["show_imports"]
    assert result.code == 0, result.err
    assert "weights" in result.out  # show printed the checkpoint
    assert result.out.strip().splitlines()[-1] == "[]"


def test_a_gs_url_without_gcsfs_names_the_gcs_extra_only():
    result = cli("list", "gs://bucket/runs")
    assert result.code == 2
    assert "keras-ckpt[gcs]" in result.err
    assert "[remote]" not in result.err  # the extra without gcsfs would not help
