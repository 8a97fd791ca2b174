"""What `CheckpointManager.verify` and `CheckpointManager.prune` report."""

from __future__ import annotations

from dataclasses import dataclass

from keras_ckpt.policies import Policy
from keras_ckpt.records import Record

__all__ = ["KeptCheckpoint", "PruneResult", "VerifyResult"]


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one checkpoint (or one unreadable record) against its files.

    Attributes:
        name: The checkpoint's name, or the record file's path if the record is unreadable.
        ok: True when every file exists with the recorded size and checksum.
        problems: One line per problem, naming the file and what is wrong.

    Example:

    >>> VerifyResult("model-001.keras", False, ("model-001.keras: missing file",)).ok
    False
    """

    name: str
    ok: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint `prune` kept, and every reason it was kept (`"newest"`, `"best 3 by ..."`).

    Example:

    >>> from keras_ckpt.records import FileEntry, Record
    >>> record = Record("m.keras", "model", (FileEntry("m.keras", 1, "crc32c:00000000"),))
    >>> KeptCheckpoint(record, ("newest",)).reasons
    ('newest',)
    """

    record: Record
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PruneResult:
    """What `prune` kept (with the reasons) and deleted (or would delete, with `dry_run`), and
    what it could not delete (`failed`: a warning said why; the next prune tries again).

    `policies` says which policy judged which checkpoints: (run, owner, policy) for each run and
    callback whose recorded policy was applied (`prune()` without a policy), else one entry
    (run or `"all"`, owner or None, the policy given).

    Example:

    >>> PruneResult(kept=(), deleted=(), dry_run=True).dry_run
    True
    """

    kept: tuple[KeptCheckpoint, ...]
    deleted: tuple[Record, ...]
    dry_run: bool = False
    failed: tuple[Record, ...] = ()
    policies: tuple[tuple[str, str | None, Policy | None], ...] = ()
