"""`ModelCheckpoint`: Keras's callback with atomic saves, retention and memory across restarts."""

from __future__ import annotations

import math
import os
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras

from keras_ckpt import distribute, h5write, snapshot
from keras_ckpt import state as st
from keras_ckpt._validate import check_bool, check_optional_count, invalid
from keras_ckpt.callbacks._adopt import move_aside
from keras_ckpt.callbacks._monitor import Monitor
from keras_ckpt.callbacks._naming import (
    check_template,
    format_name,
    split_filepath,
    template_fields,
)
from keras_ckpt.errors import ForeignFileError
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import (
    CheckpointInfo,
    Policy,
    Reasons,
    applicable,
    from_keep_args,
    judge,
    ranked_metrics,
    to_json,
)
from keras_ckpt.records import Record, clean_metrics
from keras_ckpt.schedule import Progress, Schedule, check_save_freq
from keras_ckpt.state import is_preempted, is_replaying
from keras_ckpt.storage import LocalStorage, file_in_the_way
from keras_ckpt.writer import Writer

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(keras.callbacks.Callback):
    """Saves the model or its weights during `fit`, safely, and keeps only what you ask for.

    A drop-in superset of `keras.callbacks.ModelCheckpoint`: the same arguments with the same
    meaning and file names. What changes is safety. Every file is written beside its final path and
    moved into place in one step, so a kill never leaves a half-written checkpoint where the last good
    one was; a JSON record in `.keras_ckpt/` next to the files keeps each one's checksum, epoch, step
    and metrics. A restarted run reads those records: `save_best_only` keeps its best value, and
    retention counts the files written before. Files the callback did not write are never deleted or
    overwritten.

    Args:
        filepath: Path (or fsspec URL) of the file to write. The file name may hold `{epoch}`
            (1-based), `{batch}` (1-based, for step saves) and any logged metric, with format specs:
            `"runs/model-{epoch:03d}-{val_loss:.4f}.keras"`. The folder part may not. End it in
            `.keras` for the full model (architecture, weights, optimizer state) or `.weights.h5`
            with `save_weights_only=True` for weights only.
        monitor: Metric watched by `save_best_only` and `keep_best`. Defaults to `"val_loss"`.
        verbose: 0 (silent), 1 or 2 (a line per save; Keras prints for any value above 0).
        save_best_only: Save only when `monitor` improves. A `monitor` missing from the logs of
            an epoch end that has validation metrics (a misspelled name) raises `ValueError`
            listing the keys that exist; an epoch without validation (`validation_freq`) saves
            nothing, with a warning. Defaults to `False`.
        save_weights_only: Save `model.save_weights` instead of `model.save`. Defaults to `False`.
        mode: `"auto"`, `"min"` or `"max"`. `"auto"` takes the direction of the compiled metric
            (or `min` for losses) at the first save, and raises if it cannot tell.
        save_freq: `"epoch"` (at every epoch end) or a positive int: every that many training
            steps, counted across epochs (`steps_per_execution` included). Defaults to `"epoch"`.
        initial_value_threshold: Initial best value for `save_best_only`.
        min_delta: An improvement must beat the best by more than this. Defaults to `0`.
        every_n_epochs: Save at the end of every n-th epoch. With `save_freq="epoch"` it replaces
            the every-epoch trigger; with an int `save_freq` both apply.
        every_seconds: Also save at the first batch end after this many seconds since the last
            save. Combined with the other triggers by OR.
        save_on_train_end: Also save when `fit` ends normally (not with `save_best_only`, where
            it would replace the best model with the last one).
        keep_last: Keep the n newest checkpoints.
        keep_best: Keep the n best checkpoints by `monitor` / `mode`.
        keep_every_n_epochs: Keep the first checkpoint of every n-th epoch.
        max_total_bytes: Keep the newest checkpoints that fit in this many bytes.
        retention: A `keras_ckpt.policies` policy instead of the `keep_*` arguments.
        async_save: Write in a background thread: training pauses only to copy the state to
            host memory, and `fit` returns after the last save is committed. An error in the
            background is raised at the next batch or epoch end. Defaults to `True`.

    The `keep_*` arguments keep the union of what each keeps, and the newest checkpoint is always
    kept. With none of them (and no `retention`), nothing is deleted, as in Keras.

    Raises:
        ValueError: for any invalid or conflicting argument, at construction.

    Example:

    >>> import keras_ckpt
    >>> checkpoint = keras_ckpt.ModelCheckpoint(
    ...     "runs/exp1/model-{epoch:03d}-{val_loss:.4f}.keras",
    ...     monitor="val_loss", keep_best=3, keep_last=1)
    >>> checkpoint.directory
    'runs/exp1'
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int | None = "epoch",
        initial_value_threshold: float | None = None,
        *,
        min_delta: float = 0.0,
        every_n_epochs: int | None = None,
        every_seconds: float | None = None,
        save_on_train_end: bool = False,
        keep_last: int | None = None,
        keep_best: int | None = None,
        keep_every_n_epochs: int | None = None,
        max_total_bytes: int | None = None,
        retention: Policy | None = None,
        async_save: bool = True,
    ):
        super().__init__()
        self.directory, self.template = split_filepath(filepath)
        self.filepath = os.fspath(filepath)
        blocker = None if "://" in self.filepath else file_in_the_way(self.directory)
        if blocker is not None:
            raise invalid("filepath", f"a path in a folder ({blocker} is a file)", filepath)
        if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose not in (0, 1, 2):
            raise invalid("verbose", "0 (silent), 1 or 2 (a line per save)", verbose)
        self.verbose = verbose
        self.save_best_only = check_bool("save_best_only", save_best_only)
        self.save_weights_only = check_bool("save_weights_only", save_weights_only)
        self.save_on_train_end = check_bool("save_on_train_end", save_on_train_end)
        self._check_extension()
        self._monitor = Monitor(monitor, mode, min_delta, initial_value_threshold)
        self.save_freq = check_save_freq(save_freq, allow_none=True)
        self._schedule = Schedule(self.save_freq, every_n_epochs, every_seconds)
        check_template(self.template, self.filepath, step_saves=self._schedule.needs_batch_hooks)
        self._progress = Progress()
        self._retention_args = {
            "keep_last": check_optional_count("keep_last", keep_last),
            "keep_best": check_optional_count("keep_best", keep_best),
            "keep_every_n_epochs": check_optional_count("keep_every_n_epochs", keep_every_n_epochs),
            "max_total_bytes": check_optional_count("max_total_bytes", max_total_bytes),
        }
        if retention is not None and not isinstance(retention, Policy):
            raise invalid("retention", "a keras_ckpt.policies policy or None", retention)
        if retention is not None and any(v is not None for v in self._retention_args.values()):
            given = {k: v for k, v in self._retention_args.items() if v is not None}
            raise ValueError(
                "Pass either `retention` or the `keep_*`/`max_total_bytes` arguments, not both. "
                f"Received: retention={retention!r} and {given}"
            )
        self._retention = retention
        self.async_save = check_bool("async_save", async_save)
        # A legacy `.h5` full model has no snapshot writer: Keras writes it from the live model.
        self._legacy_h5 = not self.save_weights_only and not self.template.endswith(".keras")
        self._writer = Writer(background=self.async_save and not self._legacy_h5)
        self._check_conflicts()
        self.manager = CheckpointManager(self.directory)
        self._owner = f"ModelCheckpoint:{self.template}"
        self._last_saved_step: int | None = None
        self._chief = True
        self._run: str | None = None  # this run's id in the records; settled at the first epoch
        self._run_settled = False
        self._best_origin = ""  # where a `best` not set by this run came from, for messages
        self._last_epoch_steps = 0
        # Keras runs batch-end hooks in a thread pool on JAX and PyTorch unless a callback
        # overrides `on_train_batch_end` without `async_safe`. With epoch-end saves only, our hook
        # just counts steps, safely off the training thread; step saves must run on it, between
        # steps, to save that step's state (a worker thread races the next steps, and on JAX its
        # `model` sync would write an older state back under the trainer).
        self.async_safe = not self._schedule.needs_batch_hooks
        self._count_lock = threading.Lock()

    # --------------------------------------------------------------- validation

    def _check_extension(self) -> None:
        if self.save_weights_only and not self.template.endswith(".weights.h5"):
            raise ValueError(
                "Invalid value for argument `filepath`. Expected a name ending in `.weights.h5` "
                f"with save_weights_only=True. Received: filepath={self.filepath!r}"
            )
        if not self.save_weights_only and (
            self.template.endswith(".weights.h5") or not self.template.endswith((".keras", ".h5"))
        ):
            raise ValueError(
                "Invalid value for argument `filepath`. Expected a name ending in `.keras` to save "
                "the full model (or pass save_weights_only=True with `.weights.h5`). "
                f"Received: filepath={self.filepath!r}"
            )

    def _check_conflicts(self) -> None:
        monitor = self._monitor.monitor
        if self.save_best_only and isinstance(self.save_freq, int) and monitor.startswith("val_"):
            raise ValueError(
                f"`save_best_only` with save_freq={self.save_freq} compares `{monitor}` after "
                "training steps, but validation metrics only exist at epoch end. Monitor a "
                "training metric (e.g. monitor='loss') or use save_freq='epoch'."
            )
        keep_best = self._retention_args["keep_best"]
        if keep_best and isinstance(self.save_freq, int) and monitor.startswith("val_"):
            raise ValueError(
                f"`keep_best={keep_best}` with save_freq={self.save_freq} ranks checkpoints by "
                f"`{monitor}`, but saves after training steps have no validation metrics, so "
                "nothing would ever be ranked or pruned. Monitor a training metric (e.g. "
                "monitor='loss') or use save_freq='epoch'."
            )
        if self.save_best_only and self.save_on_train_end:
            raise ValueError(
                "`save_on_train_end=True` would replace the best model with the last one under "
                "`save_best_only=True`. Use a second ModelCheckpoint for the last model."
            )
        if "batch" in template_fields(self.template) and not self._schedule.needs_batch_hooks:
            raise ValueError(
                f"The filepath uses {{batch}} but saves happen only at epoch ends "
                f"(save_freq={self.save_freq!r}). Received: filepath={self.filepath!r}"
            )

    # --------------------------------------------------------------- retention

    def retention_policy(self) -> Policy | None:
        """The policy applied after each save (None: keep everything)."""
        if self._retention is not None:
            return self._retention
        args = self._retention_args
        return from_keep_args(
            **args,
            monitor=self._monitor.monitor,
            mode=self._mode() if args["keep_best"] else "auto",
        )

    @property
    def owner(self) -> str:
        """The owner name in this callback's records; `CheckpointManager` filters by it."""
        return self._owner

    def _mode(self) -> str:
        return self._monitor.resolve(self.model)

    @property
    def best(self) -> float | None:
        """Best value of `monitor` so far, including saves of earlier runs into these files."""
        return self._monitor.best

    # --------------------------------------------------------------- fit hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        Writer.settle_all()  # a save of an earlier fit in this process must land before we read
        # A signal may have stopped an earlier fit of this model: that one is over, not this one.
        st.mark_preempted(self._model, False)
        self._run_settled = False
        self._check_same_template_in_fit()
        # Multi-worker: only the chief locks and writes; the others read the records (for `best`)
        # and skip every save. Keras 3 saving reads mirrored variables locally, no collective.
        self._chief = distribute.is_chief(self.model)
        if self._chief:
            self.manager.open_for_writing()
        own = self.manager.checkpoints(owner=self._owner)
        if own:
            self._check_same_monitor(own[-1])
        if not template_fields(self.template) and self._chief:
            self._adopt_foreign_file()
        self._schedule.start(self._progress.global_step)

    # --------------------------------------------------------------- runs

    def _settle_run(self, first_epoch: int) -> None:
        """Continues the run of our newest record, or starts a new one, and says which.

        A continuation (BackupAndRestore resumed this fit, or `initial_epoch` starts at or after
        the newest record's epoch) keeps its memory: the best value, and its checkpoints count
        for retention. A fresh run ranks and prunes only its own checkpoints and starts its best
        anew; the earlier run's are left alone (one line says so). A fixed name with
        `save_best_only` keeps its best, and says so: replacing a better model there with a worse
        one would lose it (keras#17012); any other fixed name is simply replaced, as in Keras.
        """
        self._run_settled = True
        own = self.manager.checkpoints(owner=self._owner)
        newest = own[-1] if own else None
        resumed = st.resumed_from(self._model) is not None
        if newest is None:
            self._run = uuid.uuid4().hex[:12]
            return
        if resumed or 0 < first_epoch and newest.epoch <= first_epoch:
            self._run = newest.owner_state.get("run")
            self._remember(newest, "")
            return
        self._run = uuid.uuid4().hex[:12]
        where = self.directory
        if not template_fields(self.template):
            origin = f"{self.template} of an earlier run (epoch {newest.epoch})"
            if self.save_best_only and self._remember(newest, origin):
                print(
                    f"ModelCheckpoint: {where}/{self.template} holds the best "
                    f"`{self._monitor.monitor}` of an earlier run ({self._monitor.best:.5f}, "
                    f"epoch {newest.epoch}); this run replaces it only with a better value. "
                    "Delete it or choose another filepath to start afresh.",
                    flush=True,
                )
            return
        earlier = [r for r in own if r.owner_state.get("run") != self._run]
        epochs = sorted({r.epoch for r in earlier})
        span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"
        print(
            f"ModelCheckpoint: {where} holds {_count(len(earlier), 'checkpoint')} of an earlier "
            f"run of {self.template} ({span}); this fresh run ranks, prunes and compares only "
            "its own and leaves those alone (a save under the same name replaces one). To "
            "continue that run instead, resume it (BackupAndRestore) or pass `initial_epoch`.",
            flush=True,
        )

    def _remember(self, newest: Record, origin: str) -> bool:
        """Takes the best value (and settled mode) from our newest record; True if it did."""
        state = newest.owner_state
        if state.get("monitor") == self._monitor.monitor and state.get("best") is not None:
            if self._monitor.mode == "auto" and state.get("mode") in ("min", "max"):
                self._monitor.mode = state["mode"]
            if self._monitor.mode != "auto":
                before = self._monitor.best
                self._monitor.best = self._monitor.better_of(self._monitor.best, state["best"])
                if self._monitor.best != before:
                    self._best_origin = origin
                    return True
        return False

    def _uses_monitor(self) -> bool:
        return self.save_best_only or bool(self._retention_args["keep_best"])

    def _check_same_monitor(self, newest: Record) -> None:
        state = newest.owner_state
        theirs = state.get("monitor")
        their_use = state.get("uses_monitor", state.get("save_best_only", False))
        if self._uses_monitor() and their_use and theirs and theirs != self._monitor.monitor:
            raise ValueError(
                f"{self.directory} holds checkpoints of {self.template} monitored by `{theirs}` "
                f"(newest: {newest.name}), and this ModelCheckpoint monitors "
                f"`{self._monitor.monitor}` under the same name: the two would rank and compare "
                "each other's files. Use another filepath (or folder) for the new monitor."
            )

    def _check_same_template_in_fit(self) -> None:
        callbacks = st.find_fit_context(self._model).callbacks or []
        for other in callbacks:
            if (
                other is not self
                and isinstance(other, ModelCheckpoint)
                and other.template == self.template
                and other.manager.storage.url == self.manager.storage.url
                and other._monitor.monitor != self._monitor.monitor
            ):
                raise ValueError(
                    f"Two ModelCheckpoint callbacks in this fit write {self.filepath}, one "
                    f"monitoring `{other._monitor.monitor}` and one `{self._monitor.monitor}`: "
                    "they would overwrite and prune each other's files. Give each its own filepath."
                )

    def _adopt_foreign_file(self) -> None:
        """A file at our fixed path without a record (Keras's own ModelCheckpoint wrote it, say)
        is moved aside under a new name, never overwritten, never deleted."""
        try:
            self.manager.get(self.template)
            return
        except LookupError:
            if not self.manager.storage.exists(self.template):
                return
        if not isinstance(self.manager.storage, LocalStorage):
            raise ForeignFileError(
                f"Refusing to overwrite {self.filepath}: keras-ckpt did not write it (no record "
                "names it). Move it away or choose another filepath."
            )
        new = move_aside(self.manager.storage.root, self.template)
        warnings.warn(
            f"ModelCheckpoint: {self.filepath} was not written by keras-ckpt (no record names it, "
            f"Keras's own ModelCheckpoint perhaps); kept as {os.path.join(self.directory, new)} "
            "so that this run can write there.",
            stacklevel=3,
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._writer.check()
        if not self._run_settled:
            self._settle_run(epoch)
        self._progress.begin_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `_model`, not `model`: on JAX the property syncs all variables, too slow per batch.
        if is_replaying(self._model):
            return
        if self.async_safe:
            # Maybe in a worker thread, out of order; Keras waits for all before `on_epoch_end`.
            with self._count_lock:
                if batch + 1 > self._progress.step:
                    self._progress.end_batch(batch)
            return
        self._writer.check()
        self._progress.end_batch(batch)
        if self._schedule.needs_batch_hooks and self._schedule.due_after_batch(
            self._progress.global_step
        ):
            self._save(self._progress.epoch, batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._writer.check()
        if is_preempted(self._model):
            return  # a signal cut this epoch short; the resumed run finishes it for real
        self._check_monitored(epoch, logs or {})
        steps_in_epoch = self._last_epoch_steps = self._progress.step
        self._progress.end_epoch(epoch)
        if self._schedule.due_after_epoch(self._progress.epoch, self._progress.global_step):
            # With step saves too, `{batch}` of an epoch-end save is the epoch's last batch.
            last_batch = steps_in_epoch - 1 if self._schedule.needs_batch_hooks else None
            self._save(epoch, last_batch, logs)

    def _check_monitored(self, epoch: int, logs: dict[str, Any]) -> None:
        """A monitored metric missing from an epoch end's logs is a typo, unless it is a `val_`
        metric and validation did not run this epoch (no `val_` key at all: `validation_freq`)."""
        wanted = {self._monitor.monitor} if self.save_best_only else set()
        policy = self.retention_policy() if self._retention is not None else None
        if self._retention_args["keep_best"]:
            wanted.add(self._monitor.monitor)
        elif policy is not None:
            wanted |= ranked_metrics(policy)
        validated = any(key.startswith("val_") for key in logs)
        for metric in sorted(wanted):
            if metric not in logs and (validated or not metric.startswith("val_")):
                role = "`save_best_only`" if self.save_best_only else "`keep_best`"
                raise ValueError(
                    f"ModelCheckpoint: {role} monitors `{metric}`, which is not in the logs at "
                    f"the end of epoch {epoch + 1}. Keys that exist: "
                    f"{', '.join(sorted(logs)) or 'none'}. Pass one of them as `monitor`."
                )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        try:
            preempted = is_preempted(self._model)
            if (
                self.save_on_train_end
                and not preempted
                and self._last_saved_step != self._progress.global_step
            ):
                step = self._progress.step
                if step:
                    self._save(self._progress.epoch, step - 1, logs)
                else:  # at an epoch boundary: `{batch}` is that epoch's last batch
                    last = self._last_epoch_steps - 1 if self._last_epoch_steps else None
                    self._save(max(self._progress.epoch - 1, 0), last, logs)
            self._writer.wait()
        finally:
            self.manager.close()

    def _end_interrupted(self) -> None:
        """Called by `BackupAndRestore` before it raises on a signal (our `on_train_end` will not
        run): lands the save in flight and gives the directory's lock back."""
        try:
            self._writer.wait()
        finally:
            self.manager.close()

    def wait_until_finished(self) -> None:
        """Blocks until the last save is committed; raises its error if it failed."""
        self._writer.wait()

    # --------------------------------------------------------------- saving

    def _save(self, epoch_index: int, batch_index: int | None, logs: dict[str, Any] | None) -> None:
        logs = dict(logs or {})
        name = format_name(self.template, epoch_index, batch_index, logs)
        display = f"{self.directory.rstrip('/')}/{name}" if self.directory != "." else name
        if self.save_best_only and not self._improved(epoch_index, logs, display):
            return
        if not self._chief:  # multi-worker: the chief writes this checkpoint
            self._last_saved_step = self._progress.global_step
            return
        if self._retention_args["keep_best"] and self._monitor.monitor not in logs:
            warnings.warn(
                f"ModelCheckpoint: `keep_best` ranks by `{self._monitor.monitor}`, which is not in "
                f"the logs of this save (keys: {', '.join(sorted(logs)) or 'none'}); checkpoints "
                "without it are never kept by `keep_best`; until one has it, only the other keep "
                "options prune.",
                stacklevel=3,
            )
        if self.verbose and not self.save_best_only:
            print(f"\nEpoch {epoch_index + 1}: saving model to {display}")
        fields = {
            "name": name,
            "kind": "weights" if self.save_weights_only else "model",
            "epoch": self._progress.epoch,
            "step": self._progress.step,
            # The optimizer's step count: right also for a model trained before this callback
            # existed (a fit with `initial_epoch`, a second fit), where our count starts at 0.
            "global_step": st.optimizer_iterations(self.model),
            "metrics": clean_metrics(logs),
            "owner": self._owner,
            "owner_state": self._owner_state(),
        }
        self._last_saved_step = self._progress.global_step
        # Settled here, on the training thread: the writer thread must not touch `self.model`
        # (on JAX that property syncs the trainer's state into the variables).
        policy = self.retention_policy()
        if self._legacy_h5:  # Keras writes a legacy `.h5` full model from the live model
            self._writer.run(
                lambda: None, lambda _: self._commit(None, fields, policy, epoch_index, display)
            )
            return
        # Host copies on the training thread (into buffers reused from save to save), written
        # by the one-pass writer in the writer thread; an inline save is written before the next
        # step, straight from the variables' memory.
        snapshotter = self.__dict__.setdefault(
            "_snapshotter", snapshot.Snapshotter(copy=self._writer.background)
        )
        self._writer.run(
            lambda: snapshotter.take(self.model, weights_only=self.save_weights_only),
            lambda snap: self._commit(snap, fields, policy, epoch_index, display),
        )

    def _commit(
        self,
        snap: snapshot.Snapshot | None,
        fields: dict[str, Any],
        policy: Policy | None,
        epoch_index: int,
        display: str,
    ) -> None:
        """Writes the file (from `snap`; a legacy `.h5` from the live model) and commits it."""
        name = fields["name"]
        with self.manager.stage() as folder:
            staged = os.path.join(folder, name)
            sealed = None
            if snap is not None:
                try:
                    sealed = {name: h5write.write_snapshot(snap, staged)}  # fsynced, checksummed
                finally:
                    snap.discard()
            else:
                self.model.save(staged, overwrite=True)
            self.manager.commit({name: staged}, sealed=sealed, **fields)
        if self.verbose:
            print(f"\nEpoch {epoch_index + 1}: finished saving model to {display}")
        policy = self._applicable(policy) if policy is not None else None
        if policy is not None:
            result = self.manager.prune(_ThisRun(policy, self._run), owner=self._owner)
            if self.verbose and result.deleted:
                names = ", ".join(r.name for r in result.deleted)
                print(f"Epoch {epoch_index + 1}: retention removed {names}")

    def _applicable(self, policy: Policy) -> Policy | None:
        """The policy without its `keep_best` part while that metric is in none of this run's
        records (say, validation has not run yet): the byte budget and `keep_last` apply
        meanwhile."""
        own = [
            r
            for r in self.manager.checkpoints(owner=self._owner)
            if r.owner_state.get("run") == self._run
        ]
        return applicable(policy, {m for r in own for m in r.metrics})

    def _improved(self, epoch_index: int, logs: dict[str, Any], display: str) -> bool:
        monitor = self._monitor.monitor
        if monitor not in logs:
            if not monitor.startswith("val_"):  # training metrics are in every save's logs
                raise ValueError(
                    f"ModelCheckpoint: `save_best_only` monitors `{monitor}`, which is not in the "
                    f"logs. Keys that exist: {', '.join(sorted(logs)) or 'none'}. Pass one of "
                    "them as `monitor`."
                )
            warnings.warn(
                f"ModelCheckpoint did not save: `save_best_only` monitors `{monitor}`, which is "
                f"not in the logs of this save (keys: {', '.join(sorted(logs)) or 'none'}): "
                "validation did not run this epoch (`validation_freq`, or no validation data).",
                stacklevel=3,
            )
            return False
        try:
            current = float(logs[monitor])
        except (TypeError, ValueError):
            raise ValueError(
                f"ModelCheckpoint monitors `{monitor}`, which must be a scalar. "
                f"Received: {logs[monitor]!r}"
            ) from None
        if not math.isfinite(current):
            warnings.warn(
                f"ModelCheckpoint did not save: `{monitor}` is {current} (training diverged?); "
                "a non-finite value never counts as an improvement.",
                stacklevel=3,
            )
            return False
        self._mode()
        origin = f" ({self._best_origin})" if self._best_origin else ""
        best_str = "" if self._monitor.best is None else f"{self._monitor.best:.5f}{origin}"
        if not self._monitor.is_improvement(current):
            if self.verbose:
                print(f"\nEpoch {epoch_index + 1}: {monitor} did not improve from {best_str}")
            return False
        if self.verbose:
            change = (
                f"is {current:.5f} (first value)"
                if self._monitor.best is None
                else f"improved from {best_str} to {current:.5f}"
            )
            print(f"\nEpoch {epoch_index + 1}: {monitor} {change}, saving model to {display}")
        self._monitor.best = current
        self._best_origin = ""
        return True

    def _owner_state(self) -> dict[str, Any]:
        mode = self._monitor.mode
        if mode == "auto" and self._monitor.best is not None:
            mode = self._mode()
        return {
            "callback": "ModelCheckpoint",
            "template": self.template,
            "monitor": self._monitor.monitor,
            "mode": mode,
            "best": self._monitor.best,
            "save_best_only": self.save_best_only,
            "uses_monitor": self._uses_monitor(),
            "retention": _describe(self.retention_policy()),
            "run": self._run,
        }

    # --------------------------------------------------------------- resume protocol

    def get_checkpoint_state(self) -> dict[str, Any]:
        """State saved by `keras_ckpt.BackupAndRestore` backups (see `CheckpointStateful`)."""
        return {
            "progress": self._progress.get_state(),
            "schedule": self._schedule.get_state(),
            "best": self._monitor.best,
            "mode": self._monitor.mode,
            "run": self._run,
        }

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        self._progress.set_state(state["progress"])
        self._schedule.set_state(state["schedule"])
        if state.get("run") is not None:
            self._run = state["run"]
        if self._monitor.mode == "auto" and state.get("mode") in ("min", "max"):
            self._monitor.mode = state["mode"]
        if self._monitor.mode != "auto":
            self._monitor.best = self._monitor.better_of(self._monitor.best, state.get("best"))


@dataclass(frozen=True)
class _ThisRun(Policy):
    """`policy` applied to the checkpoints of run `run` only; every other run's are kept."""

    policy: Policy
    run: str | None

    def __repr__(self) -> str:  # what `prune` logs as the reason a checkpoint was deleted
        return f"{self.policy!r} (this run)"

    def reasons(self, records: Sequence[CheckpointInfo]) -> list[Reasons]:
        mine = [i for i, r in enumerate(records) if _run_of(r) == self.run]
        result: list[Reasons] = [("another run",)] * len(records)
        decided = judge(self.policy, [records[i] for i in mine])
        for i, reasons in zip(mine, decided, strict=True):
            result[i] = reasons
        return result


def _run_of(record: Any) -> str | None:
    return getattr(record, "owner_state", {}).get("run")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _describe(policy: Policy | None) -> dict[str, Any]:
    """The retention policy as recorded (`keras-ckpt list --why` re-applies it)."""
    if policy is None:
        return {}
    return to_json(policy) or {"custom": repr(policy)}
