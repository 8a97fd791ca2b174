"""The whole training state of one `fit`: what a `BackupAndRestore` backup takes, and its exact
restore.

`keras_ckpt.format.backup_file` knows a backup's bytes; this module knows what goes into one (every
training variable, the progress, the RNGs, the input pipeline's position, the stateful callbacks)
and how to put it back so that the resumed run continues bit for bit: variables and RNGs at
`on_train_begin`, then at the interrupted epoch's begin the epoch-start RNG, the input's iterators,
the metrics and the callbacks, and a replay of the batches already trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras_ckpt.cadence import Cadence
from keras_ckpt.errors import ResumeError
from keras_ckpt.format.backup_file import BackupContents, BackupInputs, is_three_file_backup
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import KeepLast, to_json
from keras_ckpt.records import CallbackMemory, Record, clean_metrics, position
from keras_ckpt.schedule import Progress
from keras_ckpt.state import mark_preempted, mark_resumed
from keras_ckpt.training import fit_state as fs
from keras_ckpt.training.announcements import Announcements, replaced_line
from keras_ckpt.training.pipeline import Saved, SavePipeline, SaveRequest

__all__ = ["Backups", "Resumed", "TrainingState"]


@dataclass
class _Pending:
    """A restored backup whose epoch has not begun yet: the rest is put back then."""

    name: str
    progress: Progress
    contents: BackupContents


class TrainingState:
    """The training state of one running `fit`, as backups take it and resumes restore it.

    Made at `on_train_begin` (it finds the running `fit`'s callbacks and input iterator on the
    call stack). Call `begin_epoch` at every `on_epoch_begin`. Every method takes the model as the
    callback's `model` property gives it at that moment: on JAX, the variables hold the trainer's
    state only after that property synced them.

    Args:
        model: The model being trained.
        owner: The callback that backs up (left out of the callbacks whose state it saves).
    """

    def __init__(self, model: Any, owner: Any):
        context = fs.find_fit_context(model)
        self.callbacks: list[Any] = list(context.callbacks or [])
        self.stateful = [c for c in self.callbacks if c is not owner and fs.is_stateful(c)]
        self.counter = (
            fs.IteratorCounter(context.epoch_iterator)
            if context.epoch_iterator is not None
            else None
        )
        self.epoch_start: dict[str, Any] = {}
        # Optimizer settings the restore replaced: (name, the script's value, the backup's).
        self.replaced: list[tuple[str, float, float]] = []
        self._pending: _Pending | None = None
        if self.counter is not None and fs.needs_input_protocol(self.counter.epoch_iterator):
            warnings.warn(
                "The PyDataset given to fit overrides `on_epoch_end` but does not implement "
                "`keras_ckpt.state.CheckpointStateful`: if it changes its own state there "
                "(e.g. reshuffles an index), a resumed run will not see the same batches.",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ taking

    def begin_epoch(self, model: Any, epoch: int) -> None:
        """At `on_epoch_begin`: finishes a restore whose epoch this is, then notes what a backup
        taken during this epoch must hold of its start."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.progress.epoch == epoch:
            self._resume_epoch(model, pending)
        self.capture_epoch_start()

    def capture_epoch_start(self) -> None:
        """What must be as it was when the epoch under way began: host RNG, the input's state."""
        start: dict[str, Any] = {"rng": fs.capture_host_rng()}
        if self.counter is not None:
            start["iterators"] = self.counter.created
            start["num_batches"] = self.counter.num_batches
            holder = fs.input_state_holder(self.counter.epoch_iterator)
            if holder is not None:
                start["input"] = holder.get_checkpoint_state()
        self.epoch_start = start

    def inputs(self, model: Any, progress: Progress) -> BackupInputs:
        """Everything a backup at `progress` holds besides Keras's own walk of the model."""
        state = {
            "progress": vars(progress),
            "iterations": fs.optimizer_iterations(model),
            "epoch_start": self.epoch_start,
            "tf_rng": fs.capture_tf_rng(),
            "torch_rng": fs.capture_torch_rng(),
            "schedule_step": progress.global_step,
        }
        callbacks = [(type(c).__name__, *fs.callback_state(c)) for c in self.stateful]
        # Builds the optimizer first, so Keras's walk saves its variables.
        return BackupInputs(fs.training_variables(model), state, callbacks)

    # ------------------------------------------------------------------ restoring

    @staticmethod
    def check_readable(record: Record, directory: str) -> None:
        """Refuses a backup in the older three-file format, which this version cannot resume."""
        if is_three_file_backup(f.path for f in record.files):
            raise ResumeError(
                f"Backup {record.name} in {directory} was written by an earlier keras-ckpt as a "
                "folder of three files (model.weights.h5, state.npz, state.json); this version "
                "writes one `.weights.h5` per backup and cannot resume from it. Resume that run "
                "with the keras-ckpt version that wrote it, or start over with another "
                f"`backup_dir` (or after deleting this one). Its `{record.path}` is a plain "
                "Keras weights file if you need the weights."
            )

    def restore(
        self, model: Any, record: Record, contents: BackupContents, directory: str
    ) -> Progress:
        """Puts back what `on_train_begin` can: variables, TensorFlow's RNG; returns the progress
        to resume at. The rest waits for the interrupted epoch's begin (`begin_epoch`).

        Raises:
            ResumeError: the backup does not match this model.
        """
        state = contents.state
        fs.build_metrics(model, self.counter.epoch_iterator if self.counter else None)
        if len(contents.layout) > len(fs.training_variables(model)):
            fs.ensure_global_seed_generator()
        variables = fs.training_variables(model)
        saved = contents.layout
        current = [(v.path, tuple(v.shape)) for v in variables]
        if [shape for _, shape in saved] != [shape for _, shape in current]:
            raise ResumeError(
                f"Backup {record.name} in {directory} does not match this model: "
                f"{_first_difference(saved, current)} (the backup holds {len(saved)} variables, "
                f"the model has {len(current)}). Use another `backup_dir` for a different model."
            )
        settings = _optimizer_settings(model)
        before = {name: float(v.numpy()) for name, v in settings.items()}
        _assign(variables, contents)
        self.replaced = [
            (name, before[name], after)
            for name, v in settings.items()
            if (after := float(v.numpy())) != before[name]
        ]
        iterations = fs.optimizer_iterations(model)
        if iterations != state["iterations"]:
            raise ResumeError(
                f"Restoring {record.name} left optimizer.iterations={iterations}, the backup "
                f"says {state['iterations']}."
            )
        fs.restore_tf_rng(state.get("tf_rng"))
        progress = Progress(**state["progress"])
        fs.set_initial_epoch(model, progress.epoch)
        # Kept for the resumed epoch's begin: the metric variables (fit resets them) and the rest.
        metrics = {id(v) for v in model.metrics_variables}
        kept = {i: a.copy() for i, a in contents.variables.items() if id(variables[i]) in metrics}
        contents = BackupContents(
            contents.path, state, contents.layout, kept, contents.callback_arrays
        )
        self._pending = _Pending(record.name, progress, contents)
        return progress

    def _resume_epoch(self, model: Any, pending: _Pending) -> None:
        """Puts back what must be as it was when the interrupted epoch began, then replays."""
        contents = pending.contents
        state = contents.state
        start = state["epoch_start"]
        fs.restore_host_rng(start["rng"])
        if self.counter is not None:
            self.counter.restore_num_batches(start.get("num_batches"))
            self.counter.catch_up(start.get("iterators", 0))
            # PyTorch's DataLoader draws from torch's RNG whenever an iterator starts: undo the
            # draws of the iterators catch_up created.
            fs.restore_torch_rng(start["rng"].get("torch"))
            holder = fs.input_state_holder(self.counter.epoch_iterator)
            if holder is not None and "input" in start:
                holder.set_checkpoint_state(start["input"])
        # fit reset the metrics at this epoch's begin: put back the interrupted epoch's values.
        _assign(fs.training_variables(model), contents)
        self._restore_callbacks(state["callbacks"], contents.callback_arrays)
        # PyTorch: unseeded Dropout draws from torch's global RNG at every trained step, which
        # replay does not repeat; put it where the interrupted run had it at the backup.
        torch_rng = state.get("torch_rng")
        fs.start_replay(model, pending.progress.step, lambda: fs.restore_torch_rng(torch_rng))

    def _restore_callbacks(self, saved: list[dict[str, Any]], arrays: list[list[Any]]) -> None:
        names = [type(c).__name__ for c in self.stateful]
        if names != [entry["class"] for entry in saved]:
            warnings.warn(
                "The stateful callbacks of this fit differ from those of the backup "
                f"({names} now, {[e['class'] for e in saved]} then); restoring those that match "
                "by position and class.",
                stacklevel=4,
            )
        for index, (callback, entry) in enumerate(zip(self.stateful, saved, strict=False)):
            if type(callback).__name__ == entry["class"]:
                fs.set_callback_state(callback, entry["state"], arrays[index])


def _assign(variables: list[Any], contents: BackupContents) -> None:
    """Assigns the backup's arrays (by layout index) to the model's training variables."""
    resolve = getattr(contents.variables, "resolve", None)
    if resolve is not None:  # a sharded backup: restored now, onto these variables' layouts
        resolve(variables)
    for index, array in contents.variables.items():
        variables[index].assign(array)


def _optimizer_settings(model: Any) -> dict[str, Any]:
    """The optimizer's settings that are variables, so a backup restores them (the learning rate
    unless it is a schedule): its scalar variables named like an argument of its config."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return {}
    config = optimizer.get_config()
    return {v.name: v for v in optimizer.variables if len(v.shape) == 0 and v.name in config}


def _first_difference(saved: list[Any], current: list[Any]) -> str:
    """The first variable whose shape differs, named with both shapes (or the first one only
    one side has)."""
    for i, (a, b) in enumerate(zip(saved, current, strict=False)):
        if a[1] != b[1]:
            return f"variable {i} is {b[0]} {b[1]} in the model, {a[0]} {a[1]} in the backup"
    i = min(len(saved), len(current))
    if len(saved) > i:
        return f"variable {i} ({saved[i][0]} {saved[i][1]}) is in the backup, not in the model"
    return f"variable {i} ({current[i][0]} {current[i][1]}) is in the model, not in the backup"


# ---------------------------------------------------------------------- one callback's backups


@dataclass(frozen=True)
class Resumed:
    """The backup a `fit` resumed from, and where training continues."""

    record: Record
    progress: Progress
    replaced: list[tuple[str, float, float]]  # optimizer settings: name, script's, backup's

    def lines(self, where: str) -> list[str]:
        """What to tell the user: where training resumes, and what the backup replaced."""
        p = self.progress
        at = f"step {p.step} of" if p.step else "the start of"
        said = [
            f"BackupAndRestore: resuming from {where} at {at} epoch {p.epoch + 1} "
            f"(global step {p.global_step})."
        ]
        if self.replaced:
            said.append(f"BackupAndRestore: {replaced_line(self.replaced)}.")
        return said


class Backups:
    """The backups of one `BackupAndRestore`: resumed from, taken and deleted through its pipeline.

    Args:
        pipeline: Writes and reads the backups (its manager is the backup folder).
        owner: The owner name in the backups' records.
        keep_last: How many backups to keep.
    """

    def __init__(self, pipeline: SavePipeline, *, owner: str, keep_last: int):
        self.pipeline = pipeline
        self.manager: CheckpointManager = pipeline.manager
        self.owner = owner
        self.retention = KeepLast(keep_last)
        self.training: TrainingState | None = None

    def begin(self, model: Any, callback: Any, *, chief: bool) -> Resumed | None:
        """At `on_train_begin`: clears what an earlier `fit` left on the model, refuses a second
        callback on the same folder, takes the directory (the chief), then restores the newest
        backup that verifies into `model` (None if there is none) and marks the model as resumed
        from it.

        Raises:
            DirectoryLockedError: another process writes backups there.
            ResumeError: the backup does not match this model, or cannot be resumed from.
        """
        mark_preempted(model, False)
        mark_resumed(model, None)
        fs.stop_replay(model)
        self.training = TrainingState(model, callback)
        self._check_alone(callback)
        if chief:
            # Lock first: it also completes or undoes what a killed writer left half-done, before
            # we read; and a second run on this directory fails now, not at its first backup.
            self.manager.open_for_writing()
        directory = self.manager.directory
        found = self.pipeline.restore(
            owner=self.owner, check=lambda r: TrainingState.check_readable(r, directory)
        )
        if found is None:
            return None
        record, contents = found
        progress = self.training.restore(model, record, contents, directory)
        self.manager.protect(record.name)  # never pruned while this fit may still need it
        mark_resumed(model, record.name)
        return Resumed(record, progress, self.training.replaced)

    def _check_alone(self, callback: Any) -> None:
        """Refuses a second callback of the same `fit` backing up into the same folder: each
        would resume from, and prune, the other's backups."""
        assert self.training is not None
        for other in self.training.callbacks:
            if (
                other is not callback
                and isinstance(other, type(callback))
                and other.manager.storage.url == self.manager.storage.url
            ):
                raise ValueError(
                    f"Two {type(callback).__name__} callbacks in this fit back up into "
                    f"{self.manager.directory}: each would resume from and prune the other's "
                    "backups. Use one, or give each its own `backup_dir`."
                )

    @property
    def callbacks(self) -> list[Any]:
        """The callbacks of the running `fit` (none before `begin`)."""
        return self.training.callbacks if self.training is not None else []

    def begin_epoch(self, model: Any, epoch: int) -> None:
        """At `on_epoch_begin`: the resumed epoch gets the rest of its state (`TrainingState`)."""
        assert self.training is not None
        fs.clear_initial_epoch(model)
        self.training.begin_epoch(model, epoch)

    def capture_epoch_start(self) -> None:
        """The epoch-start state of a backup taken at `on_train_end` (no epoch begins after it)."""
        assert self.training is not None
        self.training.capture_epoch_start()

    def end(self, model: Any) -> None:
        """Undoes what `begin` did to the model for the running `fit` (replay, resumed mark)."""
        fs.stop_replay(model)
        fs.clear_initial_epoch(model)
        mark_resumed(model, None)

    def save(
        self,
        model: Any,
        progress: Progress,
        logs: dict[str, Any] | None,
        *,
        chief: bool,
        cadence: Cadence | None = None,
        on_saved: Callable[[Saved], None] | None = None,
        lines: Announcements | None = None,
    ) -> None:
        """Backs up the training state at `progress` (a copy of it: training goes on); `lines`
        gets a line saying where it went once it is committed.

        Off the chief of a multi-worker job, it does its part of the chief's save (the format's
        `contribute`): a host copy it drops (reading the metric variables, SyncOnRead under
        MultiWorkerMirroredStrategy, is an all-reduce every worker must join), or writing the
        shards it holds. Only the chief commits and prunes.
        """
        assert self.training is not None
        self.pipeline.wait()  # the previous backup is committed: its name is taken
        progress = Progress(**vars(progress))
        inputs = self.training.inputs(model, progress)
        if not chief:
            self.pipeline.contribute(model, inputs)
            return
        request = SaveRequest(
            name=self._name(progress),
            epoch=progress.epoch,
            step=progress.step,
            global_step=progress.global_step,
            metrics=clean_metrics(logs),
            owner=self.owner,
            memory=CallbackMemory(
                callback=self.owner,
                iterations=inputs.state["iterations"],
                retention=to_json(self.retention),
                cadence=cadence.get_state() if cadence is not None else None,
            ),
        )

        def saved(saved: Saved) -> None:  # on the writer thread when in the background
            if on_saved is not None:
                on_saved(saved)
            if lines is not None:
                r = saved.record
                at = position(r.epoch, r.step, r.global_step)
                lines.add(f"BackupAndRestore: backed up to {self.where(r.name)} at {at}.")

        self.pipeline.save(model, request, extra=inputs, retention=self.retention, on_saved=saved)

    def delete_all(self) -> None:
        """Deletes this callback's backups (and nothing else): `fit` completed."""
        for record in self.manager.checkpoints(self.owner, run="all"):
            self.manager.delete(record.name, reason="fit completed (delete_checkpoint=True)")

    def where(self, name: str | None = None, *, chief: bool = True) -> str:
        """Where backup `name` (default: the newest) is, for the user; the folder off the chief."""
        if name is None:
            latest = self.manager.latest(self.owner, run="all") if chief else None
            if latest is None:
                return self.manager.directory
            name = latest.name
        return f"{self.manager.directory.rstrip('/')}/{name}"

    def _name(self, progress: Progress) -> str:
        """`backup-<global step>`, made unique: an epoch-end backup can follow a step backup at
        the same global step, and replacing a multi-file backup in place is never safe."""
        name = self.pipeline.format.checkpoint_name(f"backup-{progress.global_step:09d}")
        if name in {r.name for r in self.manager.checkpoints(self.owner, run="all")}:
            name = f"{name}-epoch-{progress.epoch:05d}-step-{progress.step:06d}"
        return name
