"""Exceptions raised by keras-ckpt.

Everything the library raises on purpose derives from `KerasCkptError`, except bad arguments,
which raise the built-in `ValueError` or `TypeError` as Keras does.
"""

from __future__ import annotations

__all__ = [
    "KerasCkptError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "RecordFormatError",
    "DirectoryLockedError",
    "LockLostError",
    "UnsafeDirectoryError",
    "ForeignFileError",
    "ResumeError",
]


class KerasCkptError(Exception):
    """Base class of every error keras-ckpt raises on purpose.

    Example:

    >>> issubclass(DirectoryLockedError, KerasCkptError)
    True
    """


class CheckpointNotFoundError(KerasCkptError, LookupError):
    """No committed checkpoint matches what was asked for.

    Example:

    >>> import tempfile, keras_ckpt
    >>> keras_ckpt.CheckpointManager(tempfile.mkdtemp()).get("model-001.keras")
    Traceback (most recent call last):
    keras_ckpt.errors.CheckpointNotFoundError: No checkpoint named 'model-001.keras' in ...
    Checkpoints there: none
    """


class CorruptCheckpointError(KerasCkptError):
    """A checkpoint's files do not match its record (missing, truncated or altered).

    Raised when a damaged checkpoint is asked for by name; `"latest"` and `"best"` skip a damaged
    one with a warning instead.

    Example:

    >>> import os, tempfile, keras_ckpt
    >>> manager = keras_ckpt.CheckpointManager(tempfile.mkdtemp())
    >>> with manager.stage() as folder:
    ...     _ = open(os.path.join(folder, "w"), "wb").write(b"weights")
    ...     _ = manager.commit({"w.bin": os.path.join(folder, "w")}, name="w.bin", kind="weights")
    >>> _ = open(os.path.join(manager.directory, "w.bin"), "wb").write(b"WEIGHTS")  # damage
    >>> manager.resolve("w.bin")
    Traceback (most recent call last):
    keras_ckpt.errors.CorruptCheckpointError: Checkpoint w.bin in ... is damaged:
    w.bin: checksum mismatch ...
    >>> manager.close()
    """


class RecordFormatError(CorruptCheckpointError):
    """A record file cannot be read: bad JSON, missing fields, or an unknown format version.

    Example:

    >>> from keras_ckpt.records import Record
    >>> Record.from_json("{}", source="runs/.keras_ckpt/x.json")
    Traceback (most recent call last):
    keras_ckpt.errors.RecordFormatError: Checkpoint record runs/.keras_ckpt/x.json has
    format_version=None; ...
    """


class DirectoryLockedError(KerasCkptError):
    """Another live process is writing checkpoints into the same directory.

    The message names the holder (process, host, since when). A lock whose holder died is free at
    once on a local disk.

    Example:

    >>> import subprocess, sys, tempfile, keras_ckpt
    >>> folder = tempfile.mkdtemp()
    >>> holder = subprocess.Popen([sys.executable, "-c",
    ...     "import sys, time, keras_ckpt; keras_ckpt.CheckpointManager(sys.argv[1])"
    ...     ".open_for_writing(); print('locked', flush=True); time.sleep(30)", folder],
    ...     stdout=subprocess.PIPE, text=True)
    >>> holder.stdout.readline().strip()
    'locked'
    >>> keras_ckpt.CheckpointManager(folder).open_for_writing()
    Traceback (most recent call last):
    keras_ckpt.errors.DirectoryLockedError: ... is being written by process ... on host ...
    >>> holder.kill(); _ = holder.wait()
    >>> keras_ckpt.CheckpointManager(folder).open_for_writing()  # its holder died: free at once
    """


class LockLostError(DirectoryLockedError):
    """The writer lock this process held is gone, so it stops writing before the next change.

    Raised before a commit or a delete when the directory or its `.keras_ckpt/lock` was deleted or
    replaced (another process may now hold a new lock there), when an object-store lock was taken
    over, or in a forked child (a data-loader worker) that inherited a writer's manager. Nothing is
    re-created behind the user's back: open a new `CheckpointManager` to write again.

    Example:

    >>> issubclass(LockLostError, DirectoryLockedError)
    True
    """


class UnsafeDirectoryError(KerasCkptError):
    """An entry keras-ckpt must write is a symbolic link (or not a regular file/folder).

    keras-ckpt never writes, truncates or deletes through a link it did not create, so it refuses
    a `.keras_ckpt` folder or `.keras_ckpt/lock` file that is a link, naming it.

    Example:

    >>> issubclass(UnsafeDirectoryError, KerasCkptError)
    True
    """


class ForeignFileError(KerasCkptError):
    """A save would overwrite a file that keras-ckpt did not write.

    Example:

    >>> import os, tempfile, keras_ckpt
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "best.keras"), "w") as f:
    ...     _ = f.write("a model keras wrote")
    >>> manager = keras_ckpt.CheckpointManager(folder)
    >>> with manager.stage() as staging:
    ...     path = os.path.join(staging, "new")
    ...     _ = open(path, "w").write("ours")
    ...     manager.commit({"best.keras": path}, name="best.keras", kind="model")
    Traceback (most recent call last):
    keras_ckpt.errors.ForeignFileError: Refusing to overwrite .../best.keras: keras-ckpt did not
    write it ...
    >>> manager.close()
    """


class ResumeError(KerasCkptError):
    """Training state could not be restored consistently.

    For instance a backup of another model in the same `backup_dir`: the message names the first
    variable that differs and says to use another directory.

    Example:

    >>> issubclass(ResumeError, KerasCkptError)
    True
    """
