"""`BackupAndRestore`: Keras's callback, made exact, atomic and preemption-safe."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, cast

import keras

from keras_ckpt import backup_file, distribute, snapshot
from keras_ckpt import state as st
from keras_ckpt._validate import check_bool, check_optional_count, invalid
from keras_ckpt.cadence import DEFAULT_MAX_OVERHEAD, Cadence, check_max_overhead
from keras_ckpt.errors import ResumeError
from keras_ckpt.history import HISTORY_PATH
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import KeepLast, to_json
from keras_ckpt.records import Record, clean_metrics
from keras_ckpt.schedule import Progress, Schedule, check_save_freq
from keras_ckpt.storage import META_DIR, LocalStorage, SealedFile, file_in_the_way
from keras_ckpt.writer import Writer

__all__ = ["BackupAndRestore"]

# Our files in `.keras_ckpt/` besides records: removed with an emptied `backup_dir`.
_BOOKKEEPING = ("lock", os.path.basename(HISTORY_PATH))

OWNER = "BackupAndRestore"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class _Snapshot:
    """Host copies of one backup: what `write` turns into a file without touching the model."""

    name: str
    progress: Progress
    metrics: dict[str, float]
    backup: backup_file.BackupSnapshot


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
    the same `fit` that implements `keras_ckpt.state.CheckpointStateful`. Each backup is one file,
    `backup-<global step>.weights.h5`: a plain Keras weights file (`model.load_weights` loads it)
    with the rest of the state in an extra group Keras ignores (see `keras_ckpt.backup_file`).

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
    ValueError: Invalid value for argument `save_freq`. Expected "epoch" or a positive int. Received: save_freq=0
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
    ):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise invalid("backup_dir", "a non-empty path or URL", backup_dir)
        blocker = None if "://" in os.fspath(backup_dir) else file_in_the_way(backup_dir)
        if blocker is not None:
            raise invalid("backup_dir", f"a folder ({blocker} is a file)", backup_dir)
        self.save_on_interrupt = check_bool("save_on_interrupt", save_on_interrupt)
        self.raise_on_interrupt = check_bool("raise_on_interrupt", raise_on_interrupt)
        if save_freq is False:
            if not self.save_on_interrupt and every_seconds is None:
                raise ValueError(
                    "Nothing would ever be backed up: save_freq=False needs "
                    "save_on_interrupt=True or `every_seconds`. Received: save_freq=False, "
                    "save_on_interrupt=False, every_seconds=None"
                )
            self.save_freq: str | int | bool | None = False
        elif save_freq == "auto" and isinstance(save_freq, str):
            self.save_freq = "auto"
        else:
            self.save_freq = check_save_freq(save_freq)
        # [features/cadence] save_freq="auto": the interval comes from measured costs.
        self._cadence: Cadence | None = None
        self.max_overhead = max_overhead
        if self.save_freq == "auto":
            self.max_overhead = check_max_overhead(
                DEFAULT_MAX_OVERHEAD if max_overhead is None else max_overhead
            )
        elif max_overhead is not None:
            raise invalid("max_overhead", 'None unless save_freq="auto"', max_overhead)
        self.double_checkpoint = check_bool("double_checkpoint", double_checkpoint)
        self.delete_checkpoint = check_bool("delete_checkpoint", delete_checkpoint)
        self.async_save = check_bool("async_save", async_save)
        self._writer = Writer(background=self.async_save, name="keras-ckpt-backup")
        # Host buffers reused by every backup (the writer runs one at a time); an inline backup is
        # written before the next step, straight from the variables' memory.
        self._snapshotter = snapshot.Snapshotter(copy=self.async_save)
        keep_last = check_optional_count("keep_last", keep_last)
        if keep_last is None:
            keep_last = 2 if double_checkpoint else 1
        elif double_checkpoint and keep_last < 2:
            raise invalid("keep_last", "at least 2 with `double_checkpoint=True`", keep_last)
        self.keep_last = keep_last
        self.every_seconds = every_seconds
        auto = self.save_freq == "auto"
        self._schedule = Schedule(
            save_freq=None if save_freq is False or auto else self.save_freq,
            every_seconds=every_seconds,
            on_demand=save_freq is False or auto,
        )
        self.backup_dir = os.fspath(backup_dir)
        self.manager = CheckpointManager(self.backup_dir)
        self.interrupted: int | None = None
        self._chief = True
        self._reset_run()

    def _reset_run(self) -> None:
        self._progress = Progress()
        self._pending: dict[str, Any] | None = None
        self._epoch_start: dict[str, Any] = {}
        self._context = st.FitContext(None, None)
        self._counter: st.IteratorCounter | None = None
        self._signal_pending: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._stopped_by_signal = False
        self._epoch_save_logs: dict[str, Any] | None = None
        if self.save_freq == "auto":
            self._cadence = Cadence(check_max_overhead(self.max_overhead), self.async_save)
        # (time, global step, a background write under way) at the last batch end
        self._tick: tuple[float, int, bool] | None = None
        self._cut_epoch: int | None = None

    # ------------------------------------------------------------------ fit hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        Writer.settle_all()  # a save of an earlier fit in this process must land before we read
        self._reset_run()
        self.interrupted = None
        if self.save_freq == "auto" and (workers := distribute.worker_count(self.model)) > 1:
            # Every worker must take its copy at the same steps (an all-reduce), and each would
            # choose its own interval from its own timings.
            raise ValueError(
                'Invalid value for argument `save_freq`. save_freq="auto" is for single-process '
                f"training; this job has {workers} workers. Expected \"epoch\" or a positive "
                'int. Received: save_freq="auto"'
            )
        # Multi-worker: every worker restores the same backup below; only the chief writes.
        self._chief = distribute.is_chief(self.model)
        st.mark_preempted(self.model, False)
        st.mark_resumed(self.model, None)
        st.stop_replay(self.model)
        self._context = st.find_fit_context(self.model)
        if self._context.epoch_iterator is not None:
            self._counter = st.IteratorCounter(self._context.epoch_iterator)
            if st.needs_input_protocol(self._context.epoch_iterator):
                warnings.warn(
                    "The PyDataset given to fit overrides `on_epoch_end` but does not implement "
                    "`keras_ckpt.state.CheckpointStateful`: if it changes its own state there "
                    "(e.g. reshuffles an index), a resumed run will not see the same batches.",
                    stacklevel=2,
                )
        if self._chief:
            # Lock first: it also completes or undoes what a killed writer left half-done, before
            # we read; and a second run on this directory fails now, not at its first backup.
            self.manager.open_for_writing()
        if self.manager.checkpoints(OWNER):
            record = self.manager.resolve("latest", owner=OWNER)
            self._restore(record)
            st.mark_resumed(self.model, record.name)
            p = self._progress
            print(
                f"BackupAndRestore: resuming from {self._display(record.name)} at epoch "
                f"{p.epoch + 1}, step {p.step} (global step {p.global_step}).",
                flush=True,
            )
        self._schedule.start(self._progress.global_step)
        if self.save_on_interrupt:
            self._install_signal_handlers()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._writer.check()
        st.clear_initial_epoch(self.model)
        pending, self._pending = self._pending, None
        if pending is not None and pending["epoch"] == epoch:
            self._resume_epoch(pending)
        self._progress.begin_epoch(epoch)
        self._epoch_start = self._capture_epoch_start()
        if self._epoch_save_logs is not None:
            self._save(self._epoch_save_logs)
            self._epoch_save_logs = None
        # The epoch's first step is not timed: Keras builds the epoch's iterator after this hook
        # (seconds on TensorFlow), which is not a step's cost.
        self._tick = None

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `_model` in the per-batch checks: on JAX, `model` syncs every variable out of the
        # trainer's state at each call (measured: fit took twice as long per step).
        if st.is_replaying(self._model) and batch >= self._progress.step:
            st.stop_replay(self.model)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if st.is_replaying(self._model):
            if self._signal_pending is not None:
                self._stop(save=False)  # the backup resumed from holds exactly this state
            return
        self._writer.check()
        self._progress.end_batch(batch)
        if self._cadence is not None:
            self._schedule.save_freq = self._pace()
        due = self._schedule.due_after_batch(self._progress.global_step)
        if self._signal_pending is not None:
            self._stop(save=True, logs=logs)
        elif due:
            self._save(logs)
        if self._cadence is not None:  # step timings only feed the auto cadence
            self._tick = (time.perf_counter(), self._progress.global_step, self._writer.busy)

    def _pace(self) -> int | None:
        """Feeds the step time to the cadence; returns the interval the schedule should use."""
        cadence = self._cadence
        assert cadence is not None
        if self._tick is not None:
            started, step, busy = self._tick
            cadence.record_steps(
                self._progress.global_step - step,
                time.perf_counter() - started,
                writing=busy or self._writer.busy,  # the write slowed (some of) these steps
            )
        message = cadence.decide()
        if message is not None and self._chief:
            print(f'BackupAndRestore(save_freq="auto"): {message}.', flush=True)
        return cadence.save_freq

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        st.stop_replay(self.model)
        if self._stopped_by_signal:
            return  # the epoch was cut short; the backup of the stop holds the real state
        self._progress.end_epoch(epoch)
        due = self._schedule.due_after_epoch(self._progress.epoch, self._progress.global_step)
        if due or self._signal_pending is not None:
            # Saved once every callback has seen this epoch end: at the next epoch's begin, or at
            # train end if there is none, so EarlyStopping & co. are backed up after their update.
            self._epoch_save_logs = dict(logs or {})
        if self._signal_pending is not None:
            # A whole epoch: it ends normally; its backup is written at train end.
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        st.stop_replay(self.model)
        st.clear_initial_epoch(self.model)
        st.mark_resumed(self.model, None)
        self._restore_signal_handlers()
        signum = self._signal_pending
        emptied = False
        try:
            completed = signum is None
            if self._epoch_save_logs is not None and not (completed and self.delete_checkpoint):
                self._epoch_start = self._capture_epoch_start()
                self._save(self._epoch_save_logs)
            self._epoch_save_logs = None
            self._writer.wait()
            if self.delete_checkpoint and completed and self._chief:
                for record in self.manager.checkpoints(OWNER):
                    self.manager.delete(
                        record.name, reason="fit completed (delete_checkpoint=True)"
                    )
                emptied = self._only_ours_left()
        finally:
            self.manager.close()
        if emptied:
            self._remove_backup_dir()
        if signum is not None:
            self._drop_cut_epoch_from_history()
            self._announce(signum)
            if self.raise_on_interrupt:
                self._finish_other_callbacks()
                raise _interrupt(signum)

    def wait_until_finished(self) -> None:
        """Blocks until the last backup is committed; raises its error if it failed."""
        self._writer.wait()

    # ------------------------------------------------------------------ saving

    def _capture_epoch_start(self) -> dict[str, Any]:
        """What must be as it was when the epoch under way began: host RNG, the input's state."""
        start: dict[str, Any] = {"rng": st.capture_host_rng()}
        if self._counter is not None:
            start["iterators"] = self._counter.created
            start["num_batches"] = self._counter.num_batches
            holder = st.input_state_holder(self._counter.epoch_iterator)
            if holder is not None:
                start["input"] = holder.get_checkpoint_state()
        return start

    def _save(self, logs: dict[str, Any] | None) -> None:
        if not self._chief:
            # Multi-worker: reading the metric variables (SyncOnRead under
            # MultiWorkerMirroredStrategy) is an all-reduce every worker must join, so the others
            # capture too, then drop the copy; only the chief writes and prunes.
            self._capture(logs)
            return
        if self._cadence is None:
            self._writer.run(lambda: self._capture(logs), self._write_and_prune)
            return
        cadence = self._cadence
        started, waited = time.perf_counter(), self._writer.stats.waited_seconds

        def timed_write(snapshot: _Snapshot) -> None:
            begun = time.perf_counter()
            self._write_and_prune(snapshot)
            cadence.record_write(time.perf_counter() - begun)

        self._writer.run(lambda: self._capture(logs), timed_write)
        waited = self._writer.stats.waited_seconds - waited
        cadence.record_save(time.perf_counter() - started - waited, waited)

    def _write_and_prune(self, snapshot: _Snapshot) -> None:
        with self.manager.stage() as folder:
            self._write(snapshot, folder)
        self.manager.prune(KeepLast(self.keep_last), owner=OWNER)

    def _capture(self, logs: dict[str, Any] | None) -> _Snapshot:
        """Host copies of everything a backup holds: the only part that must block training."""
        progress = Progress(**vars(self._progress))
        name = self._backup_name(progress)
        state = {
            "progress": vars(progress),
            "iterations": st.optimizer_iterations(self.model),
            "epoch_start": self._epoch_start,
            "tf_rng": st.capture_tf_rng(),
            "torch_rng": st.capture_torch_rng(),
            "schedule_step": progress.global_step,
        }
        backup = backup_file.capture(
            self.model, state, self._stateful_callbacks(), self._snapshotter
        )
        return _Snapshot(name, progress, clean_metrics(logs), backup)

    def _backup_name(self, progress: Progress) -> str:
        """`backup-<global step>`, made unique: an epoch-end backup can follow a step backup at
        the same global step, and replacing a multi-file backup in place is never safe."""
        name = f"backup-{progress.global_step:09d}"
        taken = {r.name for r in self.manager.checkpoints(OWNER)}
        if name in taken:
            name = f"{name}-epoch-{progress.epoch:05d}-step-{progress.step:06d}"
        return name

    def _write(self, snapshot: _Snapshot, folder: str) -> Record:
        filename = backup_file.file_name(snapshot.name)
        staged = os.path.join(folder, filename)
        sealed = backup_file.write(snapshot.backup, staged)
        progress = snapshot.progress
        return self.manager.commit(
            {filename: staged},
            sealed={filename: sealed},
            name=snapshot.name,
            kind="training_state",
            epoch=progress.epoch,
            step=progress.step,
            global_step=progress.global_step,
            metrics=snapshot.metrics,
            owner=OWNER,
            owner_state={
                "callback": OWNER,
                "iterations": snapshot.backup.state["iterations"],
                "retention": to_json(KeepLast(self.keep_last)),
                **({"cadence": self._cadence.get_state()} if self._cadence is not None else {}),
            },
        )

    def _stateful_callbacks(self) -> list[Any]:
        callbacks = self._context.callbacks or []
        return [c for c in callbacks if c is not self and st.is_stateful(c)]

    # ------------------------------------------------------------------ restoring

    def _restore(self, record: Record) -> None:
        """Restores the backup of `record` (verified), or the newest good one before it if its
        file cannot be read as a backup."""
        while True:
            if backup_file.is_round1(f.path for f in record.files):
                raise ResumeError(
                    f"Backup {record.name} in {self.backup_dir} was written by an earlier "
                    "keras-ckpt as a folder of three files (model.weights.h5, state.npz, "
                    "state.json); this version writes one `.weights.h5` per backup and cannot "
                    "resume from it. Resume that run with the keras-ckpt version that wrote it, "
                    "or start over with another `backup_dir` (or after deleting this one). Its "
                    f"`{record.path}` is a plain Keras weights file if you need the weights."
                )
            entry = record.files[0]
            with self.manager.storage.local_path(record.path) as path:
                try:
                    contents = backup_file.read(
                        path, SealedFile(entry.size, entry.checksum), name=entry.path
                    )
                except backup_file.BackupFileError as error:
                    previous = self._previous_good_backup(record)
                    if previous is None:
                        raise
                    warnings.warn(
                        f"Backup {record.name} in {self.backup_dir} is damaged ({error}); "
                        f"resuming from {previous.name} instead.",
                        stacklevel=2,
                    )
                    record = previous
                    continue
                self._restore_contents(record, contents)
                return

    def _previous_good_backup(self, record: Record) -> Record | None:
        older = [r for r in self.manager.checkpoints(OWNER) if r.sequence < record.sequence]
        for candidate in reversed(older):
            result = self.manager.verify(candidate.name)[0]
            if result.ok:
                return candidate
            warnings.warn(
                f"Backup {candidate.name} in {self.backup_dir} is damaged ("
                + "; ".join(result.problems)
                + "); skipping it.",
                stacklevel=3,
            )
        return None

    def _restore_contents(self, record: Record, contents: backup_file.BackupContents) -> None:
        state = contents.state
        st.build_metrics(self.model, self._context.epoch_iterator)
        if len(contents.layout) > len(st.training_variables(self.model)):
            st.ensure_global_seed_generator()
        variables = st.training_variables(self.model)
        saved = contents.layout
        current = [(v.path, tuple(v.shape)) for v in variables]
        if [shape for _, shape in saved] != [shape for _, shape in current]:
            raise ResumeError(
                f"Backup {record.name} in {self.backup_dir} does not match this model: it holds "
                f"{len(saved)} variables, the model has {len(current)}"
                + _first_difference(saved, current)
                + ". Use another `backup_dir` for a different model."
            )
        backup_file.restore_variables(self.model, contents)
        iterations = st.optimizer_iterations(self.model)
        if iterations != state["iterations"]:
            raise ResumeError(
                f"Restoring {record.name} left optimizer.iterations={iterations}, the backup "
                f"says {state['iterations']}."
            )
        st.restore_tf_rng(state.get("tf_rng"))
        progress = state["progress"]
        self._progress = Progress(**progress)
        self.manager.protect(record.name)
        st.set_initial_epoch(self.model, progress["epoch"])
        # Kept for the resumed epoch's begin: the metric variables (fit resets them) and the rest.
        metric_ids = {id(v) for v in self.model.metrics_variables}
        contents = backup_file.keep_only(contents, metric_ids, self.model)
        self._pending = {**progress, "contents": contents, "name": record.name}

    def _resume_epoch(self, pending: dict[str, Any]) -> None:
        """Puts back what must be as it was when the interrupted epoch began, then replays."""
        contents: backup_file.BackupContents = pending["contents"]
        state = contents.state
        start = state["epoch_start"]
        st.restore_host_rng(start["rng"])
        if self._counter is not None:
            self._counter.restore_num_batches(start.get("num_batches"))
            self._counter.catch_up(start.get("iterators", 0))
            # PyTorch's DataLoader draws from torch's RNG whenever an iterator starts: undo the
            # draws of the iterators catch_up created.
            st.restore_torch_rng(start["rng"].get("torch"))
            holder = st.input_state_holder(self._counter.epoch_iterator)
            if holder is not None and "input" in start:
                holder.set_checkpoint_state(start["input"])
        # fit reset the metrics at this epoch's begin: put back the interrupted epoch's values.
        metric_ids = {id(v) for v in self.model.metrics_variables}
        backup_file.restore_variables(self.model, contents, only=metric_ids)
        self._restore_callbacks(state["callbacks"], contents.callback_arrays)
        # PyTorch: unseeded Dropout draws from torch's global RNG at every trained step, which
        # replay does not repeat; put it where the interrupted run had it at the backup.
        torch_rng = state.get("torch_rng")
        st.start_replay(self.model, pending["step"], lambda: st.restore_torch_rng(torch_rng))

    def _restore_callbacks(self, saved: list[dict[str, Any]], arrays: list[list[Any]]) -> None:
        callbacks = self._stateful_callbacks()
        names = [type(c).__name__ for c in callbacks]
        if names != [entry["class"] for entry in saved]:
            warnings.warn(
                "The stateful callbacks of this fit differ from those of the backup "
                f"({names} now, {[e['class'] for e in saved]} then); restoring those that match "
                "by position and class.",
                stacklevel=2,
            )
        for index, (callback, entry) in enumerate(zip(callbacks, saved, strict=False)):
            if type(callback).__name__ == entry["class"]:
                st.set_callback_state(callback, entry["state"], arrays[index])

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "BackupAndRestore: fit runs outside the main thread, so SIGTERM/SIGINT cannot be "
                "caught; `save_on_interrupt` has no effect.",
                stacklevel=2,
            )
            return
        for signum in _SIGNALS:
            previous = signal.getsignal(signum)
            if previous != self._on_signal:
                self._previous_handlers[signum] = previous
                signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # `_model`: on JAX, `model` would sync the trainer's state into the variables from here,
        # between steps, and the stop backup could hold an older step than its label.
        if not _inside_fit(frame, self._model):
            # A fit that raised never reached on_train_end (TF, PyTorch): our handler outlived it.
            # Give the signal to whoever had it before, now.
            self._second_signal(signum, frame)
            return
        if self._signal_pending is None:
            self._signal_pending = self.interrupted = signum
            return
        self._second_signal(signum, frame)

    def _second_signal(self, signum: int, frame: Any) -> None:
        """Restores the previous handlers and hands them this signal (a double Ctrl-C)."""
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self._restore_signal_handlers()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.raise_signal(signum)

    def _stop(self, *, save: bool, logs: dict[str, Any] | None = None) -> None:
        """Stops `fit` mid-epoch on a signal, once its backup is committed."""
        if save:
            self._save(logs)
        self._writer.wait()  # a preempted job may be killed soon: commit before stopping
        self._stopped_by_signal = True
        self._cut_epoch = self._progress.epoch
        if self.raise_on_interrupt:
            # Raised from this batch end: the cut-short epoch runs no validation and reaches no
            # `on_epoch_end` (EarlyStopping, History), as with Keras's own Ctrl-C.
            signum = cast(int, self._signal_pending)
            st.stop_replay(self.model)
            st.clear_initial_epoch(self.model)
            st.mark_resumed(self.model, None)
            self._restore_signal_handlers()
            self.manager.close()
            self._announce(signum)
            self._finish_other_callbacks()
            raise _interrupt(signum)
        st.mark_preempted(self.model, True)
        self.model.stop_training = True

    # ------------------------------------------------------------------ endings

    def _display(self, name: str) -> str:
        return f"{self.backup_dir.rstrip('/')}/{name}"

    def _announce(self, signum: int) -> None:
        """One line: which signal, where training stood, where the backup is, how to resume."""
        latest = self.manager.latest(OWNER) if self._chief else None
        where = self._display(latest.name) if latest is not None else self.backup_dir
        p = self._progress
        at = (
            f"in epoch {p.epoch + 1} after step {p.step}"
            if self._stopped_by_signal
            else f"after epoch {p.epoch}"
        )
        print(
            f"BackupAndRestore: {signal.Signals(signum).name} {at} (global step "
            f"{p.global_step}); backed up to {where}. Run the same script again to resume there.",
            flush=True,
        )

    def _finish_other_callbacks(self) -> None:
        """Our raise skips the `on_train_end` of the callbacks after us: let keras-ckpt's own
        land their saves in flight and give their directory locks back."""
        for callback in self._context.callbacks or []:
            end = getattr(callback, "_end_interrupted", None)
            if callback is not self and callable(end):
                end()

    def _drop_cut_epoch_from_history(self) -> None:
        """`fit` returned (raise_on_interrupt=False) after a signal cut an epoch short: Keras's
        `History` logged that epoch as if whole. Take it out."""
        history = getattr(self._model, "history", None)
        epochs = getattr(history, "epoch", None)
        if self._cut_epoch is None or not epochs or epochs[-1] != self._cut_epoch:
            return
        epochs.pop()
        for values in getattr(history, "history", {}).values():
            if values:
                values.pop()

    def _only_ours_left(self) -> bool:
        """True if `backup_dir` (local) holds nothing but our bookkeeping: `.keras_ckpt/` with
        its lock file, the run history and empty work folders. Called with the lock held, records
        all deleted."""
        storage = self.manager.storage
        if not isinstance(storage, LocalStorage):
            return False
        try:
            if os.listdir(storage.root) != [META_DIR]:
                return False
            for folder, _dirs, files in os.walk(os.path.join(storage.root, META_DIR)):
                if folder == os.path.join(storage.root, META_DIR):
                    files = [f for f in files if f not in _BOOKKEEPING]
                if files:
                    return False
        except OSError:
            return False
        return True

    def _remove_backup_dir(self) -> None:
        """Removes the emptied `backup_dir`, as Keras does, with `rmdir` only: a file that
        appeared meanwhile makes it stop, so nothing but our empty folders and lock goes."""
        root = cast(LocalStorage, self.manager.storage).root
        meta = os.path.join(root, META_DIR)
        try:
            for folder, dirs, _files in os.walk(meta, topdown=False):
                for d in dirs:
                    os.rmdir(os.path.join(folder, d))
            for name in _BOOKKEEPING:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(meta, name))
            os.rmdir(meta)
            os.rmdir(root)
        except OSError:
            pass  # something else is there now (or a writer took the folder): leave the rest


def _interrupt(signum: int) -> BaseException:
    """What a script gets after the backup of a signal is committed: Ctrl-C's own exception for
    SIGINT; for SIGTERM an exit with the status a shell reports for it (128 + 15)."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt("BackupAndRestore: backed up and stopped on SIGINT")
    return SystemExit(128 + signum)


def _inside_fit(frame: Any, model: Any) -> bool:
    """True if `frame` (where a signal landed) is inside `model.fit`: a frame of a method `fit`
    whose `self` is the model. Signals land in the main thread, which runs fit."""
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return True
        frame = frame.f_back
    return False


def _first_difference(saved: list[Any], current: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(saved, current, strict=False)):
        if a[1] != b[1]:
            return f" (first difference at variable {i}: {a[0]} {a[1]} then, {b[0]} {b[1]} now)"
    return ""
