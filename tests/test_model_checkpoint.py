"""keras_ckpt.ModelCheckpoint in real `fit` loops on tiny models."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
from conftest import build_model, fail_removing, h5_datasets

import keras_ckpt
from keras_ckpt.policies import KeepBest, KeepLast
from keras_ckpt.training.fit_state import compiled_direction

FIT = {"batch_size": 16, "verbose": 0}


def names(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def fit(model, data, callbacks, epochs=3, **kwargs):
    x, y = data
    return model.fit(x, y, epochs=epochs, callbacks=callbacks, **{**FIT, **kwargs})


# ---------------------------------------------------------------- Keras's meaning


@pytest.mark.parametrize(
    "template, kwargs",
    [
        ("{epoch:02d}-{val_loss:.4f}.keras", {}),
        ("w-{epoch}.weights.h5", {"save_weights_only": True}),
        ("w-{epoch}-{batch}.weights.h5", {"save_weights_only": True, "save_freq": 3}),
        ("m-{epoch}-{loss:.3f}.keras", {"save_freq": 2}),
    ],
)
def test_same_training_writes_the_same_file_names_as_keras(tmp_path, data, template, kwargs):
    ours = keras_ckpt.ModelCheckpoint(str(tmp_path / "ours" / template), **kwargs)
    theirs = keras.callbacks.ModelCheckpoint(str(tmp_path / "keras" / template), **kwargs)
    fit(build_model(), data, [ours, theirs], validation_split=0.25)
    assert names(tmp_path / "ours") == names(tmp_path / "keras")
    assert len(names(tmp_path / "ours")) >= 3


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="torch backend: Keras refuses steps_per_execution > 1 with PyTorch",
)
def test_integer_save_freq_counts_global_steps_with_steps_per_execution(tmp_path, data):
    template = "s-{epoch}-{batch}.weights.h5"
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", steps_per_execution=2)
    ours = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "ours" / template), save_weights_only=True, save_freq=3
    )
    theirs = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "keras" / template), save_weights_only=True, save_freq=3
    )
    fit(model, data, [ours, theirs], epochs=2)
    assert names(tmp_path / "ours") == names(tmp_path / "keras")
    steps = [r.global_step for r in keras_ckpt.CheckpointManager(tmp_path / "ours").checkpoints()]
    if tuple(int(p) for p in keras.__version__.split(".")[:2]) >= (3, 15):
        # Batch hooks run once per execution of 2 steps, 4 steps per epoch: due at 4 and 8.
        # (Keras 3.10 numbers the batches of a multi-step execution differently; there the file
        # names above, equal to Keras's own, are what the test holds us to.)
        assert steps == [4, 8]


def test_full_model_file_loads_in_plain_keras_with_optimizer_state(tmp_path, data):
    model = build_model()
    fit(model, data, [keras_ckpt.ModelCheckpoint(str(tmp_path / "m.keras"))])
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 12
    assert len(model.get_weights()) == 4  # two Dense layers: a comparison of nothing fails
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_file_loads_in_plain_keras(tmp_path, data):
    model = build_model()
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m.weights.h5"), save_weights_only=True)
    fit(model, data, [cb])
    fresh = build_model(seed=1)
    fresh.load_weights(tmp_path / "m.weights.h5")
    assert len(model.get_weights()) == 4  # two Dense layers: a comparison of nothing fails
    for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_verbose_prints_keras_messages(tmp_path, data, capsys):
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "b.keras"), save_best_only=True, verbose=1)
    fit(build_model(), data, [cb], epochs=1, validation_split=0.25)
    out = capsys.readouterr().out
    assert "Epoch 1: val_loss is " in out and "(first value), saving model to" in out
    assert f"saving model to {tmp_path}/b.keras" in out
    assert f"Epoch 1: finished saving model to {tmp_path}/b.keras" in out


def test_records_say_where_in_training_each_save_was_taken(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}-{batch}.keras"), save_freq=3)
    fit(build_model(), data, [cb], epochs=2)
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert [(r.epoch, r.step, r.global_step) for r in records] == [(0, 3, 3), (1, 2, 6)]
    assert records[0].name == "m-1-3.keras" and records[0].kind == "model"
    assert set(records[0].metrics) == {"loss", "accuracy"}


# ---------------------------------------------------------------- Keras's faults fixed


def test_save_best_only_works_with_integer_save_freq(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b-{epoch}-{batch}.keras"), monitor="loss", save_best_only=True, save_freq=2
    )
    fit(build_model(), data, [cb], epochs=2)
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    losses = [r.metrics["loss"] for r in records]
    assert len(records) >= 2
    assert losses == sorted(losses, reverse=True)  # each save improved on the one before


def test_auto_mode_takes_the_compiled_metric_direction(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b.keras"), monitor="val_accuracy", save_best_only=True
    )
    fit(build_model(), data, [cb], epochs=2, validation_split=0.25)
    record = keras_ckpt.CheckpointManager(tmp_path).latest()
    assert record.owner_state["mode"] == "max"


def test_private_metric_direction_is_still_where_keras_keeps_it(data):
    model = build_model()
    fit(model, data, [], epochs=1)
    assert compiled_direction(model, "accuracy") == "up"


def test_auto_mode_that_cannot_be_inferred_says_to_set_mode(tmp_path, data):
    def custom(y_true, y_pred):
        return keras.ops.mean(y_pred)

    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=[custom])
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b.keras"), monitor="custom", save_best_only=True
    )
    with pytest.raises(ValueError, match='Pass mode="min" or mode="max"'):
        fit(model, data, [cb], epochs=1)
    assert names(tmp_path) == []


def test_missing_monitor_skips_the_save_with_a_warning_listing_the_keys(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "b.keras"), save_best_only=True)
    with pytest.warns(UserWarning, match=r"`val_loss`, which is not in the logs.*keys: accuracy"):
        fit(build_model(), data, [cb], epochs=1)  # no validation data: no val_loss
    assert names(tmp_path) == []


def test_min_delta_requires_a_large_enough_improvement(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b-{epoch}.keras"), monitor="loss", save_best_only=True, min_delta=10.0
    )
    fit(build_model(), data, [cb], epochs=3)
    assert names(tmp_path) == ["b-1.keras"]  # only the first value beats "no best yet"


def test_initial_value_threshold_blocks_saves_that_do_not_beat_it(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b.keras"), monitor="loss", save_best_only=True, initial_value_threshold=0.0
    )
    fit(build_model(), data, [cb], epochs=2)
    assert names(tmp_path) == []


def test_template_key_missing_at_save_time_lists_the_keys_that_exist(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{val_los:.2f}.keras"))
    with pytest.raises(KeyError, match="no value for 'val_los'.*val_loss"):
        fit(build_model(), data, [cb], epochs=1, validation_split=0.25)


# ---------------------------------------------------------------- strict arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"save_freq": 0},
            r'argument `save_freq`. Expected "epoch" or a positive int. Received: save_freq=0',
        ),
        ({"save_freq": -5}, r"Received: save_freq=-5"),
        ({"save_freq": True}, r"Received: save_freq=True"),
        ({"save_freq": "batch"}, r"Received: save_freq='batch'"),
        ({"save_freq": 2.5}, r"Received: save_freq=2.5"),
        (
            {"mode": "bogus"},
            r'argument `mode`. Expected "auto" or "min" or "max". Received: mode=\'bogus\'',
        ),
        ({"keep_last": 0}, r"argument `keep_last`. Expected a positive int. Received: keep_last=0"),
        ({"keep_best": True}, r"Received: keep_best=True"),
        ({"keep_every_n_epochs": -1}, r"Received: keep_every_n_epochs=-1"),
        ({"max_total_bytes": 1.5}, r"Received: max_total_bytes=1.5"),
        ({"every_n_epochs": 0}, r"Received: every_n_epochs=0"),
        ({"every_seconds": 0}, r"argument `every_seconds`. Expected a positive number"),
        ({"every_seconds": -1.0}, r"Received: every_seconds=-1.0"),
        ({"min_delta": -0.1}, r"argument `min_delta`"),
        ({"verbose": 3}, r"argument `verbose`"),
        ({"save_best_only": "yes"}, r"argument `save_best_only`. Expected True or False"),
        ({"retention": "last"}, r"argument `retention`"),
        ({"retention": KeepLast(1), "keep_best": 2}, r"either `retention` or the `keep_\*`"),
        ({"save_freq": None}, r"save_freq=None` needs `every_n_epochs` or `every_seconds`"),
        ({"save_best_only": True, "save_on_train_end": True}, r"replace the best model"),
        ({"save_best_only": True, "save_freq": 10}, r"validation metrics only exist at epoch end"),
        ({"initial_value_threshold": "low"}, r"argument `initial_value_threshold`"),
    ],
)
def test_rejected_arguments_name_the_argument_and_the_value(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_ckpt.ModelCheckpoint(str(tmp_path / "m.keras"), **kwargs)


@pytest.mark.parametrize(
    "filepath, kwargs, match",
    [
        ("m.weights.h5", {}, r"ending in `.keras`"),
        ("m.keras", {"save_weights_only": True}, r"ending in `.weights.h5`"),
        ("m.txt", {}, r"ending in `.keras`"),
        ("{epoch}/m.keras", {}, r"fields in the file name only, not in its folder"),
        ("m-{}.keras", {}, r"positional field"),
        ("m-{epoch.keras", {}, r"str.format template"),
        ("m-{batch}.keras", {}, r"uses \{batch\} but saves happen only at epoch ends"),
        ("", {}, r"argument `filepath`"),
        ("m-{epoch:>99999}.keras", {}, r"at most 255 bytes once formatted.*it is 100007 bytes"),
        ("notes.txt/m-{epoch}.keras", {}, r"Expected a path in a folder \(.*notes.txt is a file\)"),
        ("notes.txt/runs/m.keras", {}, r"Expected a path in a folder \(.*notes.txt is a file\)"),
    ],
)
def test_rejected_filepaths(tmp_path, filepath, kwargs, match):
    (tmp_path / "notes.txt").write_text("mine")
    path = str(tmp_path / filepath) if filepath else filepath
    with pytest.raises(ValueError, match=match):
        keras_ckpt.ModelCheckpoint(path, **kwargs)


def test_the_longest_file_name_a_template_may_format_to_is_accepted(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch:>240}.weights.h5"), save_weights_only=True
    )
    fit(build_model(), data, [cb], epochs=1)
    name = f"m-{1:>240}.weights.h5"
    assert len(name) == 253 and names(tmp_path) == [name]  # saved under its 253-byte name


def test_a_failed_retention_delete_never_stops_training(tmp_path, data, mocker):
    """An old checkpoint that cannot be deleted (`chattr +i`, say) costs a warning, not the run:
    the new save succeeded, and the next save's pruning deletes the old one."""
    fail_removing(mocker, "m-1.keras")
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), keep_last=1)
    with pytest.warns(UserWarning, match=r"Pruning .*: could not delete checkpoint m-1.keras"):
        history = fit(build_model(), data, [cb], epochs=3)
    assert len(history.history["loss"]) == 3
    assert names(tmp_path) == ["m-3.keras"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"save_freq": 1},
        {"save_freq": "epoch", "every_n_epochs": 1},
        {"save_freq": None, "every_seconds": 0.001},
        {"keep_last": 1, "keep_best": 1, "keep_every_n_epochs": 1, "max_total_bytes": 1},
        {"mode": "max", "min_delta": 0, "verbose": 1},
    ],
)
def test_nearest_valid_values_are_accepted(tmp_path, kwargs):
    assert keras_ckpt.ModelCheckpoint(str(tmp_path / "m.keras"), **kwargs).directory == str(
        tmp_path
    )


# ---------------------------------------------------------------- additions


def test_every_n_epochs_replaces_the_every_epoch_trigger(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), every_n_epochs=2)
    fit(build_model(), data, [cb], epochs=5)
    assert names(tmp_path) == ["m-2.keras", "m-4.keras"]


def test_every_n_epochs_and_integer_save_freq_combine_by_or(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}-{batch}.keras"), save_freq=6, every_n_epochs=2
    )
    fit(build_model(), data, [cb], epochs=2)  # 4 steps an epoch: step 6, then epoch 2's end
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert [(r.epoch, r.step) for r in records] == [(1, 2), (2, 0)]


def test_every_seconds_saves_on_the_wall_clock(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}-{batch}.keras"), save_freq=None, every_seconds=1e-9
    )
    fit(build_model(), data, [cb], epochs=1)
    assert len(names(tmp_path)) == 4  # always due: a save at every batch end


def test_save_on_train_end_saves_the_final_state_once(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), every_n_epochs=2, save_on_train_end=True
    )
    fit(build_model(), data, [cb], epochs=3)
    assert names(tmp_path) == ["m-2.keras", "m-3.keras"]


# ---------------------------------------------------------------- retention


def test_keep_last_over_a_long_run_keeps_exactly_n(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch:02d}.weights.h5"), save_weights_only=True, keep_last=3
    )
    fit(build_model(), data, [cb], epochs=20)
    assert names(tmp_path) == ["m-18.weights.h5", "m-19.weights.h5", "m-20.weights.h5"]


def test_keep_best_and_keep_last_keep_the_union(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch:02d}.weights.h5"),
        save_weights_only=True,
        monitor="val_loss",
        keep_best=2,
        keep_last=1,
    )
    fit(build_model(), data, [cb], epochs=8, validation_split=0.25)
    manager = keras_ckpt.CheckpointManager(tmp_path)
    records = manager.checkpoints()
    best_two = sorted(records, key=lambda r: r.metrics["val_loss"])[:2]
    assert {r.name for r in records} >= {r.name for r in best_two}
    assert records[-1].epoch == 8
    assert len(records) <= 3


def test_keep_every_n_epochs_keeps_the_milestones(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.weights.h5"), save_weights_only=True, keep_every_n_epochs=3
    )
    fit(build_model(), data, [cb], epochs=7)
    assert names(tmp_path) == ["m-3.weights.h5", "m-6.weights.h5", "m-7.weights.h5"]


def test_max_total_bytes_keeps_the_newest_that_fit(tmp_path, data):
    template = str(tmp_path / "m-{epoch}.weights.h5")
    fit(
        build_model(),
        data,
        [keras_ckpt.ModelCheckpoint(template, save_weights_only=True)],
        epochs=1,
    )
    size = keras_ckpt.CheckpointManager(tmp_path).latest().size
    cb = keras_ckpt.ModelCheckpoint(
        template, save_weights_only=True, max_total_bytes=2 * size + size // 2
    )
    fit(build_model(), data, [cb], epochs=5)
    assert names(tmp_path) == ["m-4.weights.h5", "m-5.weights.h5"]


def test_retention_policy_object(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), retention=KeepBest(1, "loss") | KeepLast(1)
    )
    fit(build_model(), data, [cb], epochs=4)
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert [r.epoch for r in records] == [4]  # loss falls every epoch: the best is the last


def test_retention_never_touches_foreign_files_or_other_callbacks(tmp_path, data):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "m-1.keras.bak").write_bytes(b"also mine")
    last = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), keep_last=1)
    best = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="loss", save_best_only=True
    )
    fit(build_model(), data, [last, best], epochs=4)
    assert names(tmp_path) == ["best.keras", "m-1.keras.bak", "m-4.keras", "notes.txt"]


# ---------------------------------------------------------------- restarts


def test_restarted_save_best_only_never_overwrites_a_better_model(tmp_path, data):
    path = str(tmp_path / "best.keras")
    fit(
        build_model(),
        data,
        [keras_ckpt.ModelCheckpoint(path, monitor="loss", save_best_only=True)],
        epochs=30,
    )
    before = (tmp_path / "best.keras").read_bytes()
    best = keras_ckpt.CheckpointManager(tmp_path).latest().owner_state["best"]
    restarted = keras_ckpt.ModelCheckpoint(path, monitor="loss", save_best_only=True)
    fit(build_model(seed=1), data, [restarted], epochs=1)  # a fresh model: worse loss
    assert restarted.best == best
    assert (tmp_path / "best.keras").read_bytes() == before


def test_keras_forgets_its_best_after_a_restart(tmp_path, data):
    """The fault we fix, shown on Keras itself (issue keras-team/keras#17012)."""
    path = str(tmp_path / "best.keras")
    fit(
        build_model(),
        data,
        [keras.callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True)],
        epochs=30,
    )
    before = (tmp_path / "best.keras").read_bytes()
    fit(
        build_model(seed=1),
        data,
        [keras.callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True)],
        epochs=1,
    )
    assert (tmp_path / "best.keras").read_bytes() != before


def test_restarted_retention_counts_the_files_written_before(tmp_path, data):
    template = str(tmp_path / "m-{epoch}-{loss:.5f}.weights.h5")
    for _ in range(2):
        cb = keras_ckpt.ModelCheckpoint(template, save_weights_only=True, keep_last=2)
        fit(build_model(), data, [cb], epochs=3)
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert len(records) == 2 and len(names(tmp_path)) == 2


def test_fixed_path_written_by_keras_is_moved_aside_with_a_warning(tmp_path, data):
    keras_cb = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"))
    fit(build_model(), data, [keras_cb], epochs=1)
    keras_bytes = (tmp_path / "best.keras").read_bytes()
    (tmp_path / "best.pre-keras-ckpt.keras").write_bytes(b"an earlier move, kept too")
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "best.keras"))
    with pytest.warns(UserWarning, match=r"best\.keras was not written by keras-ckpt.*kept as "):
        fit(build_model(), data, [cb], epochs=1)
    moved = tmp_path / "best.pre-keras-ckpt-2.keras"
    assert moved.read_bytes() == keras_bytes  # never overwritten, never deleted
    assert (tmp_path / "best.pre-keras-ckpt.keras").read_bytes() == b"an earlier move, kept too"
    assert [r.name for r in keras_ckpt.CheckpointManager(tmp_path).checkpoints()] == ["best.keras"]
    keras.saving.load_model(moved)


def test_replacing_a_fixed_path_updates_its_record(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "last.keras"))
    fit(build_model(), data, [cb], epochs=3)
    manager = keras_ckpt.CheckpointManager(tmp_path)
    [record] = manager.checkpoints()
    assert record.epoch == 3
    assert manager.verify()[0].ok


# ---------------------------------------------------------------- background saving


def test_async_saves_hold_the_same_weights_as_sync_saves(tmp_path, data):
    template = "w-{epoch}-{batch}.weights.h5"
    callbacks = [
        keras_ckpt.ModelCheckpoint(
            str(tmp_path / mode / template),
            save_weights_only=True,
            save_freq=2,
            async_save=mode == "async",
        )
        for mode in ("async", "sync")
    ]
    fit(build_model(dropout=0.5), data, callbacks, epochs=2)
    assert (
        names(tmp_path / "async") == names(tmp_path / "sync") and len(names(tmp_path / "sync")) == 4
    )
    for name in names(tmp_path / "sync"):
        ours = h5_datasets(tmp_path / "async" / name)
        theirs = h5_datasets(tmp_path / "sync" / name)
        assert sorted(ours) == sorted(theirs)
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])


@pytest.mark.parametrize("async_save", [True, False])
@pytest.mark.parametrize(
    "errno_, message", [(28, "No space left on device"), (13, "Permission denied")]
)
def test_a_failed_save_raises_in_fit_and_commits_nothing(
    tmp_path, data, mocker, async_save, errno_, message
):
    from keras_ckpt.store.local import LocalStorage

    real_publish = LocalStorage.publish
    calls = []

    def publish(self, staged):
        calls.append(staged)
        if len(calls) == 2:
            raise OSError(errno_, message)
        return real_publish(self, staged)

    mocker.patch.object(LocalStorage, "publish", publish)
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), async_save=async_save)
    with pytest.raises(OSError, match=message):
        fit(build_model(), data, [cb], epochs=3)
    manager = keras_ckpt.CheckpointManager(tmp_path)
    assert [r.name for r in manager.checkpoints()] == ["m-1.keras"]
    assert all(r.ok for r in manager.verify())


def test_fit_returns_only_after_the_last_async_save_is_committed(tmp_path, data, mocker):
    from keras_ckpt.store.local import LocalStorage

    real_publish = LocalStorage.publish

    def slow_publish(self, staged):
        time.sleep(0.5)
        return real_publish(self, staged)

    mocker.patch.object(LocalStorage, "publish", slow_publish)
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), async_save=True)
    fit(build_model(), data, [cb], epochs=3)
    records = keras_ckpt.CheckpointManager(tmp_path).checkpoints()
    assert [r.name for r in records] == ["m-1.keras", "m-2.keras", "m-3.keras"]
    assert cb._pipeline.stats.saves == 3


def test_wait_until_finished_commits_what_is_in_flight(tmp_path, data):
    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            cb.wait_until_finished()
            committed.append(len(keras_ckpt.CheckpointManager(tmp_path).checkpoints()))

    committed = []
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), async_save=True)
    fit(build_model(), data, [cb, Probe()], epochs=3)
    assert committed == [1, 2, 3]


# ---------------------------------------------------------------- crash safety


def test_sigkill_during_saves_never_leaves_an_unloadable_committed_file(tmp_path):
    """Kill training processes at chosen moments while they save every step, again and again.

    Two directories, each written by three processes in turn, inline and in the background
    alternately, each killed a chosen time after a chosen step (the child prints each step, so a
    loaded machine delays the kill with the saves); the two directories' processes run side by
    side. Every restart recovers what the killed one left, and every committed file verifies and
    loads.
    """
    child = os.path.join(os.path.dirname(__file__), "mc_crash_child.py")
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    directories = [tmp_path / "a", tmp_path / "b"]
    # (mode, step, seconds after that step's end to the kill) for each directory, round after
    # round: 0 to 0.6 s apart, so that the kills fall in different phases of a save.
    rounds = [
        [("sync", 2, 0.0), ("async", 3, 0.1)],
        [("async", 5, 0.3), ("sync", 4, 0.45)],
        [("sync", 6, 0.6), ("async", 7, 0.2)],
    ]
    seen_steps = set()

    def run_and_kill(directory, mode, step, seconds):
        proc = subprocess.Popen(
            [sys.executable, child, str(directory), mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            # A restart prints a line about the earlier run's checkpoints first.
            ready = any(line.strip() == f"step {step}".encode() for line in proc.stdout)
            time.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        return ready

    with ThreadPoolExecutor(len(directories)) as pool:
        for kills in rounds:
            modes, steps, seconds = zip(*kills, strict=True)
            assert all(pool.map(run_and_kill, directories, modes, steps, seconds))
            for directory in directories:
                manager = keras_ckpt.CheckpointManager(directory)
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # no unreadable record either
                    records = manager.checkpoints()
                for result in manager.verify():
                    assert result.ok, result.problems
                for record in records:
                    keras.saving.load_model(directory / record.path)  # plain Keras loads each
                seen_steps.update(r.global_step for r in records)
    for directory in directories:
        assert (directory / "last.keras").exists()
    assert len(seen_steps) > 3  # the kills really fell among saves


def test_checkpoint_state_round_trip_for_resume(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b-{epoch}-{batch}.keras"), monitor="loss", save_best_only=True, save_freq=3
    )
    fit(build_model(), data, [cb], epochs=2)
    state = cb.get_checkpoint_state()
    assert state["progress"] == {"epoch": 2, "step": 0, "global_step": 8}
    restored = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b-{epoch}-{batch}.keras"), monitor="loss", save_best_only=True, save_freq=3
    )
    restored.set_checkpoint_state(json.loads(json.dumps(state)))  # survives JSON
    assert restored.get_checkpoint_state() == state
    assert restored.best == cb.best


def test_a_non_finite_monitor_value_is_never_an_improvement(tmp_path, data):
    class Diverge(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["loss"] = float("nan")

    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "b.keras"), monitor="loss", save_best_only=True)
    with pytest.warns(UserWarning, match="`loss` is nan"):
        fit(build_model(), data, [Diverge(), cb], epochs=2)
    assert names(tmp_path) == []


@pytest.mark.parametrize("threshold", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_initial_value_threshold_is_refused(tmp_path, threshold):
    with pytest.raises(ValueError, match="argument `initial_value_threshold`. Expected a finite"):
        keras_ckpt.ModelCheckpoint(str(tmp_path / "b.keras"), initial_value_threshold=threshold)


def test_a_numpy_initial_value_threshold_is_accepted_as_in_keras(tmp_path):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "b.keras"), initial_value_threshold=np.float32(0.5)
    )
    assert cb.best == 0.5


def test_keep_best_with_a_misspelled_metric_raises_naming_the_keys(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), monitor="val_acc", mode="max", keep_best=1
    )
    with pytest.raises(ValueError, match=r"`keep_best` monitors `val_acc`.*val_accuracy, val_loss"):
        fit(build_model(), data, [cb], epochs=3, validation_split=0.25)
    assert names(tmp_path) == []  # raised at the first epoch end, before any save


@pytest.mark.parametrize(
    "keep", [{"max_total_bytes": 1}, {"keep_last": 1}], ids=["max_total_bytes", "keep_last"]
)
def test_the_other_keep_options_apply_while_the_keep_best_metric_is_missing(tmp_path, data, keep):
    """No validation data: `val_loss` never appears. keep_best waits; the byte budget does not."""
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), monitor="val_loss", keep_best=2, **keep
    )
    with pytest.warns(UserWarning, match="until one has it, only the other keep options prune"):
        fit(build_model(), data, [cb], epochs=3)
    assert names(tmp_path) == ["m-3.keras"]


def test_keep_best_waits_for_its_metric_from_the_first_epoch_that_has_it(tmp_path, data):
    """Validation from epoch 3 on (`validation_freq`): epochs 1-2 go by keep_last, 3+ are ranked."""
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), monitor="val_loss", keep_best=5, keep_last=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(build_model(), data, [cb], epochs=4, validation_split=0.25, validation_freq=[3, 4])
    assert names(tmp_path) == ["m-3.keras", "m-4.keras"]


def test_retention_policy_object_is_recorded_for_the_cli(tmp_path, data):
    cb = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), retention=KeepBest(1, "loss") | KeepLast(1)
    )
    fit(build_model(), data, [cb], epochs=1)
    recorded = keras_ckpt.CheckpointManager(tmp_path).latest().owner_state["retention"]
    assert keras_ckpt.policies.from_json(recorded) == KeepBest(1, "loss") | KeepLast(1)


# ---------------------------------------------------------------- what it says, and when


def test_a_monitor_no_logged_metric_has_raises_even_when_nothing_ranks_by_it(tmp_path, data):
    """Keras 3.15 raises at the first epoch end when it cannot tell the direction of `monitor`
    (`val_los`: no compiled metric `los`), whatever the callback does with it; so do we, and a
    typo is named with the keys that exist."""
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), monitor="val_los")
    with pytest.raises(
        ValueError,
        match=r"`monitor` names `val_los`, which is not in the logs at the end of epoch 1\. "
        r"Keys that exist: accuracy, loss, val_accuracy, val_loss",
    ):
        fit(build_model(), data, [cb], epochs=2, validation_split=0.25)
    assert names(tmp_path) == []
    with pytest.raises(ValueError, match=r"`monitor` names `accuracy_top5`"):
        fit(build_model(), data, [keras_ckpt.ModelCheckpoint(
            str(tmp_path / "n-{epoch}.keras"), monitor="accuracy_top5")])  # fmt: skip


def test_a_monitor_whose_direction_is_unknown_raises_as_keras_does(tmp_path, data):
    def custom(y_true, y_pred):
        return keras.ops.mean(y_pred)

    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=[custom])
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), monitor="custom")
    with pytest.raises(ValueError, match='Pass mode="min" or mode="max"'):
        fit(model, data, [cb], epochs=1)
    if importlib.util.find_spec("keras.src.callbacks.monitor_callback") is None:
        return  # Keras 3.10's ModelCheckpoint guesses a direction (only its EarlyStopping asks)
    with pytest.raises(ValueError, match="isn't able to automatically determine"):
        fit(model, data, [keras.callbacks.ModelCheckpoint(str(tmp_path / "k.keras"),
                                                          monitor="custom")], epochs=1)  # fmt: skip


def test_best_of_checkpoints_without_the_monitored_metric_raises_instead_of_none(tmp_path, data):
    """No validation data: `val_loss` (the default monitor) is never logged; the saves go on,
    but "best" by it means nothing and must say so."""
    fit(build_model(), data, [keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"))])
    assert names(tmp_path) == ["m-1.keras", "m-2.keras", "m-3.keras"]
    manager = keras_ckpt.CheckpointManager(tmp_path)
    for mode in ("auto", "min"):
        with pytest.raises(
            keras_ckpt.errors.CheckpointNotFoundError,
            match=r"No checkpoint in .* has `val_loss` in its metrics \(3 checkpoints have: "
            r"accuracy, loss\)",
        ):
            manager.best(mode=mode)
    assert keras_ckpt.CheckpointManager(tmp_path / "empty").best("val_loss") is None


def test_an_async_save_is_announced_on_the_training_thread_in_order(tmp_path, data, mocker):
    """The background write ends at a moment of its own; its line waits for the next hook of the
    training thread: before the next epoch's progress bar header if the write is done by then."""
    printed = []
    real_print = print

    def noting(*args, **kwargs):
        printed.append((threading.current_thread().name, " ".join(map(str, args))))
        real_print(*args, **kwargs)

    mocker.patch("builtins.print", side_effect=noting)
    cb = keras_ckpt.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), verbose=1, async_save=True)

    class Landed(keras.callbacks.Callback):  # after `cb`: the epoch's write is done
        def on_epoch_end(self, epoch, logs=None):
            cb.wait_until_finished()

    build_model().fit(*data, batch_size=16, epochs=2, verbose=1, callbacks=[cb, Landed()])
    ours = [(thread, text.strip()) for thread, text in printed if "saving model to" in text]
    assert {thread for thread, _ in ours} == {threading.main_thread().name}
    assert [text.split(" to ")[0] for _, text in ours] == [
        "Epoch 1: saving model",
        "Epoch 1: finished saving model",
        "Epoch 2: saving model",
        "Epoch 2: finished saving model",
    ]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux's /proc")
def test_a_filepath_where_nothing_can_be_created_is_refused_at_construction():
    with pytest.raises(
        ValueError,
        match=r"`filepath`\. Expected a path in a folder keras-ckpt can write in: /proc is on a "
        r"virtual file system \(proc\) .*Received: filepath='/proc/runs/m\.keras'",
    ):
        keras_ckpt.ModelCheckpoint("/proc/runs/m.keras")
