"""What a checkpoint's main file holds, read without building the model, and its exportable bytes.

A `.keras` file is a zip of `metadata.json`, `config.json` (architecture and compile settings) and
`model.weights.h5`; a `.weights.h5` file is HDF5 with `layers/.../vars/N` and `optimizer/vars/N`
datasets. Reading those directly is fast, builds no model, imports no Keras, and works for custom
layers too. Every file is read once and checked as loading checks it (`checked.VerifiedFile`).
`CheckpointManager.describe` and `CheckpointManager.export` are built on this module.
"""

from __future__ import annotations

import json
from typing import Any

from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format.checked import WEIGHTS_MEMBER, CheckedHDF5, VerifiedFile
from keras_ckpt.store.base import SealedFile

__all__ = ["BACKUP_FORMAT", "exportable", "inspect_file"]

_OPTIMIZER_GROUPS = ("optimizer", "optimizer_weights")  # Keras 3, legacy .h5
BACKUP_FORMAT = "BackupAndRestore backup (weights + training state)"


def inspect_file(
    path: str, expected: SealedFile | None = None, *, name: str | None = None
) -> dict[str, Any]:
    """The parts of a Keras file, their sizes, and what they say about the model.

    The file is read once and checked as loading would check it (`checked.VerifiedFile`): against
    `expected`, and every guard of the loader.

    Raises:
        CorruptCheckpointError: the file differs from `expected` or holds something not allowed.
    """
    source = VerifiedFile(path, expected, name=name)
    if source.kind == "zip":
        return _inspect_archive(source)
    if source.kind == "hdf5":
        with source.hdf5() as hdf5:
            info = {"format": "HDF5 weights file", "parts": {}, **_weights(hdf5)}
            if "model_config" in hdf5.file.attrs:  # a legacy full-model .h5
                info["format"] = "legacy .h5 model"
                config = _json(source, hdf5.file.attrs["model_config"])
                info["architecture"] = _architecture(config if isinstance(config, dict) else {})
            return info
    return {"format": "unknown", "parts": {}}


def _json(source: VerifiedFile, text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as e:
        raise CorruptCheckpointError(f"{source.name}: its model config is not JSON ({e})") from None


def _inspect_archive(source: VerifiedFile) -> dict[str, Any]:
    archive = source.archive()
    info: dict[str, Any] = {
        "format": ".keras zip archive",
        "parts": {i.filename: i.file_size for i in archive.infolist()},
    }
    names = archive.namelist()
    if "metadata.json" in names:
        info["metadata"] = source.read_json("metadata.json")
    if "config.json" in names:
        config = source.read_json("config.json")
        if not isinstance(config, dict):
            raise CorruptCheckpointError(f"{source.name}: its config.json is not a JSON object")
        info["architecture"] = _architecture(config)
        compile_config = config.get("compile_config")
        if isinstance(compile_config, dict):
            info["compile"] = _compile(compile_config)
    if WEIGHTS_MEMBER in names:
        with source.hdf5() as hdf5:
            info.update(_weights(hdf5))
    return info


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("config") or {}
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return {
        "class_name": config.get("class_name"),
        "name": inner.get("name") if isinstance(inner, dict) else None,
        "layers": len(layers) if isinstance(layers, list) else None,
    }


def _compile(compile_config: dict[str, Any]) -> dict[str, Any]:
    optimizer = compile_config.get("optimizer") or {}
    if isinstance(optimizer, str):
        optimizer = {"class_name": optimizer}
    learning_rate = (optimizer.get("config") or {}).get("learning_rate")
    if isinstance(learning_rate, dict):  # a schedule
        learning_rate = learning_rate.get("class_name")
    return {
        "optimizer": optimizer.get("class_name"),
        "learning_rate": learning_rate,
        "loss": compile_config.get("loss"),
        "metrics": compile_config.get("metrics"),
    }


def _weights(hdf5: CheckedHDF5) -> dict[str, Any]:
    """Counts of the layer weights and optimizer variables in a checked Keras HDF5 file."""
    layers: set[str] = set()
    weights = {"arrays": 0, "parameters": 0, "bytes": 0}
    optimizer: dict[str, Any] = {"variables": 0, "bytes": 0, "iterations": None, "name": None}
    for name, obj in hdf5.datasets.items():
        if name.startswith("__"):
            continue  # Keras never writes `__` names; a backup's own state lives there
        if name.split("/")[0] in _OPTIMIZER_GROUPS:
            if optimizer["variables"] == 0 and obj.shape == () and obj.dtype.kind in "iu":
                optimizer["iterations"] = int(hdf5.array(name))  # Keras puts `iterations` first
            optimizer["variables"] += 1
            optimizer["bytes"] += obj.nbytes
            continue
        layers.add(name.rsplit("/vars/", 1)[0] if "/vars/" in name else name.rsplit("/", 1)[0])
        weights["arrays"] += 1
        weights["parameters"] += obj.size
        weights["bytes"] += obj.nbytes
    for group in _OPTIMIZER_GROUPS:
        if f"{group}/vars" in hdf5.groups:
            optimizer["name"] = hdf5.file[f"{group}/vars"].attrs.get("name")
    weights["layers_with_weights"] = len(layers)
    return {"weights": weights, "optimizer": optimizer if optimizer["variables"] else None}


def exportable(path: str, expected: SealedFile | None, *, name: str, kind: str, target: str) -> Any:
    """The bytes to write for exporting checkpoint file `path` as `target` (`"model"`: a whole
    `.keras` file; `"weights"`: a `.weights.h5` file), read once and checked as loading checks
    them: what is exported is exactly the verified bytes.

    Args:
        path: Local path of the checkpoint's main file; `name` names it in messages.
        expected: Its recorded size and checksum.
        kind: The checkpoint's record kind (`"model"`, `"weights"`, `"training_state"`).
        target: `"model"` or `"weights"`.

    Raises:
        ValueError: the checkpoint cannot be exported as `target` (weights only, say).
        CorruptCheckpointError: the file differs from its record or fails a loading check.
    """
    source = VerifiedFile(path, expected, name=name)
    is_archive = source.kind == "zip"
    if target == "model":
        if kind != "model" or not is_archive:
            raise ValueError(
                f"{name} holds {kind.replace('_', ' ')} only, without the architecture a .keras "
                "file needs. Export it as a .weights.h5 file and load it with "
                "model.load_weights() into a model built by your code."
            )
        with source.hdf5():
            source.read_json("config.json")
            source.check_extraction()
        return source.buffer
    if source.kind is not None and (is_archive or name.endswith(".weights.h5")):
        if is_archive and WEIGHTS_MEMBER not in source.archive().namelist():
            raise ValueError(f"{name} holds no {WEIGHTS_MEMBER} to export.")
        with source.hdf5() as hdf5:
            return hdf5.image
    raise ValueError(f"{name} is not a Keras weights file.")
