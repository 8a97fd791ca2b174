"""Formats: the only code that knows a checkpoint's bytes on disk.

`snapshot` copies what Keras's saving walk would write to host memory; `h5write` writes it as
Keras's own `.weights.h5` or `.keras` file in one pass; `h5read` reads those files back in place,
checked against their records; `backup_file` is `BackupAndRestore`'s one-file backup; `_zip` lays
out a `.keras` zip by hand; `_keras_private` is the one importer of Keras's private saving API.
"""
