"""The one save pipeline under both callbacks, and the restore of the newest good checkpoint.

A callback decides *when* to save and *what* (the checkpoint's name, where training stands, its
memory); `SavePipeline.save` does the rest: the format's `capture` on the training thread (the
only part that blocks training), then inline or on one background thread (at most one save in
flight) the format's `write` into a staging folder, the manager's `commit`, the retention policy's
`prune`, and a call back to announce it. An error in the background is raised on the training
thread at the next `check`, `save` or `wait`; nothing is swallowed, and a failed save leaves the
previous checkpoints as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt.format import format_for
from keras_ckpt.format.base import Format
from keras_ckpt.manager import CheckpointManager
from keras_ckpt.policies import Policy
from keras_ckpt.records import CallbackMemory, Record
from keras_ckpt.results import PruneResult
from keras_ckpt.store.base import SealedFile
from keras_ckpt.training.writer import Writer, WriterStats

__all__ = ["SavePipeline", "SaveRequest", "Saved"]


@dataclass(frozen=True)
class SaveRequest:
    """What a callback decided to save: the checkpoint's name and where training stands.

    Attributes:
        name: The checkpoint's name (unique in its directory).
        epoch, step, global_step: Epochs completed, steps into the next, steps in all.
        metrics: The logs at that moment (finite floats).
        owner: The callback that owns the checkpoint (retention only touches its own).
        memory: What the callback records about itself (`Record.owner_state`).
    """

    name: str
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    owner: str | None = None
    memory: CallbackMemory = field(default_factory=CallbackMemory)


@dataclass(frozen=True)
class Saved:
    """A committed save, as `on_saved` receives it.

    Attributes:
        record: The committed checkpoint.
        pruned: What retention kept and deleted after it (None without a policy).
        write_seconds: Wall time of the write, commit and prune (inline or in the background).
    """

    record: Record
    pruned: PruneResult | None
    write_seconds: float


class SavePipeline:
    """Saves through one format into one checkpoint directory, inline or in the background.

    Args:
        manager: The checkpoint directory.
        format: How the checkpoint becomes files (`keras_ckpt.format`).
        background: Write on one background thread (training waits only for `capture`), if the
            format can (`Format.snapshots`); else inline, before the next step.
        thread: Name of the writer thread.

    Example:

    >>> import keras, tempfile
    >>> from keras_ckpt.format.keras_file import KerasFile
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> pipeline = SavePipeline(CheckpointManager(tempfile.mkdtemp()),
    ...                         KerasFile(weights_only=True), background=True)
    >>> pipeline.save(model, SaveRequest("m-1.weights.h5", epoch=1))
    >>> pipeline.close()  # waits for the write, releases the lock and the buffers
    >>> [r.name for r in pipeline.manager.checkpoints()]
    ['m-1.weights.h5']
    """

    def __init__(
        self,
        manager: CheckpointManager,
        format: Format,
        *,
        background: bool,
        thread: str = "keras-ckpt-writer",
    ):
        self.manager = manager
        self.format = format
        self._background = background
        self.writer = Writer(background=background and format.snapshots, name=thread)

    @property
    def background(self) -> bool:
        """True if saves are written on the background thread."""
        return self.writer.background

    @property
    def busy(self) -> bool:
        """True while a background save is being written."""
        return self.writer.busy

    @property
    def stats(self) -> WriterStats:
        """How often (and how long) training waited for the previous background save."""
        return self.writer.stats

    def save(
        self,
        model: Any,
        request: SaveRequest,
        *,
        extra: Any = None,
        retention: Policy | None = None,
        on_saved: Callable[[Saved], None] | None = None,
    ) -> None:
        """Captures `model` now, then writes, commits and prunes (inline or in the background).

        Args:
            model: The model to save.
            request: The checkpoint's name and where training stands.
            extra: What the format captures besides the model (`BackupInputs` for backups).
            retention: Pruned after the commit, among `request.owner`'s checkpoints.
            on_saved: Called after the commit and prune (on the writer thread when in the
                background): to announce the save, or to measure it.

        Raises:
            Exception: the error of the previous background save, if it failed.
        """

        def write(captured: Any) -> None:
            started = time.perf_counter()
            try:
                with self.manager.stage() as folder:
                    staged = self.format.write(captured, folder, request.name)
                    record = self.manager.commit(
                        staged.files,
                        sealed=staged.sealed,
                        name=request.name,
                        kind=self.format.kind,
                        epoch=request.epoch,
                        step=request.step,
                        global_step=request.global_step,
                        metrics=request.metrics,
                        owner=request.owner,
                        owner_state=request.memory.to_owner_state(),
                    )
            finally:
                self.format.discard(captured)  # also when staging itself failed
            pruned = None
            if retention is not None:
                pruned = self.manager.prune(retention, owner=request.owner, run="all")
            if on_saved is not None:
                on_saved(Saved(record, pruned, time.perf_counter() - started))

        self.writer.run(lambda: self.format.capture(model, extra), write)

    def contribute(self, model: Any, extra: Any = None) -> None:
        """On a process that does not commit (multi-worker): its part of the save the chief makes
        at this step (the format's `contribute`: a host copy, or writing its own shards)."""
        self.writer.wait()
        self.format.contribute(model, extra)

    def use_format(self, format: Format) -> None:
        """Saves through `format` from now on (the one a `fit`'s model needs); the save in flight
        lands first."""
        self.writer.wait()
        self.format.release()
        self.format = format
        self.writer.background = self._background and format.snapshots

    def check(self) -> None:
        """Raises the error of a background save that failed (once)."""
        self.writer.check()

    def wait(self) -> None:
        """Blocks until the save in flight is committed; raises its error, if any."""
        self.writer.wait()

    def close(self) -> None:
        """Waits for the save in flight, then frees the format's buffers and the directory's lock.

        Called when `fit` ends: nothing of a finished `fit` stays in memory.
        """
        try:
            self.writer.wait()
        finally:
            self.format.release()
            self.manager.close()

    def restore(self, *, owner: str, check: Callable[[Record], None] | None = None) -> Any:
        """(record, contents) of `owner`'s newest checkpoint that verifies and reads, or None if
        it has none. A damaged one is reported and the one before it used.

        Args:
            owner: Whose checkpoints.
            check: Called with each candidate before it is read; raises to refuse it.
        """
        if not self.manager.checkpoints(owner, run="all"):
            return None

        def read(record: Record, path: str) -> Any:
            if check is not None:
                check(record)
            entry = record.files[0]
            reader = getattr(format_for(record), "read", None)
            if reader is None:
                raise ValueError(f"Checkpoint {record.name} cannot be restored from.")
            return reader(path, SealedFile(entry.size, entry.checksum), name=entry.path)

        return self.manager.load("latest", read, owner=owner, run="all")
