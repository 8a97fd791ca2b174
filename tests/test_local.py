"""Local storage: checksums, atomic writes, publish, remove, staging, the lock, disk faults."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import google_crc32c
import pytest
from conftest import commit

from keras_ckpt.errors import DirectoryLockedError, LockLostError, UnsafeDirectoryError
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.store.local import META_DIR, LocalStorage, seal_file

CHILD = os.path.join(os.path.dirname(__file__), "crash_commit_child.py")


def test_seal_file_checksum_is_the_crc32c_of_the_bytes(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    sealed = seal_file(path)
    assert sealed.size == len(data)
    assert sealed.checksum == f"crc32c:{google_crc32c.value(data):08x}"


def test_seal_file_of_an_empty_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert seal_file(tmp_path / "empty").checksum == "crc32c:00000000"


def test_seal_reads_the_stored_file_back(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert LocalStorage(tmp_path).seal("a.bin") == seal_file(tmp_path / "a.bin")


def test_write_atomic_creates_folders_and_writes(tmp_path):
    LocalStorage(tmp_path).write_atomic("x/y/r.json", b"one")
    assert (tmp_path / "x" / "y" / "r.json").read_bytes() == b"one"


def test_write_atomic_replaces_content_and_leaves_no_temp_file(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.write_atomic("r.json", b"old content")
    storage.write_atomic("r.json", b"new")
    assert (tmp_path / "r.json").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_atomic_keeps_the_old_bytes_when_the_rename_fails(tmp_path, mocker):
    storage = LocalStorage(tmp_path)
    storage.write_atomic("r.json", b"old")
    mocker.patch("keras_ckpt.store.local.os.replace", side_effect=OSError(errno.ENOSPC, "full"))
    with pytest.raises(OSError, match="full"):
        storage.write_atomic("r.json", b"new")
    assert (tmp_path / "r.json").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["r.json"]


def test_publish_moves_files_into_place_creating_subfolders(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a").write_bytes(b"A")
    (staging / "b").write_bytes(b"B")
    storage = LocalStorage(tmp_path / "run")
    storage.publish({"model.keras": str(staging / "a"), "sub/dir/extra.bin": str(staging / "b")})
    assert (tmp_path / "run" / "model.keras").read_bytes() == b"A"
    assert (tmp_path / "run" / "sub" / "dir" / "extra.bin").read_bytes() == b"B"
    assert os.listdir(staging) == []


def test_publish_replaces_an_existing_file(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"old")
    (tmp_path / "staged").write_bytes(b"new")
    LocalStorage(tmp_path).publish({"model.keras": str(tmp_path / "staged")})
    assert (tmp_path / "model.keras").read_bytes() == b"new"


def test_publish_fsyncs_the_parent_of_each_folder_it_creates(tmp_path, mocker):
    run = tmp_path / "run"
    run.mkdir()
    staged = tmp_path / "w"
    staged.write_bytes(b"w")
    synced = []
    real_fsync = os.fsync
    mocker.patch(
        "keras_ckpt.store.local.os.fsync",
        side_effect=lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)),
    )
    LocalStorage(run).publish({"backup-1/deep/w.h5": str(staged)})
    for folder in (run, run / "backup-1", run / "backup-1" / "deep"):
        assert os.stat(folder).st_ino in synced, folder


def test_remove_deletes_the_file_and_the_folders_it_leaves_empty(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f").write_bytes(b"x")
    (tmp_path / "a" / "keep").write_bytes(b"y")
    LocalStorage(tmp_path).remove("a/b/c/f")
    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a" / "keep").read_bytes() == b"y"


def test_remove_never_deletes_the_root(tmp_path):
    root = tmp_path / "run"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "only").write_bytes(b"x")
    LocalStorage(root).remove("sub/only")
    assert root.is_dir()
    assert os.listdir(root) == []


def test_remove_of_a_missing_file_is_fine(tmp_path):
    (tmp_path / "other.bin").write_bytes(b"x")
    assert LocalStorage(tmp_path).remove("not/there") is None  # no error, no link met
    assert os.listdir(tmp_path) == ["other.bin"]


def test_list_files_lists_files_only_and_nothing_for_a_missing_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"")
    storage = LocalStorage(tmp_path)
    assert storage.list_files(".") == ["f"]
    assert storage.list_files("missing") == []


def test_staging_gives_a_fresh_folder_inside_the_directory_and_removes_it(tmp_path):
    storage = LocalStorage(tmp_path)
    with storage.staging() as first, storage.staging() as second:
        assert first != second
        assert Path(first).is_relative_to(tmp_path / META_DIR)
        (Path(first) / "f").write_bytes(b"x")
    assert not Path(first).exists()


def test_clear_staging_removes_what_crashed_writers_left(tmp_path):
    storage = LocalStorage(tmp_path)
    left = tmp_path / META_DIR / "staging" / "dead-writer"
    left.mkdir(parents=True)
    (left / "model.keras").write_bytes(b"half")
    (tmp_path / META_DIR / ".tmp-0123").write_bytes(b"{")
    (tmp_path / META_DIR / "a.json").write_bytes(b"{}")
    (tmp_path / "user-file.txt").write_bytes(b"mine")
    storage.clear_staging()
    assert sorted(os.listdir(tmp_path / META_DIR)) == ["a.json"]
    assert (tmp_path / "user-file.txt").exists()


# ------------------------------------------------------------------------------ the lock


@pytest.fixture
def lock_holder(tmp_path):
    """A live process holding the writer lock of `tmp_path / "run"`; killed at teardown."""
    child = subprocess.Popen(
        [sys.executable, CHILD, "hold-lock", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        yield child
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_a_second_process_cannot_open_for_writing(tmp_path, lock_holder):
    with pytest.raises(DirectoryLockedError, match=rf"being written by process {lock_holder.pid} "):
        CheckpointManager(tmp_path / "run").open_for_writing()


def test_the_lock_of_a_killed_process_is_released(tmp_path, lock_holder):
    lock = tmp_path / "run" / META_DIR / "lock"
    assert json.loads(lock.read_text())["pid"] == lock_holder.pid
    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait()
    manager = CheckpointManager(tmp_path / "run")
    manager.open_for_writing()  # the kernel dropped the dead holder's flock: no waiting, no error
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    manager.close()


def test_a_failed_open_for_writing_leaves_reading_possible(tmp_path, lock_holder):
    manager = CheckpointManager(tmp_path / "run")
    with pytest.raises(DirectoryLockedError):
        manager.open_for_writing()
    assert manager.checkpoints() == []


def test_close_gives_the_lock_back_to_other_processes(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    manager.open_for_writing()
    manager.close()
    child = subprocess.Popen(
        [sys.executable, CHILD, "hold-lock", str(tmp_path / "run")], stdout=subprocess.PIPE
    )
    try:
        assert child.stdout.readline().strip() == b"ready"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_a_symlinked_lock_file_is_refused_and_its_target_left_whole(tmp_path, outside):
    run = tmp_path / "run"
    (run / META_DIR).mkdir(parents=True)
    (run / META_DIR / "lock").symlink_to(outside / "victim.txt")
    with pytest.raises(UnsafeDirectoryError, match=r"\.keras_ckpt/lock is a symbolic link"):
        CheckpointManager(run).open_for_writing()
    assert (outside / "victim.txt").read_text() == "precious"


def test_a_folder_in_place_of_the_lock_file_is_refused_clearly(tmp_path):
    (tmp_path / META_DIR / "lock").mkdir(parents=True)
    with pytest.raises(UnsafeDirectoryError, match=r"lock is not a regular file"):
        CheckpointManager(tmp_path).open_for_writing()


def test_a_writer_whose_directory_was_deleted_fails_loudly_and_recreates_nothing(tmp_path):
    run = tmp_path / "run"
    with CheckpointManager(run) as manager:
        commit(manager, "a")
        shutil.rmtree(run)
        with pytest.raises(LockLostError, match="deleted or replaced"):
            commit(manager, "b")
        with pytest.raises(LockLostError):
            manager.delete("a")
        assert not run.exists()
    with CheckpointManager(run) as fresh:  # asked for explicitly: a new manager starts anew
        commit(fresh, "c")
        assert [r.name for r in fresh.checkpoints()] == ["c"]


def test_a_writer_whose_lock_was_replaced_stops_before_the_next_commit(tmp_path):
    run = tmp_path / "run"
    with CheckpointManager(run) as manager:
        commit(manager, "a")
        os.remove(run / META_DIR / "lock")
        holder = subprocess.Popen(
            [sys.executable, CHILD, "hold-lock", str(run)], stdout=subprocess.PIPE
        )
        try:
            assert holder.stdout.readline() == b"ready\n"  # a second process now holds it
            with pytest.raises(LockLostError, match="Lost the writer lock"):
                commit(manager, "b")
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()
    assert [r.name for r in CheckpointManager(run).checkpoints()] == ["a"]


@pytest.mark.parametrize("moved", [META_DIR, ""], ids=["keras_ckpt", "directory"])
def test_a_directory_moved_away_during_a_commit_raises_lock_lost(tmp_path, mocker, moved):
    run = tmp_path / "run"
    with CheckpointManager(run) as manager:
        commit(manager, "a")
        real_publish = LocalStorage.publish

        def publish_after_move(self, staged):
            os.rename(run / moved if moved else run, tmp_path / "moved")  # by another process
            return real_publish(self, staged)

        mocker.patch.object(LocalStorage, "publish", publish_after_move)
        with pytest.raises(LockLostError, match="deleted or replaced"):
            commit(manager, "b")  # before: a bare FileNotFoundError naming a staged file
    assert not (run / META_DIR).exists()  # nothing re-created
    assert [r.name for r in CheckpointManager(tmp_path / "moved").checkpoints()] == (
        [] if moved else ["a"]
    )


# ------------------------------------------------------------------- links and odd entries


def test_a_symlinked_library_folder_is_refused_and_nothing_is_written_there(tmp_path, outside):
    run = tmp_path / "run"
    run.mkdir()
    (run / META_DIR).symlink_to(outside)
    with pytest.raises(UnsafeDirectoryError, match=r"\.keras_ckpt is a symbolic link"):
        CheckpointManager(run).open_for_writing()
    assert sorted(os.listdir(outside)) == ["victim.txt"]
    assert CheckpointManager(run).checkpoints() == []  # readers do not follow it either


@pytest.mark.parametrize("own", ["pending", "staging"])
def test_a_symlinked_own_folder_never_touches_outside_and_never_wedges(tmp_path, outside, own):
    run = tmp_path / "run"
    (run / META_DIR).mkdir(parents=True)
    (outside / "x.json").write_text("{ not a record")
    (outside / ".tmp-1").write_text("not ours either")
    (run / META_DIR / own).symlink_to(outside)
    before = sorted(os.listdir(outside))
    with pytest.warns(UserWarning, match=f"Removed the symbolic link .*{own}"):
        with CheckpointManager(run) as manager:
            commit(manager, "a")
    assert sorted(os.listdir(outside)) == before
    assert (outside / "victim.txt").read_text() == "precious"
    with CheckpointManager(run) as manager:  # later writers still open it
        commit(manager, "b")
    assert [r.ok for r in CheckpointManager(run).verify()] == [True, True]


@pytest.mark.parametrize("own", [META_DIR, f"{META_DIR}/pending", f"{META_DIR}/staging"])
def test_a_file_in_place_of_a_library_folder_is_refused_naming_its_path(tmp_path, own):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
    shutil.rmtree(tmp_path / own, ignore_errors=True)
    (tmp_path / own).write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"Not a folder.*{tmp_path / own}"):
        with CheckpointManager(tmp_path) as manager:
            commit(manager, "b")
    assert (tmp_path / own).read_text() == "not a folder"  # left for the user to look at
    expected = [] if own == META_DIR else ["a"]
    assert [r.name for r in CheckpointManager(tmp_path).checkpoints()] == expected


# ----------------------------------------------------------------------------- disk faults


@pytest.fixture
def run(tmp_path):
    """A directory with two good checkpoints, `a` and `b`, open for writing."""
    manager = CheckpointManager(tmp_path)
    commit(manager, "a", {"a.bin": b"A"})
    commit(manager, "b", {"b.bin": b"B"})
    yield manager
    manager.close()


def assert_previous_intact(directory):
    reader = CheckpointManager(directory)
    assert [r.name for r in reader.checkpoints()] == ["a", "b"]
    assert [result.ok for result in reader.verify()] == [True, True]


def pending(directory) -> list[str]:
    return LocalStorage(directory).list_files(f"{META_DIR}/pending")


ENOSPC = OSError(errno.ENOSPC, "No space left on device")
EACCES = PermissionError(errno.EACCES, "Permission denied")
FAULTS = pytest.mark.parametrize("error", [ENOSPC, EACCES], ids=["ENOSPC", "EACCES"])


@FAULTS
def test_a_publish_failure_surfaces_from_commit_and_commits_nothing(tmp_path, run, mocker, error):
    mocker.patch.object(LocalStorage, "publish", side_effect=error)
    with pytest.raises(OSError, match=error.strerror):
        commit(run, "c")
    assert [r.name for r in run.checkpoints()] == ["a", "b"]
    assert not (tmp_path / META_DIR / "c.json").exists()
    assert pending(tmp_path) == []
    assert_previous_intact(tmp_path)


@FAULTS
def test_a_rename_failure_surfaces_from_commit_and_commits_nothing(tmp_path, run, mocker, error):
    mocker.patch("keras_ckpt.store.local.os.replace", side_effect=error)
    with pytest.raises(OSError, match=error.strerror):
        commit(run, "c")
    mocker.stopall()
    assert [r.name for r in run.checkpoints()] == ["a", "b"]
    assert not (tmp_path / "c.bin").exists()
    assert_previous_intact(tmp_path)


def fail_on_record_write(mocker, error):
    """Lets data files and pending records through; writing the record itself fails."""
    real = LocalStorage.write_atomic

    def write_atomic(self, relpath, data):
        if relpath.startswith(f"{META_DIR}/") and "/pending/" not in relpath:
            raise error
        return real(self, relpath, data)

    mocker.patch.object(LocalStorage, "write_atomic", write_atomic)


@FAULTS
def test_a_record_write_failure_commits_nothing_and_removes_the_published_file(
    tmp_path, run, mocker, error
):
    fail_on_record_write(mocker, error)
    with pytest.raises(OSError, match=error.strerror):
        commit(run, "c")
    mocker.stopall()
    assert [r.name for r in run.checkpoints()] == ["a", "b"]
    assert not (tmp_path / "c.bin").exists()
    assert pending(tmp_path) == []
    assert_previous_intact(tmp_path)


def test_a_commit_can_be_retried_after_a_disk_fault(tmp_path, run, mocker):
    fail_on_record_write(mocker, ENOSPC)
    with pytest.raises(OSError, match="No space left"):
        commit(run, "c")
    mocker.stopall()
    commit(run, "c")
    assert [r.name for r in run.checkpoints()] == ["a", "b", "c"]


def test_a_failed_replacement_is_settled_by_the_next_writer(tmp_path, run, mocker):
    fail_on_record_write(mocker, ENOSPC)
    with pytest.raises(OSError, match="No space left"):
        commit(run, "b", {"b.bin": b"new B"})
    mocker.stopall()
    run.close()
    with CheckpointManager(tmp_path) as next_writer:
        next_writer.open_for_writing()
        assert next_writer.get("b").files[0].size == len(b"new B")
    assert [result.ok for result in CheckpointManager(tmp_path).verify()] == [True, True]


@pytest.mark.parametrize("call", ["ftruncate", "pwrite"])
def test_a_disk_fault_while_writing_the_lock_holder_leaves_the_directory_unlocked(
    tmp_path, mocker, call
):
    mocker.patch(f"keras_ckpt.store.local.os.{call}", side_effect=ENOSPC)
    with pytest.raises(OSError, match=ENOSPC.strerror):
        CheckpointManager(tmp_path).open_for_writing()
    mocker.stopall()  # the disk has room again: the next writer opens, in this process too
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()


def test_a_disk_fault_while_releasing_the_lock_still_releases_it(tmp_path, mocker):
    manager = CheckpointManager(tmp_path)
    manager.open_for_writing()
    mocker.patch("keras_ckpt.store.local.os.ftruncate", side_effect=OSError(errno.EIO, "I/O error"))
    with pytest.raises(OSError, match="I/O error"):
        manager.close()
    mocker.stopall()
    with CheckpointManager(tmp_path) as again:
        again.open_for_writing()


# ---------------------------------------------------------------- errors that name the path


def test_a_read_only_mount_names_the_lock_file_not_just_lock(tmp_path, mocker):
    CheckpointManager(tmp_path).open_for_writing()  # the folder exists; now the mount is read-only
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", os.path.basename(path))
        return real_open(path, flags, *args, **kwargs)

    mocker.patch("keras_ckpt.store.local.os.open", side_effect=read_only)
    with pytest.raises(
        OSError,
        match=r"Read-only file system: keras-ckpt cannot take the writer "
        rf"lock of {tmp_path}: '{tmp_path}/{META_DIR}/lock'",
    ):
        LocalStorage(tmp_path).lock()


@pytest.mark.parametrize("below", ["", "runs", "runs/exp1"])
def test_a_directory_below_a_file_names_the_file(tmp_path, below):
    (tmp_path / "notes.txt").write_text("mine")
    root = tmp_path / "notes.txt" / below if below else tmp_path / "notes.txt"
    with pytest.raises(NotADirectoryError, match=rf"a file is in the way.*'{tmp_path}/notes.txt'"):
        CheckpointManager(root).open_for_writing()
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux's /proc")
def test_a_folder_that_cannot_be_created_is_named_in_full():
    """/proc/self exists, but nothing can be created in it: the error once said '.keras_ckpt'."""
    with pytest.raises(
        OSError, match=r"cannot create or open its folder: '/proc/self/.keras_ckpt'"
    ):
        LocalStorage("/proc/self").lock()
