"""Keras 3's own `backup_and_restore_test.py`, run against `keras_ckpt.BackupAndRestore`.

The module's tests call `callbacks.BackupAndRestore`; here `callbacks` is Keras's package with our
class in its place, so each test checks our callback exactly as Keras checks its own. Tests that
read Keras's private attributes (`_current_epoch`, `_weights_path`, ...) or an exact error text
are skipped, each with its reason.
"""

from __future__ import annotations

import types

import pytest

pytest.importorskip("keras.src.callbacks.backup_and_restore_test")

from keras.src import callbacks as keras_callbacks  # noqa: E402
from keras.src.callbacks import backup_and_restore_test as keras_suite  # noqa: E402

import keras_ckpt  # noqa: E402

PRIVATE = "reads Keras's private attributes (_current_epoch, _last_batch_seen, backup paths)"
SKIPPED = {
    "test_best_case_step": PRIVATE,
    "test_best_case_epoch": PRIVATE,
    "test_backup_corrupted": PRIVATE,
    "test_backup_dir_empty_error": "matches Keras's text; ours: Invalid value for `backup_dir`",
    "test_backup_dir_none_error": "matches Keras's text; ours: Invalid value for `backup_dir`",
}


@pytest.fixture(autouse=True)
def ours_in_place_of_keras(monkeypatch, request):
    reason = SKIPPED.get(request.node.name)
    if reason:
        pytest.skip(reason)
    patched = types.ModuleType("callbacks")
    patched.__dict__.update(vars(keras_callbacks))
    patched.BackupAndRestore = keras_ckpt.BackupAndRestore
    monkeypatch.setattr(keras_suite, "callbacks", patched)


class TestKerasBackupAndRestoreSuite(keras_suite.BackupAndRestoreCallbackTest):
    """Every test of Keras's `BackupAndRestoreCallbackTest`, with our callback."""
