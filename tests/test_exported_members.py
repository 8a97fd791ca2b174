"""The public surface of `keras_ckpt` is exactly `__all__`, and every name in it resolves."""

from __future__ import annotations

import subprocess
import sys

import keras_ckpt

PUBLIC = {
    "BackupAndRestore",
    "CheckpointManager",
    "FileEntry",
    "KeptCheckpoint",
    "ModelCheckpoint",
    "PruneResult",
    "Record",
    "VerifyResult",
    "distribute",
    "errors",
    "policies",
    "state",
    "__version__",
}


def test_all_is_exactly_the_public_surface():
    assert set(keras_ckpt.__all__) == PUBLIC
    assert len(keras_ckpt.__all__) == len(PUBLIC)


def test_every_exported_name_resolves():
    for name in keras_ckpt.__all__:
        assert getattr(keras_ckpt, name) is not None


def test_the_protocol_and_replay_flag_are_reachable_as_documented():
    assert callable(keras_ckpt.state.is_replaying)
    assert keras_ckpt.state.CheckpointStateful.__name__ == "CheckpointStateful"


def test_importing_the_package_does_not_import_keras():
    code = "import sys, keras_ckpt; keras_ckpt.CheckpointManager; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_says_so():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Checkpoint'"):
        keras_ckpt.Checkpoint  # noqa: B018
