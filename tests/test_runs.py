"""Runs: a rerun in the same folder is its own run for the manager and the CLI (keras_ckpt/runs.py).

The scenario: run 1 keeps three checkpoints; a rerun in the same folder (same template, so the same
owner) with `keep_best=2, keep_last=1` keeps its own two best and its newest. Ranking, pruning,
`best` and `list`'s star must judge the newest run by its own records and policy.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import build_model

import keras_ckpt
from keras_ckpt import CheckpointManager
from keras_ckpt.cli import main
from keras_ckpt.runs import run_of

TEMPLATE = "m-{epoch:02d}-{val_loss:.4f}.keras"


def cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, y


def fit(folder: Path, *, epochs: int, learning_rate: float, seed: int, **keep) -> object:
    x, y = data()
    model = build_model(seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    checkpoint = keras_ckpt.ModelCheckpoint(str(folder / TEMPLATE), monitor="val_loss", **keep)
    model.fit(
        x, y, epochs=epochs, batch_size=16, validation_split=0.25, callbacks=[checkpoint], verbose=0
    )
    return checkpoint


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run 1 trains well and keeps 3; run 2 (rerun, same template) learns slowly: every one of
    run 1's checkpoints ranks better than every one of run 2's."""
    folder = tmp_path_factory.mktemp("two_runs") / "exp"
    fit(folder, epochs=8, learning_rate=0.05, seed=0, keep_last=3)
    fit(folder, epochs=4, learning_rate=1e-5, seed=1, keep_best=2, keep_last=1)
    manager = CheckpointManager(folder)
    everything = manager.checkpoints(run="all")
    first, second = dict.fromkeys(run_of(r) for r in everything)
    one = [r for r in everything if run_of(r) == first]
    two = [r for r in everything if run_of(r) == second]
    # The scenario's premise: run 2 kept 3 (2 best + newest, or its best is its newest) and
    # ranks below run 1 throughout, so ranking both together loses run 2's files.
    assert len(one) == 3 and 2 <= len(two) <= 3
    assert max(r.metrics["val_loss"] for r in one) < min(r.metrics["val_loss"] for r in two)
    return folder, one, two


@pytest.fixture
def folder(two_runs, tmp_path):
    return Path(shutil.copytree(two_runs[0], tmp_path / "exp")), two_runs[1], two_runs[2]


def names(records) -> list[str]:
    return [r.name for r in records]


def test_runs_lists_both_runs_with_their_policy_newest_last(folder):
    directory, one, two = folder
    runs = CheckpointManager(directory).runs()
    assert [r.id for r in runs] == [run_of(one[0]), run_of(two[0])]
    assert [r.checkpoints for r in runs] == [len(one), len(two)]
    assert [r.newest for r in runs] == [False, True]
    assert runs[1].first_time >= runs[0].last_time
    assert runs[1].monitor == "val_loss" and runs[1].mode == "min"
    [policy] = runs[1].policies.values()
    assert "KeepBest(n=2" in repr(policy) and "KeepLast(n=1)" in repr(policy)
    assert [repr(p) for p in runs[0].policies.values()] == ["KeepLast(n=3)"]
    assert runs[1].saves == 4 and runs[0].saves == 8  # from the history: pruned saves count


def test_the_manager_defaults_to_the_newest_run_and_all_means_all(folder, capsys):
    directory, one, two = folder
    manager = CheckpointManager(directory)
    assert names(manager.checkpoints()) == names(two)
    assert names(manager.checkpoints(run="all")) == names(one + two)
    assert names(manager.checkpoints(run=run_of(one[0]))) == names(one)
    best_two = min(two, key=lambda r: r.metrics["val_loss"])
    best_one = min(one, key=lambda r: r.metrics["val_loss"])
    assert manager.best().name == best_two.name
    said = capsys.readouterr().out
    assert best_two.name in said and best_one.name in said and 'run="all"' in said
    assert len(said.splitlines()) == 1
    assert manager.best(run="all").name == best_one.name
    assert capsys.readouterr().out == ""  # nothing to say when the caller chose
    assert manager.latest().name == two[-1].name
    assert [e.name for e in manager.history()] == [
        e.name for e in manager.history(run="all") if run_of(e) == run_of(two[0])
    ]


def test_load_model_best_loads_the_newest_runs_best(folder):
    directory, _, two = folder
    best_two = min(two, key=lambda r: r.metrics["val_loss"])
    manager = CheckpointManager(directory)
    model = manager.load_model("best")
    expected = keras.saving.load_model(directory / best_two.path)
    for a, b in zip(model.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert manager.resolve("best").name == best_two.name


def test_prune_by_the_recorded_policies_keeps_everything_each_run_keeps(folder):
    directory, one, two = folder
    manager = CheckpointManager(directory)
    result = manager.prune(run="all")
    assert result.deleted == ()
    assert names(manager.checkpoints(run="all")) == names(one + two)
    assert {r for r, _, _ in result.policies} == {run_of(one[0]), run_of(two[0])}
    assert names(manager.prune().kept[i].record for i in range(len(two))) == names(two)


def test_an_unknown_run_is_an_error_naming_the_runs(folder):
    directory, one, _ = folder
    with pytest.raises(ValueError, match=r"argument `run`.*" + run_of(one[0])):
        CheckpointManager(directory).checkpoints(run="nosuch")


def test_the_issue_scenario_through_the_cli_deletes_nothing_of_the_newest_run(folder):
    directory, one, two = folder
    code, out, err = cli("list", directory, "--why", "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)["checkpoints"]}
    assert set(rows) == set(names(two))
    assert all(row["kept_because"] for row in rows.values())  # none "no policy keeps it"
    code, out, err = cli("list", directory, "--why")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"Run {run_of(two[0])}, the newest of 2 runs")
    assert "no policy keeps it" not in out
    best_two = min(two, key=lambda r: r.metrics["val_loss"])
    assert f"{best_two.name} *" in out
    code, out, err = cli("prune", directory)
    assert code == 0, err
    assert "Deleted 0 of" in out
    code, out, err = cli("prune", directory, "--run", "all")
    assert code == 0, err
    assert "Deleted 0 of" in out
    assert names(CheckpointManager(directory).checkpoints(run="all")) == names(one + two)


def test_list_run_all_shows_both_runs_and_stars_the_folders_best(folder):
    directory, one, two = folder
    code, out, err = cli("list", directory, "--run", "all")
    assert code == 0, err
    assert "Run " not in out.splitlines()[0]  # the caller chose: nothing to announce
    best_one = min(one, key=lambda r: r.metrics["val_loss"])
    assert f"{best_one.name} *" in out
    assert run_of(one[0]) in out and run_of(two[0]) in out


@pytest.mark.parametrize("command", ["show", "verify", "history", "export"])
def test_every_command_names_the_newest_run_when_older_ones_exist(folder, tmp_path, command):
    directory, _, two = folder
    args = {
        "show": ["show", directory, "best"],
        "verify": ["verify", directory],
        "history": ["history", directory],
        "export": ["export", directory, "best", tmp_path / "best.keras"],
    }[command]
    code, out, err = cli(*args)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"Run {run_of(two[0])}, the newest of 2 runs")
    if command == "export":
        best_two = min(two, key=lambda r: r.metrics["val_loss"])
        assert f"Exported {best_two.name}" in out


def test_history_prints_each_run_with_its_saves_and_why_they_went(folder):
    directory, one, two = folder
    code, out, err = cli("history", directory, "--run", "all")
    assert code == 0, err
    assert f"Run {run_of(one[0])}: 8 saves, 3 still on disk" in out
    assert f"Run {run_of(two[0])} (newest): 4 saves" in out
    assert "deleted: not kept by" in out
    data = json.loads(cli("history", directory, "--json")[1])
    assert [r["id"] for r in data["runs"]] == [run_of(two[0])]
    assert len(data["saves"]) == 4


def test_a_run_option_with_an_unknown_id_lists_the_runs(folder):
    directory, one, _ = folder
    code, _, err = cli("list", directory, "--run", "nosuch")
    assert code == 2 and run_of(one[0]) in err and len(err.splitlines()) == 1


def test_plot_draws_one_line_per_run(folder, tmp_path):
    directory, one, two = folder
    out = tmp_path / "runs.png"
    code, stdout, err = cli("plot", directory, "--run", "all", "-o", out)
    assert code == 0, err
    assert out.stat().st_size > 0
    kept = len(one) + len(two)
    assert f": loss, val_loss of 2 runs, {kept} checkpoints kept, {12 - kept} pruned" in stdout
    code, stdout, err = cli("plot", directory, "-o", tmp_path / "newest.png")
    assert code == 0, err
    assert f"of run {run_of(two[0])}, {len(two)} checkpoints kept, {4 - len(two)} pruned" in stdout


def test_plot_does_not_count_a_same_name_replacement_as_pruned(tmp_path):
    x, y = data()
    best = keras_ckpt.ModelCheckpoint(str(tmp_path / "best.keras"), save_best_only=True)
    model = build_model()
    model.fit(x, y, epochs=4, batch_size=32, validation_split=0.25, callbacks=[best], verbose=0)
    saves = CheckpointManager(tmp_path).history()
    replaced = [e for e in saves if not e.exists]
    assert len(replaced) >= 1 and len(saves) == len(replaced) + 1
    code, out, err = cli("plot", tmp_path, "-o", tmp_path / "p.png")
    assert code == 0, err
    assert f"0 pruned (from the run history), {len(replaced)} replaced by a same-name save" in out


def test_two_model_checkpoints_of_one_fit_share_one_run(tmp_path):
    x, y = data()
    a = keras_ckpt.ModelCheckpoint(str(tmp_path / "a-{epoch}.keras"))
    b = keras_ckpt.ModelCheckpoint(str(tmp_path / "best.keras"), save_best_only=True)
    build_model().fit(
        x, y, epochs=2, batch_size=32, validation_split=0.25, callbacks=[a, b], verbose=0
    )
    manager = CheckpointManager(tmp_path)
    assert len(manager.runs()) == 1
    assert {r.name for r in manager.checkpoints()} == {"a-1.keras", "a-2.keras", "best.keras"}


def test_select_and_average_pick_from_the_newest_run_unless_told(folder, tmp_path):
    directory, one, two = folder
    manager = CheckpointManager(directory)
    by_loss = sorted(two, key=lambda r: r.metrics["val_loss"])
    assert names(manager.select("best:2")) == names(sorted(by_loss[:2], key=lambda r: r.sequence))
    assert set(names(manager.select("best:2", run="all"))) <= set(names(one))
    averaged = manager.average("best:2", tmp_path / "avg.keras")
    assert names(averaged) == names(manager.select("best:2"))
    assert names(manager.select([one[0].name])) == [one[0].name]  # a name is found in any run


def test_prune_with_keep_options_judges_the_newest_run_only(folder):
    directory, one, two = folder
    owner = two[0].owner
    code, out, err = cli("prune", directory, "--owner", owner, "--keep-last", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["run"] == run_of(two[0])
    assert set(data["deleted"]) == set(names(two[:-1]))
    assert names(CheckpointManager(directory).checkpoints(run="all")) == names(one + two[-1:])
