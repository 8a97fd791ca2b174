"""The crash journal against hostile state: symlinks, foreign files, deleted directories, forks,
long names, and readers racing a writer. Each test reproduces a defect found by adversarial use."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from conftest import commit

import keras_ckpt
from keras_ckpt.errors import ForeignFileError, UnsafeDirectoryError
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import KeepLast
from keras_ckpt.records import Record
from keras_ckpt.store import journal
from keras_ckpt.store.journal import pending_path, record_path
from keras_ckpt.store.local import META_DIR, seal_file

CHILD = os.path.join(os.path.dirname(__file__), "crash_commit_child.py")


def write_pending(directory, record: Record) -> None:
    path = directory / pending_path(record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.to_json())


# ----------------------------------------------------------------------------- symlinks


def test_a_backup_folder_moved_away_and_linked_back_is_unlinked_not_followed(tmp_path):
    run, big = tmp_path / "run", tmp_path / "big"
    big.mkdir()
    with CheckpointManager(run) as manager:
        commit(manager, "backup-1", {"backup-1/w.h5": b"w1", "backup-1/s.json": b"s1"})
        commit(manager, "backup-2", {"backup-2/w.h5": b"w2", "backup-2/s.json": b"s2"})
    shutil.move(run / "backup-1", big / "backup-1")  # the user frees disk space
    (run / "backup-1").symlink_to(big / "backup-1")
    with CheckpointManager(run) as manager:
        with pytest.warns(UserWarning, match="backup-1 is a symbolic link: removed the link"):
            result = manager.prune(KeepLast(1))
    assert [r.name for r in result.deleted] == ["backup-1"]
    assert sorted(os.listdir(big / "backup-1")) == ["s.json", "w.h5"]  # its target is left whole
    assert not os.path.lexists(run / "backup-1")
    assert not (run / META_DIR / "pending").exists() or not os.listdir(run / META_DIR / "pending")
    with CheckpointManager(run) as manager:  # nothing wedged
        commit(manager, "backup-3", {"backup-3/w.h5": b"w3"})
        assert [r.name for r in manager.checkpoints()] == ["backup-2", "backup-3"]


def test_a_record_naming_a_file_through_a_linked_folder_never_deletes_outside(tmp_path, outside):
    run = tmp_path / "run"
    with CheckpointManager(run) as manager:
        real = commit(manager, "a", {"sub/a.bin": b"precious"})
        commit(manager, "b")
    (run / "sub" / "a.bin").unlink()
    (run / "sub").rmdir()
    (run / "sub").symlink_to(outside)
    (outside / "a.bin").write_bytes(b"precious")  # an edited world: the record now leads outside
    assert seal_file(outside / "a.bin").checksum == real.files[0].checksum
    with CheckpointManager(run) as manager:
        with pytest.warns(UserWarning, match="symbolic link"):
            manager.prune(KeepLast(1))
    assert (outside / "a.bin").read_bytes() == b"precious"
    assert (outside / "victim.txt").read_text() == "precious"


def test_recovery_leaves_a_file_whose_bytes_do_not_match_its_pending_record(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        crashed = commit(manager, "b", {"b.bin": b"ours"})
        manager.delete("b")
    write_pending(tmp_path, crashed)  # killed after announcing b, before publishing it
    (tmp_path / "b.bin").write_bytes(b"the user's own file")
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()
        assert [r.name for r in manager.checkpoints()] == ["a"]
    assert (tmp_path / "b.bin").read_bytes() == b"the user's own file"
    assert not (tmp_path / pending_path("b")).exists()


def test_a_folder_where_a_file_was_is_reported_and_never_wedges_the_directory(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        crashed = commit(manager, "b", {"b.bin": b"b"})
        commit(manager, "c")
    os.remove(tmp_path / "b.bin")
    (tmp_path / "b.bin").mkdir()  # odd entries: a folder in place of a file, here and pending
    write_pending(tmp_path, crashed)
    assert [(r.name, r.ok) for r in CheckpointManager(tmp_path).verify()] == [
        ("a", True),
        ("c", True),
    ]  # b's pending version is not whole, and neither is b: b is gone for readers
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()  # the writer settles it the same way, and opens
        assert [r.name for r in manager.checkpoints()] == ["a", "c"]
    assert (tmp_path / "b.bin").is_dir()  # not ours: left alone


# ----------------------------------------------------------------------------- interface


def test_a_sealed_file_is_not_read_back_and_its_size_is_checked(tmp_path, mocker):
    with CheckpointManager(tmp_path) as manager, manager.stage() as folder:
        path = os.path.join(folder, "w")
        with open(path, "wb") as f:
            f.write(b"weights")
        sealed = seal_file(path)  # what a format writer computes while writing
        read_back = mocker.spy(journal, "seal_file")
        record = manager.commit({"w.bin": path}, name="w", kind="weights", sealed={"w.bin": sealed})
        assert read_back.call_count == 0
        assert record.files[0].checksum == sealed.checksum
        with open(path, "wb") as f:
            f.write(b"longer weights")
        with pytest.raises(ValueError, match="changed after it was sealed"):
            manager.commit({"v.bin": path}, name="v", kind="weights", sealed={"v.bin": sealed})
        with pytest.raises(ValueError, match="Expected paths among `files`"):
            manager.commit({"v.bin": path}, name="v", kind="weights", sealed={"x.bin": sealed})
    assert [r.ok for r in CheckpointManager(tmp_path).verify()] == [True]


def test_prune_tells_the_journal_why_it_deletes(tmp_path, mocker):
    committed = mocker.spy(journal.Journal, "committed")
    deleted = mocker.spy(journal.Journal, "deleted")
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        commit(manager, "b")
        manager.prune(KeepLast(1))
        manager.delete("b", reason="by hand")
    assert [c.args[1].name for c in committed.call_args_list] == ["a", "b"]
    assert [(c.args[1].name, c.args[2]) for c in deleted.call_args_list] == [
        ("a", "not kept by KeepLast(n=1)"),
        ("b", "by hand"),
    ]


# ----------------------------------------------------------------------------- long names


@pytest.mark.parametrize("length", [238, 250, 251, 255])
def test_names_up_to_255_bytes_commit_read_and_delete(tmp_path, length):
    name = "m" * (length - len(".keras")) + ".keras"
    with CheckpointManager(tmp_path) as manager:
        commit(manager, name, {name: b"model"})
        commit(manager, name, {name: b"model v2"})  # replaced in place: a pending record too
    assert all(len(p.encode()) <= 255 for p in os.listdir(tmp_path / META_DIR))
    assert len(record_path(name).rsplit("/", 1)[1].encode()) <= 255
    reader = CheckpointManager(tmp_path)
    assert reader.get(name).files[0].size == len(b"model v2")
    assert [r.ok for r in reader.verify()] == [True]
    with CheckpointManager(tmp_path) as manager:
        manager.delete(name)
    assert CheckpointManager(tmp_path).checkpoints() == []


# ----------------------------------------------------------------------------- readers


def test_a_reader_and_the_next_writer_resolve_the_same_newest_after_a_crash(tmp_path):
    """Killed between publishing c's files and writing its record: all of c is in place."""
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        commit(manager, "b")
        crashed = commit(manager, "c", {"c/one.bin": b"1", "c/two.bin": b"2"})
    os.remove(tmp_path / record_path("c"))
    write_pending(tmp_path, crashed)
    worker = CheckpointManager(tmp_path)  # workers read without the lock
    seen_by_worker = worker.resolve("latest").name
    with CheckpointManager(tmp_path) as chief:
        chief.open_for_writing()
        seen_by_chief = chief.resolve("latest").name
    assert seen_by_worker == seen_by_chief == "c"
    assert CheckpointManager(tmp_path).resolve("latest") == crashed


def test_a_reader_and_the_next_writer_agree_when_the_crashed_commit_is_incomplete(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        crashed = commit(manager, "c", {"c/one.bin": b"1", "c/two.bin": b"2"})
    os.remove(tmp_path / record_path("c"))
    os.remove(tmp_path / "c" / "two.bin")
    write_pending(tmp_path, crashed)
    seen_by_worker = CheckpointManager(tmp_path).resolve("latest").name
    with CheckpointManager(tmp_path) as chief:
        chief.open_for_writing()
        seen_by_chief = chief.resolve("latest").name
    assert seen_by_worker == seen_by_chief == "a"


def test_a_reader_looping_verify_beside_a_busy_writer_reports_no_false_damage(tmp_path):
    """A writer commits every step (a fixed name replaced in place, new names, prune) while we
    verify in a loop: every report of damage would be false."""
    run = tmp_path / "run"
    writer = subprocess.Popen(
        [sys.executable, CHILD, "commit-loop", str(run)], stdout=subprocess.PIPE
    )
    false_reports, calls = [], 0
    try:
        assert writer.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 6
        reader = CheckpointManager(run)
        while time.monotonic() < deadline:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # "Skipping checkpoint" would be false too
                results = reader.verify()
            calls += 1
            false_reports += [r for r in results if not r.ok]
            if writer.poll() is not None:
                break
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL, "the writer stopped on its own"
    assert calls > 10
    assert false_reports == []


def test_a_record_that_vanishes_while_listed_is_deleted_not_damaged(tmp_path, mocker):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        commit(manager, "b")
    reader = CheckpointManager(tmp_path)
    real_read = reader.storage.read_bytes

    def read_after_delete(relpath):
        if relpath == record_path("a"):  # deleted by the writer between listing and reading
            raise FileNotFoundError(relpath)
        return real_read(relpath)

    mocker.patch.object(reader.storage, "read_bytes", side_effect=read_after_delete)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [(r.name, r.ok) for r in reader.verify()] == [("b", True)]
        assert [r.name for r in reader.checkpoints()] == ["b"]


def test_a_file_replaced_between_reading_the_record_and_checking_it_is_re_read(tmp_path, mocker):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "last", {"last.bin": b"v1"})
    reader = CheckpointManager(tmp_path)
    records, _ = reader._journal.read()
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "last", {"last.bin": b"v2, longer"})  # the writer moves on
    mocker.patch.object(reader._journal, "read", return_value=(records, []))
    assert [(r.name, r.ok) for r in reader.verify()] == [("last", True)]
    assert json.loads((tmp_path / record_path("last")).read_text())["files"][0]["size"] == 10


# ----------------------------------------------------------------------------- odd entries


def test_a_refused_commit_into_a_linked_folder_leaves_the_users_link(tmp_path, outside):
    run = tmp_path / "run"
    run.mkdir()
    (run / "sub").symlink_to(outside)  # the user's own link, e.g. a folder on a bigger disk
    with CheckpointManager(run) as manager:
        with pytest.raises(UnsafeDirectoryError, match=r"sub is a symbolic link"):
            commit(manager, "x", {"sub/x.bin": b"x"})
    assert os.path.islink(run / "sub")  # undoing the refused commit removed nothing of the user's
    assert sorted(os.listdir(outside)) == ["victim.txt"]
    assert not (run / pending_path("x")).exists()


def test_deleting_one_of_two_records_naming_one_file_keeps_the_file(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a", {"shared.bin": b"s"})
        commit(manager, "b")
    a = json.loads((tmp_path / record_path("a")).read_text())
    b = json.loads((tmp_path / record_path("b")).read_text())
    b["files"] = a["files"]  # a record edited by hand to name a's file too
    (tmp_path / record_path("b")).write_text(json.dumps(b))
    with CheckpointManager(tmp_path) as manager:
        manager.delete("b")
        with pytest.raises(ForeignFileError, match="belongs to checkpoint 'a'"):
            commit(manager, "c", {"shared.bin": b"c"})
    assert [(r.name, r.ok) for r in CheckpointManager(tmp_path).verify()] == [("a", True)]


def _in_thread(call, seconds=5.0):
    """`call()` in a daemon thread; (finished, result)."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", call()), daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), out.get("result")


def _release(fifo):
    """Lets a reader blocked on opening `fifo` go (a writer appears and leaves)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_in_place_of_a_checkpoint_file_is_reported_never_waited_on(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        crashed = commit(manager, "a")
        commit(manager, "b")
    os.remove(tmp_path / "a.bin")
    os.mkfifo(tmp_path / "a.bin")
    write_pending(tmp_path, crashed)  # recovery and readers must check a.bin
    try:
        finished, results = _in_thread(lambda: CheckpointManager(tmp_path).verify())
        assert finished, "verify() blocked on a FIFO"
        assert [r.name for r in results] == ["b"]  # a's pending version is not whole: a is gone

        def open_for_writing():
            with CheckpointManager(tmp_path) as manager:
                manager.open_for_writing()
                return [r.name for r in manager.checkpoints()]

        finished, names = _in_thread(open_for_writing)
        assert finished, "recovery blocked on a FIFO"
        assert names == ["b"]
        assert stat.S_ISFIFO(os.lstat(tmp_path / "a.bin").st_mode)  # not ours: left alone
    finally:
        _release(tmp_path / "a.bin")


def test_resolve_latest_never_reports_damage_when_its_candidates_were_pruned_meanwhile(
    tmp_path, mocker
):
    writer = CheckpointManager(tmp_path)
    writer.open_for_writing()
    commit(writer, "c1")
    reader = CheckpointManager(tmp_path)
    real_problems = journal.Journal.problems
    moved_on = []

    def problems(self, record):
        if self is reader._journal and not moved_on:  # between listing and checking:
            moved_on.append(True)
            commit(writer, "c2")  # the writer commits the next one
            writer.prune(KeepLast(1))  # and prunes the one the reader listed
        return real_problems(self, record)

    mocker.patch.object(journal.Journal, "problems", problems)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert reader.resolve("latest").name == "c2"
    finally:
        writer.close()


def test_a_short_name_shaped_like_a_hashed_record_name_never_takes_a_long_names_record(tmp_path):
    long_name = "x" * 300  # its record file name is shortened and hashed
    lookalike = journal.record_path(long_name).rsplit("/", 1)[1].removesuffix(".json")
    with CheckpointManager(tmp_path) as manager:
        commit(manager, long_name, {"long.bin": b"l"})
        commit(manager, lookalike, {"short.bin": b"s"})
    results = CheckpointManager(tmp_path).verify()
    assert sorted((r.name, r.ok) for r in results) == sorted(
        [(long_name, True), (lookalike, True)]
    )  # before: the lookalike's record overwrote the long name's, whose checkpoint was lost
    assert journal.record_path(lookalike) != journal.record_path(long_name)


def test_replacing_a_one_file_checkpoint_by_several_files_in_place_is_refused(tmp_path):
    # Before: allowed, and a SIGKILL between publishing fixed.bin and extra.bin left neither
    # version whole; the next writer dropped the committed checkpoint ("Dropping checkpoint").
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "fixed", {"fixed.bin": b"v1"})
        with pytest.raises(ValueError, match="Cannot replace checkpoint 'fixed'.*in place"):
            commit(manager, "fixed", {"fixed.bin": b"v2", "extra.bin": b"e2"})
        commit(manager, "fixed", {"fixed-2.bin": b"v2", "extra.bin": b"e2"})  # new paths: safe
    assert [(r.name, r.ok) for r in CheckpointManager(tmp_path).verify()] == [("fixed", True)]
    assert not (tmp_path / "fixed.bin").exists()


def test_a_multi_file_checkpoint_is_never_replaced_in_place(tmp_path):
    manager = keras_ckpt.CheckpointManager(tmp_path)
    for _ in range(2):
        with manager.stage() as folder:
            files = {}
            for part in ("a", "b"):
                (Path(folder) / part).write_bytes(part.encode())
                files[f"ckpt/{part}"] = str(Path(folder) / part)
            if manager.checkpoints():
                with pytest.raises(
                    ValueError, match="Cannot replace checkpoint 'ckpt' .* in place"
                ):
                    manager.commit(files, name="ckpt", kind="training_state")
            else:
                manager.commit(files, name="ckpt", kind="training_state")
    manager.close()
    assert (tmp_path / "ckpt" / "a").read_bytes() == b"a"


@pytest.mark.xfail(
    strict=True,
    reason="recovery removes only files whose bytes match the pending record; the folder a killed "
    "publish created before its first rename stays behind, empty, forever (found by SIGKILL loops: "
    "1 orphan folder in ~20 kills)",
)
def test_recovery_removes_the_empty_folder_a_killed_publish_created(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        crashed = commit(manager, "b", {"b/x.bin": b"x", "b/y.bin": b"y"})
        manager.delete("b")
    write_pending(tmp_path, crashed)  # killed after publish made b/, before its first rename
    (tmp_path / "b").mkdir()
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()
    assert [r.name for r in CheckpointManager(tmp_path).checkpoints()] == ["a"]
    assert not (tmp_path / "b").exists()
