"""keras_ckpt.store.locks: one writer session per directory and process, shared by every writer
of it, and forgotten by a forked child."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import commit

from keras_ckpt.errors import LockLostError
from keras_ckpt.manager import CheckpointManager

CHILD = os.path.join(os.path.dirname(__file__), "crash_commit_child.py")


def test_two_managers_in_one_process_share_the_lock(tmp_path):
    first, second = CheckpointManager(tmp_path), CheckpointManager(str(tmp_path) + "/")
    first.open_for_writing()
    second.open_for_writing()
    first.close()
    commit(second, "after")
    second.close()
    assert [r.name for r in CheckpointManager(tmp_path).checkpoints()] == ["after"]


def test_managers_reaching_one_directory_by_two_paths_share_the_writer_state(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with CheckpointManager(tmp_path / "real") as one, CheckpointManager(tmp_path / "link") as two:
        commit(one, "first")
        commit(two, "second")
    records = CheckpointManager(tmp_path / "real").checkpoints()
    assert [(r.name, r.sequence) for r in records] == [("first", 1), ("second", 2)]


def test_a_forked_worker_does_not_keep_a_dead_trainers_directory_locked(tmp_path):
    run = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, CHILD, "fork-and-die", str(run)], stdout=subprocess.PIPE, text=True
    )
    worker = int(trainer.stdout.readline().split()[1])
    trainer.wait()
    trainer.stdout.close()
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{run}.child") and time.monotonic() < deadline:
            time.sleep(0.05)
        with CheckpointManager(run) as manager:
            commit(manager, "a")  # the trainer is dead; its worker holds no lock
        with open(f"{run}.child") as f:
            assert f.read().startswith(
                "LockLostError: Lost the writer lock: this process is a fork"
            )
    finally:
        os.kill(worker, signal.SIGKILL)


def test_a_new_manager_writes_into_a_directory_deleted_under_a_forgotten_writer(tmp_path):
    run = tmp_path / "run"
    stale = CheckpointManager(run)  # e.g. the callback of an interrupted fit, never closed
    stale.open_for_writing()
    commit(stale, "a")
    shutil.rmtree(run)  # the user starts over
    with CheckpointManager(run) as manager:  # as LockLostError's message says: a new manager
        manager.open_for_writing()
        commit(manager, "b")
    assert [(r.name, r.ok) for r in CheckpointManager(run).verify()] == [("b", True)]
    with pytest.raises(LockLostError):
        commit(stale, "c")  # the forgotten writer still may not write
