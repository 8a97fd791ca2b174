"""The run history: every save and deletion logged, surviving pruning, torn lines and kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_ckpt import CheckpointManager, ModelCheckpoint
from keras_ckpt.cli import main
from keras_ckpt.policies import KeepBest, KeepLast
from keras_ckpt.records import FileEntry, Record
from keras_ckpt.store import history


def commit(manager, name, epoch, val_loss=None, size=7):
    with manager.stage() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(b"x" * size)
        metrics = {"val_loss": val_loss} if val_loss is not None else {}
        return manager.commit(
            {name: path}, name=name, kind="weights", epoch=epoch, metrics=metrics, owner="me"
        )


def files_under(directory):
    return sorted(
        (os.path.relpath(os.path.join(root, f), directory), os.path.getsize(os.path.join(root, f)))
        for root, _, names in os.walk(directory)
        for f in names
        if f != "lock"
    )


# --------------------------------------------------------------------------- format (pure)


def record(name, sequence, **kw):
    return Record(name, "weights", (FileEntry(name, 5, "crc32c:0"),), sequence=sequence, **kw)


def test_a_torn_last_line_is_skipped_not_an_error():
    log = history.encode_save(record("a", 1)) + history.encode_save(record("b", 2))
    for cut in range(1, len(history.encode_save(record("c", 3)))):
        torn = log + history.encode_save(record("c", 3))[:cut]
        assert [e["name"] for e in history.parse(torn)] == ["a", "b"] + (
            ["c"] if cut == len(history.encode_save(record("c", 3))) - 1 else []
        )


def test_foreign_and_binary_lines_are_skipped():
    log = b"\xff\xfe\n[1, 2]\n{}\n" + history.encode_save(record("a", 1)) + b'{"v": 99}\n'
    assert [e["name"] for e in history.parse(log)] == ["a"]


def test_replay_joins_deletions_and_replacements():
    first = record("best.keras", 1)
    second = record("best.keras", 2)
    other = record("w-3", 3)
    log = (
        history.encode_save(first)
        + history.encode_save(second)
        + history.encode_save(other)
        + history.encode_delete("w-3", 3, 42.0, "not kept by KeepLast(n=1)")
    )
    entries = history.replay(history.parse(log), [second])
    assert [(e.name, e.sequence, e.exists, e.deleted_reason) for e in entries] == [
        ("best.keras", 1, False, "replaced by a newer save of the same name"),
        ("best.keras", 2, True, None),
        ("w-3", 3, False, "not kept by KeepLast(n=1)"),
    ]
    assert entries[2].deleted_time == 42.0


def test_records_missing_from_the_log_are_listed():
    entries = history.replay([], [record("old", 4, epoch=2)])
    assert [(e.name, e.epoch, e.exists) for e in entries] == [("old", 2, True)]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    losses=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=25),
)
def test_simulate_agrees_with_pruning_after_every_save(tmp_path_factory, n, losses):
    """`simulate` keeps exactly what a manager pruning after each commit keeps, and no more disk."""
    directory = tmp_path_factory.mktemp("sim")
    manager = CheckpointManager(directory)
    policy = KeepLast(n) | KeepBest(1, "val_loss")
    peak = 0
    for i, loss in enumerate(losses):
        commit(manager, f"w-{i:03d}", i + 1, loss, size=1 + i % 5)
        peak = max(peak, sum(r.size for r in manager.checkpoints()))
        manager.prune(policy)
    result = history.simulate(policy, manager.history())
    kept = [r.name for r in manager.checkpoints()]
    assert [e.name for e in result.kept] == kept
    assert result.final_bytes == sum(r.size for r in manager.checkpoints())
    assert result.peak_bytes == peak
    manager.close()


# --------------------------------------------------------------------------- the manager


def test_history_survives_pruning_by_a_callback(tmp_path, data):
    from conftest import build_model

    x, y = data
    model = build_model()
    ckpt = ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"), monitor="val_loss", keep_last=1)
    model.fit(x, y, epochs=4, validation_split=0.25, callbacks=[ckpt], verbose=0)
    entries = CheckpointManager(tmp_path).history()
    assert [e.name for e in entries] == ["m-1.keras", "m-2.keras", "m-3.keras", "m-4.keras"]
    assert [e.exists for e in entries] == [False, False, False, True]
    assert all(e.deleted_reason.startswith("not kept by KeepLast(n=1)") for e in entries[:3])
    assert [e.epoch for e in entries] == [1, 2, 3, 4]
    assert all("val_loss" in e.metrics and e.size > 0 and e.kind == "model" for e in entries)
    assert [e.sequence for e in entries] == sorted(e.sequence for e in entries)


def test_delete_records_its_reason(tmp_path):
    manager = CheckpointManager(tmp_path)
    commit(manager, "a", 1)
    commit(manager, "b", 2)
    manager.delete("a", reason="superseded by hand")
    manager.delete("b")
    entries = manager.history()
    assert [(e.name, e.exists, e.deleted_reason) for e in entries] == [
        ("a", False, "superseded by hand"),
        ("b", False, None),
    ]
    manager.close()


def test_a_kill_mid_append_leaves_a_torn_line_that_is_skipped(tmp_path):
    """The child writes half of a history line and SIGKILLs itself; the log stays readable."""
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_history import commit
        from keras_ckpt import CheckpointManager

        manager = CheckpointManager({str(tmp_path)!r})
        commit(manager, "a", 1)
        commit(manager, "b", 2)
        real_write = os.write

        def torn_write(fd, data):
            if os.readlink(f"/proc/self/fd/{{fd}}").endswith("history.jsonl"):
                real_write(fd, data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(fd, data)

        os.write = torn_write
        commit(manager, "c", 3)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    log = (tmp_path / ".keras_ckpt" / "history.jsonl").read_bytes()
    assert not log.endswith(b"\n")  # the torn half-line is there
    manager = CheckpointManager(tmp_path)
    # c's record was committed before the append: it exists, so history lists it anyway
    assert [(e.name, e.exists) for e in manager.history()] == [
        ("a", True),
        ("b", True),
        ("c", True),
    ]
    commit(manager, "d", 4)
    manager.prune(KeepLast(1))
    entries = manager.history()
    assert [(e.name, e.exists) for e in entries] == [
        ("a", False),
        ("b", False),
        ("c", False),
        ("d", True),
    ]
    assert all(e.deleted_reason == "not kept by KeepLast(n=1)" for e in entries[:3])
    manager.close()


def test_history_on_an_object_store(tmp_path):
    pytest.importorskip("fsspec")
    url = f"memory://history-{os.getpid()}-{tmp_path.name}"
    manager = CheckpointManager(url)
    for epoch in (1, 2, 3):
        commit(manager, f"w-{epoch}", epoch)
    manager.prune(KeepLast(1))
    manager.close()
    entries = CheckpointManager(url).history()
    assert [(e.name, e.exists) for e in entries] == [
        ("w-1", False),
        ("w-2", False),
        ("w-3", True),
    ]


# --------------------------------------------------------------------------- prune --simulate


@pytest.fixture
def pruned_run(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    for epoch, loss in enumerate([5.0, 1.0, 4.0, 3.0, 2.0, 6.0], start=1):
        commit(manager, f"w-{epoch}", epoch, loss, size=100)
        manager.prune(KeepLast(1))
    manager.close()
    return tmp_path / "run"


def test_simulate_replays_over_the_whole_history_and_touches_nothing(pruned_run, capsys):
    before = files_under(pruned_run)
    code = main(
        ["prune", str(pruned_run), "--keep-best", "2", "--monitor", "val_loss", "--simulate"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert files_under(pruned_run) == before
    assert "6 saves of the run's history (1 exist now, 5 were deleted)" in out
    assert (
        "Would have deleted 3 during the run. Kept 3, using 300 B at the end and 300 B at most"
        in out
    )
    kept = [line.split()[1] for line in out.splitlines() if line.startswith("  keep")]
    assert kept == ["w-2", "w-5", "w-6"]  # the best two, and the newest


def test_simulate_json(pruned_run, capsys):
    import json

    assert main(["prune", str(pruned_run), "--keep-last", "2", "--simulate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kept"] == ["w-5", "w-6"] and data["simulated"] is True
    assert data["final_bytes"] == 200 and data["peak_bytes"] == 300


def test_backups_deleted_at_the_end_of_fit_say_why(tmp_path, data):
    from conftest import build_model

    from keras_ckpt import BackupAndRestore

    x, y = data
    (tmp_path / "notes.txt").write_text("mine")  # a foreign file: the folder (and log) stays
    backup = BackupAndRestore(tmp_path, save_freq=8)
    build_model().fit(x, y, epochs=2, batch_size=8, callbacks=[backup], verbose=0)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    entries = CheckpointManager(tmp_path).history()
    assert [e.global_step for e in entries] == [8, 16]
    assert not any(e.exists for e in entries)
    assert entries[0].deleted_reason == "not kept by KeepLast(n=1)"
    assert entries[1].deleted_reason == "fit completed (delete_checkpoint=True)"
