"""What the `keras-ckpt` commands share: opening a directory, resolving names, sizes, retention."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from keras_ckpt import selection
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import Policy, applicable, from_keep_args, infer_mode
from keras_ckpt.records import Record, position
from keras_ckpt.runs import ALL, run_of
from keras_ckpt.store.local import META_DIR, LocalStorage


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def open_manager(directory: str) -> CheckpointManager:
    """A read-only manager for `directory` (a path or an fsspec URL), or a `CliError` saying why
    it is not a checkpoint directory."""
    try:
        manager = CheckpointManager(directory)
    except ImportError as e:
        raise CliError(f"{directory} is a remote URL and reading it needs an extra: {e}") from None
    if isinstance(manager.storage, LocalStorage):
        root = manager.storage.root
        is_file, is_dir = os.path.isfile(root), os.path.isdir(root)
        has_meta = os.path.isdir(os.path.join(root, META_DIR))
    else:  # an object store has no folders: a "directory" is a prefix some objects share
        import fsspec

        fs, root = fsspec.core.url_to_fs(directory)
        root = root.rstrip("/")
        fs.invalidate_cache()
        is_file, is_dir = fs.isfile(root), fs.isdir(root)
        has_meta = fs.isdir(f"{root}/{META_DIR}")
    if is_file:
        raise CliError(
            f"{directory} is a file, not a directory: pass the folder that holds the checkpoints "
            "(the folder of your ModelCheckpoint filepath, or the BackupAndRestore backup_dir)."
        )
    if not is_dir:
        raise CliError(f"No such directory: {directory}")
    if not has_meta:
        raise CliError(
            f"{directory} is not a keras-ckpt checkpoint directory (it has no {META_DIR}/ folder); "
            "pass the folder your ModelCheckpoint filepath or BackupAndRestore backup_dir uses."
        )
    return manager


def plural(n: int, noun: str) -> str:
    """`1 checkpoint`, `2 checkpoints`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def recorded_policy(records: Sequence[Record]) -> Policy | None:
    """The retention policy the newest record's callback recorded, as that callback applies it
    now (a `keep_best` whose metric no record holds yet waits), or None."""
    if not records:
        return None
    policy = records[-1].memory.retention_policy()
    return applicable(policy, {m for r in records for m in r.metrics}) if policy else None


def recorded_monitor(records: Sequence[Record]) -> tuple[str | None, str | None]:
    """The (monitor, mode) the newest record's callback ranked by, or (None, None)."""
    return selection.recorded_monitor(records)


def resolve_mode(monitor: str, mode: str | None) -> str:
    """`mode` if given, else the direction `monitor`'s name implies."""
    if mode in ("min", "max"):
        return mode
    try:
        return infer_mode(monitor)
    except ValueError as e:
        raise CliError(f"{e} (use --mode min or --mode max)") from None


def run_scope(manager: CheckpointManager, run: str | None) -> tuple[str | None, str | None]:
    """(the run id `--run` means, the line to print first or None).

    Without `--run`, the newest run; when older runs exist, the line says which run the output
    is about and how to see the others. An unknown id is an error listing the runs."""
    if run == ALL:
        return ALL, None
    runs = manager.runs()
    if run is not None:
        if run not in {r.id for r in runs}:
            known = ", ".join(r.id for r in runs) or "none: it holds no checkpoints"
            raise CliError(
                f"{manager.directory} has no run {run!r}. Runs there, oldest first: {known} "
                "(or --run all)."
            )
        return run, None
    newest = next((r.id for r in runs if r.newest), None)
    if newest is None or len(runs) < 2:
        return newest, None
    return newest, (
        f"Run {newest}, the newest of {len(runs)} runs in {manager.directory} (--run all for "
        f"every run; `keras-ckpt history {manager.directory} --run all` lists them)."
    )


def resolve_which(
    manager: CheckpointManager, which: str, monitor: str | None, mode: str | None, run: str | None
) -> tuple[str | None, str | None]:
    """(monitor, mode) to pass for `which` (`best` ranked by the recorded monitor)."""
    if which != "best":
        return None, None
    recorded, recorded_mode = recorded_monitor(manager.checkpoints(run=run))
    monitor = monitor or recorded
    if monitor is None:
        raise CliError(
            "`best` needs a metric: none of the checkpoints records the one its callback "
            "monitored; pass --monitor (e.g. --monitor val_loss)."
        )
    mode = resolve_mode(monitor, mode or (recorded_mode if monitor == recorded else None))
    return monitor, mode


def resolve(
    manager: CheckpointManager,
    which: str,
    monitor: str | None,
    mode: str | None,
    run: str | None = ALL,
) -> Record:
    """The verified checkpoint for a name, `latest` or `best` (ranked by the recorded monitor)."""
    monitor, mode = resolve_which(manager, which, monitor, mode, run)
    return manager.resolve(which, monitor=monitor, mode=mode or "auto", run=run)


def where(record: Any) -> str:
    """Where in training a checkpoint was taken, in Keras's 1-based epochs."""
    return position(record.epoch, record.step, record.global_step)


def build_policy(
    *,
    keep_last: int | None = None,
    keep_best: int | None = None,
    monitor: str | None = None,
    mode: str | None = None,
    keep_every_n_epochs: int | None = None,
    max_total_bytes: int | None = None,
) -> Policy | None:
    """The `keras_ckpt.policies` union for the callbacks' `keep_*` arguments (None: none set)."""
    if keep_best is not None and not monitor:
        raise CliError("--keep-best needs the metric to rank by: pass --monitor (e.g. val_loss).")
    return from_keep_args(
        keep_last=keep_last,
        keep_best=keep_best,
        monitor=monitor,
        mode=resolve_mode(monitor, mode) if keep_best is not None and monitor else "auto",
        keep_every_n_epochs=keep_every_n_epochs,
        max_total_bytes=max_total_bytes,
    )


def policy_from_args(args: Any, records: Sequence[Any], owners: Sequence[str], verb: str) -> Any:
    """The policy of `prune`'s keep options (None: none given), for one owner's checkpoints.

    Refuses a directory of several owners without `--owner` (their rankings do not mix); a
    `--keep-best` without `--monitor` ranks by the metric the callback recorded.
    """
    if args.owner is None and len(owners) > 1:
        raise CliError(
            f"{args.directory} holds checkpoints of {len(owners)} owners ({', '.join(owners)}); "
            f"{verb} one at a time with --owner."
        )
    monitor, mode = args.monitor, args.mode
    if args.keep_best is not None and monitor is None:
        monitor, recorded_mode = recorded_monitor(records)
        mode = mode or recorded_mode
    return build_policy(
        keep_last=args.keep_last,
        keep_best=args.keep_best,
        monitor=monitor,
        mode=mode,
        keep_every_n_epochs=args.keep_every_n_epochs,
        max_total_bytes=args.max_total_bytes,
    )


def retention_reasons(
    manager: CheckpointManager, records: Sequence[Record], run: str | None
) -> dict[str, Any]:
    """For each checkpoint name: why its run's recorded policy keeps it, and that policy.

    The same dry run of `CheckpointManager.prune()` that `keras-ckpt prune` without keep options
    does: each run's callback's policy judges that run's checkpoints only. Where no policy can
    judge, only the newest checkpoint of each run and callback is kept "by policy" (nothing deletes
    the others automatically, though).
    """
    policies: dict[tuple[str, str | None], Policy | None] = {}
    try:
        result = manager.prune(None, dry_run=True, run=run)
        reasons = {k.record.name: list(k.reasons) for k in result.kept}
        policies = {(r, o): p for r, o, p in result.policies}
    except ValueError:  # no policy can judge anything: only the newest of each is "kept"
        reasons = {}
    newest: dict[tuple[str, str | None], str] = {}
    for record in records:
        newest[(run_of(record), record.owner)] = record.name
        policies.setdefault((run_of(record), record.owner), None)
    out: dict[str, Any] = {}
    held = ("no recorded policy", "waits for its metric")
    for record in records:
        key = (run_of(record), record.owner)
        why = [r for r in reasons.get(record.name, []) if r not in held]
        if record.name == newest[key] and not any(r.startswith("newest") for r in why):
            why = ["newest"] + why
        out[record.name] = {"reasons": why, "policy": policies[key]}
    return out


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """Bytes for `500MB`, `2GiB`, `1.5 GB` or plain `1048576` (MB = 10**6, MiB = 2**20)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS or unit == "k":
        raise ValueError(
            f"Invalid size {text!r}. Expected a number of bytes with an optional unit: B, KB, MB, "
            "GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 500MB or 2GiB."
        )
    value = math.floor(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"Invalid size {text!r}. Expected at least 1 byte.")
    return value


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(wall_time: float, now: float | None = None) -> str:
    seconds = max(0.0, (time.time() if now is None else now) - wall_time)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def format_metric(value: float) -> str:
    return f"{value:.4g}"
