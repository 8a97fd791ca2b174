"""The checkpoint record: one human-readable JSON file per committed checkpoint.

A checkpoint exists only once its record is committed. The record names the checkpoint's files with
their sizes and checksums, where in training it was taken, the metrics at that moment, and the state
of the callback that owns it (so a restarted callback remembers its best value and its files).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from keras_ckpt.errors import RecordFormatError
from keras_ckpt.policies import Policy, from_json, from_keep_args, ranked_metrics

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "CallbackMemory",
    "FileEntry",
    "Record",
    "position",
    "validate_name",
    "validate_path",
]

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


def position(epoch: int, step: int, global_step: int | None = None) -> str:
    """Where in training a checkpoint was taken, as a person reads it: Keras's 1-based epochs, as
    its progress bar and the `{epoch}` of file names show them.

    A record's `epoch` counts the epochs completed and its `step` the batches done in the epoch
    after that: a save at an epoch's end is the end of epoch `epoch`; a save `step` batches into
    the next epoch is step `step` of epoch `epoch + 1`.

    Example:

    >>> position(2, 0, 40)
    'end of epoch 2, global step 40'
    >>> position(1, 592, 1592)
    'step 592 of epoch 2, global step 1592'
    """
    if step > 0:
        at = f"step {step} of epoch {epoch + 1}"
    elif epoch > 0:
        at = f"end of epoch {epoch}"
    else:
        at = "start of training"
    return at if global_step is None else f"{at}, global step {global_step}"


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

    @functools.cached_property
    def memory(self) -> CallbackMemory:
        """What the writing callback recorded about itself (`owner_state`), typed."""
        return CallbackMemory.from_owner_state(self.owner_state)

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


# The keys of the retention settings as callbacks recorded them before they recorded a policy:
# the callbacks' own argument names, e.g. {"keep_last": 1, "keep_best": 3, "monitor": "val_loss"}.
_KEEP_FIELDS = ("keep_last", "keep_best", "keep_every_n_epochs", "max_total_bytes")


@dataclass(frozen=True)
class CallbackMemory:
    """What a callback records about itself in each of its checkpoints (`Record.owner_state`).

    A restarted callback reads it back to remember its best value and its run; the manager reads
    it to know which metric "best" means and which run a checkpoint belongs to; the CLI re-applies
    the recorded retention. This class is the one reader and writer of `owner_state`, so they all
    agree.

    Attributes:
        callback: `"ModelCheckpoint"` or `"BackupAndRestore"`; None for a checkpoint committed
            through `CheckpointManager.commit` without one.
        run: The run that wrote the checkpoint. A fresh `fit` starts a new run; a resumed one (or
            one continuing with `initial_epoch`) keeps its run.
        monitor: The metric the callback watched.
        mode: `"min"` or `"max"` once the direction is known, else None.
        best: The best value of `monitor` the callback had seen when it saved.
        uses_monitor: The callback ranked by `monitor` (`save_best_only` or `keep_best`).
        save_best_only: `ModelCheckpoint(save_best_only=True)`.
        template: `ModelCheckpoint`'s file name template.
        retention: The retention policy it applied, as `policies.to_json` describes it (a user's
            own policy class: `{"custom": repr}`), or None.
        iterations: `BackupAndRestore`: the optimizer's step count in the backup.
        cadence: `BackupAndRestore(save_freq="auto")`: the interval and the costs it measured.

    Example:

    >>> from keras_ckpt.policies import KeepBest, to_json
    >>> memory = CallbackMemory(callback="ModelCheckpoint", monitor="val_loss", mode="min",
    ...                         retention=to_json(KeepBest(3, "val_accuracy", "max")))
    >>> CallbackMemory.from_owner_state(memory.to_owner_state()) == memory
    True
    >>> memory.ranked_monitor  # keep_best ranks by val_accuracy: that is what "best" means here
    ('val_accuracy', 'max')
    """

    callback: str | None = None
    run: str | None = None
    monitor: str | None = None
    mode: str | None = None
    best: float | None = None
    uses_monitor: bool = False
    save_best_only: bool = False
    template: str | None = None
    retention: Mapping[str, Any] | None = None
    iterations: int | None = None
    cadence: Mapping[str, Any] | None = None

    def to_owner_state(self) -> dict[str, Any]:
        """The JSON object stored as `Record.owner_state` (unset fields left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value is not False:
                out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_owner_state(cls, state: Mapping[str, Any]) -> CallbackMemory:
        """Reads an `owner_state`; a value of the wrong type is read as unset, never trusted."""

        def get(key: str, types: type | tuple[type, ...]) -> Any:
            value = state.get(key)
            if isinstance(value, bool) and types is not bool:
                return None
            return value if isinstance(value, types) else None

        mode = get("mode", str)
        best = get("best", (int, float))
        return cls(
            callback=get("callback", str),
            run=get("run", str),
            monitor=get("monitor", str) or None,
            mode=mode if mode in ("min", "max") else None,
            best=None if best is None else float(best),
            # Callbacks that predate `uses_monitor` recorded only `save_best_only`.
            uses_monitor=bool(get("uses_monitor", bool) or get("save_best_only", bool)),
            save_best_only=bool(get("save_best_only", bool)),
            template=get("template", str),
            retention=get("retention", dict) or None,
            iterations=get("iterations", int),
            cadence=get("cadence", dict),
        )

    def retention_policy(self) -> Policy | None:
        """The retention policy the callback applied, rebuilt; None if none (or not rebuildable:
        a user's own policy class).

        Raises:
            ValueError: the recorded description is not a policy.
        """
        spec = self.retention
        if not spec or "custom" in spec:
            return None
        if "type" in spec:  # a built-in policy, as `policies.to_json` describes it
            return from_json(dict(spec))
        keep = {k: spec[k] for k in _KEEP_FIELDS if spec.get(k) is not None}
        monitor = spec.get("monitor") or self.monitor
        mode = spec.get("mode") or self.mode or "auto"
        return from_keep_args(**keep, monitor=monitor, mode=mode)

    @property
    def ranked_monitor(self) -> tuple[str | None, str | None]:
        """(metric, mode) that "best" means for this callback's checkpoints; mode None if unknown.

        The callback's `monitor` if it ranked by it (`save_best_only`, `keep_best`); else the
        metric its recorded retention ranks by (`retention=KeepBest(...)`); else its `monitor`.
        """
        if self.uses_monitor and self.monitor:
            return self.monitor, self.mode
        try:
            policy = self.retention_policy()
        except ValueError:
            policy = None
        ranked = sorted(ranked_metrics(policy)) if policy is not None else []
        if len(ranked) == 1:
            return ranked[0], _mode_of(policy, ranked[0])
        return self.monitor, self.mode


def _mode_of(policy: Policy | None, monitor: str) -> str | None:
    from keras_ckpt.policies import AnyOf, KeepBest

    if isinstance(policy, KeepBest) and policy.monitor == monitor:
        return policy.mode if policy.mode in ("min", "max") else None
    if isinstance(policy, AnyOf):
        for part in policy.policies:
            found = _mode_of(part, monitor)
            if found is not None:
                return found
    return None
