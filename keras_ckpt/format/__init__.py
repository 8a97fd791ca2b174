"""Formats: the only code that knows a checkpoint's bytes on disk.

`base.Format` is the interface the save pipeline writes through; `keras_file.KerasFile` (`.keras`
and `.weights.h5`) and `backup_file.BackupFile` (`BackupAndRestore`'s backups) implement it.
Below them: `snapshot` copies what Keras's saving walk would write to host memory; `h5write`
writes it as Keras's own file in one pass; `h5read` reads those files back in place, checked
against their records; `_zip` lays out a `.keras` zip by hand; `averaging` averages weight
files; `orbax_dir.OrbaxDir` writes sharded checkpoints through Orbax (a folder each, every process
writing its own shards); `_keras_private` is the one importer of Keras's private saving API;
`_memory` allocates the large host buffers (snapshots, checked reads) in huge pages.
"""

from __future__ import annotations

from typing import Any

from keras_ckpt.format.base import Format, Staged

__all__ = ["Format", "Staged", "format_for"]


def format_for(record: Any) -> Format:
    """The format that reads checkpoint `record` back (by its kind and main file).

    Example:

    >>> from keras_ckpt.records import FileEntry, Record
    >>> record = Record("m.keras", "model", (FileEntry("m.keras", 1, "crc32c:00000000"),))
    >>> type(format_for(record)).__name__
    'KerasFile'
    """
    from keras_ckpt.format.orbax_dir import OrbaxDir, is_orbax_record

    if is_orbax_record(record):
        return OrbaxDir(record.kind)
    if record.kind == "training_state":
        from keras_ckpt.format.backup_file import BackupFile

        return BackupFile()
    from keras_ckpt.format.keras_file import KerasFile

    legacy = record.path.endswith(".h5") and not record.path.endswith(".weights.h5")
    return KerasFile(weights_only=record.kind == "weights", legacy_h5=legacy)
