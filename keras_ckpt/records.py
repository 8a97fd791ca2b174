"""The checkpoint record: one human-readable JSON file per committed checkpoint.

A checkpoint exists only once its record is committed. The record names the checkpoint's files with
their sizes and checksums, where in training it was taken, the metrics at that moment, and the state
of the callback that owns it (so a restarted callback remembers its best value and its files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from keras_ckpt.errors import RecordFormatError

__all__ = ["FORMAT_VERSION", "KINDS", "FileEntry", "Record", "validate_name", "validate_path"]

FORMAT_VERSION = 1
KINDS = ("model", "weights", "training_state")
META_DIR = ".keras_ckpt"  # the library's own folder; `storage` re-exports it


def validate_name(name: object) -> str:
    """Returns `name` if it can name a checkpoint (one safe path component), else raises.

    Example:

    >>> validate_name("model-001.keras")
    'model-001.keras'
    >>> validate_name("../model.keras")
    Traceback (most recent call last):
    ValueError: Invalid checkpoint name. ... Received: name='../model.keras'
    """
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
    ):
        raise ValueError(
            "Invalid checkpoint name. Expected a non-empty file name without path separators "
            f"that does not start with '.'. Received: name={name!r}"
        )
    return name


def validate_path(relpath: object) -> str:
    """Returns `relpath` if it is a relative `/`-separated path inside the directory, else raises.

    A checkpoint's files may not escape the directory (`..`, absolute paths) nor live in the
    library's own folder: records name the files that `prune` deletes.

    Example:

    >>> validate_path("backup-000000010/model.weights.h5")
    'backup-000000010/model.weights.h5'
    """
    if (
        not isinstance(relpath, str)
        or "\\" in relpath
        or "\0" in relpath
        or any(p in ("", ".", "..") for p in relpath.split("/"))
        or relpath.split("/")[0] == META_DIR
    ):
        raise ValueError(
            "Invalid checkpoint file path. Expected a relative '/'-separated path inside the "
            f"directory, outside {META_DIR}/. Received: {relpath!r}"
        )
    return relpath


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint, relative to the checkpoint directory (POSIX separators).

    Example:

    >>> FileEntry("model-001.keras", 81234, "crc32c:6a1b2c3d").path
    'model-001.keras'
    """

    path: str
    size: int
    checksum: str


@dataclass(frozen=True)
class Record:
    """What keras-ckpt knows about one committed checkpoint.

    Attributes:
        name: Unique name of the checkpoint inside its directory.
        kind: `"model"` (a `.keras` file), `"weights"` (a `.weights.h5` file) or
            `"training_state"` (a backup for exact resume).
        files: The checkpoint's files; the first is the one Keras loads.
        epoch: Epochs completed when the checkpoint was taken.
        step: Batches completed in the epoch after that (0 at an epoch boundary).
        global_step: Batches completed since training started.
        wall_time: Seconds since the epoch (Unix time) when the checkpoint was committed.
        metrics: The logs at that moment (floats only).
        owner: Identifies the callback that wrote it; retention only touches its own records.
        owner_state: JSON state of that callback (best value, monitor, ...).
        keras_version: `keras.__version__` of the writer.
        backend: Keras backend of the writer.
        sequence: Commit order inside the directory; larger is newer.
        format_version: Version of this record format.

    Example:

    >>> record = Record("model-002.keras", "model",
    ...                 (FileEntry("model-002.keras", 81234, "crc32c:6a1b2c3d"),),
    ...                 epoch=2, global_step=40, metrics={"val_loss": 0.31})
    >>> Record.from_json(record.to_json(), source="example") == record
    True
    >>> record.size, record.path
    (81234, 'model-002.keras')
    """

    name: str
    kind: str
    files: tuple[FileEntry, ...]
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    wall_time: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    owner: str | None = None
    owner_state: Mapping[str, Any] = field(default_factory=dict)
    keras_version: str = ""
    backend: str = ""
    sequence: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        """Total size in bytes of the checkpoint's files."""
        return sum(f.size for f in self.files)

    @property
    def path(self) -> str:
        """Path of the main file (the one Keras loads), relative to the directory."""
        return self.files[0].path

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str) -> Record:
        """Parses a record; raises `RecordFormatError` naming `source` if it is not one."""
        try:
            data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordFormatError(f"Unreadable checkpoint record {source}: {e}") from e
        if not isinstance(data, dict):
            raise RecordFormatError(f"Unreadable checkpoint record {source}: not a JSON object")
        version = data.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise RecordFormatError(
                f"Checkpoint record {source} has format_version={version!r}; this keras-ckpt "
                f"reads format_version={FORMAT_VERSION}. Upgrade keras-ckpt to read it."
            )
        try:
            files = _field(data, "files", list)
            metrics = _field(data, "metrics", dict, {})
            owner = _field(data, "owner", (str, type(None)), None)
            record = cls(
                name=validate_name(_field(data, "name", str)),
                kind=_field(data, "kind", str),
                files=tuple(
                    FileEntry(
                        path=validate_path(_field(f, "path", str)),
                        size=_field(f, "size", int),
                        checksum=_field(f, "checksum", str),
                    )
                    for f in files
                ),
                epoch=_field(data, "epoch", int),
                step=_field(data, "step", int),
                global_step=_field(data, "global_step", int),
                wall_time=float(_field(data, "wall_time", (int, float))),
                metrics={k: float(_field(metrics, k, (int, float))) for k in metrics},
                owner=owner,
                owner_state=_field(data, "owner_state", dict, {}),
                keras_version=_field(data, "keras_version", str, ""),
                backend=_field(data, "backend", str, ""),
                sequence=_field(data, "sequence", int),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise RecordFormatError(
                f"Malformed checkpoint record {source}: {type(e).__name__}: {e}"
            ) from e
        if record.kind not in KINDS or not record.files:
            raise RecordFormatError(
                f"Malformed checkpoint record {source}: kind={record.kind!r}, "
                f"{len(record.files)} files (expected one of {KINDS} and at least one file)"
            )
        return record


_MISSING = object()


def _field(data: object, key: str, types: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """`data[key]` if it has one of `types` (a bool is no int here), else `TypeError`/`KeyError`."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object holding {key!r}, got {data!r}")
    if key not in data:
        if default is _MISSING:
            raise KeyError(key)
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"{key}={value!r} has the wrong type")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (metrics must be finite numbers)")


def _finite_float(text: str) -> float:
    """A JSON number as a float; `1e999` would become infinity, which no record may hold."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range (metrics must be finite numbers)")
    return value


def clean_metrics(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite scalar entries of Keras `logs`, as floats (JSON cannot hold NaN or tensors).

    Example:

    >>> clean_metrics({"loss": 0.25, "val_loss": float("nan"), "name": "x"})
    {'loss': 0.25}
    """
    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        if isinstance(value, (str, bytes, bool)):
            continue  # float() would accept "1.5" and True, which are not measurements
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out
