"""`show`: what one checkpoint holds, read from its files without building the model.

A `.keras` file is a zip of `metadata.json`, `config.json` (architecture and compile settings) and
`model.weights.h5`; a `.weights.h5` file is HDF5 with `layers/.../vars/N` and `optimizer/vars/N`
datasets. Reading those directly is fast, builds no model, and works for custom layers too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from keras_ckpt.cli._commands import Printer, record_json
from keras_ckpt.cli._common import format_metric, human_age, human_size, open_manager, resolve
from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format import format_for
from keras_ckpt.format.h5read import WEIGHTS_MEMBER, CheckedHDF5, VerifiedFile
from keras_ckpt.records import Record
from keras_ckpt.store.local import SealedFile

_OPTIMIZER_GROUPS = ("optimizer", "optimizer_weights")  # Keras 3, legacy .h5
BACKUP_FORMAT = "BackupAndRestore backup (weights + training state)"


def inspect_file(
    path: str, expected: SealedFile | None = None, *, name: str | None = None
) -> dict[str, Any]:
    """The parts of a Keras file, their sizes, and what they say about the model.

    The file is read once and checked as loading would check it (`h5read.VerifiedFile`): against
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


def cmd_show(args: argparse.Namespace) -> int:
    manager = open_manager(args.directory)
    record = resolve(manager, args.which, args.monitor, args.mode)
    entry = record.files[0]
    describe = getattr(format_for(record), "describe", inspect_file)  # a sharded folder: its own
    with manager.storage.local_path(record.path) as path:
        info = describe(path, SealedFile(entry.size, entry.checksum), name=entry.path)
    if record.kind == "training_state":  # its main file is a weights file, but it is not one
        info["format"] = BACKUP_FORMAT
    if args.json:
        data = {"checkpoint": record_json(record, time.time()), "contents": info}
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
        return 0
    _render(record, info, args.which)
    return 0


def _render(record: Record, info: dict[str, Any], which: str) -> None:
    out = Printer()
    from rich.table import Table

    weights, optimizer = info.get("weights"), info.get("optimizer")
    arch, comp = info.get("architecture"), info.get("compile")
    full = arch is not None
    title = f"{record.name}" + (f"  ({which})" if which in ("latest", "best") else "")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    what = {
        "model": "full model" if full else "model",
        "weights": "weights only",
    }.get(record.kind, record.kind)
    files = f" in {len(record.files)} files" if len(record.files) > 1 else ""
    if record.kind == "training_state":
        holds = f"{BACKUP_FORMAT}, {human_size(record.size)}{files}, for exact resume"
    else:
        holds = f"{what}, {human_size(record.size)}{files} ({info['format']})"
    grid.add_row("holds", holds)
    grid.add_row(
        "taken at",
        f"epoch {record.epoch}, step {record.step} in epoch, global step {record.global_step}"
        f" ({human_age(record.wall_time)})",
    )
    if record.metrics:
        grid.add_row(
            "metrics", "  ".join(f"{k}={format_metric(v)}" for k, v in record.metrics.items())
        )
    saved_by = f"Keras {record.keras_version or '?'}, {record.backend or '?'} backend"
    grid.add_row("written by", saved_by + (f", callback {record.owner}" if record.owner else ""))
    grid.add_row("", "")
    if arch is not None:
        layers = f", {arch['layers']} layers" if arch["layers"] is not None else ""
        grid.add_row("architecture", f"yes: {arch['class_name']} {arch['name']!r}{layers}")
    else:
        grid.add_row("architecture", "no: rebuild the model in code before loading these weights")
    if weights:
        grid.add_row(
            "weights",
            f"{weights['parameters']:,} parameters in {weights['arrays']} arrays of "
            f"{weights['layers_with_weights']} layers ({human_size(weights['bytes'])})",
        )
    if optimizer:
        cls = comp["optimizer"] if comp and comp.get("optimizer") else None
        named = cls or f"{optimizer['name']!r} (its class is not stored in a weights file)"
        grid.add_row(
            "optimizer state",
            f"yes: {named}, {optimizer['variables']} variables ({human_size(optimizer['bytes'])})"
            + (
                f", iterations={optimizer['iterations']}"
                if optimizer["iterations"] is not None
                else ""
            ),
        )
    else:
        grid.add_row("optimizer state", "no: training would restart the optimizer from scratch")
    if comp:
        lr = (
            f", learning_rate={comp['learning_rate']:.4g}"
            if isinstance(comp["learning_rate"], float)
            else ""
        )
        grid.add_row(
            "compile config",
            f"yes: {comp['optimizer']}{lr}, loss={comp['loss']}, metrics={comp['metrics']}",
        )
    else:
        grid.add_row("compile config", "no: call model.compile(...) yourself after loading")
    if record.kind == "training_state":
        grid.add_row("resume state", f"yes: written by {record.owner} for exact resume")
    else:
        grid.add_row(
            "resume state",
            "position only (epoch/step in the record); no RNG or data-pipeline state, so "
            "continuing from it is not bit-exact (keras_ckpt.BackupAndRestore saves those)",
        )
    grid.add_row("", "")
    for f in record.files:
        grid.add_row("file", f"{f.path}  {human_size(f.size)}  {f.checksum}")
    for part, size in info["parts"].items():
        grid.add_row("  part", f"{part}  {human_size(size)}")
    out.print(f"[bold]{title}[/]")
    out.print(grid)
    out.print()
    out.print(_difference(record, info))


def _difference(record: Record, info: dict[str, Any]) -> str:
    """Whole model versus weights only, in numbers from this very file."""
    loads = info.get("load_path", record.path)  # a sharded checkpoint loads from its folder
    weights, optimizer = info.get("weights") or {}, info.get("optimizer")
    numbers = f"{weights.get('parameters', 0):,} parameters ({human_size(weights.get('bytes', 0))})"
    opt = f" plus optimizer state ({human_size(optimizer['bytes'])})" if optimizer else ""
    if info.get("architecture") is not None:
        config = sum(v for k, v in info["parts"].items() if k.endswith(".json"))
        return (
            f"Whole model: this file has the numbers, {numbers}{opt}, and also the architecture "
            f"and compile settings ({human_size(config)} of JSON). keras.saving.load_model("
            f"'{loads}') rebuilds it ready to predict or keep training, without your model "
            "code (custom layers need custom_objects). A weights-only save would drop that JSON: "
            "it loads only with model.load_weights() into a model your code builds the same way."
        )
    if record.kind == "training_state":
        return (
            f"Training state: {record.path} has the numbers, {numbers}{opt}; the other files hold "
            "what exact resume also needs (RNG and callback state, position in the epoch). "
            "keras_ckpt.BackupAndRestore restores all of it on the next fit. The weights file "
            "alone loads with model.load_weights() into a model your code builds; it has no "
            "architecture, so it cannot become a .keras file."
        )
    return (
        f"Weights only: this file has the numbers, {numbers}{opt}, but no architecture or "
        "compile settings. Build and compile the same model in code, then call model.load_weights("
        f"'{loads}') (build the optimizer first, or its state is skipped; "
        "CheckpointManager.load_weights does that). A whole-model .keras save would add the "
        "architecture so keras.saving.load_model works without your code."
    )
