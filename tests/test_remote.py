"""FsspecStorage against a real S3 server (moto on loopback) and fsspec's memory:// file system."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import fsspec
import numpy as np
import pytest

from keras_ckpt import CheckpointManager
from keras_ckpt.errors import CorruptCheckpointError, DirectoryLockedError, LockLostError
from keras_ckpt.policies import KeepLast
from keras_ckpt.store import remote, storage_for
from keras_ckpt.store.local import META_DIR, LocalStorage, seal_file
from keras_ckpt.store.remote import FsspecStorage, _machine, _staleness

pytest_plugins = ["s3_server"]


@pytest.fixture(params=["s3", "memory"])
def url(request) -> str:
    """A fresh directory on S3 (moto server) or in fsspec's memory file system."""
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
    return f"memory://keras-ckpt-{uuid.uuid4().hex[:12]}/run"


def commit_bytes(manager, name, data=b"weights", path=None, **meta):
    with manager.stage() as folder:
        source = os.path.join(folder, "file")
        with open(source, "wb") as f:
            f.write(data)
        return manager.commit({path or name: source}, name=name, kind="weights", **meta)


def objects(url: str) -> list[str]:
    """The objects under `url`, the run history's log entries left out (test_history's)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    found = (p[len(root.rstrip("/")) + 1 :] for p in fs.find(root))
    return sorted(p for p in found if not p.startswith(f"{META_DIR}/history.jsonl.d/"))


def write_lock(url: str, **holder) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/{META_DIR}/lock", json.dumps(holder).encode())


def read_lock(url: str) -> dict:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{root}/{META_DIR}/lock"))


def fast_storage(url: str) -> FsspecStorage:
    return FsspecStorage(url, lock_timeout=1.0, heartbeat_interval=0.1)


class FakeClock:
    """The object-store lock's wall clock (`remote._clock`): it moves when the test moves it."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock(time.time())
    monkeypatch.setattr(remote, "_clock", fake)
    return fake


def wait_for(read, done, seconds: float = 60.0):
    """`read()` once `done(read())` (what a background thread writes shows up), else fails."""
    deadline = time.monotonic() + seconds
    while not done(value := read()):
        assert time.monotonic() < deadline, f"still {value!r} after {seconds} s"
        time.sleep(0.01)
    return value


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ commit and read


def test_storage_for_picks_fsspec_for_urls_and_local_for_file_urls(tmp_path):
    assert isinstance(storage_for("memory://x/run"), FsspecStorage)
    local = storage_for(f"file://{tmp_path}")
    assert isinstance(local, LocalStorage) and local.root == str(tmp_path)


def test_commit_uploads_files_then_record_and_a_new_reader_sees_it(url):
    with CheckpointManager(url) as manager:
        record = commit_bytes(manager, "w-001.weights.h5", b"abc", epoch=1, metrics={"loss": 0.5})
    assert objects(url) == [f"{META_DIR}/w-001.weights.h5.json", "w-001.weights.h5"]
    reader = CheckpointManager(url)
    assert [r.name for r in reader.checkpoints()] == ["w-001.weights.h5"]
    assert reader.latest() == record
    assert record.files[0].size == 3
    assert reader.verify()[0].ok


def test_reader_sees_a_checkpoint_committed_after_its_first_listing(url):
    reader = CheckpointManager(url)
    assert reader.checkpoints() == []
    with CheckpointManager(url) as writer:
        commit_bytes(writer, "a")
        assert [r.name for r in reader.checkpoints()] == ["a"]
        commit_bytes(writer, "b")
    assert reader.latest().name == "b"


def test_seal_matches_the_local_checksum_format(url, tmp_path):
    local = tmp_path / "f"
    local.write_bytes(os.urandom(1000))
    with CheckpointManager(url) as manager:
        commit_bytes(manager, "x", local.read_bytes())
    assert FsspecStorage(url).seal("x") == seal_file(local, sync=False)


def test_verify_reports_a_flipped_byte_and_latest_skips_it(url):
    with CheckpointManager(url) as manager:
        commit_bytes(manager, "old", b"good bytes")
        commit_bytes(manager, "new", b"more bytes")
    fs, root = fsspec.core.url_to_fs(url)
    data = bytearray(fs.cat_file(f"{root}/new"))
    data[3] ^= 0xFF
    fs.pipe_file(f"{root}/new", bytes(data))

    results = {r.name: r for r in CheckpointManager(url).verify()}
    assert results["old"].ok
    assert not results["new"].ok and "checksum mismatch" in results["new"].problems[0]
    with pytest.warns(UserWarning, match="new .* is damaged"):
        assert CheckpointManager(url).resolve("latest").name == "old"
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        CheckpointManager(url).resolve("new")


def test_prune_deletes_record_before_files(url, mocker):
    with CheckpointManager(url) as manager:
        for i in range(3):
            commit_bytes(manager, f"c{i}", path=f"sub/c{i}.bin")
        remove = mocker.spy(manager.storage, "remove")
        result = manager.prune(KeepLast(1))
    assert [r.name for r in result.deleted] == ["c0", "c1"]
    removed = [c.args[0] for c in remove.call_args_list]
    for i in (0, 1):
        assert removed.index(f"{META_DIR}/c{i}.json") < removed.index(f"sub/c{i}.bin")
    assert objects(url) == [f"{META_DIR}/c2.json", "sub/c2.bin"]


def test_failed_upload_raises_and_leaves_no_record_nor_orphan(url, mocker):
    with CheckpointManager(url) as manager:
        put_file = manager.storage.fs.put_file
        calls = []

        def flaky(lpath, rpath, **kwargs):
            calls.append(rpath)
            if len(calls) == 2:
                raise OSError("connection reset by peer")
            return put_file(lpath, rpath, **kwargs)

        mocker.patch.object(manager.storage.fs, "put_file", side_effect=flaky)
        with manager.stage() as folder:
            for part in ("a", "b"):
                with open(os.path.join(folder, part), "wb") as f:
                    f.write(part.encode())
            files = {"ckpt/a.bin": os.path.join(folder, "a"), "ckpt/b.bin": f"{folder}/b"}
            with pytest.raises(OSError, match="connection reset"):
                manager.commit(files, name="ckpt", kind="weights")
            assert manager.checkpoints() == []
            assert objects(url) == [f"{META_DIR}/lock"]  # the uploaded "a.bin" was taken back
            assert CheckpointManager(url).checkpoints() == []

            manager.commit(files, name="ckpt", kind="weights")  # a retry is not refused
    assert [r.name for r in CheckpointManager(url).checkpoints()] == ["ckpt"]


# ------------------------------------------------------------------ Keras files


def test_load_model_and_load_weights_from_s3(s3_url, make_model, data):
    x, y = data
    model = make_model()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    with CheckpointManager(s3_url) as manager, manager.stage() as folder:
        model.save(os.path.join(folder, "m.keras"))
        model.save_weights(os.path.join(folder, "m.weights.h5"))
        manager.commit({"model-001.keras": f"{folder}/m.keras"}, name="m", kind="model")
        manager.commit({"w-001.weights.h5": f"{folder}/m.weights.h5"}, name="w", kind="weights")

    reader = CheckpointManager(s3_url)
    loaded = reader.load_model("m")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    other = make_model(seed=1)
    assert reader.load_weights(other, "latest").name == "w"
    for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_weights_from_memory(make_model, data):
    url = f"memory://keras-ckpt-{uuid.uuid4().hex[:12]}/run"
    model = make_model()
    model.fit(*data, epochs=1, batch_size=16, verbose=0)
    with CheckpointManager(url) as manager, manager.stage() as folder:
        model.save_weights(os.path.join(folder, "w.weights.h5"))
        manager.commit({"w.weights.h5": f"{folder}/w.weights.h5"}, name="w", kind="weights")
    other = make_model(seed=1)
    CheckpointManager(url).load_weights(other)
    for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_writes_to_an_s3_filepath_during_fit(s3_url, make_model, data):
    import keras_ckpt

    x, y = data
    model = make_model()
    checkpoint = keras_ckpt.ModelCheckpoint(
        f"{s3_url}/models/model-{{epoch:02d}}.keras", monitor="loss", keep_last=2
    )
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[checkpoint])

    manager = CheckpointManager(f"{s3_url}/models")
    assert [r.name for r in manager.checkpoints()] == ["model-02.keras", "model-03.keras"]
    assert sorted(objects(f"{s3_url}/models")) == [
        f"{META_DIR}/model-02.keras.json",
        f"{META_DIR}/model-03.keras.json",
        "model-02.keras",
        "model-03.keras",
    ]  # model-01 pruned, and the lock released at the end of fit
    assert all(r.ok for r in manager.verify())
    loaded = manager.load_model("latest")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# ------------------------------------------------------------------ the writer lock


def test_second_writer_process_is_refused_naming_the_holder(s3_url):
    code = (
        "import sys\n"
        "from keras_ckpt.manager import CheckpointManager\n"
        "from keras_ckpt.errors import DirectoryLockedError\n"
        "try:\n"
        "    CheckpointManager(sys.argv[1]).open_for_writing()\n"
        "except DirectoryLockedError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    with CheckpointManager(s3_url) as manager:
        manager.open_for_writing()
        proc = subprocess.run(
            [sys.executable, "-c", code, s3_url], capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 3, proc.stderr
    assert f"process {os.getpid()} on host {socket.gethostname()}" in proc.stdout


def test_lock_is_released_on_close_and_shared_inside_one_process(url):
    first, second = CheckpointManager(url), CheckpointManager(url)
    first.open_for_writing()
    second.open_for_writing()  # same process: one lock, shared
    assert f"{META_DIR}/lock" in objects(url)
    first.close()
    assert f"{META_DIR}/lock" in objects(url)
    second.close()
    assert f"{META_DIR}/lock" not in objects(url)


def test_live_lock_of_another_host_is_refused(url):
    now = time.time()
    write_lock(url, pid=4242, host="trainer-7", since=now - 60, heartbeat=now, token="t")
    with pytest.raises(DirectoryLockedError, match="process 4242 on host trainer-7"):
        CheckpointManager(url).open_for_writing()


def test_lock_of_an_exited_process_on_this_host_is_taken_over(url):
    now = time.time()
    pid = dead_pid()
    holder = {"pid": pid, "host": socket.gethostname(), "machine": _machine()}
    write_lock(url, **holder, since=now, heartbeat=now, token="t")
    with pytest.warns(UserWarning, match=f"process {pid} on this host has exited"):
        with CheckpointManager(url) as manager:
            commit_bytes(manager, "a")
    assert CheckpointManager(url).latest().name == "a"


@pytest.mark.parametrize("machine", [None, "another-boot/pid:[4026531836]"])
def test_live_lock_from_another_machine_with_the_same_hostname_is_refused(url, machine):
    """`algo-1` on two machines: a pid that is dead here may be alive there; wait it out."""
    now = time.time()
    holder = {"pid": dead_pid(), "host": socket.gethostname(), "machine": machine}
    write_lock(url, **holder, since=now, heartbeat=now, token="t")
    with pytest.raises(DirectoryLockedError, match="is being written by process"):
        CheckpointManager(url).open_for_writing()
    holder["pid"] = os.getpid()  # same pid as ours: a different process on the other machine
    write_lock(url, **holder, since=now, heartbeat=now, token="t")
    with pytest.raises(DirectoryLockedError, match="is being written by process"):
        CheckpointManager(url).open_for_writing()


def test_silent_lock_is_taken_over_after_the_timeout(url, clock):
    old = clock.now - 5
    write_lock(url, pid=4242, host="trainer-7", since=old, heartbeat=old, token="t")
    with pytest.warns(UserWarning, match="no heartbeat for 5 s"):
        with CheckpointManager(url, storage=fast_storage(url)) as manager:
            commit_bytes(manager, "a")


def test_heartbeat_keeps_a_held_lock_from_going_stale(url, clock):
    with CheckpointManager(url, storage=fast_storage(url)) as manager:
        manager.open_for_writing()
        taken = read_lock(url)["heartbeat"]
        # Twice lock_timeout (1 s) passes, in steps shorter than it: each step's heartbeat renews
        # the lease before the next (one jump past the timeout would expire it, rightly).
        for _ in range(4):
            clock.now += 0.5
            holder = wait_for(lambda: read_lock(url), lambda h: h["heartbeat"] == clock.now)
        commit_bytes(manager, "a")  # the holder still counts the lock as its own: it writes
        holder["host"] = "trainer-7"  # judged as from another host: still alive
        assert _staleness(holder, timeout=1.0, now=clock.now) is None
        assert _staleness({**holder, "heartbeat": taken}, timeout=1.0, now=clock.now) is not None


def test_writer_whose_lock_was_taken_over_stops_writing(url, monkeypatch):
    noticed = threading.Event()
    mark_lost = remote._ObjectLock._mark_lost

    def mark_and_tell(lock, error):
        mark_lost(lock, error)
        noticed.set()

    monkeypatch.setattr(remote._ObjectLock, "_mark_lost", mark_and_tell)
    with CheckpointManager(url, storage=fast_storage(url)) as manager:
        commit_bytes(manager, "a")
        now = time.time()
        write_lock(url, pid=4242, host="trainer-7", since=now, heartbeat=now + 60, token="t")
        # the writer's next heartbeat finds the lock is no longer its own
        assert noticed.wait(timeout=60), "no heartbeat noticed the takeover"
        with pytest.raises(DirectoryLockedError, match="taken over by process 4242"):
            commit_bytes(manager, "b")
    assert [r.name for r in CheckpointManager(url).checkpoints()] == ["a"]
    assert f"{META_DIR}/lock" in objects(url)  # the new holder's lock is left alone


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "bucket/run"}, "Expected an fsspec URL"),
        ({"url": "memory://r", "lock_timeout": 0}, "lock_timeout=0"),
        ({"url": "memory://r", "heartbeat_interval": True}, "heartbeat_interval=True"),
        ({"url": "memory://r", "lock_timeout": 5, "heartbeat_interval": 5}, "shorter than"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FsspecStorage(**kwargs)


def test_nearest_valid_arguments_are_accepted():
    storage = FsspecStorage("memory://r/", lock_timeout=5, heartbeat_interval=4.9)
    assert storage.url == "memory://r"
    assert (storage.lock_timeout, storage.heartbeat_interval) == (5.0, 4.9)


# ------------------------------------------------------------------ the lock is a lease

# A holder paused past `lock_timeout` (its heartbeat thread never runs: the interval is 599 s)
# is taken over; at its next change it must stop, not write beside the new holder.
LEASE = {"lock_timeout": 600.0, "heartbeat_interval": 599.0}


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def take_over_in_another_process(url: str, skew: float) -> str:
    """Takes the writer lock of `url` from a process whose clock runs `skew` s ahead (as the
    world's does after the holder slept that long); leaves it held. Returns its token."""
    code = (
        "import sys, time, warnings\n"
        "from keras_ckpt.store.remote import FsspecStorage\n"
        "skew = float(sys.argv[2])\n"
        "storage = FsspecStorage(sys.argv[1], lock_timeout=600.0, heartbeat_interval=599.0,\n"
        "                        clock=lambda: time.time() + skew)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    lock = storage.lock()\n"
        "print(lock.token)\n"
        "print(caught[0].message if caught else 'no warning')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, url, str(skew)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    token, warning = proc.stdout.splitlines()
    assert re.search(r"Took over the writer lock .*: no heartbeat for 7\d\d s", warning), warning
    return token


def lock_token(url: str) -> str:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{root}/{META_DIR}/lock"))["token"]


def test_holder_paused_past_the_timeout_stops_after_a_takeover_on_s3(s3_url):
    clock = Clock()
    manager = CheckpointManager(s3_url, storage=FsspecStorage(s3_url, clock=clock, **LEASE))
    commit_bytes(manager, "a")
    before = objects(s3_url)
    clock.now += 700  # paused for 700 s: no heartbeat since
    taker = take_over_in_another_process(s3_url, skew=700)
    with pytest.raises(LockLostError, match=r"lost its writer lock: its last heartbeat .* 700 s"):
        commit_bytes(manager, "b")
    manager.close()
    assert objects(s3_url) == before  # no pending record, no file, and the taker's lock kept
    assert lock_token(s3_url) == taker
    assert [r.name for r in CheckpointManager(s3_url).checkpoints()] == ["a"]


def test_holder_paused_past_the_timeout_stops_after_a_takeover_on_memory(mocker):
    url = f"memory://keras-ckpt-{uuid.uuid4().hex[:12]}/run"
    clock = Clock()
    manager = CheckpointManager(url, storage=FsspecStorage(url, clock=clock, **LEASE))
    commit_bytes(manager, "a")
    before = objects(url)
    clock.now += 700
    # memory:// lives in this process: the taker plays a process on another machine, whose lock
    # judgement can only go by the heartbeat's age.
    mocker.patch("keras_ckpt.store.remote._machine", return_value="another-boot/pid:[1]")
    with pytest.warns(UserWarning, match="no heartbeat for 700 s"):
        taker = FsspecStorage(url, clock=clock, **LEASE).lock()
    with pytest.raises(LockLostError, match=f"{url} lost its writer lock: .* 700 s ago"):
        commit_bytes(manager, "b")
    with pytest.raises(LockLostError):
        manager.delete("a")
    manager.close()
    assert objects(url) == before
    assert lock_token(url) == taker.token
    taker.release()


def test_an_expired_lease_nobody_took_is_given_back(url):
    clock = Clock()
    manager = CheckpointManager(url, storage=FsspecStorage(url, clock=clock, **LEASE))
    commit_bytes(manager, "a")
    clock.now += 601
    with pytest.raises(LockLostError, match="more than lock_timeout"):
        commit_bytes(manager, "b")
    manager.close()
    assert f"{META_DIR}/lock" not in objects(url)  # no one has to wait it out
    with CheckpointManager(url) as again:
        commit_bytes(again, "b")
    assert [r.name for r in CheckpointManager(url).checkpoints()] == ["a", "b"]


def test_a_lease_within_the_timeout_keeps_writing(url):
    clock = Clock()
    with CheckpointManager(url, storage=FsspecStorage(url, clock=clock, **LEASE)) as manager:
        commit_bytes(manager, "a")
        clock.now += 599
        commit_bytes(manager, "b")
    assert [r.name for r in CheckpointManager(url).checkpoints()] == ["a", "b"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0, True, None, "600"])
def test_lock_timeout_must_be_a_positive_finite_number(value):
    with pytest.raises(ValueError) as raised:
        FsspecStorage("memory://r", lock_timeout=value)
    assert str(raised.value) == (
        "Invalid value for argument `lock_timeout`. Expected a positive number of seconds. "
        f"Received: lock_timeout={value!r}"
    )


def test_a_nan_heartbeat_in_a_lock_object_is_stale(url):
    write_lock(url, pid=4242, host="trainer-7", since=0, heartbeat=float("nan"), token="t")
    with pytest.warns(UserWarning, match="heartbeat is not a time"):
        with CheckpointManager(url) as manager:
            commit_bytes(manager, "a")


def test_a_lease_that_runs_out_during_an_upload_stops_like_a_killed_writer(mocker):
    url = f"memory://keras-ckpt-{uuid.uuid4().hex[:12]}/run"
    clock = Clock()
    storage = FsspecStorage(url, clock=clock, **LEASE)
    publish = storage.publish

    def slow_publish(staged):
        publish(staged)
        clock.now += 700  # the upload took longer than the lease

    mocker.patch.object(storage, "publish", side_effect=slow_publish)
    manager = CheckpointManager(url, storage=storage)
    with pytest.raises(LockLostError, match="more than lock_timeout"):
        commit_bytes(manager, "a")
    # No record, and nothing undone: the directory may have a new writer by now.
    assert objects(url) == [f"{META_DIR}/pending/a.json", "a"]
    manager.close()
    # The next writer settles it as it settles a writer killed after its upload.
    assert [r.name for r in CheckpointManager(url).checkpoints()] == ["a"]


def test_a_gs_path_without_gcsfs_says_to_install_the_gcs_extra():
    """`[remote]` brings s3fs, not gcsfs: the hint for gs:// is the `gcs` extra, which has it."""
    import importlib.util
    from pathlib import Path

    import tomllib

    import keras_ckpt

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(
        ImportError, match=r"gs://bucket/runs needs .*pip install 'keras-ckpt\[gcs\]'"
    ):
        keras_ckpt.BackupAndRestore("gs://bucket/runs")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert any(req.startswith("gcsfs>=") for req in extras["gcs"])
    assert not any(req.startswith("gcsfs") for req in extras["remote"])
