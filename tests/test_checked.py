"""keras_ckpt.format.checked: a file read once into memory and checked, with no Keras. What the
guards refuse is in `test_crafted_files.py`; loading what they pass, in `test_h5read.py`."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format import checked


def hdf5_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", data=np.arange(300.0))
    return path


def test_it_imports_no_keras():
    """What only inspects or verifies a checkpoint (averaging, the command line) needs no Keras:
    neither this module nor what it imports from keras-ckpt imports Keras."""
    root = Path(checked.__file__).parents[1]
    seen, pending = set(), ["keras_ckpt.format.checked"]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = root.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "keras", f"{module} imports {name}"
                if name.startswith("keras_ckpt."):
                    pending.append(name)
    assert "keras_ckpt.store.local" in seen  # the walk followed keras-ckpt's own imports


def test_a_file_grown_while_it_is_read_is_reported(tmp_path, monkeypatch):
    path = hdf5_file(tmp_path / "m.weights.h5")
    real_read = checked._read

    def read_then_grow(f, size, crc):
        buffer = real_read(f, size, crc)
        with open(path, "ab") as out:
            out.write(b"more")
        return buffer

    monkeypatch.setattr(checked, "_read", read_then_grow)
    with pytest.raises(CorruptCheckpointError, match=r"m.weights.h5: changed while it was read"):
        checked.VerifiedFile(path, None)


def test_what_the_bytes_are_is_told_by_their_first_bytes(tmp_path):
    hdf5_file(tmp_path / "w.weights.h5")
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as archive:
        archive.write(hdf5_file(tmp_path / "inner.h5"), "model.weights.h5")
    (tmp_path / "n").write_bytes(b"not a keras file" * 10)
    kinds = {
        n: checked.VerifiedFile(tmp_path / n, None).kind for n in ("w.weights.h5", "m.keras", "n")
    }
    assert kinds == {"w.weights.h5": "hdf5", "m.keras": "zip", "n": None}


def test_plain_datasets_are_views_of_the_checked_bytes(tmp_path):
    source = checked.VerifiedFile(hdf5_file(tmp_path / "w.weights.h5"), None)
    with source.hdf5() as hdf5:
        assert sorted(hdf5.datasets) == ["layers/dense/vars/0"]
        array = hdf5.array("layers/dense/vars/0")
        np.testing.assert_array_equal(array, np.arange(300.0))
        assert np.shares_memory(array, source.buffer)
