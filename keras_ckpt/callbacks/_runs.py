"""Which run a `ModelCheckpoint`'s saves belong to, and what it remembers of earlier runs.

Every record carries its run (`CallbackMemory.run`). A `fit` that continues a run (resumed by
`BackupAndRestore`, or started with `initial_epoch` at or after the newest record's epoch) keeps
its run and its memory: the best value, and its checkpoints count for retention. A fresh run starts
anew and leaves the earlier run's checkpoints alone, saying so in one line.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keras_ckpt.callbacks._adopt import adopt_foreign_file
from keras_ckpt.callbacks._monitor import Monitor
from keras_ckpt.callbacks._naming import template_fields
from keras_ckpt.policies import CheckpointInfo, Policy, Reasons, applicable, judge
from keras_ckpt.records import Record
from keras_ckpt.state import resumed_from
from keras_ckpt.training import fit_state

__all__ = [
    "ThisRun",
    "check_directory",
    "check_same_monitor",
    "check_same_template",
    "new_run",
    "settle_run",
    "settle_run_of",
]


def new_run() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex[:12]


def settle_run(
    own: Sequence[Record],
    *,
    monitor: Monitor,
    resumed: bool,
    first_epoch: int,
    template: str,
    save_best_only: bool,
    directory: str,
    fit_run: str | None = None,
) -> tuple[str | None, str]:
    """(run id, where the best value came from if an earlier run set it) for a `fit` starting
    at epoch index `first_epoch`, given the callback's own records (oldest first).

    A fresh run takes `fit_run`, the run another keras-ckpt callback of this `fit` settled, so
    that one `fit` is one run of the directory.

    A fixed name with `save_best_only` keeps its best, and says so: replacing a better model there
    with a worse one would lose it (keras#17012); any other fixed name is simply replaced, as in
    Keras.
    """
    newest = own[-1] if own else None
    if newest is None:
        return fit_run or new_run(), ""
    if resumed or 0 < first_epoch and newest.epoch <= first_epoch:
        remember(monitor, newest)
        return newest.memory.run, ""
    run = fit_run or new_run()
    if not template_fields(template):
        origin = f"{template} of an earlier run (epoch {newest.epoch})"
        if save_best_only and remember(monitor, newest):
            print(
                f"ModelCheckpoint: {directory}/{template} holds the best `{monitor.monitor}` of "
                f"an earlier run ({monitor.best:.5f}, epoch {newest.epoch}); this run replaces "
                "it only with a better value. Delete it or choose another filepath to start "
                "afresh.",
                flush=True,
            )
            return run, origin
        return run, ""
    epochs = sorted({r.epoch for r in own})
    span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"
    count = f"{len(own)} checkpoint" + ("" if len(own) == 1 else "s")
    print(
        f"ModelCheckpoint: {directory} holds {count} of an earlier run of {template} ({span}); "
        "this fresh run ranks, prunes and compares only its own and leaves those alone (a save "
        "under the same name replaces one). To continue that run instead, resume it "
        "(BackupAndRestore) or pass `initial_epoch`.",
        flush=True,
    )
    return run, ""


def settle_run_of(callback: Any, *, first_epoch: int) -> tuple[str | None, str]:
    """`settle_run` for a `ModelCheckpoint` at its first epoch's begin in this `fit`."""
    return settle_run(
        callback.manager.checkpoints(owner=callback.owner, run="all"),
        monitor=callback._monitor,
        resumed=resumed_from(fit_state.unsynced_model(callback)) is not None,
        first_epoch=first_epoch,
        template=callback.template,
        save_best_only=callback.save_best_only,
        directory=callback.directory,
        fit_run=fit_run(callback, getattr(callback, "_siblings", [])),
    )


def remember(monitor: Monitor, newest: Record) -> bool:
    """Takes the best value (and settled mode) from our newest record; True if it changed."""
    memory = newest.memory
    if memory.monitor != monitor.monitor or memory.best is None:
        return False
    if monitor.mode == "auto" and memory.mode is not None:
        monitor.mode = memory.mode
    if monitor.mode == "auto":
        return False
    before = monitor.best
    monitor.best = monitor.better_of(monitor.best, memory.best)
    return monitor.best != before


def check_directory(callback: Any) -> None:
    """At `on_train_begin` of a `ModelCheckpoint` (after it locked its directory): refuses to
    rank against another monitor's checkpoints (`check_same_monitor`), and moves a file it did
    not write at its fixed name aside (`adopt_foreign_file`)."""
    own = callback.manager.checkpoints(owner=callback.owner, run="all")
    if own:
        check_same_monitor(
            own[-1],
            monitor=callback.monitor,
            uses_monitor=callback._uses_monitor(),
            directory=callback.directory,
            template=callback.template,
        )
    if not template_fields(callback.template) and callback._chief:
        adopt_foreign_file(callback.manager, callback.template, callback.filepath)


def fit_run(callback: Any, callbacks: Sequence[Any]) -> str | None:
    """The run another ModelCheckpoint of this `fit` settled already, if any."""
    for other in callbacks:
        if other is not callback and isinstance(other, type(callback)):
            if getattr(other, "_run_settled", False) and getattr(other, "_run", None):
                return str(other._run)
    return None


def check_same_monitor(
    newest: Record, *, monitor: str, uses_monitor: bool, directory: str, template: str
) -> None:
    """Refuses to rank against the checkpoints of the same name monitored by another metric."""
    theirs = newest.memory
    if uses_monitor and theirs.uses_monitor and theirs.monitor and theirs.monitor != monitor:
        raise ValueError(
            f"{directory} holds checkpoints of {template} monitored by `{theirs.monitor}` "
            f"(newest: {newest.name}), and this ModelCheckpoint monitors `{monitor}` under the "
            "same name: the two would rank and compare each other's files. Use another filepath "
            "(or folder) for the new monitor."
        )


def check_same_template(callback: Any, callbacks: Sequence[Any]) -> None:
    """Refuses two ModelCheckpoints of one `fit` writing one template with different monitors."""
    for other in callbacks:
        if (
            other is not callback
            and isinstance(other, type(callback))
            and other.template == callback.template
            and other.manager.storage.url == callback.manager.storage.url
            and other.monitor != callback.monitor
        ):
            raise ValueError(
                f"Two ModelCheckpoint callbacks in this fit write {callback.filepath}, one "
                f"monitoring `{other.monitor}` and one `{callback.monitor}`: they would "
                "overwrite and prune each other's files. Give each its own filepath."
            )


@dataclass(frozen=True)
class ThisRun(Policy):
    """`policy` applied to the checkpoints of run `run` only; every other run's are kept.

    A `KeepBest` part waits until one of the run's checkpoints holds its metric (validation may
    not have run yet): meanwhile the other parts (`keep_last`, the byte budget) judge alone.

    Example:

    >>> from keras_ckpt.policies import KeepLast
    >>> ThisRun(KeepLast(1), "r1")
    KeepLast(n=1) (this run)
    """

    policy: Policy
    run: str | None

    def __repr__(self) -> str:  # what `prune` logs as the reason a checkpoint was deleted
        return f"{self.policy!r} (this run)"

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        mine = [i for i, r in enumerate(records) if _run_of(r) == self.run]
        result: list[Reasons] = [("another run",)] * len(records)
        recorded = {m for i in mine for m in records[i].metrics}
        active = applicable(self.policy, recorded)
        if active is None:  # a lone keep_best whose metric none of the run's holds yet
            return [("waits for its metric",) if i in mine else r for i, r in enumerate(result)]
        for i, reasons in zip(mine, judge(active, [records[i] for i in mine]), strict=True):
            result[i] = reasons
        return result


def _run_of(record: Any) -> str | None:
    memory = getattr(record, "memory", None)
    return memory.run if memory is not None else None
