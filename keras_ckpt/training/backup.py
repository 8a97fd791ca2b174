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
from keras_ckpt.records import CallbackMemory, Record, clean_metrics
from keras_ckpt.schedule import Progress
from keras_ckpt.state import mark_resumed
from keras_ckpt.training import fit_state as fs
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
            counts = (
                f"it holds {len(saved)} variables, the model has {len(current)}"
                if len(saved) != len(current)
                else f"the shapes of its {len(saved)} variables differ from the model's"
            )
            raise ResumeError(
                f"Backup {record.name} in {directory} does not match this model: {counts}"
                + _first_difference(saved, current)
                + ". Use another `backup_dir` for a different model."
            )
        _assign(variables, contents)
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


def _first_difference(saved: list[Any], current: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(saved, current, strict=False)):
        if a[1] != b[1]:
            return f" (first difference at variable {i}: {a[0]} {a[1]} then, {b[0]} {b[1]} now)"
    return ""


# ---------------------------------------------------------------------- one callback's backups


@dataclass(frozen=True)
class Resumed:
    """The backup a `fit` resumed from, and where training continues."""

    record: Record
    progress: Progress


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
        """At `on_train_begin`: takes the directory (the chief), then restores the newest backup
        that verifies into `model` (None if there is none) and marks the model as resumed from it.

        Raises:
            DirectoryLockedError: another process writes backups there.
            ResumeError: the backup does not match this model, or cannot be resumed from.
        """
        self.training = TrainingState(model, callback)
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
        return Resumed(record, progress)

    def save(
        self,
        model: Any,
        progress: Progress,
        logs: dict[str, Any] | None,
        *,
        chief: bool,
        cadence: Cadence | None = None,
        on_saved: Callable[[Saved], None] | None = None,
    ) -> None:
        """Backs up the training state at `progress` (a copy of it: training goes on).

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
        self.pipeline.save(
            model, request, extra=inputs, retention=self.retention, on_saved=on_saved
        )

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
