"""keras_ckpt.selection: what "best" means (the metric and mode the callback ranked by, ties to
the newest), the same for `best()`, `resolve("best")`, `load_model("best")` and `average`."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import commit

from keras_ckpt.errors import CheckpointNotFoundError
from keras_ckpt.manager import CheckpointManager


@pytest.mark.parametrize(
    ("monitor", "values", "expected"),
    [
        pytest.param("val_loss", (0.5, 0.2, 0.3), "ckpt-1", id="loss-is-minimised"),
        pytest.param("val_accuracy", (0.5, 0.9, 0.7), "ckpt-1", id="accuracy-is-maximised"),
        pytest.param("val_loss", (0.2, 0.5, 0.2), "ckpt-2", id="tie-goes-to-newer"),
    ],
)
def test_best_infers_the_mode_from_the_name(manager, monitor, values, expected):
    for i, value in enumerate(values):
        commit(manager, f"ckpt-{i}", metrics={monitor: value})
    assert manager.best(monitor).name == expected


def test_best_with_an_explicit_mode(manager):
    commit(manager, "low", metrics={"score": 1.0})
    commit(manager, "high", metrics={"score": 2.0})
    assert manager.best("score", mode="max").name == "high"
    assert manager.best("score", mode="min").name == "low"


def test_best_skips_checkpoints_without_the_metric(manager):
    commit(manager, "a", metrics={"val_loss": 0.9})
    commit(manager, "b", metrics={"loss": 0.1})
    assert manager.best("val_loss").name == "a"
    with pytest.raises(CheckpointNotFoundError, match=r"has `val_auc`.*have: loss, val_loss"):
        manager.best("val_auc")  # not None: that would pass for "no checkpoint at all"


def test_best_rejects_an_unknown_mode(manager):
    with pytest.raises(ValueError, match=r'Expected "auto" or "min" or "max"\. Received: mode='):
        manager.best("val_loss", mode="bogus")


@pytest.mark.parametrize("monitor", [5, "", b"val_loss"])
def test_best_rejects_a_monitor_that_is_not_a_name(manager, monitor):
    with pytest.raises(ValueError, match=r"argument `monitor`\. Expected a metric name"):
        manager.best(monitor)


def mae_run(manager, owner_state=None):
    """Three checkpoints of a callback that monitored `val_mae` (a name that tells no mode)."""
    state = {"monitor": "val_mae", "mode": "min"} if owner_state is None else owner_state
    for name, value in (("a", 0.5), ("b", 0.2), ("c", 0.9)):
        commit(manager, name, metrics={"val_mae": value}, owner="mc", owner_state=state)


def test_best_uses_the_mode_the_callback_recorded(manager):
    mae_run(manager)
    assert manager.best("val_mae").name == "b"
    assert manager.best("val_mae", mode="max").name == "c"  # an explicit mode still wins


def test_resolve_best_uses_the_mode_the_callback_recorded(manager):
    mae_run(manager)
    assert manager.resolve("best").name == "b"
    assert manager.resolve("best", monitor="val_mae").name == "b"


def test_the_recorded_mode_is_found_in_the_recorded_retention_too(manager):
    retention = {"type": "KeepBest", "n": 1, "monitor": "val_mae", "mode": "max"}
    mae_run(manager, {"monitor": "val_mae", "mode": "auto", "retention": retention})
    assert manager.best("val_mae").name == "c"


def test_best_without_a_monitor_uses_the_recorded_one_as_load_model_does(manager):
    mae_run(manager)
    assert manager.best().name == manager.best(None).name == "b"


def test_best_without_a_monitor_or_a_recorded_one_says_to_pass_it(manager):
    commit(manager, "a", metrics={"val_loss": 0.5})
    with pytest.raises(ValueError, match=r"needs `monitor=`.*no checkpoint in .* records"):
        manager.best()


def test_best_of_a_metric_without_a_recorded_mode_still_needs_one(manager):
    mae_run(manager, owner_state={})
    with pytest.raises(ValueError, match=r'Cannot tell whether `val_mae`.*Pass mode="min"'):
        manager.best("val_mae")


def test_best_n_and_best_name_the_same_checkpoint_whatever_the_monitor(tmp_path):
    """The callback's `monitor` is val_loss, its `retention=KeepBest(1, "val_accuracy")`: "best"
    is what it ranked by, for `best()` and `average("best:1")` alike (they used to read the
    records in opposite orders and pick different files)."""
    owner_state = {  # as ModelCheckpoint records it
        "callback": "ModelCheckpoint",
        "monitor": "val_loss",
        "mode": "min",
        "retention": {"type": "KeepBest", "n": 1, "monitor": "val_accuracy", "mode": "max"},
    }
    manager = CheckpointManager(tmp_path / "run")
    for epoch, (loss, accuracy) in enumerate([(0.1, 0.5), (0.9, 0.9), (0.5, 0.6)], start=1):
        with manager.stage() as folder:
            path = os.path.join(folder, "w")
            with h5py.File(path, "w") as f:
                f["layers/d/vars/0"] = np.full((2,), float(epoch))
            manager.commit(
                {f"w-{epoch}.weights.h5": path},
                name=f"w-{epoch}",
                kind="weights",
                epoch=epoch,
                metrics={"val_loss": loss, "val_accuracy": accuracy},
                owner_state=owner_state,
            )
    averaged = manager.average("best:1", tmp_path / "best.weights.h5")
    assert manager.best().name == averaged[0].name == "w-2"  # the best val_accuracy
    manager.close()
