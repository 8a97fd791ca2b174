"""`BackupAndRestore`: Keras's callback, made exact, atomic and preemption-safe.

The callback decides when to back up (`schedule`, `cadence`, signals) and stops `fit` on a signal;
`keras_ckpt.training.backup` takes and restores the training state, and
`keras_ckpt.training.pipeline` writes and reads the backups.
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras

from keras_ckpt import distribute
from keras_ckpt._validate import check_bool, check_optional_count, invalid
from keras_ckpt.cadence import DEFAULT_MAX_OVERHEAD, Cadence, check_max_overhead
from keras_ckpt.format.backup_file import BackupFile
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import KeepLast, to_json
from keras_ckpt.records import CallbackMemory, clean_metrics
from keras_ckpt.schedule import Progress, Schedule, check_save_freq
from keras_ckpt.state import is_replaying, mark_preempted, mark_resumed
from keras_ckpt.store.local import file_in_the_way
from keras_ckpt.training import fit_state
from keras_ckpt.training.agreement import StepAgreement
from keras_ckpt.training.backup import TrainingState
from keras_ckpt.training.pipeline import Saved, SavePipeline, SaveRequest
from keras_ckpt.training.sharded import check_sharded, choose_format
from keras_ckpt.training.signals import SignalCatcher, announcement, interrupt
from keras_ckpt.training.writer import Writer

__all__ = ["BackupAndRestore"]

OWNER = "BackupAndRestore"
_clock = time.perf_counter  # the auto cadence's clock (tests replace it)


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
            cost, a float in (0, 1). The callback backs up after the first step to measure a
            backup (the part that blocks training, any wait for the previous background write,
            and how much slower the steps a background write overlaps run), measures the step
            time, and picks the interval in steps; it decides again when the costs drift, and
            prints the interval in one line each time it changes. `every_seconds` still bounds
            the longest gap. Each backup records the interval and the measured costs in its
            record (`owner_state["cadence"]`). Defaults to `0.02`. Single-process training
            only: `fit` raises `ValueError` in a multi-worker job.
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
        sharded: bool | None = None,
    ):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise invalid("backup_dir", "a non-empty path or URL", backup_dir)
        blocker = None if "://" in os.fspath(backup_dir) else file_in_the_way(backup_dir)
        if blocker is not None:
            raise invalid("backup_dir", f"a folder ({blocker} is a file)", backup_dir)
        self.save_on_interrupt = check_bool("save_on_interrupt", save_on_interrupt)
        self.raise_on_interrupt = check_bool("raise_on_interrupt", raise_on_interrupt)
        self.save_freq, self.max_overhead = _check_save_freq(
            save_freq,
            max_overhead,
            save_on_interrupt=self.save_on_interrupt,
            every_seconds=every_seconds,
        )
        self.double_checkpoint = check_bool("double_checkpoint", double_checkpoint)
        self.delete_checkpoint = check_bool("delete_checkpoint", delete_checkpoint)
        self.async_save = check_bool("async_save", async_save)
        keep_last = check_optional_count("keep_last", keep_last)
        if double_checkpoint and keep_last is not None and keep_last < 2:
            raise invalid("keep_last", "at least 2 with `double_checkpoint=True`", keep_last)
        self.keep_last = keep_last or (2 if double_checkpoint else 1)
        self.every_seconds = every_seconds
        on_demand = self.save_freq is False or self.save_freq == "auto"
        self._schedule = Schedule(
            save_freq=None if on_demand else self.save_freq,
            every_seconds=every_seconds,
            on_demand=on_demand,
        )
        self._cadence: Cadence | None = None  # save_freq="auto": from measured costs
        self.backup_dir = os.fspath(backup_dir)
        self.sharded = check_sharded(sharded)
        self.manager = CheckpointManager(self.backup_dir)
        # Host buffers reused by every backup (one is written at a time); an inline backup is
        # written before the next step, straight from the variables' memory.
        self._file_format = BackupFile(copy=self.async_save)
        self._pipeline = SavePipeline(
            self.manager, self._file_format, background=self.async_save, thread="keras-ckpt-backup"
        )
        self._chief = True
        self._reset_run()

    @property
    def interrupted(self) -> int | None:
        """The signal that stopped the last `fit` (`signal.SIGTERM`, ...), or None."""
        return self._signals.pending if self._signals is not None else None

    def _reset_run(self) -> None:
        self._progress = Progress()
        self._training: TrainingState | None = None
        self._signals: SignalCatcher | None = None
        self._agreement: StepAgreement | None = None  # multi-worker: signals and clock agreed
        self._stopped_by_signal = False
        self._epoch_save_logs: dict[str, Any] | None = None
        if self.save_freq == "auto":
            self._cadence = Cadence(check_max_overhead(self.max_overhead), self.async_save)
        self._cut_epoch: int | None = None

    # ------------------------------------------------------------------ fit hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        Writer.settle_all()  # a save of an earlier fit in this process must land before we read
        self._reset_run()
        if self.save_freq == "auto" and (workers := distribute.worker_count(self.model)) > 1:
            # Every worker must take its copy at the same steps (an all-reduce), and each would
            # choose its own interval from its own timings.
            raise ValueError(
                'Invalid value for argument `save_freq`. save_freq="auto" is for single-process '
                f'training; this job has {workers} workers. Expected "epoch" or a positive '
                'int. Received: save_freq="auto"'
            )
        # Multi-worker: every worker restores the same backup below; only the chief writes.
        self._chief = distribute.is_chief(self.model)
        mark_preempted(self.model, False)
        mark_resumed(self.model, None)
        fit_state.stop_replay(self.model)
        self._training = TrainingState(self.model, self)
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
        self._signals = SignalCatcher(fit_state.unsynced_model(self), "BackupAndRestore")
        if self._chief:
            # Lock first: it also completes or undoes what a killed writer left half-done, before
            # we read; and a second run on this directory fails now, not at its first backup.
            self.manager.open_for_writing()
        found = self._pipeline.restore(
            owner=OWNER, check=lambda r: TrainingState.check_readable(r, self.backup_dir)
        )
        if found is not None:
            record, contents = found
            self._progress = self._training.restore(self.model, record, contents, self.backup_dir)
            self.manager.protect(record.name)
            mark_resumed(self.model, record.name)
            p = self._progress
            print(
                f"BackupAndRestore: resuming from {self._display(record.name)} at epoch "
                f"{p.epoch + 1}, step {p.step} (global step {p.global_step}).",
                flush=True,
            )
        self._schedule.start(self._progress.global_step)
        if self.save_on_interrupt:
            self._signals.install()
        if StepAgreement.needed(
            fit_state.unsynced_model(self),
            active=self.save_on_interrupt or self.every_seconds is not None,
        ):
            self._agreement = StepAgreement(fit_state.unsynced_model(self), chief=self._chief)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._pipeline.check()
        fit_state.clear_initial_epoch(self.model)
        assert self._training is not None
        self._training.begin_epoch(self.model, epoch)
        self._progress.begin_epoch(epoch)
        if self._epoch_save_logs is not None:
            self._save(self._epoch_save_logs)
            self._epoch_save_logs = None
        if self._cadence is not None:
            self._cadence.tick(None)  # an epoch's first step is not timed

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Not `model` in the per-batch checks: on JAX it syncs every variable out of the
        # trainer's state at each call (measured: fit took twice as long per step).
        if is_replaying(fit_state.unsynced_model(self)) and batch >= self._progress.step:
            fit_state.stop_replay(self.model)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if is_replaying(fit_state.unsynced_model(self)):
            if self.interrupted is not None and self._agreement is None:
                self._stop(save=False)  # the backup resumed from holds exactly this state
            return  # multi-worker: a signal waits for the first trained step, where all agree
        self._pipeline.check()
        self._progress.end_batch(batch)
        cadence = self._cadence
        if cadence is not None:
            message = cadence.batch_end(_clock(), self._progress.global_step, self._pipeline.busy)
            if message is not None and self._chief:
                print(f'BackupAndRestore(save_freq="auto"): {message}.', flush=True)
            self._schedule.save_freq = cadence.save_freq
        signum, seconds_due = self._decide(now=False)
        due = self._schedule.due_after_batch(self._progress.global_step, seconds_due=seconds_due)
        if signum is not None:
            self._stop(save=True, logs=logs)
        elif due:
            self._save(logs)
        if cadence is not None:  # step timings only feed the auto cadence
            cadence.tick(_clock(), self._progress.global_step, self._pipeline.busy)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        fit_state.stop_replay(self.model)
        if self._stopped_by_signal:
            return  # the epoch was cut short; the backup of the stop holds the real state
        self._progress.end_epoch(epoch)
        signum, seconds_due = self._decide(now=True)
        due = self._schedule.due_after_epoch(
            self._progress.epoch, self._progress.global_step, seconds_due=seconds_due
        )
        if due or signum is not None:
            # Saved once every callback has seen this epoch end: at the next epoch's begin, or at
            # train end if there is none, so EarlyStopping & co. are backed up after their update.
            self._epoch_save_logs = dict(logs or {})
        if signum is not None:
            # A whole epoch: it ends normally; its backup is written at train end.
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._end_fit()
        signum = self._decide(now=True)[0] if self._agreement is not None else self.interrupted
        remove = False
        try:
            completed = signum is None
            if self._epoch_save_logs is not None and not (completed and self.delete_checkpoint):
                assert self._training is not None
                self._training.capture_epoch_start()
                self._save(self._epoch_save_logs)
            self._epoch_save_logs = None
            self._pipeline.wait()
            if self.delete_checkpoint and completed and self._chief:
                for record in self.manager.checkpoints(OWNER):
                    self.manager.delete(
                        record.name, reason="fit completed (delete_checkpoint=True)"
                    )
                remove = True
        finally:
            self._pipeline.close()
        if remove:
            self.manager.remove_if_unused()  # as Keras does, if nothing else is left there
        if signum is not None:
            fit_state.drop_epoch_from_history(fit_state.unsynced_model(self), self._cut_epoch)
            self._announce(signum)
            if self.raise_on_interrupt:
                self._finish_other_callbacks()
                raise interrupt(signum, "BackupAndRestore")

    def wait_until_finished(self) -> None:
        """Blocks until the last backup is committed; raises its error if it failed."""
        self._pipeline.wait()

    def _decide(self, *, now: bool) -> tuple[int | None, bool | None]:
        """(the signal to stop on, whether the clock says back up; None: ask the schedule's clock).

        In a single process, this process's own signal and clock. In a multi-worker job, what the
        workers agree on (`StepAgreement`): any worker's signal, the chief's clock, at the same
        step everywhere; every worker then stops as if it had caught the signal itself.
        """
        if self._agreement is None:
            return self.interrupted, None
        signum, seconds_due = self._agreement.decide(
            self._progress.global_step, self.interrupted, self._schedule.seconds_due(), now=now
        )
        if signum is not None and self._signals is not None:
            self._signals.pending = signum
        return signum, seconds_due

    # ------------------------------------------------------------------ saving

    def _save(self, logs: dict[str, Any] | None) -> None:
        started, waited = _clock(), self._pipeline.stats.waited_seconds
        self._pipeline.wait()  # the previous backup is committed: its name is taken
        progress = Progress(**vars(self._progress))
        assert self._training is not None
        inputs = self._training.inputs(self.model, progress)
        if not self._chief:
            # Multi-worker: reading the metric variables (SyncOnRead under
            # MultiWorkerMirroredStrategy) is an all-reduce every worker must join, so the others
            # capture too, then drop the copy; only the chief writes and prunes.
            self._pipeline.contribute(self.model, inputs)
            return
        retention = KeepLast(self.keep_last)
        request = SaveRequest(
            name=self._backup_name(progress),
            epoch=progress.epoch,
            step=progress.step,
            global_step=progress.global_step,
            metrics=clean_metrics(logs),
            owner=OWNER,
            memory=CallbackMemory(
                callback=OWNER,
                iterations=inputs.state["iterations"],
                retention=to_json(retention),
                cadence=self._cadence.get_state() if self._cadence is not None else None,
            ),
        )
        cadence = self._cadence
        if cadence is None:
            self._pipeline.save(self.model, request, extra=inputs, retention=retention)
            return

        def timed(saved: Saved) -> None:
            cadence.record_write(saved.write_seconds)

        self._pipeline.save(self.model, request, extra=inputs, retention=retention, on_saved=timed)
        waited = self._pipeline.stats.waited_seconds - waited
        cadence.record_save(_clock() - started - waited, waited)

    def _backup_name(self, progress: Progress) -> str:
        """`backup-<global step>`, made unique: an epoch-end backup can follow a step backup at
        the same global step, and replacing a multi-file backup in place is never safe."""
        name = self._pipeline.format.checkpoint_name(f"backup-{progress.global_step:09d}")
        taken = {r.name for r in self.manager.checkpoints(OWNER)}
        if name in taken:
            name = f"{name}-epoch-{progress.epoch:05d}-step-{progress.step:06d}"
        return name

    # ------------------------------------------------------------------ stopping

    def _end_fit(self) -> None:
        """Undoes what this callback did to the model and the process for the running `fit`."""
        fit_state.stop_replay(self.model)
        fit_state.clear_initial_epoch(self.model)
        mark_resumed(self.model, None)
        if self._signals is not None:
            self._signals.uninstall()

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
            self._finish_other_callbacks()
            raise interrupt(signum, "BackupAndRestore")
        mark_preempted(self.model, True)
        self.model.stop_training = True

    def _display(self, name: str) -> str:
        return f"{self.backup_dir.rstrip('/')}/{name}"

    def _announce(self, signum: int) -> None:
        """One line: which signal, where training stood, where the backup is, how to resume."""
        latest = self.manager.latest(OWNER) if self._chief else None
        where = self._display(latest.name) if latest is not None else self.backup_dir
        print(
            announcement(signum, self._progress, where, mid_epoch=self._stopped_by_signal),
            flush=True,
        )

    def _finish_other_callbacks(self) -> None:
        """Our raise skips the `on_train_end` of the callbacks after us: let keras-ckpt's own
        land their saves in flight and give their directory locks back."""
        for callback in self._training.callbacks if self._training is not None else []:
            end = getattr(callback, "_end_interrupted", None)
            if callback is not self and callable(end):
                end()


def _check_save_freq(
    save_freq: object, max_overhead: object, *, save_on_interrupt: bool, every_seconds: object
) -> tuple[str | int | bool, float | None]:
    """(save_freq, max_overhead) as validated: `False` (signals or `every_seconds` only), `"auto"`
    (with its `max_overhead`), `"epoch"` or a positive int."""
    if save_freq is False:
        if not save_on_interrupt and every_seconds is None:
            raise ValueError(
                "Nothing would ever be backed up: save_freq=False needs save_on_interrupt=True or "
                "`every_seconds`. Received: save_freq=False, save_on_interrupt=False, "
                "every_seconds=None"
            )
    elif not (save_freq == "auto" and isinstance(save_freq, str)):
        save_freq = check_save_freq(save_freq)
    if save_freq == "auto":
        return "auto", check_max_overhead(
            DEFAULT_MAX_OVERHEAD if max_overhead is None else max_overhead
        )
    if max_overhead is not None:
        raise invalid("max_overhead", 'None unless save_freq="auto"', max_overhead)
    return save_freq, None  # type: ignore[return-value]
