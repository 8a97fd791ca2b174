"""A new user's first hour (issue 14): every mistake raises or is said in one line, through `fit`.

Also the callback defects of issue 13 item 6 that a user meets the same way.
"""

from __future__ import annotations

import os
import signal

import keras
import numpy as np
import pytest
from conftest import build_model

import keras_ckpt
from keras_ckpt.callbacks.backup_and_restore import OWNER

FIT = {"batch_size": 16, "verbose": 0}


def fit(model, data, callbacks, epochs=3, **kwargs):
    x, y = data
    return model.fit(x, y, epochs=epochs, callbacks=callbacks, **{**FIT, **kwargs})


def names(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


class SigintAt(keras.callbacks.Callback):
    """Sends this process SIGINT after global step `at` (1-based), once."""

    def __init__(self, at):
        super().__init__()
        self.at, self.steps = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at:
            os.kill(os.getpid(), signal.SIGINT)


# ---------------------------------------------------------------- 1. typos fail loudly


def test_save_best_only_with_a_misspelled_monitor_raises_naming_the_keys(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_acc", save_best_only=True
    )
    with pytest.raises(ValueError, match=r"`val_acc`.*epoch 1.*accuracy, loss, val_accuracy"):
        fit(build_model(), data, [cb], validation_split=0.25)
    assert names(tmp_path) == []


def test_a_monitor_missing_because_validation_did_not_run_is_not_an_error(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), monitor="val_accuracy", save_best_only=True
    )
    with pytest.warns(UserWarning, match="validation did not run this epoch"):
        fit(build_model(), data, [cb], epochs=2, validation_split=0.25, validation_freq=2)
    assert names(tmp_path) == ["m-2.keras"]


def test_val_monitor_with_integer_save_freq_and_keep_best_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"keep_best=2.*save_freq=5.*monitor='loss'"):
        keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), save_freq=5, keep_best=2)


def test_a_val_field_in_the_name_with_step_saves_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`filepath`. \{val_accuracy\} cannot be filled"):
        keras_ckpt.ModelCheckpoint(
            str(tmp_path / "m-{epoch}-{val_accuracy:.2f}.keras"), save_freq=50
        )


def test_two_callbacks_one_template_different_monitors_in_one_fit_are_refused(tmp_path, data):
    path = str(tmp_path / "m-{epoch}.keras")
    a = keras_ckpt.ModelCheckpoint(path, monitor="val_loss", keep_best=1)
    b = keras_ckpt.ModelCheckpoint(path, monitor="val_accuracy", keep_best=1)
    with pytest.raises(
        ValueError,
        match=r"this fit write .*m-\{epoch\}.keras, one monitoring `val_\w+` and one `val_\w+`",
    ):
        fit(build_model(), data, [a, b], validation_split=0.25)


def test_a_different_monitor_against_the_folders_records_is_refused(tmp_path, data):
    path = str(tmp_path / "m-{epoch}.keras")
    fit(
        build_model(),
        data,
        [keras_ckpt.ModelCheckpoint(path, keep_best=1)],
        epochs=1,
        validation_split=0.25,
    )
    later = keras_ckpt.ModelCheckpoint(path, monitor="val_accuracy", keep_best=1)
    with pytest.raises(ValueError, match=r"monitored by `val_loss`.*monitors\s+`val_accuracy`"):
        fit(build_model(), data, [later], epochs=1, validation_split=0.25)


# ---------------------------------------------------------------- 2. interrupts said out loud


def test_sigint_raises_after_the_backup_and_says_where_it_went(tmp_path, data, capsys):
    backup = keras_ckpt.BackupAndRestore(tmp_path / "bk")
    model = build_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, data, [SigintAt(6), backup])
    out = capsys.readouterr().out
    assert (
        f"BackupAndRestore: SIGINT at step 2 of epoch 2 (global step 6); backed up to "
        f"{tmp_path / 'bk'}/backup-000000006. Run the same script again to resume there."
    ) in out
    assert model.history.epoch == [0]  # the cut-short epoch reached no on_epoch_end
    assert backup.interrupted == signal.SIGINT

    resumed = keras_ckpt.BackupAndRestore(tmp_path / "bk")
    history = fit(model, data, [resumed])
    out = capsys.readouterr().out
    assert (
        f"BackupAndRestore: resuming from {tmp_path / 'bk'}/backup-000000006 at step 2 of "
        "epoch 2 (global step 6)."
    ) in out
    assert history.epoch == [1, 2]


def test_raise_on_interrupt_false_returns_without_the_cut_epoch_in_history(tmp_path, data):
    backup = keras_ckpt.BackupAndRestore(tmp_path, raise_on_interrupt=False)
    history = fit(build_model(), data, [SigintAt(6), backup])
    assert backup.interrupted == signal.SIGINT
    assert history.epoch == [0] and len(history.history["loss"]) == 1
    assert keras_ckpt.CheckpointManager(tmp_path).latest().global_step == 6


def test_after_a_signal_a_later_fit_with_only_model_checkpoint_saves(tmp_path, data):
    model = build_model()
    backup = keras_ckpt.BackupAndRestore(tmp_path / "bk", raise_on_interrupt=False)
    fit(model, data, [SigintAt(2), backup])
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"))
    fit(model, data, [cb], epochs=2)
    assert names(tmp_path) == ["bk", "m-1.keras", "m-2.keras"]


# ---------------------------------------------------------------- 3. runs never mix


def test_a_fresh_run_leaves_the_earlier_runs_files_alone_and_says_so(tmp_path, data, capsys):
    path = str(tmp_path / "run{epoch:02d}-{val_loss:.3f}.keras")
    first = keras_ckpt.ModelCheckpoint(path, keep_best=1, keep_last=1)
    fit(build_model(seed=1), data, [first], epochs=4, validation_split=0.25)
    earlier = names(tmp_path)
    assert len(earlier) <= 2
    capsys.readouterr()

    again = keras_ckpt.ModelCheckpoint(path, keep_best=1, keep_last=1, verbose=1)
    fit(build_model(seed=2), data, [again], epochs=4, validation_split=0.25)
    out = capsys.readouterr().out
    assert (
        f"ModelCheckpoint: {tmp_path} holds {len(earlier)} checkpoint"
        f"{'s' if len(earlier) > 1 else ''} of an earlier run"
    ) in out
    assert set(earlier) <= set(names(tmp_path))  # not pruned by the new run
    mine = [n for n in names(tmp_path) if n not in earlier]
    assert 1 <= len(mine) <= 2  # the new run pruned its own
    runs = {
        r.owner_state["run"] for r in keras_ckpt.CheckpointManager(tmp_path).checkpoints(run="all")
    }
    assert len(runs) == 2


def test_save_best_only_first_message_says_first_value(tmp_path, data, capsys):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), save_best_only=True, verbose=1
    )
    fit(build_model(), data, [cb], epochs=1, validation_split=0.25)
    out = capsys.readouterr().out
    assert "Epoch 1: val_loss is " in out and "(first value), saving model to" in out
    assert "None" not in out


def test_fixed_best_path_of_an_earlier_run_keeps_its_best_and_says_where_from(
    tmp_path, data, capsys
):
    path = str(tmp_path / "best.keras")
    first = keras_ckpt.ModelCheckpoint(path, save_best_only=True)
    fit(build_model(), data, [first], epochs=3, validation_split=0.25)
    best = first.best
    capsys.readouterr()
    again = keras_ckpt.ModelCheckpoint(path, save_best_only=True, verbose=1)
    fit(build_model(seed=3), data, [again], epochs=1, validation_split=0.25)
    out = capsys.readouterr().out
    assert f"holds the best `val_loss` of an earlier run ({best:.5f}, epoch" in out
    if again.best == best:  # did not beat it: the message names where the number came from
        assert f"did not improve from {best:.5f} (best.keras of an earlier run" in out


def test_initial_epoch_past_the_records_continues_the_run(tmp_path, data, capsys):
    path = str(tmp_path / "m-{epoch}.keras")
    model = build_model()
    first = keras_ckpt.ModelCheckpoint(path, keep_best=1, keep_last=1)
    fit(model, data, [first], epochs=3, validation_split=0.25)
    capsys.readouterr()
    later = keras_ckpt.ModelCheckpoint(path, keep_best=1, keep_last=1)
    fit(model, data, [later], epochs=6, initial_epoch=3, validation_split=0.25)
    assert "earlier run" not in capsys.readouterr().out
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert len(records) <= 2  # one ranking across both fits
    assert len({r.owner_state["run"] for r in records}) == 1


# ---------------------------------------------------------------- 5. global_step


def test_global_step_comes_from_the_optimizer(tmp_path, data):
    model = build_model()
    fit(model, data, [], epochs=6)  # 4 steps per epoch: the optimizer is at 24
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"))
    fit(model, data, [cb], epochs=7, initial_epoch=6)
    [record] = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert record.global_step == int(np.asarray(model.optimizer.iterations)) == 28


# ---------------------------------------------------------------- 8. leftovers


def test_completed_fit_with_delete_checkpoint_removes_backup_dir(tmp_path, data):
    backup = keras_ckpt.BackupAndRestore(tmp_path / "bk", save_freq=2)
    fit(build_model(), data, [backup])
    assert not (tmp_path / "bk").exists()


def test_backup_dir_with_a_foreign_file_is_kept(tmp_path, data):
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "notes.txt").write_text("mine")
    fit(build_model(), data, [keras_ckpt.BackupAndRestore(tmp_path / "bk", save_freq=2)])
    assert sorted(os.listdir(tmp_path / "bk")) == [".keras_ckpt", "notes.txt"]
    assert keras_ckpt.CheckpointManager(tmp_path / "bk").checkpoints(OWNER) == []


# ---------------------------------------------------------------- issue 13 item 6


def test_mode_auto_is_settled_at_the_first_save_for_a_compiled_metric(tmp_path, data):
    x, y = data
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile("adam", "mse", metrics=["mae"])
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_mae", save_best_only=True
    )
    model.fit(x, y.astype("float32"), epochs=2, validation_split=0.25, callbacks=[cb], **FIT)
    assert names(tmp_path) == ["best.keras"]
    assert keras_ckpt.CheckpointManager(tmp_path).latest().owner_state["mode"] == "min"


def test_save_on_train_end_with_a_batch_template(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}-{batch}.keras"), save_freq=3, save_on_train_end=True
    )
    fit(build_model(), data, [cb], epochs=2)  # 8 steps: saves at 3 and 6, then the end
    assert names(tmp_path) == ["m-1-3.keras", "m-2-2.keras", "m-2-4.keras"]


@pytest.mark.parametrize(
    ("filepath", "expected"),
    [
        ("m-{epoch:zz}.keras", "whose fields format"),
        ("m-\0-{epoch}.keras", "without NUL bytes"),
        (".hidden-{epoch}.keras", "does not start with '.'"),
    ],
)
def test_filepath_mistakes_fail_at_construction_naming_filepath(tmp_path, filepath, expected):
    with pytest.raises(ValueError, match=rf"argument `filepath`.*{expected}"):
        keras_ckpt.ModelCheckpoint(str(tmp_path / filepath))


@pytest.mark.parametrize("verbose", [1.0, True, 3, -1, "1"])
def test_verbose_takes_0_1_or_2(tmp_path, verbose):
    with pytest.raises(ValueError, match=r"Expected 0 \(silent\), 1 or 2"):
        keras_ckpt.ModelCheckpoint(str(tmp_path / "m.keras"), verbose=verbose)
    keras_ckpt.ModelCheckpoint(str(tmp_path / "m.keras"), verbose=2)
