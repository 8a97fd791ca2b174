"""Listing, pruning and committing with many checkpoints: does the cost grow linearly?

No Keras here: every checkpoint is a tiny file committed through the public `CheckpointManager`
API (`stage`, `commit`), exactly the path the callbacks take, so the records on disk are the real
format written by the real code. For each count N (10, 1,000, 10,000):

- commit: N commits into an empty directory, one at a time (each a staging folder, a checksum,
  fsyncs, a rename and a record). Reported as the total and as the median commit in the first and in
  the last tenth of the run: if the later commits are slower, commit cost grows with N.
  A durable commit costs four to five fsyncs, which take 0.3-10 ms each on this machine's virtual
  disk depending on what else runs, so 10,000 durable commits alone would take one to several
  minutes. Above `durable_up_to` checkpoints the directory is therefore built through the very same
  `stage`/`commit` calls with `os.fsync` made a no-op for the duration of the build (rows marked
  "fsync skipped"): the files and records are byte-for-byte what a durable commit writes, and the
  commit timings then show the CPU part of a commit alone, which is where growth with N would show.
  Above `commit_up_to` (only `--quick` sets it below 10,000) the directory is built without
  `commit`: each file is published and its `Record` written with the storage API
  (`Storage.publish`, `Record.to_json`, `Storage.write_atomic`), fsync skipped; no commit timing is
  reported for that N. Either way the fresh manager must list exactly N checkpoints, or the run
  fails.
- list: `CheckpointManager(directory).checkpoints()` on a fresh manager, as `keras-ckpt list` and a
  restarted process do (scan `.keras_ckpt/`, parse every record). Repeated `reps` times.
- open for writing: a fresh manager's `open_for_writing()` (lock and recovery scan), what each
  callback pays in `on_train_begin`.
- prune (dry run): a fresh manager deciding `KeepLast(3) | KeepBest(3, "val_loss")`, scan included.
- prune (delete): deleting the oldest `min(10, N // 2)` checkpoints, once (it is destructive).

The "per checkpoint" column divides by N; linear means it stays flat as N grows.

Run alone: `python -m benchmarks.run --sections listing`.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
from functools import partial
from typing import Any
from unittest import mock

from benchmarks._common import Stat, Table, fmt, settle, timed

DEFAULT_COUNTS = (10, 1_000, 10_000)


def _make_checkpoints(directory: str, count: int, how: str) -> list[float]:
    """Builds `count` checkpoints; returns the commit times (none for `how="storage"`)."""
    from keras_ckpt import CheckpointManager

    with contextlib.ExitStack() as stack:
        if how != "durable":
            stack.enter_context(mock.patch("os.fsync", lambda fd: None))
        if how == "storage":
            _write_records(directory, count)
            return []
        return _commit_many(CheckpointManager(directory), count)


def _write_records(directory: str, count: int) -> None:
    from keras_ckpt.records import FileEntry, Record
    from keras_ckpt.store import storage_for
    from keras_ckpt.store.local import META_DIR, seal_file

    rng = random.Random(count)
    payload = os.urandom(64)
    storage = storage_for(directory)
    for i in range(count):
        name = f"ckpt-{i:05d}.bin"
        with storage.staging() as folder:
            staged = os.path.join(folder, name)
            with open(staged, "wb") as f:
                f.write(payload)
            sealed = seal_file(staged, sync=False)
            storage.publish({name: staged})
        record = Record(
            name=name,
            kind="weights",
            files=(FileEntry(name, sealed.size, sealed.checksum),),
            epoch=i,
            global_step=i,
            wall_time=time.time(),
            metrics={"val_loss": rng.random()},
            owner="benchmark",
            sequence=i + 1,
        )
        storage.write_atomic(f"{META_DIR}/{name}.json", record.to_json().encode())


def _commit_many(manager: Any, count: int) -> list[float]:
    rng = random.Random(count)
    payload = os.urandom(64)
    commit_times = []
    with manager:
        for i in range(count):
            name = f"ckpt-{i:05d}.bin"
            with manager.stage() as folder:
                staged = os.path.join(folder, name)
                with open(staged, "wb") as f:
                    f.write(payload)
                start = time.perf_counter()
                manager.commit(
                    {name: staged},
                    name=name,
                    kind="weights",
                    epoch=i,
                    global_step=i,
                    metrics={"val_loss": rng.random()},
                    owner="benchmark",
                )
                commit_times.append(time.perf_counter() - start)
    return commit_times


def _list(directory: str) -> list[Any]:
    from keras_ckpt import CheckpointManager

    return CheckpointManager(directory).checkpoints()


def _open_and_close(directory: str) -> None:
    from keras_ckpt import CheckpointManager

    manager = CheckpointManager(directory)
    manager.open_for_writing()
    manager.close()


def _dry_prune(directory: str, policy: Any) -> Any:
    from keras_ckpt import CheckpointManager

    return CheckpointManager(directory).prune(policy, dry_run=True)


def run(
    root: str,
    counts: tuple[int, ...] = DEFAULT_COUNTS,
    reps: int = 5,
    durable_up_to: int = 1_000,
    commit_up_to: int = 10_000,
) -> Table:
    from keras_ckpt import CheckpointManager
    from keras_ckpt.policies import KeepBest, KeepLast

    table = Table(
        title="Listing, pruning and committing N checkpoints (no Keras; tiny files)",
        columns=["operation", "N", "time median (min-max)", "per checkpoint"],
    )
    results: dict[str, Any] = {}
    per_item_list: dict[int, float] = {}
    for count in counts:
        directory = os.path.join(root, f"listing-{count}")
        if count <= durable_up_to:
            build, how = "durable", ""
        elif count <= commit_up_to:
            build, how = "commit", ", fsync skipped"
        else:
            build, how = "storage", ""
        start = time.perf_counter()
        commit_times = _make_checkpoints(directory, count, build)
        build_wall = time.perf_counter() - start

        listing, opening, dry_prune = Stat(), Stat(), Stat()
        policy = KeepLast(3) | KeepBest(3, "val_loss")
        for _ in range(reps):
            seconds, records = timed(partial(_list, directory))
            assert len(records) == count, (len(records), count)
            listing.add(seconds)
            opening.add(timed(partial(_open_and_close, directory))[0])
            dry_prune.add(timed(partial(_dry_prune, directory, policy))[0])
        doomed = min(10, count // 2)
        with CheckpointManager(directory) as manager:
            manager.open_for_writing()
            seconds, result = timed(partial(manager.prune, KeepLast(count - doomed)))
        assert len(result.deleted) == doomed, (len(result.deleted), doomed)

        first = last = commit_total = None
        if commit_times:
            tenth = max(1, count // 10)
            first = statistics.median(commit_times[:tenth])
            last = statistics.median(commit_times[-tenth:])
            commit_total = sum(commit_times)
            table.add(
                f"commit (total{how})", f"{count:,}", fmt(commit_total), fmt(commit_total / count)
            )
            table.add(
                f"  commit, first / last tenth (median{how})",
                f"{count:,}",
                f"{fmt(first)} / {fmt(last)}",
                f"{last / first:.2f}x later" if first else "-",
            )
        else:
            table.add(
                "commit", f"{count:,}", "not measured", "built with the storage API (quick run)"
            )
        table.add("list (fresh manager)", f"{count:,}", listing.cell(), fmt(listing.median / count))
        table.add(
            "open for writing (lock + scan)",
            f"{count:,}",
            opening.cell(),
            fmt(opening.median / count),
        )
        table.add(
            "prune dry run (scan + policy)",
            f"{count:,}",
            dry_prune.cell(),
            fmt(dry_prune.median / count),
        )
        table.add(
            f"prune deleting the oldest {doomed}", f"{count:,}", fmt(seconds), fmt(seconds / count)
        )
        per_item_list[count] = listing.median / count
        results[str(count)] = {
            "build": build,
            "commit_seconds": commit_times,
            "commit_total": commit_total,
            "build_wall_seconds": build_wall,
            "commit_first_tenth_median": first,
            "commit_last_tenth_median": last,
            "list": listing.to_json(),
            "open_for_writing": opening.to_json(),
            "prune_dry_run": dry_prune.to_json(),
            "prune_delete_seconds": seconds,
            "prune_deleted": doomed,
        }
        settle(directory)

    sizes = sorted(per_item_list)
    if len(sizes) >= 2:
        small, large = sizes[-2], sizes[-1]
        growth = per_item_list[large] / per_item_list[small]
        table.notes.append(
            f"Listing cost per checkpoint at N={large:,} is {growth:.2f}x that at N={small:,} "
            f"({'linear' if growth < 1.5 else 'WORSE than linear'})."
        )
    table.notes.append(
        "Commit includes checksum, fsync of the file, rename, fsync of folders and the record; "
        "staging-folder creation and the 64-byte write are outside the commit timing."
    )
    table.data = results
    return table
