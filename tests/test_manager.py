"""CheckpointManager: listing, verifying, resolving, pruning, committing, recovery and loading."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace

import google_crc32c
import numpy as np
import pytest
from conftest import (
    Capture,
    assert_same_state,
    awkward_model,
    build_model,
    commit,
    fail_removing,
    fresh_like,
    state_of,
)

import keras_ckpt
from keras_ckpt.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ForeignFileError,
)
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import KeepBest, KeepLast, Policy
from keras_ckpt.records import FileEntry, Record
from keras_ckpt.store.local import META_DIR, LocalStorage

CHILD = os.path.join(os.path.dirname(__file__), "crash_commit_child.py")


def reader(directory) -> CheckpointManager:
    return CheckpointManager(directory)


def pending(directory) -> list[str]:
    return LocalStorage(directory).list_files(f"{META_DIR}/pending")


def names(records) -> list[str]:
    return [r.name for r in records]


# --------------------------------------------------------------------------------- reading


def test_checkpoints_are_listed_in_commit_order(tmp_path, manager):
    for name in ("c", "a", "b"):
        commit(manager, name)
    assert names(manager.checkpoints()) == ["c", "a", "b"]
    assert names(reader(tmp_path).checkpoints()) == ["c", "a", "b"]


def test_checkpoints_of_one_owner(manager):
    commit(manager, "a", owner="mc")
    commit(manager, "b", owner="backup")
    assert names(manager.checkpoints(owner="mc")) == ["a"]


def test_a_malformed_record_is_skipped_with_a_warning_naming_its_file(tmp_path, manager):
    commit(manager, "a")
    commit(manager, "b")
    (tmp_path / META_DIR / "a.json").write_text("{ not json")
    with pytest.warns(UserWarning, match=r"Skipping checkpoint: .*\.keras_ckpt/a\.json"):
        listed = reader(tmp_path).checkpoints()
    assert names(listed) == ["b"]


def test_the_other_checkpoints_stay_usable_beside_a_malformed_record(tmp_path, manager):
    commit(manager, "a")
    commit(manager, "b")
    (tmp_path / META_DIR / "a.json").write_text('{"format_version": 1}')
    with pytest.warns(UserWarning, match="a.json"):
        assert reader(tmp_path).resolve("latest").name == "b"


def test_a_record_not_named_after_its_checkpoint_is_skipped(tmp_path, manager):
    commit(manager, "a")
    os.rename(tmp_path / META_DIR / "a.json", tmp_path / META_DIR / "b.json")
    with pytest.warns(UserWarning, match=r"b\.json holds checkpoint 'a'"):
        assert reader(tmp_path).checkpoints() == []


def test_a_missing_directory_holds_no_checkpoints(tmp_path):
    missing = reader(tmp_path / "never-written")
    assert (missing.checkpoints(), missing.latest()) == ([], None)
    assert not (tmp_path / "never-written").exists()


def test_get_returns_the_named_checkpoint(manager):
    commit(manager, "a")
    assert manager.get("a").path == "a.bin"


def test_get_of_an_unknown_name_lists_the_names_there(manager):
    commit(manager, "first")
    commit(manager, "second")
    with pytest.raises(CheckpointNotFoundError, match=r"No checkpoint named 'x'.*: first, second"):
        manager.get("x")


def test_latest_is_the_last_committed(manager):
    commit(manager, "b")
    commit(manager, "a")
    assert manager.latest().name == "a"


def test_checkpoints_rejects_an_owner_that_is_not_a_string(manager):
    commit(manager, "a", owner="5")
    with pytest.raises(ValueError, match=r"argument `owner`.*Received: owner=5"):
        manager.checkpoints(owner=5)
    assert names(manager.checkpoints(owner="5")) == ["a"]


@pytest.mark.parametrize("dry_run", ["no", 0, None])
def test_prune_rejects_a_dry_run_that_is_not_a_bool(tmp_path, manager, dry_run):
    commit(manager, "a")
    commit(manager, "b")
    with pytest.raises(ValueError, match=r"argument `dry_run`\. Expected True or False"):
        manager.prune(KeepLast(1), dry_run=dry_run)
    assert names(reader(tmp_path).checkpoints()) == ["a", "b"]


def test_prune_rejects_an_owner_that_is_not_a_string(manager):
    with pytest.raises(ValueError, match=r"argument `owner`"):
        manager.prune(KeepLast(1), owner=5)


def test_prune_beside_a_record_whose_metric_overflows_skips_it_and_completes(tmp_path):
    with CheckpointManager(tmp_path) as writer:
        for name in "abc":
            commit(writer, name, metrics={"val_loss": 0.5})
    record = tmp_path / META_DIR / "b.json"
    record.write_text(record.read_text().replace('"val_loss": 0.5', '"val_loss": 1e999'))
    with CheckpointManager(tmp_path) as manager:
        with pytest.warns(UserWarning, match=r"Skipping checkpoint: .*b\.json.*1e999"):
            result = manager.prune(KeepLast(1))
        assert names(result.deleted) == ["a"]
    assert (tmp_path / "b.bin").exists()  # no readable record names it: never deleted


@dataclass(frozen=True)
class OneShort(Policy):
    """A user's policy with an off-by-one: it answers for all records but the newest."""

    def reasons(self, records):
        return [("mine",)] * (len(records) - 1)


@pytest.mark.parametrize("policy", [OneShort(), OneShort() | KeepLast(1)], ids=["alone", "or"])
def test_prune_deletes_nothing_when_a_policy_answers_for_too_few(tmp_path, manager, policy):
    for name in "abcd":
        commit(manager, name)
    with pytest.raises(ValueError, match=r"OneShort\(\) answered for 3 checkpoints, expected 4"):
        manager.prune(policy)
    assert names(reader(tmp_path).checkpoints()) == ["a", "b", "c", "d"]


# -------------------------------------------------------------------------------- verifying


@pytest.fixture
def three(tmp_path, manager):
    """Checkpoints a, b and c (b has two files), committed."""
    commit(manager, "a")
    commit(manager, "b", {"b/model.bin": b"model-bytes", "b/extra.bin": b"extra"})
    commit(manager, "c")
    return tmp_path


def results(directory) -> dict[str, tuple[bool, tuple[str, ...]]]:
    return {r.name: (r.ok, r.problems) for r in reader(directory).verify()}


def test_verify_reports_every_intact_checkpoint_as_ok(three):
    assert results(three) == {"a": (True, ()), "b": (True, ()), "c": (True, ())}


def test_verify_reports_a_missing_file(three):
    os.remove(three / "b" / "extra.bin")
    assert results(three)["b"] == (False, ("b/extra.bin: missing file",))


def test_verify_reports_a_checksum_mismatch(three):
    (three / "b" / "model.bin").write_bytes(b"MODEL-BYTES")  # same size, other bytes
    ok, problems = results(three)["b"]
    assert not ok
    assert problems[0].startswith("b/model.bin: checksum mismatch")


def test_verify_reports_a_size_mismatch(three):
    (three / "b" / "model.bin").write_bytes(b"model-by")  # truncated
    assert results(three)["b"] == (False, ("b/model.bin: size 8 bytes, record says 11",))


def test_verify_reports_an_unreadable_record_by_its_path(three):
    (three / META_DIR / "c.json").write_bytes(b"\x00\x01")
    (result,) = [r for r in reader(three).verify() if not r.ok]
    assert result.name.endswith(f"{META_DIR}/c.json")
    assert "Unreadable checkpoint record" in result.problems[0]


def test_verify_one_checkpoint_by_name(three):
    os.remove(three / "a.bin")
    assert [(r.name, r.ok) for r in reader(three).verify("c")] == [("c", True)]


def test_resolve_latest_skips_a_damaged_newest_with_a_warning_naming_the_file(three):
    (three / "c.bin").write_bytes(b"X")
    with pytest.warns(UserWarning, match=r"Checkpoint c in .* is damaged \(c\.bin: checksum"):
        assert reader(three).resolve("latest").name == "b"


def test_resolve_of_a_damaged_named_checkpoint_raises(three):
    os.remove(three / "a.bin")
    with pytest.raises(CorruptCheckpointError, match="Checkpoint a .* damaged: a.bin: missing"):
        reader(three).resolve("a")


def test_resolve_latest_when_every_checkpoint_is_damaged_raises(three):
    for path in ("a.bin", "b/model.bin", "c.bin"):
        os.remove(three / path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptCheckpointError, match="Every candidate for 'latest'"):
            reader(three).resolve("latest")


def test_resolve_latest_in_an_empty_directory_raises_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="No checkpoint in .* to use as 'latest'"):
        reader(tmp_path).resolve("latest")


# ---------------------------------------------------------------------------------- pruning


@pytest.fixture
def five(tmp_path, manager):
    """ckpt-0 .. ckpt-4 with val_loss 0.1, 0.5, 0.2, 0.9, 0.8."""
    for i, loss in enumerate((0.1, 0.5, 0.2, 0.9, 0.8)):
        commit(manager, f"ckpt-{i}", metrics={"val_loss": loss})
    return manager


def test_prune_returns_what_it_kept_with_reasons_and_what_it_deleted(five):
    result = five.prune(KeepBest(2, monitor="val_loss"))
    assert [(k.record.name, k.reasons) for k in result.kept] == [
        ("ckpt-0", ("best 2 by val_loss (min)",)),
        ("ckpt-2", ("best 2 by val_loss (min)",)),
        ("ckpt-4", ("newest",)),
    ]
    assert names(result.deleted) == ["ckpt-1", "ckpt-3"]


def test_prune_deletes_the_records_and_files_it_reports(tmp_path, five):
    five.prune(KeepLast(2))
    assert names(reader(tmp_path).checkpoints()) == ["ckpt-3", "ckpt-4"]
    assert sorted(p for p in os.listdir(tmp_path) if p != META_DIR) == ["ckpt-3.bin", "ckpt-4.bin"]


def test_prune_dry_run_deletes_nothing(tmp_path, five):
    result = five.prune(KeepLast(1), dry_run=True)
    assert result.dry_run
    assert len(result.deleted) == 4
    assert len(reader(tmp_path).checkpoints()) == 5
    assert len(os.listdir(tmp_path)) == 6


def test_prune_dry_run_needs_no_lock(tmp_path, five):
    assert len(reader(tmp_path).prune(KeepLast(1), dry_run=True).deleted) == 4


def test_prune_never_deletes_the_newest(five):
    result = five.prune(KeepBest(1, monitor="val_loss"))
    assert names(five.checkpoints()) == ["ckpt-0", "ckpt-4"]
    assert result.kept[-1].reasons == ("newest",)


def test_prune_never_deletes_a_protected_checkpoint(five):
    five.protect("ckpt-1")
    result = five.prune(KeepLast(1))
    assert names(five.checkpoints()) == ["ckpt-1", "ckpt-4"]
    assert result.kept[0].reasons == ("resumed from",)


def test_prune_never_deletes_a_file_without_a_record(tmp_path, five):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ckpt-9.bin").write_bytes(b"looks like ours")
    five.prune(KeepLast(1))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "sub" / "ckpt-9.bin").exists()


def test_prune_of_one_owner_leaves_the_others_alone(manager):
    commit(manager, "mine-0", owner="me")
    commit(manager, "theirs", owner="them")
    commit(manager, "mine-1", owner="me")
    manager.prune(KeepLast(1), owner="me")
    assert names(manager.checkpoints()) == ["theirs", "mine-1"]


def test_a_failed_delete_warns_with_the_folder_the_file_and_why_and_the_next_prune_retries(
    tmp_path, five, mocker
):
    fail_removing(mocker, "ckpt-1.bin")
    with pytest.warns(UserWarning) as caught:
        result = five.prune(KeepLast(1))
    message = str(caught[0].message)
    assert f"Pruning {tmp_path}: could not delete checkpoint ckpt-1" in message
    assert f"{tmp_path}/ckpt-1.bin" in message and "Operation not permitted" in message
    assert names(result.failed) == ["ckpt-1"]
    assert names(result.deleted) == ["ckpt-0", "ckpt-2", "ckpt-3"]
    assert names(reader(tmp_path).checkpoints()) == ["ckpt-1", "ckpt-4"]  # kept, whole
    assert all(r.ok for r in reader(tmp_path).verify())
    assert names(five.prune(KeepLast(1)).deleted) == ["ckpt-1"]  # retried
    assert names(reader(tmp_path).checkpoints()) == ["ckpt-4"]


def test_threads_committing_and_pruning_one_directory_never_miss_a_checkpoint(tmp_path):
    """Each prune judges the records as they are when it deletes: another thread's prune may
    have deleted a checkpoint it saw a moment before."""
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with CheckpointManager(tmp_path) as manager:
                for i in range(25):
                    commit(manager, f"w{worker}-{i:02d}")
                    manager.prune(KeepLast(2))
        except BaseException as e:  # collected for the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(reader(tmp_path).checkpoints()) == 2
    assert all(r.ok for r in reader(tmp_path).verify())


def test_prune_rejects_what_is_not_a_policy(manager):
    with pytest.raises(TypeError, match="Expected a keras_ckpt.policies policy"):
        manager.prune(3)


# --------------------------------------------------------------------------------- writing


def test_commit_refuses_to_overwrite_a_foreign_file(tmp_path, manager):
    (tmp_path / "model.keras").write_bytes(b"the user's own model")
    with pytest.raises(ForeignFileError, match=r"Refusing to overwrite .*model\.keras"):
        commit(manager, "model.keras", {"model.keras": b"ours"})
    assert (tmp_path / "model.keras").read_bytes() == b"the user's own model"
    assert manager.checkpoints() == []


def test_commit_refuses_a_file_of_another_checkpoint(manager):
    commit(manager, "a", {"shared.bin": b"a"})
    with pytest.raises(ForeignFileError, match="it belongs to checkpoint 'a'"):
        commit(manager, "b", {"shared.bin": b"b"})


@pytest.mark.parametrize("relpath", ["../out.bin", "/abs.bin", f"{META_DIR}/x.bin", "a\\b"])
def test_commit_rejects_a_path_outside_the_directory(manager, relpath):
    with pytest.raises(ValueError, match="Invalid checkpoint file path"):
        commit(manager, "x", {relpath: b"x"})


def test_commit_rejects_an_unknown_kind(manager):
    with pytest.raises(ValueError, match=r"Expected one of .* Received: kind='pickle'"):
        commit(manager, "x", kind="pickle")


def test_commit_records_sizes_checksums_and_training_position(tmp_path, manager):
    record = commit(manager, "a", {"a.bin": b"12345"}, epoch=2, step=3, global_step=13)
    on_disk = json.loads((tmp_path / META_DIR / "a.json").read_text())
    assert on_disk["files"][0]["size"] == 5
    assert (on_disk["epoch"], on_disk["step"], on_disk["global_step"]) == (2, 3, 13)
    assert reader(tmp_path).get("a") == record


def test_commit_drops_metrics_that_json_cannot_hold(manager):
    record = commit(manager, "a", metrics={"loss": np.float32(0.5), "val_loss": float("nan")})
    assert record.metrics == {"loss": 0.5}


def test_commit_fails_on_unserialisable_owner_state_before_moving_any_file(tmp_path, manager):
    with pytest.raises(TypeError, match="not JSON serializable"):
        commit(manager, "a", owner_state={"callback": object()})
    assert not (tmp_path / "a.bin").exists()
    commit(manager, "a")  # nothing was left behind that blocks a retry


def test_replacing_a_checkpoint_updates_its_record(tmp_path, manager):
    first = commit(manager, "best", {"best.keras": b"old model"})
    commit(manager, "other")
    second = commit(manager, "best", {"best.keras": b"new, longer model"})
    on_disk = reader(tmp_path).get("best")
    assert on_disk == second
    assert on_disk.files[0].checksum != first.files[0].checksum
    assert names(reader(tmp_path).checkpoints()) == ["other", "best"]
    assert (tmp_path / "best.keras").read_bytes() == b"new, longer model"
    assert all(r.ok for r in reader(tmp_path).verify())


def test_replacing_a_checkpoint_leaves_no_pending_record(tmp_path, manager):
    commit(manager, "best", {"best.keras": b"old"})
    commit(manager, "best", {"best.keras": b"new"})
    assert pending(tmp_path) == []


def test_replacing_a_checkpoint_removes_the_files_it_no_longer_has(tmp_path, manager):
    commit(manager, "backup", {"backup/old.bin": b"o"})
    commit(manager, "backup", {"backup/a.bin": b"a2"})
    assert os.listdir(tmp_path / "backup") == ["a.bin"]


def test_a_multi_file_checkpoint_is_not_replaced_in_place(tmp_path, manager):
    commit(manager, "backup", {"backup/a.bin": b"a", "backup/b.bin": b"b"})
    with pytest.raises(ValueError, match="Commit it under a new name"):
        commit(manager, "backup", {"backup/a.bin": b"a2"})
    assert (tmp_path / "backup" / "a.bin").read_bytes() == b"a"


def test_delete_removes_the_record_and_the_files(tmp_path, manager):
    commit(manager, "a", {"a/x.bin": b"x"})
    manager.delete("a")
    assert reader(tmp_path).checkpoints() == []
    assert not (tmp_path / "a").exists()


def test_delete_of_an_unknown_name_raises_not_found(manager):
    with pytest.raises(CheckpointNotFoundError, match="No checkpoint named 'a'"):
        manager.delete("a")


def test_update_owner_state_rewrites_only_the_state(tmp_path, manager):
    record = commit(manager, "a", owner_state={"best": 1.0})
    manager.update_owner_state("a", {"best": 0.5})
    assert reader(tmp_path).get("a").owner_state == {"best": 0.5}
    assert reader(tmp_path).get("a").files == record.files


# ---------------------------------------------------------------- recovery after a crash


def write_pending(directory, record: Record) -> None:
    folder = directory / META_DIR / "pending"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{record.name}.json").write_text(record.to_json())


def crashed_replacement(tmp_path, new_bytes: bytes, *, published: bytes) -> Record:
    """What a writer killed while replacing checkpoint `best` with `new_bytes` leaves behind.

    Its pending record is written and `best.keras` holds `published`. Returns the old record.
    """
    with CheckpointManager(tmp_path) as manager:
        old = commit(manager, "best", {"best.keras": b"old bytes"})
    checksum = f"crc32c:{google_crc32c.value(new_bytes):08x}"
    entry = FileEntry("best.keras", len(new_bytes), checksum)
    write_pending(tmp_path, replace(old, files=(entry,), sequence=old.sequence + 1))
    (tmp_path / "best.keras").write_bytes(published)
    return old


def test_a_crashed_replacement_whose_files_are_in_place_is_rolled_forward(tmp_path):
    crashed_replacement(tmp_path, b"new bytes", published=b"new bytes")
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()
    assert reader(tmp_path).get("best").files[0].size == len(b"new bytes")
    assert [r.ok for r in reader(tmp_path).verify()] == [True]
    assert pending(tmp_path) == []


def test_a_crashed_replacement_whose_files_do_not_match_is_dropped(tmp_path):
    old = crashed_replacement(tmp_path, b"new bytes", published=b"old bytes")
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()
    assert reader(tmp_path).get("best") == old
    assert [r.ok for r in reader(tmp_path).verify()] == [True]
    assert pending(tmp_path) == []


def test_a_crashed_replacement_that_left_neither_version_whole_drops_the_checkpoint(tmp_path):
    crashed_replacement(tmp_path, b"new bytes", published=b"mixed!!!!")
    with pytest.warns(UserWarning, match="Dropping checkpoint best"):
        with CheckpointManager(tmp_path) as manager:
            manager.open_for_writing()
    assert reader(tmp_path).checkpoints() == []
    # Bytes that match neither record were not written by keras-ckpt: they are left alone.
    assert (tmp_path / "best.keras").read_bytes() == b"mixed!!!!"


def test_the_files_of_a_crashed_new_commit_are_removed_by_the_next_writer(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        commit(manager, "a")
        half = commit(manager, "b", {"b/one.bin": b"1", "b/two.bin": b"2"})
        manager.delete("b")
    write_pending(tmp_path, half)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.bin").write_bytes(b"1")  # killed before b/two.bin was published
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()
        assert names(manager.checkpoints()) == ["a"]
        commit(manager, "b", {"b/one.bin": b"1", "b/two.bin": b"2"})  # the retry is not refused
    assert not (tmp_path / META_DIR / "pending" / "b.json").exists()


def test_a_crashed_commit_whose_files_all_arrived_is_completed(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        record = commit(manager, "a")
    write_pending(tmp_path, record)
    os.remove(tmp_path / META_DIR / "a.json")  # killed before the record was written
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()
    assert reader(tmp_path).get("a") == record


def test_leftover_staging_and_temp_files_are_cleared_by_the_next_writer(tmp_path):
    (tmp_path / META_DIR / "staging" / "dead").mkdir(parents=True)
    (tmp_path / META_DIR / "staging" / "dead" / "model.keras").write_bytes(b"half")
    (tmp_path / META_DIR / ".tmp-dead").write_bytes(b"{")
    with CheckpointManager(tmp_path) as manager:
        manager.open_for_writing()
    assert sorted(os.listdir(tmp_path / META_DIR)) == ["lock"]


def test_a_writer_killed_in_a_commit_loop_never_leaves_a_record_of_a_partial_file(tmp_path):
    """SIGKILL a real committing process at random moments, then check what it left."""
    rng = random.Random(1234)
    directory = tmp_path / "run"
    kills = 0
    for _ in range(24):
        child = subprocess.Popen(
            [sys.executable, CHILD, "commit-loop", str(directory)], stdout=subprocess.PIPE
        )
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL, "the writer stopped before it was killed"
        child.stdout.close()
        kills += 1

        # Before any writer recovers: a record that does not verify is being replaced in place,
        # and its pending record says so.
        announced = set(pending(directory))
        for result in reader(directory).verify():
            assert result.ok or f"{result.name}.json" in announced, result

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a checkpoint lost mid-replacement is announced
            with CheckpointManager(directory) as manager:
                manager.open_for_writing()
                records = manager.checkpoints()
        assert records, "no checkpoint survived"
        assert [(r.name, r.ok) for r in reader(directory).verify()] == [
            (r.name, True) for r in records
        ]
        on_disk = {
            os.path.relpath(os.path.join(root, f), directory).replace(os.sep, "/")
            for root, _, files in os.walk(directory)
            if META_DIR not in root
            for f in files
        }
        assert on_disk == {f.path for r in records for f in r.files}
    assert kills >= 20
    assert reader(directory).latest().sequence > 24


# ------------------------------------------------------------------------------ loading


@pytest.fixture
def fitted(data):
    x, y = data
    model = build_model()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return model


def save_into(manager, model, name, kind):
    with manager.stage() as folder:
        path = os.path.join(folder, name)
        if kind == "model":
            model.save(path)
        else:
            model.save_weights(path)
        return manager.commit({name: path}, name=name, kind=kind)


def assert_same_weights(a, b):
    for left, right in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_load_model_loads_a_full_model_checkpoint(manager, fitted, data):
    save_into(manager, fitted, "model.keras", "model")
    loaded = manager.load_model("latest")
    assert_same_weights(loaded, fitted)
    np.testing.assert_allclose(
        loaded.predict(data[0], verbose=0), fitted.predict(data[0], verbose=0)
    )


def test_load_model_of_a_weights_checkpoint_says_to_use_load_weights(manager, fitted):
    save_into(manager, fitted, "w.weights.h5", "weights")
    with pytest.raises(ValueError, match=r"holds weights only.*call `load_weights"):
        manager.load_model("w.weights.h5")


def test_load_model_best_in_a_weights_only_folder_says_none_is_a_full_model(manager, fitted):
    for name, value in (("w1.weights.h5", 0.7), ("w2.weights.h5", 0.9)):
        with manager.stage() as folder:
            fitted.save_weights(os.path.join(folder, name))
            manager.commit(
                {name: os.path.join(folder, name)}, name=name, kind="weights",
                metrics={"val_accuracy": value}, owner_state={"monitor": "val_accuracy"},
            )  # fmt: skip
    for which in ("best", "latest"):
        with pytest.raises(
            CheckpointNotFoundError,
            match=r"none of its 2 checkpoints is a full model \(they hold weights only\)\. "
            r"Build the model in code and call `load_weights",
        ):
            manager.load_model(which)


def test_load_model_best_uses_the_mode_a_fitted_callback_recorded(tmp_path, data):
    import keras

    import keras_ckpt

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    x, y = data
    checkpoint = keras_ckpt.ModelCheckpoint(
        tmp_path / "m-{epoch}.keras", monitor="val_mae", mode="min"
    )
    history = model.fit(
        x, y.astype("float32"), validation_split=0.25, epochs=3, verbose=0, callbacks=[checkpoint]
    )
    values = history.history["val_mae"]
    best_epoch = min(range(3), key=lambda i: (values[i], -i)) + 1
    manager = CheckpointManager(tmp_path)
    assert manager.best("val_mae").name == f"m-{best_epoch}.keras"
    assert isinstance(manager.load_model("best"), keras.Model)
    assert manager.resolve("best").name == f"m-{best_epoch}.keras"


def test_load_weights_restores_the_weights(manager, fitted):
    save_into(manager, fitted, "w.weights.h5", "weights")
    fresh = build_model(seed=1)
    record = manager.load_weights(fresh, "latest")
    assert record.name == "w.weights.h5"
    assert_same_weights(fresh, fitted)


def test_load_weights_restores_the_optimizer_of_a_model_never_trained(manager, fitted):
    """Keras skips the optimizer's variables when it is not built yet; the manager builds it."""
    save_into(manager, fitted, "w.weights.h5", "weights")
    fresh = build_model(seed=1)
    assert not fresh.optimizer.built
    manager.load_weights(fresh, "w.weights.h5")
    assert int(fresh.optimizer.iterations.numpy()) == int(fitted.optimizer.iterations.numpy()) > 0
    for left, right in zip(fresh.optimizer.variables, fitted.optimizer.variables, strict=True):
        np.testing.assert_array_equal(left.numpy(), right.numpy())


def test_a_reader_loads_while_a_writer_holds_the_directory(tmp_path, manager, fitted):
    save_into(manager, fitted, "model.keras", "model")
    assert_same_weights(reader(tmp_path).load_model("model.keras"), fitted)


def test_prune_refuses_a_keep_best_metric_no_checkpoint_records(tmp_path, manager):
    commit(manager, "a", metrics={"val_loss": 0.5})
    commit(manager, "b", metrics={"val_loss": 0.7})
    with pytest.raises(
        ValueError, match=r"'val_acc', which no checkpoint .* \(metrics recorded: val_loss\)"
    ):
        manager.prune(KeepBest(1, monitor="val_acc", mode="max"))
    assert [r.name for r in reader(tmp_path).checkpoints()] == ["a", "b"]


def test_load_model_latest_skips_weights_only_checkpoints_of_another_callback(tmp_path, data):
    import keras

    model = build_model()
    x, y = data
    model.fit(x, y, epochs=1, verbose=0)
    manager = CheckpointManager(tmp_path)
    with manager.stage() as folder:
        model.save(os.path.join(folder, "m.keras"))
        manager.commit({"m.keras": os.path.join(folder, "m.keras")}, name="m.keras", kind="model")
    saved = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0)  # the weights-only checkpoint holds other weights
    with manager.stage() as folder:
        model.save_weights(os.path.join(folder, "w.weights.h5"))
        manager.commit(
            {"w.weights.h5": os.path.join(folder, "w.weights.h5")},
            name="w.weights.h5",
            kind="weights",
        )
    manager.close()
    loaded = reader(tmp_path).load_model("latest")  # the newest is weights-only
    assert isinstance(loaded, keras.Model)
    assert len(saved) == 4
    for a, b in zip(loaded.get_weights(), saved, strict=True):  # m.keras's, untouched by w's
        np.testing.assert_array_equal(a, b)


def test_commit_without_keras_loaded_records_no_version(tmp_path):
    code = (
        "import sys, os, keras_ckpt; m = keras_ckpt.CheckpointManager(sys.argv[1]);\n"
        "with m.stage() as d:\n"
        "    open(os.path.join(d, 'f'), 'wb').write(b'x')\n"
        "    r = m.commit({'f.bin': os.path.join(d, 'f')}, name='f.bin', kind='weights')\n"
        "print(r.keras_version == '' and 'keras' not in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


def test_a_checkpoint_that_fails_twice_while_replaced_falls_back_to_the_previous(tmp_path):
    """A reader failing again after a writer replaced the checkpoint moves to the next candidate
    (it used to propagate the second failure)."""
    manager = CheckpointManager(tmp_path)
    commit(manager, "a")
    commit(manager, "b")
    attempts = []

    def read(record, path):
        attempts.append(record.name)
        if record.name == "b":
            commit(manager, "b", {"b.bin": f"again {len(attempts)}".encode()})  # replaced
            raise CorruptCheckpointError(f"{record.path}: cannot be read")
        return record.name

    with pytest.warns(UserWarning, match=r"Checkpoint b in .* is damaged .*; using a instead"):
        record, value = manager.load("latest", read)
    assert (record.name, value) == ("a", "a")
    assert attempts.count("b") >= 2
    manager.close()


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_manager_load_latest_skips_a_damaged_newest_for_the_previous(tmp_path, data, suffix):
    model = awkward_model()
    callback = keras_ckpt.ModelCheckpoint(
        str(tmp_path / f"m-{{epoch}}{suffix}"), save_weights_only=suffix == ".weights.h5"
    )
    capture = Capture()
    model.fit(*data, epochs=2, batch_size=16, verbose=0, callbacks=[callback, capture])
    first = capture.states[0]
    newest = tmp_path / f"m-2{suffix}"
    with open(newest, "r+b") as f:
        f.seek(os.path.getsize(newest) - 100)
        f.write(b"\xff")
    manager = CheckpointManager(tmp_path)
    with pytest.warns(UserWarning, match=rf"m-2{suffix} in .* is damaged \(m-2{suffix}: checksum"):
        if suffix == ".keras":
            loaded = manager.load_model("latest")
        else:
            loaded = fresh_like(model)
            assert manager.load_weights(loaded, "latest").name == f"m-1{suffix}"
    assert_same_state(state_of(loaded), first)
    with pytest.raises(CorruptCheckpointError, match=rf"m-2{suffix}: checksum mismatch"):
        manager.load_weights(fresh_like(model), f"m-2{suffix}")
