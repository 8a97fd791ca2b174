"""Sharded checkpoints written by Orbax (`keras_ckpt.format.orbax_dir`), on JAX's CPU with 4
forced devices: through the callbacks and the manager, plain Keras, another mesh, a flipped byte,
exact resume.

Each scenario runs in a child process (`tests/sharded_child.py`): JAX fixes its device count when
it starts. Skipped only where JAX is not installed (`make test`'s TensorFlow-only environment);
with JAX, a missing orbax-checkpoint fails here instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")  # the [jax] extra; `make test-backends` installs it with [orbax]
import orbax.checkpoint  # noqa: E402,F401  - with JAX, the [orbax] extra must be there: no skip

CHILD = Path(__file__).with_name("sharded_child.py")
ROOT = Path(__file__).resolve().parents[1]


def run_child(directory: Path, scenario: str) -> tuple[dict, str]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, str(CHILD), str(directory), scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(last.removeprefix("RESULT ")), done.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return run_child(tmp_path_factory.mktemp("sharded-save"), "save")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    return run_child(tmp_path_factory.mktemp("sharded-resume"), "resume")


def test_model_checkpoint_writes_a_folder_per_checkpoint_with_every_file_recorded(saved):
    report, _ = saved
    assert report["names"] == ["m-2", "m-3"]  # keep_last=2 pruned m-1
    files = report["files"]
    assert files[0].endswith("/_CHECKPOINT_METADATA") and files[0].startswith("m-3/")
    assert any("/pytree/" in f for f in files) and any("/model_config/" in f for f in files)
    assert report["verify"] == [True, True]
    assert report["kernel_sharding"] == "P(None, 'model')"


def test_both_callbacks_write_sharded_checkpoints_in_the_background(saved):
    assert saved[0]["background"] == [True, True]  # training waits only for the host copy


def test_show_describes_the_folder_and_how_to_load_it(saved):
    report, _ = saved
    assert report["show_status"] == 0
    assert "sharded checkpoint written by Orbax, saved on 4 devices" in report["show"]
    assert "architecture     yes: Functional" in report["show"]
    assert "keras.saving.load_model('m-3')" in " ".join(report["show"].split())


def test_the_manager_loads_the_model_bit_for_bit(saved):
    assert saved[0]["ours"] is True


def test_plain_keras_loads_the_model_and_the_weights_bit_for_bit(saved):
    report, _ = saved
    assert report["plain_load_model"] is True
    assert report["plain_load_weights"] is True
    assert report["plain_load_backup"] is True


def test_loading_onto_a_1x2_mesh_reshards_and_says_so(saved):
    report, stdout = saved
    assert report["other_mesh_equal"] is True
    assert report["other_mesh_devices"] == 2
    assert (
        "keras-ckpt: m-3 was saved on 4 devices, mesh batch=2 x model=2; restoring it onto "
        "2 devices, mesh batch=1 x model=2, resharded by Orbax." in stdout
    )


def test_backup_and_restore_resumes_onto_a_1x2_mesh_and_says_so(saved):
    report, stdout = saved
    assert report["backup_other_mesh_equal"] is True
    assert (
        "keras-ckpt: backup-000000024 was saved on 4 devices, mesh batch=2 x model=2; restoring "
        "it onto 2 devices, mesh batch=1 x model=2, resharded by Orbax." in stdout
    )


def test_a_flipped_byte_in_a_shard_file_is_found_and_latest_falls_back(saved):
    report, _ = saved
    name, ok, problems = report["verify_after_flip"][-1]
    assert (name, ok) == ("m-3", False)
    assert report["flipped"] in problems[0] and "checksum mismatch" in problems[0]
    assert report["verify_after_flip"][0][:2] == ["m-2", True]
    assert report["loaded_after_flip"] == "m-2"
    assert any("Checkpoint m-3" in w and "using m-2 instead" in w for w in report["warnings"])


def test_backup_and_restore_resumes_sharded_state_bit_for_bit(resumed):
    report, stdout = resumed
    assert "resuming from" in stdout and "backup-000000006" in stdout
    assert report["equal"] is True
    assert report["kernel_sharding"] == "P(None, 'model')"
