"""keras_ckpt.training.backup: what a backup holds of the training state, and which backups can
be resumed from."""

from __future__ import annotations

import keras
import pytest
from conftest import build_model, fit

import keras_ckpt
from keras_ckpt.callbacks.backup_and_restore import OWNER


def test_pydataset_without_the_protocol_warns(tmp_path, data):
    class Reshuffles(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return data[0][i * 8 : (i + 1) * 8], data[1][i * 8 : (i + 1) * 8]

        def on_epoch_end(self):
            pass

    with pytest.warns(UserWarning, match="CheckpointStateful"):
        build_model().fit(
            Reshuffles(), epochs=1, verbose=0, callbacks=[keras_ckpt.BackupAndRestore(tmp_path)]
        )


def test_a_three_file_backup_of_an_earlier_version_fails_with_a_clear_error(tmp_path, data):
    manager = keras_ckpt.CheckpointManager(tmp_path)
    with manager.stage() as folder:
        files = {}
        for part in ("model.weights.h5", "state.npz", "state.json"):
            (tmp_path / folder / part).write_bytes(b"earlier")
            files[f"backup-000000002/{part}"] = f"{folder}/{part}"
        manager.commit(files, name="backup-000000002", kind="training_state", owner=OWNER)
    manager.close()
    model = build_model()
    with pytest.raises(keras_ckpt.errors.ResumeError, match="earlier keras-ckpt.*another"):
        fit(model, data, [keras_ckpt.BackupAndRestore(tmp_path)])
    assert int(model.optimizer.iterations) == 0  # never silently started over
