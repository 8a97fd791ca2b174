"""`BackupAndRestore`: Keras's callback, made exact, atomic and preemption-safe.

The callback decides when to back up and when to stop (`keras_ckpt.training.triggers`: schedule,
cadence, signals); `keras_ckpt.training.backup` takes and restores the training state, and
`keras_ckpt.training.pipeline` writes and reads the backups.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_ckpt import distribute
from keras_ckpt._validate import check_bool
from keras_ckpt.callbacks._arguments import (
    check_backup_save_freq,
    check_folder,
    check_keep_last,
    check_verbose,
)
from keras_ckpt.format.backup_file import BackupFile
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.schedule import Progress, Schedule
from keras_ckpt.state import is_replaying, mark_preempted
from keras_ckpt.training import fit_state
from keras_ckpt.training.announcements import Announcements
from keras_ckpt.training.backup import Backups
from keras_ckpt.training.pipeline import SavePipeline
from keras_ckpt.training.sharded import check_sharded, choose_format
from keras_ckpt.training.signals import announcement, end_others, interrupt
from keras_ckpt.training.triggers import Triggers
from keras_ckpt.training.writer import Writer

__all__ = ["BackupAndRestore"]

OWNER = "BackupAndRestore"


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the whole training state and resumes an interrupted `fit` exactly where it was.

    A drop-in superset of `keras.callbacks.BackupAndRestore`. Add it to `fit`, kill the job
    (preemption, crash, Ctrl-C), run the same script again: training continues at the epoch *and
    step* of the last good backup. With a fixed seed (`keras.utils.set_random_seed`) and
    deterministic ops (`tf.config.experimental.enable_op_determinism()`), the final weights are
    bit-identical to those of a run that was never interrupted.

    A backup holds the model, optimizer (built before loading; the restored `iterations` is
    checked), metric and `SeedGenerator` variables; epoch, step and global step; Python, NumPy and
    TensorFlow RNG state; the state of `EarlyStopping`, `ReduceLROnPlateau` and every callback of
    the same `fit` that implements `keras_ckpt.state.CheckpointStateful`. Each backup is one
    file, `backup-<global step>.weights.h5`: a plain Keras weights file (`model.load_weights`
    loads it) with the rest of the state in an extra group Keras ignores.

    To resume inside an epoch, the resumed run replays the input of the batches already trained
    (it pulls them from the input pipeline without training), so it sees exactly the batches the
    interrupted run would have seen next. Other callbacks receive batch hooks for those steps while
    `keras_ckpt.state.is_replaying(model)` is True.

    SIGTERM and SIGINT during `fit` make it back up at the next step boundary, print where the
    backup went, and end `fit` as an interrupt does: SIGINT raises `KeyboardInterrupt`, SIGTERM
    raises `SystemExit(143)` (128 + 15, what a shell reports for a process SIGTERM killed), so an
    interrupted script never exits 0 (`raise_on_interrupt=False`: `fit` returns instead, and
    `interrupted` holds the signal number). A second signal goes to the previous handler. The
    previous handlers are restored when `fit` ends.

    Args:
        backup_dir: Path (or fsspec URL) of the folder holding the backups. Other files there are
            left alone.
        save_freq: `"epoch"` (at every epoch end), a positive int (every that many training
            steps, counted across epochs), `"auto"` (every that many steps that backups cost at
            most `max_overhead` of training time, measured as training goes), or `False` as in
            Keras: no scheduled backups, only on SIGTERM/SIGINT (`save_on_interrupt=True`) or by
            `every_seconds`. Defaults to `"epoch"`.
        double_checkpoint: Keep the previous backup too, so a damaged newest one can be skipped.
            Same as `keep_last=2`. Defaults to `False`.
        delete_checkpoint: Delete this callback's backups (and nothing else) when `fit` completes,
            and `backup_dir` itself if nothing else is in it. Not after an interrupted `fit`.
            Defaults to `True`.
        every_seconds: Also back up at the first step or epoch end after this many seconds since
            the last backup.
        keep_last: How many backups to keep. Defaults to 2 with `double_checkpoint=True`, else 1.
        save_on_interrupt: Back up and stop on SIGTERM/SIGINT. Defaults to `True`.
        raise_on_interrupt: After the backup of a signal is committed, raise (`KeyboardInterrupt`
            for SIGINT, `SystemExit(128 + signum)` for SIGTERM) instead of returning from `fit`.
            The cut-short epoch then never reaches `on_epoch_end` (nor `History`).
            Defaults to `True`.
        async_save: Write backups in a background thread: training pauses only to copy the state
            to host memory. At most one backup is in flight; an error in the background is raised
            at the next batch or epoch end, and `fit` (also when stopped by a signal) returns only
            after the last backup is committed. Defaults to `True`.
        max_overhead: With `save_freq="auto"` only: the fraction of training time backups may
            cost, a float in (0, 1). The callback backs up after the first step (a warm-up that
            pays first-use costs), times the steps, backs up once more to measure a backup (the
            part that blocks training, any wait for the previous background write, and how much
            slower the steps a background write overlaps run), and picks the interval in steps;
            it decides again when the costs drift. `every_seconds` still bounds the longest gap.
            Each backup records the interval and the measured costs in its record
            (`owner_state["cadence"]`). Defaults to `0.02`. Single-process training only: `fit`
            raises `ValueError` in a multi-worker job.
        verbose: 0 (silent), 1 (a line when `fit` resumes, when a signal stops it, and for
            `save_freq="auto"` the interval chosen and its changes that last) or 2 (also a line
            per backup, and every change of the interval). Defaults to `1`.
        sharded: True: each backup is a folder written by Orbax, every process writing the
            shards it holds (JAX; `pip install "keras-ckpt[orbax]"`); `model.load_weights`
            loads it. False: one Keras weights file each. None (default): sharded only when the
            model's variables are split across processes (no process could write the file),
            said in one line.

    Raises:
        ValueError: an argument is invalid, or `keep_last < 2` with `double_checkpoint=True`.

    Example:

    >>> import keras, numpy as np, keras_ckpt
    >>> keras.utils.set_random_seed(1)  # with deterministic ops too, resume is bit-exact
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile("adam", "mse")
    >>> backup = keras_ckpt.BackupAndRestore("runs/doc/backup", save_freq=2,
    ...                                      delete_checkpoint=False)
    >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 2)), batch_size=2, epochs=2,
    ...               callbacks=[backup], verbose=0)
    >>> backup.interrupted is None  # a signal would have set it: back up, stop, run again
    True
    >>> [r.name for r in keras_ckpt.CheckpointManager("runs/doc/backup").checkpoints()]
    ['backup-000000008']
    >>> keras_ckpt.BackupAndRestore("runs/doc/backup", save_freq=0)
    Traceback (most recent call last):
    ValueError: Invalid value for argument `save_freq`. Expected "epoch" ... Received: save_freq=0
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int | bool = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        *,
        every_seconds: float | None = None,
        keep_last: int | None = None,
        save_on_interrupt: bool = True,
        async_save: bool = True,
        max_overhead: float | None = None,
        raise_on_interrupt: bool = True,
        verbose: int = 1,
        sharded: bool | None = None,
    ):
        super().__init__()
        self.backup_dir = check_folder("backup_dir", backup_dir, backup_dir)
        self.verbose = check_verbose(verbose, "0 (silent), 1 or 2 (a line per backup)")
        self.save_on_interrupt = check_bool("save_on_interrupt", save_on_interrupt)
        self.raise_on_interrupt = check_bool("raise_on_interrupt", raise_on_interrupt)
        self.save_freq, self.max_overhead = check_backup_save_freq(
            save_freq,
            max_overhead,
            save_on_interrupt=self.save_on_interrupt,
            every_seconds=every_seconds,
        )
        self.double_checkpoint = check_bool("double_checkpoint", double_checkpoint)
        self.delete_checkpoint = check_bool("delete_checkpoint", delete_checkpoint)
        self.async_save = check_bool("async_save", async_save)
        self.keep_last = check_keep_last(keep_last, self.double_checkpoint)
        self.every_seconds = every_seconds
        on_demand = self.save_freq is False or self.save_freq == "auto"
        self._schedule = Schedule(
            save_freq=None if on_demand else self.save_freq,  # type: ignore[arg-type]
            every_seconds=every_seconds,
            on_demand=on_demand,
        )
        self._triggers = Triggers(
            self._schedule,
            name=OWNER,
            max_overhead=self.max_overhead,
            background=self.async_save,
            verbose=self.verbose,
        )
        self.sharded = check_sharded(sharded)
        self.manager = CheckpointManager(self.backup_dir)
        # Host buffers reused by every backup (one is written at a time); an inline backup is
        # written before the next step, straight from the variables' memory.
        self._file_format = BackupFile(copy=self.async_save)
        self._pipeline = SavePipeline(
            self.manager, self._file_format, background=self.async_save, thread="keras-ckpt-backup"
        )
        self._backups = Backups(self._pipeline, owner=OWNER, keep_last=self.keep_last)
        self._lines = Announcements()  # printed in order, on the training thread
        self._chief = True
        self._progress = Progress()
        self._stopped_by_signal = False
        self._epoch_save_logs: dict[str, Any] | None = None
        self._cut_epoch: int | None = None

    @property
    def interrupted(self) -> int | None:
        """The signal that stopped the last `fit` (`signal.SIGTERM`, ...), or None."""
        return self._triggers.interrupted

    # ------------------------------------------------------------------ fit hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        Writer.settle_all()  # a save of an earlier fit in this process must land before we read
        self._progress = Progress()
        self._stopped_by_signal, self._epoch_save_logs, self._cut_epoch = False, None, None
        self._triggers.check_workers(self.model)
        # Multi-worker: every worker restores the same backup below; only the chief writes.
        self._chief = distribute.is_chief(self.model)
        sharded = choose_format(
            self.sharded,
            self.model,
            kind="training_state",
            directory=self.backup_dir,
            tag=OWNER,
            chief=self._chief,
            who="BackupAndRestore",
        )
        self._pipeline.use_format(sharded or self._file_format)
        resumed = self._backups.begin(self.model, self, chief=self._chief)
        if resumed is not None:
            self._progress = resumed.progress
            for line in resumed.lines(self._backups.where(resumed.record.name)):
                self._say(line)
        self._triggers.start(
            fit_state.unsynced_model(self),
            chief=self._chief,
            global_step=self._progress.global_step,
            catch_signals=self.save_on_interrupt,
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._pipeline.check()
        self._lines.flush()
        self._backups.begin_epoch(self.model, epoch)
        self._progress.begin_epoch(epoch)
        if self._epoch_save_logs is not None:
            self._save(self._epoch_save_logs)
            self._epoch_save_logs = None
        self._triggers.epoch_begins()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Not `model` in the per-batch checks: on JAX it syncs every variable out of the
        # trainer's state at each call (measured: fit took twice as long per step).
        if is_replaying(fit_state.unsynced_model(self)) and batch >= self._progress.step:
            fit_state.stop_replay(self.model)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if is_replaying(fit_state.unsynced_model(self)):
            if self.interrupted is not None and self._triggers.agreement is None:
                self._stop(save=False)  # the backup resumed from holds exactly this state
            return  # multi-worker: a signal waits for the first trained step, where all agree
        self._pipeline.check()
        self._lines.flush()
        self._progress.end_batch(batch)
        decision = self._triggers.after_batch(
            self._progress.global_step, writing=self._pipeline.busy
        )
        if decision.message is not None and self._chief:
            self._say(f'BackupAndRestore(save_freq="auto"): {decision.message}.')
        if decision.stop is not None:
            self._stop(save=True, logs=logs)
        elif decision.save:
            self._save(logs)
        self._triggers.batch_done(self._progress.global_step, writing=self._pipeline.busy)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        fit_state.stop_replay(self.model)
        if self._stopped_by_signal:
            return  # the epoch was cut short; the backup of the stop holds the real state
        self._progress.end_epoch(epoch)
        decision = self._triggers.after_epoch(self._progress.epoch, self._progress.global_step)
        if decision.save or decision.stop is not None:
            # Saved once every callback has seen this epoch end: at the next epoch's begin, or at
            # train end if there is none, so EarlyStopping & co. are backed up after their update.
            self._epoch_save_logs = dict(logs or {})
        if decision.stop is not None:
            # A whole epoch: it ends normally; its backup is written at train end.
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._end_fit()
        signum = self._triggers.final_signal(self._progress.global_step)
        remove = False
        try:
            completed = signum is None
            if self._epoch_save_logs is not None and not (completed and self.delete_checkpoint):
                self._backups.capture_epoch_start()
                self._save(self._epoch_save_logs)
            self._epoch_save_logs = None
            self._pipeline.wait()
            if self.delete_checkpoint and completed and self._chief:
                self._backups.delete_all()
                remove = True
        finally:
            self._pipeline.close()
            self._lines.flush()
        if remove:
            self.manager.remove_if_unused()  # as Keras does, if nothing else is left there
        if signum is not None:
            fit_state.drop_epoch_from_history(fit_state.unsynced_model(self), self._cut_epoch)
            self._announce(signum)
            if self.raise_on_interrupt:
                end_others(self._backups.callbacks, self)
                raise interrupt(signum, OWNER)

    def wait_until_finished(self) -> None:
        """Blocks until the last backup is committed; raises its error if it failed."""
        self._pipeline.wait()

    # ------------------------------------------------------------------ saving

    def _save(self, logs: dict[str, Any] | None) -> None:
        timer = self._triggers.time_save(self._pipeline.stats)
        self._backups.save(
            self.model,
            self._progress,
            logs,
            chief=self._chief,
            cadence=self._triggers.cadence,
            on_saved=timer.written if timer is not None else None,
            lines=self._lines if self.verbose == 2 else None,
        )
        if timer is not None:
            timer.captured()

    # ------------------------------------------------------------------ stopping

    def _end_fit(self) -> None:
        """Undoes what this callback did to the model and the process for the running `fit`."""
        self._backups.end(self.model)
        self._triggers.end()

    def _stop(self, *, save: bool, logs: dict[str, Any] | None = None) -> None:
        """Stops `fit` mid-epoch on a signal, once its backup is committed."""
        if save:
            self._save(logs)
        self._pipeline.wait()  # a preempted job may be killed soon: commit before stopping
        self._stopped_by_signal = True
        self._cut_epoch = self._progress.epoch
        signum = self.interrupted
        assert signum is not None
        if self.raise_on_interrupt:
            # Raised from this batch end: the cut-short epoch runs no validation and reaches no
            # `on_epoch_end` (EarlyStopping, History), as with Keras's own Ctrl-C.
            self._end_fit()
            self._pipeline.close()
            self._announce(signum)
            end_others(self._backups.callbacks, self)
            raise interrupt(signum, OWNER)
        mark_preempted(self.model, True)
        self.model.stop_training = True

    def _announce(self, signum: int) -> None:
        """One line: which signal, where training stood, where the backup is, how to resume."""
        where = self._backups.where(chief=self._chief)
        self._say(announcement(signum, self._progress, where, mid_epoch=self._stopped_by_signal))

    def _say(self, line: str) -> None:
        if self.verbose:
            self._lines.flush()
            print(line, flush=True)
