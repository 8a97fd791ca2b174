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

__all__ = ["FORMAT_VERSION", "KINDS", "FileEntry", "Record", "validate_name"]

FORMAT_VERSION = 1
KINDS = ("model", "weights", "training_state")


def validate_name(name: object) -> str:
    """Returns `name` if it can name a checkpoint (one safe path component), else raises."""
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


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint, relative to the checkpoint directory (POSIX separators)."""

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
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordFormatError(f"Unreadable checkpoint record {source}: {e}") from e
        if not isinstance(data, dict):
            raise RecordFormatError(f"Unreadable checkpoint record {source}: not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise RecordFormatError(
                f"Checkpoint record {source} has format_version={version!r}; this keras-ckpt "
                f"reads format_version={FORMAT_VERSION}. Upgrade keras-ckpt to read it."
            )
        try:
            files = tuple(
                FileEntry(path=str(f["path"]), size=int(f["size"]), checksum=str(f["checksum"]))
                for f in data["files"]
            )
            record = cls(
                name=validate_name(data["name"]),
                kind=str(data["kind"]),
                files=files,
                epoch=int(data["epoch"]),
                step=int(data["step"]),
                global_step=int(data["global_step"]),
                wall_time=float(data["wall_time"]),
                metrics={str(k): float(v) for k, v in dict(data.get("metrics", {})).items()},
                owner=data.get("owner"),
                owner_state=dict(data.get("owner_state") or {}),
                keras_version=str(data.get("keras_version", "")),
                backend=str(data.get("backend", "")),
                sequence=int(data["sequence"]),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RecordFormatError(
                f"Malformed checkpoint record {source}: {type(e).__name__}: {e}"
            ) from e
        if record.kind not in KINDS or not record.files:
            raise RecordFormatError(
                f"Malformed checkpoint record {source}: kind={record.kind!r}, "
                f"{len(record.files)} files (expected one of {KINDS} and at least one file)"
            )
        return record


def clean_metrics(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite scalar entries of Keras `logs`, as floats (JSON cannot hold NaN or tensors)."""
    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out
