"""The format interface: how one kind of checkpoint becomes files in a staging folder, and back.

A save runs in two halves. `capture` runs on the training thread and takes everything the files
will hold (normally a copy to host memory: the only part of a save that blocks training).
`write` runs inline or on the writer thread, turns what was captured into files in a local
staging folder, fsyncs them and returns their sizes and checksums, computed while writing; the
pipeline (`keras_ckpt.training.pipeline`) then commits them. Reading back goes through the same
object (`load_model`, `load_weights`), which checks the bytes it reads against the record.

The formats: `keras_file.KerasFile` (`.keras` and `.weights.h5`, Keras's own files),
`backup_file.BackupFile` (`BackupAndRestore`'s one-file backups) and `orbax_dir.OrbaxDir`
(sharded checkpoints, a folder each, written by Orbax from every process).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from keras_ckpt.store.base import SealedFile

__all__ = ["Format", "Staged"]


@dataclass
class Staged:
    """A checkpoint's files, complete and durable in a staging folder, ready to commit.

    Attributes:
        files: Final path (relative to the checkpoint directory) -> the staged local file; the
            first is the file Keras loads.
        sealed: Final path -> size and checksum, computed from the bytes as they were written
            (the store does not read them back).
    """

    files: dict[str, str] = field(default_factory=dict)
    sealed: dict[str, SealedFile] = field(default_factory=dict)


class Format(ABC):
    """One kind of checkpoint: what it captures, the files it writes, how it reads them back.

    Attributes:
        kind: The `Record.kind` of what it writes.
        snapshots: True if `capture` copies the state out of the model, so `write` may run on
            the writer thread while training goes on; False if `write` reads the live model
            (it then runs inline, before the next step).
    """

    kind: str
    snapshots: bool = True

    @abstractmethod
    def capture(self, model: Any, extra: Any = None) -> Any:
        """Everything the files will hold, taken on the training thread (blocks training)."""

    @abstractmethod
    def write(self, captured: Any, folder: str, name: str) -> Staged:
        """Writes checkpoint `name`'s files into local `folder`, fsynced, with their checksums."""

    def checkpoint_name(self, name: str) -> str:
        """The name a checkpoint the callback calls `name` gets in this format."""
        return name

    def contribute(self, model: Any, extra: Any = None) -> None:
        """A process of a multi-worker job that does not commit takes its part of a save: by
        default the host copy (gathering state may be a collective), then drops it."""
        self.discard(self.capture(model, extra))

    def discard(self, captured: Any) -> None:  # noqa: B027 - optional, most formats keep nothing
        """Frees what `capture` set aside outside the returned object (a temporary folder)."""

    def release(self) -> None:  # noqa: B027 - optional, only formats that reuse buffers have any
        """Frees buffers kept from one save to the next (called when `fit` ends)."""

    def describe(self, path: str, expected: SealedFile, *, name: str) -> dict[str, Any]:
        """What local file `path` holds (`keras-ckpt show`), read once and checked against
        `expected`, without building the model and without Keras."""
        from keras_ckpt.format import inspect

        return inspect.inspect_file(path, expected, name=name)

    def load_model(self, path: str, expected: SealedFile, *, name: str, **kwargs: Any) -> Any:
        """The model saved in local file `path`, read once and checked against `expected`.

        Raises:
            ValueError: this kind of checkpoint holds no full model.
            CorruptCheckpointError: the bytes differ from `expected`, or cannot be read.
        """
        raise ValueError(
            f"Checkpoint {name} holds {self.kind.replace('_', ' ')} only, not a full model: build "
            "the model in code and call `load_weights(model, ...)` instead."
        )

    @abstractmethod
    def load_weights(self, model: Any, path: str, expected: SealedFile, *, name: str) -> None:
        """Assigns the weights (and optimizer state) in local file `path` to a built `model`,
        checking the bytes read against `expected`.

        Raises:
            CorruptCheckpointError: the bytes differ from `expected`, or cannot be read.
        """
