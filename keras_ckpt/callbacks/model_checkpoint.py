"""`ModelCheckpoint`: Keras's callback with atomic saves, retention and memory across restarts.

The callback decides when to save (`keras_ckpt.training.triggers`), whether (`save_best_only`,
`_monitor`), what (`_naming`, `_runs`) and what to keep; `keras_ckpt.training.pipeline` does the
saving.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import keras

from keras_ckpt import distribute
from keras_ckpt._validate import check_bool
from keras_ckpt.callbacks import _runs
from keras_ckpt.callbacks._arguments import (
    check_conflicts,
    check_extension,
    check_folder,
    check_folder_name,
    check_keep,
    check_verbose,
    split_sharded,
)
from keras_ckpt.callbacks._monitor import Monitor, callback_memory, check_in_logs, warn_unranked
from keras_ckpt.callbacks._naming import (
    check_template,
    format_name,
    split_filepath,
)
from keras_ckpt.format.keras_file import KerasFile
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import Policy, from_keep_args
from keras_ckpt.records import clean_metrics
from keras_ckpt.schedule import Progress, Schedule, check_save_freq
from keras_ckpt.state import is_preempted, is_replaying, mark_preempted
from keras_ckpt.training import fit_state
from keras_ckpt.training.announcements import Announcements
from keras_ckpt.training.pipeline import Saved, SavePipeline, SaveRequest
from keras_ckpt.training.sharded import check_sharded, choose_format
from keras_ckpt.training.triggers import Triggers
from keras_ckpt.training.writer import Writer

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(keras.callbacks.Callback):
    """Saves the model or its weights during `fit`, safely, and keeps only what you ask for.

    A drop-in superset of `keras.callbacks.ModelCheckpoint`: the same arguments with the same
    meaning and file names. What changes is safety. Every file is written beside its final path
    and moved into place in one step, so a kill never leaves a half-written checkpoint where the
    last good one was; a JSON record in `.keras_ckpt/` next to the files keeps each one's
    checksum, epoch, step and metrics. A restarted run reads those records: `save_best_only`
    keeps its best value, and retention counts the files written before. Files the callback did
    not write are never deleted or overwritten.

    Args:
        filepath: Path (or fsspec URL) of the file to write. The file name may hold `{epoch}`
            (1-based), `{batch}` (1-based, for step saves) and any logged metric, with format specs:
            `"runs/model-{epoch:03d}-{val_loss:.4f}.keras"`. The folder part may not. End it in
            `.keras` for the full model (architecture, weights, optimizer state) or `.weights.h5`
            with `save_weights_only=True` for weights only. End it in `/` instead
            (`"runs/model-{epoch:03d}/"`) for sharded checkpoints: a folder each, written by
            Orbax from every process (JAX; `pip install "keras-ckpt[orbax]"`), that
            `keras.saving.load_model` loads. A model whose variables are split across processes
            saves such folders anyway (named as the file, without its extension), and says so.
        monitor: Metric watched by `save_best_only` and `keep_best`, recorded as what "best"
            means. One missing from the logs of an epoch end that has validation metrics (a
            misspelled name) raises `ValueError` listing the keys that exist, used or not.
            Defaults to `"val_loss"`.
        verbose: 0 (silent), 1 or 2 (a line per save; Keras prints for any value above 0).
        save_best_only: Save only when `monitor` improves. An epoch without validation
            (`validation_freq`) saves nothing, with a warning. Defaults to `False`.
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
        # A folder-style filepath ("runs/m-{epoch}/"): sharded checkpoints, written by Orbax.
        self._sharded, path = split_sharded(filepath)
        self.directory, self.template = split_filepath(path)
        self.filepath = os.fspath(filepath)
        check_folder("filepath", self.directory, filepath, "a path in a folder")
        self.verbose = check_verbose(verbose)
        self.save_best_only = check_bool("save_best_only", save_best_only)
        self.save_weights_only = check_bool("save_weights_only", save_weights_only)
        self.save_on_train_end = check_bool("save_on_train_end", save_on_train_end)
        if self._sharded:
            check_folder_name(self.template, self.filepath)
            check_sharded(True)
        else:
            check_extension(self.template, self.filepath, self.save_weights_only)
        self._monitor = Monitor(monitor, mode, min_delta, initial_value_threshold)
        self.save_freq = check_save_freq(save_freq, allow_none=True)
        self._schedule = Schedule(self.save_freq, every_n_epochs, every_seconds)
        self._triggers = Triggers(self._schedule, name="ModelCheckpoint")
        check_template(self.template, self.filepath, step_saves=self._schedule.needs_batch_hooks)
        self._progress = Progress()
        self._keep = check_keep(
            retention,
            keep_last=keep_last,
            keep_best=keep_best,
            keep_every_n_epochs=keep_every_n_epochs,
            max_total_bytes=max_total_bytes,
        )
        self._retention = retention
        self.async_save = check_bool("async_save", async_save)
        check_conflicts(self)
        self.manager = CheckpointManager(self.directory)
        # A legacy `.h5` full model has no snapshot writer: Keras writes it from the live model.
        legacy = not (self.save_weights_only or self._sharded or self.template.endswith(".keras"))
        self._file_format = KerasFile(
            weights_only=self.save_weights_only, legacy_h5=legacy, copy=async_save
        )
        self._pipeline = SavePipeline(self.manager, self._file_format, background=self.async_save)
        self._owner = f"ModelCheckpoint:{self.template}"
        self._last_saved_step: int | None = None
        self._chief = True
        self._run: str | None = None  # this run's id in the records; settled at the first epoch
        self._run_settled = False
        self._last_epoch_steps = 0
        # Keras runs batch-end hooks in a thread pool on JAX and PyTorch unless a callback
        # overrides `on_train_batch_end` without `async_safe`. With epoch-end saves only, our hook
        # just counts steps, safely off the training thread; step saves must run on it, between
        # steps, to save that step's state (a worker thread races the next steps, and on JAX its
        # `model` sync would write an older state back under the trainer).
        self.async_safe = not self._schedule.needs_batch_hooks
        self._count_lock = threading.Lock()
        self._lines = Announcements()  # printed in order, on the training thread

    @property
    def monitor(self) -> str:
        """The metric `save_best_only` and `keep_best` watch."""
        return self._monitor.monitor

    @property
    def owner(self) -> str:
        """The owner name in this callback's records; `CheckpointManager` filters by it."""
        return self._owner

    @property
    def best(self) -> float | None:
        """Best value of `monitor` so far, including saves of earlier runs into these files."""
        return self._monitor.best

    def retention_policy(self) -> Policy | None:
        """The policy applied after each save (None: keep everything)."""
        if self._retention is not None:
            return self._retention
        mode = self._monitor.resolve(self.model) if self._keep["keep_best"] else "auto"
        return from_keep_args(**self._keep, monitor=self._monitor.monitor, mode=mode)

    # --------------------------------------------------------------- fit hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        Writer.settle_all()  # a save of an earlier fit in this process must land before we read
        # A signal may have stopped an earlier fit of this model: that one is over, not this one.
        mark_preempted(fit_state.unsynced_model(self), False)
        self._run_settled = False
        model = fit_state.unsynced_model(self)
        self._siblings = fit_state.find_fit_context(model).callbacks or []
        _runs.check_same_template(self, self._siblings)
        # Multi-worker: only the chief locks and writes; the others read the records (for `best`)
        # and take each save's host copy with it, then drop it.
        self._chief = distribute.is_chief(self.model)
        sharded = choose_format(
            self._sharded,
            self.model,
            kind="weights" if self.save_weights_only else "model",
            directory=self.directory,
            tag=self._owner,
            chief=self._chief,
            who="ModelCheckpoint",
        )
        if sharded is not None:
            check_folder_name(sharded.checkpoint_name(self.template), self.filepath)
        self._pipeline.use_format(sharded or self._file_format)
        if self._chief:
            self.manager.open_for_writing()
        _runs.check_directory(self)
        # Time-based saves of a multi-worker job happen when the chief's clock says so, at the same
        # step on every worker (a save that gathers state from every worker needs all of them).
        self._triggers.start(model, chief=self._chief, global_step=self._progress.global_step)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._pipeline.check()
        self._lines.flush()  # before the progress bar's header of this epoch
        if not self._run_settled:
            self._run_settled = True
            self._run, self._monitor.origin = _runs.settle_run_of(self, first_epoch=epoch)
        self._progress.begin_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Not `model`: on JAX the property syncs all variables, too slow per batch.
        if is_replaying(fit_state.unsynced_model(self)):
            return
        if self.async_safe:
            # Maybe in a worker thread, out of order; Keras waits for all before `on_epoch_end`.
            with self._count_lock:
                if batch + 1 > self._progress.step:
                    self._progress.end_batch(batch)
            return
        self._pipeline.check()
        self._lines.flush()
        self._progress.end_batch(batch)
        if self._triggers.after_batch(self._progress.global_step).save:
            self._save(self._progress.epoch, batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._pipeline.check()
        self._lines.flush()
        if is_preempted(fit_state.unsynced_model(self)):
            return  # a signal cut this epoch short; the resumed run finishes it for real
        check_in_logs(self, logs or {}, epoch=epoch)
        if self.monitor in (logs or {}):
            self._monitor.resolve(self.model)  # "auto" settled as Keras does: it raises if unknown
        steps_in_epoch = self._last_epoch_steps = self._progress.step
        self._progress.end_epoch(epoch)
        if self._triggers.after_epoch(self._progress.epoch, self._progress.global_step).save:
            # With step saves too, `{batch}` of an epoch-end save is the epoch's last batch.
            last_batch = steps_in_epoch - 1 if self._schedule.needs_batch_hooks else None
            self._save(epoch, last_batch, logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        try:
            done = self._last_saved_step == self._progress.global_step
            preempted = is_preempted(fit_state.unsynced_model(self))
            if self.save_on_train_end and not preempted and not done:
                step = self._progress.step
                if step:
                    self._save(self._progress.epoch, step - 1, logs)
                else:  # at an epoch boundary: `{batch}` is that epoch's last batch
                    last = self._last_epoch_steps - 1 if self._last_epoch_steps else None
                    self._save(max(self._progress.epoch - 1, 0), last, logs)
        finally:
            self._pipeline.close()
            self._lines.flush()

    def _end_interrupted(self) -> None:
        """Called by `BackupAndRestore` before it raises on a signal (our `on_train_end` will not
        run): lands the save in flight and gives the directory's lock back."""
        self._pipeline.close()
        self._lines.flush()

    def wait_until_finished(self) -> None:
        """Blocks until the last save is committed; raises its error if it failed."""
        self._pipeline.wait()

    # --------------------------------------------------------------- saving

    def _save(self, epoch_index: int, batch_index: int | None, logs: dict[str, Any] | None) -> None:
        logs = dict(logs or {})
        name = format_name(self.template, epoch_index, batch_index, logs)
        name = self._pipeline.format.checkpoint_name(name)
        display = f"{self.directory.rstrip('/')}/{name}" if self.directory != "." else name
        if self.save_best_only and not self._monitor.improved(
            self.model, logs, epoch=epoch_index, display=display, verbose=self.verbose
        ):
            return
        self._last_saved_step = self._progress.global_step
        if not self._chief:
            # Multi-worker: the chief writes this checkpoint, but every worker takes the host copy
            # at this step, as gathering the state may be a collective (on JAX, Keras's saving
            # creates a variable across all processes the first time).
            self._pipeline.contribute(self.model)
            return
        if self._keep["keep_best"]:
            warn_unranked(self.monitor, logs)
        if self.verbose and not self.save_best_only:
            print(f"\nEpoch {epoch_index + 1}: saving model to {display}")
        # Settled here, on the training thread: the writer thread must not touch `self.model`
        # (on JAX that property syncs the trainer's state into the variables).
        policy = self.retention_policy()
        request = SaveRequest(
            name=name,
            epoch=self._progress.epoch,
            step=self._progress.step,
            # The optimizer's step count: right also for a model trained before this callback
            # existed (a fit with `initial_epoch`, a second fit), where our count starts at 0.
            global_step=fit_state.optimizer_iterations(self.model),
            metrics=clean_metrics(logs),
            owner=self._owner,
            memory=callback_memory(self, policy),
        )

        def announce(saved: Saved) -> None:  # on the writer thread when in the background
            if self.verbose:
                self._lines.saved(saved, f"Epoch {epoch_index + 1}", display)

        retention = _runs.ThisRun(policy, self._run) if policy is not None else None
        self._pipeline.save(self.model, request, retention=retention, on_saved=announce)

    def _uses_monitor(self) -> bool:
        return self.save_best_only or bool(self._keep["keep_best"])

    # --------------------------------------------------------------- resume protocol

    def get_checkpoint_state(self) -> dict[str, Any]:
        """State saved by `keras_ckpt.BackupAndRestore` backups (see `CheckpointStateful`)."""
        return {
            "progress": self._progress.get_state(),
            "schedule": self._schedule.get_state(),
            **self._monitor.get_state(),
            "run": self._run,
        }

    def set_checkpoint_state(self, state: dict[str, Any]) -> None:
        self._progress.set_state(state["progress"])
        self._schedule.set_state(state["schedule"])
        if state.get("run") is not None:
            self._run = state["run"]
        self._monitor.set_state(state)
