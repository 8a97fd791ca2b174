"""The one-file backup: a plain Keras `.weights.h5` plus only the state Keras's walk leaves out."""

from __future__ import annotations

import json
import warnings

import h5py
import keras
import numpy as np
import pytest
from conftest import Crash, build_model, fit, h5_datasets

import keras_ckpt
from keras_ckpt.callbacks.backup_and_restore import OWNER
from keras_ckpt.format import backup_file
from keras_ckpt.training import fit_state as st


class Remembers(keras.callbacks.Callback):
    """A `CheckpointStateful` callback whose own state happens to use the key `best_weights`."""

    def __init__(self):
        super().__init__()
        self.state = {"best_weights": 2, "path": "best.weights.h5", "epochs": 0}
        self.received = None

    def on_epoch_end(self, epoch, logs=None):
        self.state = {**self.state, "epochs": self.state["epochs"] + 1}

    def get_checkpoint_state(self):
        return dict(self.state)

    def set_checkpoint_state(self, state):
        self.received = state
        self.state = dict(state)


def crash_and_keep(tmp_path, data, *callbacks, at_step=6, **kwargs):
    """Fits until a crash at `at_step`; returns the model and the newest backup's record."""
    model = build_model(dropout=0.5)
    backup = keras_ckpt.BackupAndRestore(tmp_path, save_freq=2, delete_checkpoint=False, **kwargs)
    with pytest.raises(RuntimeError):
        fit(model, data, [backup, *callbacks, Crash(at_step)])
    backup.wait_until_finished()
    backup.manager.close()  # as a crashed process would: a later writer reads the records anew
    return model, keras_ckpt.CheckpointManager(tmp_path).latest(owner=OWNER)


def test_a_callback_state_with_a_best_weights_key_round_trips_unchanged(tmp_path, data):
    first = Remembers()
    crash_and_keep(tmp_path, data, first)  # 4 steps per epoch: backed up at step 6, epoch 1
    saved = dict(first.state)
    second = Remembers()
    fit(build_model(dropout=0.5), data, [keras_ckpt.BackupAndRestore(tmp_path), second])
    assert second.received == saved
    assert second.received["best_weights"] == 2  # not taken for a count of arrays


# ---------------------------------------------------------------- the format


def trained(data, dropout=0.5):
    """A model after one epoch: metric, SeedGenerator and optimizer variables all hold values."""
    model = build_model(dropout=dropout)
    fit(model, data, [], epochs=1)
    return model


def capture(model, state, callbacks):
    """A backup's host copy, as `BackupAndRestore` takes it (variables and callbacks chosen by
    the training side, bytes by the format)."""
    callback_states = [(type(c).__name__, *st.callback_state(c)) for c in callbacks]
    inputs = backup_file.BackupInputs(st.training_variables(model), state, callback_states)
    return backup_file.BackupFile().capture(model, inputs)


def restore_variables(model, contents):
    variables = st.training_variables(model)
    for index, array in contents.variables.items():
        variables[index].assign(array)


def keras_part(path):
    return {k: v for k, v in h5_datasets(path).items() if not k.startswith(backup_file.GROUP)}


def extra_part(path):
    return {k: v for k, v in h5_datasets(path).items() if k.startswith(backup_file.GROUP)}


def test_every_kind_of_state_round_trips(tmp_path, data):
    model = trained(data)
    keras.random.normal((2,))  # unseeded: creates Keras's global SeedGenerator
    stopper = keras.callbacks.EarlyStopping(restore_best_weights=True)
    stopper.best_weights = [np.full((2, 3), 7.0, "float32"), np.arange(4)]
    stopper.wait, stopper.best = 3, 0.25
    state = {"progress": {"epoch": 1, "step": 2}, "rng": [1, 2, 3], "text": "é"}
    snapshot = capture(model, state, [stopper, Remembers()])
    path = tmp_path / "b.weights.h5"
    backup_file.write(snapshot, path)
    contents = backup_file.read(path)

    assert contents.state == json.loads(json.dumps(snapshot.state))
    assert {k: contents.state[k] for k in state} == state
    variables = st.training_variables(model)
    assert contents.layout == [(v.path, tuple(v.shape)) for v in variables]
    generator = st._global_seed_generator().state
    seeds = [v for v in model.variables if "seed_generator" in v.path] + [generator]
    expected_extra = {id(v) for v in [*model.metrics_variables, *seeds]}
    datasets = [d for _, _, d in contents.state["layout"]]
    extra = {id(v) for v, d in zip(variables, datasets, strict=True) if d.startswith("__")}
    assert extra == expected_extra
    assert sorted(contents.variables) == list(range(len(variables)))
    for i, array in contents.variables.items():
        assert np.array_equal(array, keras.ops.convert_to_numpy(variables[i]))
    best, remembered = contents.callback_arrays
    assert [a.tolist() for a in best] == [a.tolist() for a in stopper.best_weights]
    assert best[1].dtype == stopper.best_weights[1].dtype and remembered == []
    entries = contents.state["callbacks"]
    assert [e["class"] for e in entries] == ["EarlyStopping", "Remembers"]
    assert entries[0]["state"]["wait"] == 3 and entries[0]["state"]["best"] == 0.25
    assert entries[1]["state"]["best_weights"] == 2 and entries[1]["arrays"] == 0

    # Restored into a fresh model, every variable is the saved one.
    fresh = build_model(dropout=0.5)
    fit(fresh, data, [], epochs=1, shuffle=False)  # other values everywhere, metrics built
    keras.random.normal((2,))
    restore_variables(fresh, contents)
    for a, b in zip(st.training_variables(fresh), variables, strict=True):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_plain_keras_loads_the_file_silently_with_every_weight_and_optimizer_variable(
    tmp_path, data
):
    model = trained(data)
    path = tmp_path / "b.weights.h5"
    backup_file.write(capture(model, {}, []), path)
    fresh = build_model(dropout=0.5)
    fresh.optimizer.build(fresh.trainable_variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        fresh.load_weights(path)
    for a, b in zip(
        [*fresh.weights, *fresh.optimizer.variables],
        [*model.weights, *model.optimizer.variables],
        strict=True,
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b)), a.path
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations) == 4


def test_keras_part_is_exactly_keras_save_weights(tmp_path, data):
    model = trained(data)
    path = tmp_path / "b.weights.h5"
    backup_file.write(capture(model, {}, []), path)
    model.save_weights(tmp_path / "keras.weights.h5")
    ours, theirs = keras_part(path), h5_datasets(tmp_path / "keras.weights.h5")
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)


def test_nothing_is_stored_twice(tmp_path, data):
    model = trained(data)
    path = tmp_path / "b.weights.h5"
    backup_file.write(capture(model, {}, []), path)
    in_keras = len(keras_part(path))
    extra = [k for k in extra_part(path) if k.startswith(f"{backup_file.GROUP}/variables/")]
    # Every training variable exactly once: in Keras's part or in the group, never both.
    assert in_keras + len(extra) == len(st.training_variables(model))
    assert in_keras == len(model.weights) + len(model.optimizer.variables)
    with h5py.File(path, "r") as f:
        layout = json.loads(bytes(f[f"{backup_file.GROUP}/state.json"][()]))["layout"]
    saved = {id(v) for v in [*model.weights, *model.optimizer.variables]}
    seeds = [v for v in model.variables if id(v) not in saved]  # the Dropout's SeedGenerator
    assert len(seeds) == 1
    # The group holds the metric variables, the Dropout's seed state and, where unseeded random
    # ops created it (Keras 3.10 does during fit), Keras's global SeedGenerator: nothing else.
    outside = [v for v in st.training_variables(model) if id(v) not in saved]
    wanted = {id(v) for v in [*model.metrics_variables, *seeds]}
    assert wanted <= {id(v) for v in outside}
    assert len(outside) - len(wanted) <= 1
    expected = sorted(v.path for v in outside)
    assert sorted(p for p, _, where in layout if where.startswith(backup_file.GROUP)) == expected


def test_cli_show_counts_only_keras_part_of_a_backup(tmp_path, data):
    from keras_ckpt.format.inspect import inspect_file

    model = trained(data)
    backup_file.write(capture(model, {}, []), tmp_path / "b.weights.h5")
    info = inspect_file(str(tmp_path / "b.weights.h5"))
    assert info["weights"]["arrays"] == len(model.weights)
    assert info["optimizer"]["variables"] == len(model.optimizer.variables)


def test_a_file_without_backup_state_is_reported_as_damaged(tmp_path, data):
    model = trained(data)
    model.save_weights(tmp_path / "plain.weights.h5")
    with pytest.raises(backup_file.BackupFileError, match="holds no keras-ckpt backup state"):
        backup_file.read(tmp_path / "plain.weights.h5")
    backup_file.write(capture(model, {}, []), tmp_path / "b.weights.h5")
    raw = (tmp_path / "b.weights.h5").read_bytes()
    (tmp_path / "cut.weights.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(backup_file.BackupFileError, match="Cannot read backup file"):
        backup_file.read(tmp_path / "cut.weights.h5")


# ---------------------------------------------------------------- through the callback


def test_a_backup_that_verifies_but_cannot_be_read_falls_back_to_the_previous(tmp_path, data):
    _, record = crash_and_keep(tmp_path, data, double_checkpoint=True)
    assert record.name == "backup-000000006"
    # Strip the group and re-seal the record: the file verifies, but is no backup.
    path = tmp_path / record.path
    with h5py.File(path, "a") as f:
        del f[backup_file.GROUP]
    meta = tmp_path / ".keras_ckpt" / f"{record.name}.json"
    saved = json.loads(meta.read_text())
    sealed = keras_ckpt.store.local.seal_file(path)
    saved["files"][0].update(size=sealed.size, checksum=sealed.checksum)
    meta.write_text(json.dumps(saved))
    assert all(r.ok for r in keras_ckpt.CheckpointManager(tmp_path).verify())

    model = build_model(dropout=0.5)
    probe = []
    on_begin = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: probe.append(int(model.optimizer.iterations))
    )
    with pytest.warns(UserWarning, match=r"backup-000000006 .* is damaged .*backup-000000004"):
        fit(model, data, [keras_ckpt.BackupAndRestore(tmp_path), on_begin])
    assert probe[0] == 4
