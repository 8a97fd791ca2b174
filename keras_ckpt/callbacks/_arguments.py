"""The callbacks' argument checks, run when a callback is built.

Each check names the argument, what is allowed and what was received (`_validate.invalid`), or, for
two arguments that contradict each other, both and what to do instead.
"""

from __future__ import annotations

import os
from typing import Any

from keras_ckpt._validate import check_optional_count, invalid
from keras_ckpt.cadence import DEFAULT_MAX_OVERHEAD, check_max_overhead
from keras_ckpt.callbacks._naming import template_fields
from keras_ckpt.policies import Policy
from keras_ckpt.schedule import check_save_freq
from keras_ckpt.store.local import cannot_write, file_in_the_way

__all__ = [
    "check_backup_save_freq",
    "check_conflicts",
    "check_extension",
    "check_folder",
    "check_keep",
    "check_keep_last",
    "check_verbose",
]

KEEP_ARGS = ("keep_last", "keep_best", "keep_every_n_epochs", "max_total_bytes")


def check_verbose(verbose: object, expected: str = "0 (silent), 1 or 2 (a line per save)") -> int:
    """0 (silent), 1 or 2, as Keras's callbacks take it (not a bool)."""
    if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose not in (0, 1, 2):
        raise invalid("verbose", expected, verbose)
    return verbose


def check_folder(argument: str, folder: object, shown: object, expected: str = "a folder") -> str:
    """`folder` as a string if keras-ckpt can make and write its folders there (URLs are not
    checked here: the store reports them).

    Args:
        argument: The argument's name, for the message.
        folder: The folder checkpoints go into.
        shown: The value as the user passed it (a `filepath` holds a file name too).
        expected: What the argument must be, for the message.
    """
    if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder):
        raise invalid(argument, "a non-empty path or URL", shown)
    text = os.fspath(folder)
    if "://" in text:
        return text
    blocker = file_in_the_way(text)
    if blocker is not None:
        raise invalid(argument, f"{expected} ({blocker} is a file)", shown)
    reason = cannot_write(text)
    if reason is not None:
        raise invalid(
            argument, f"{expected} keras-ckpt can write in: {reason}. Choose another folder", shown
        )
    return text


def check_extension(template: str, filepath: str, weights_only: bool) -> None:
    """`.weights.h5` with `save_weights_only=True`, else `.keras` (or a legacy `.h5`)."""
    if weights_only and not template.endswith(".weights.h5"):
        raise ValueError(
            "Invalid value for argument `filepath`. Expected a name ending in `.weights.h5` "
            f"with save_weights_only=True. Received: filepath={filepath!r}"
        )
    if not weights_only and (
        template.endswith(".weights.h5") or not template.endswith((".keras", ".h5"))
    ):
        raise ValueError(
            "Invalid value for argument `filepath`. Expected a name ending in `.keras` to save "
            "the full model (or pass save_weights_only=True with `.weights.h5`). "
            f"Received: filepath={filepath!r}"
        )


def check_folder_name(template: str, filepath: str) -> None:
    """A sharded checkpoint's name (a filepath ending in `/`) has a field and no file extension:
    a folder of many files is never replaced in place, and Keras tells files by extension."""
    if not template_fields(template):
        raise ValueError(
            "Invalid value for argument `filepath`. Expected a folder name with a field such as "
            "`{epoch}` for sharded checkpoints: a folder of many files cannot be replaced in "
            "place safely (keep only the newest with keep_last=1). "
            f"Received: filepath={filepath!r}"
        )
    if template.endswith((".keras", ".h5")):
        raise ValueError(
            "Invalid value for argument `filepath`. Expected a folder name without `.keras` or "
            "`.h5` for sharded checkpoints (a filepath ending in `/`): Keras tells files from "
            f"Orbax folders by that extension. Received: filepath={filepath!r}"
        )


def split_sharded(filepath: object) -> tuple[bool | None, object]:
    """(True, the path without its trailing `/`) for a folder-style `filepath`
    (`"runs/m-{epoch}/"`: sharded checkpoints written by Orbax); else (None, `filepath`)."""
    text = os.fspath(filepath) if isinstance(filepath, (str, os.PathLike)) else filepath
    if isinstance(text, str) and text.endswith("/") and text.rstrip("/"):
        return True, text.rstrip("/")
    return None, filepath


def check_keep(retention: object, **keep: Any) -> dict[str, int | None]:
    """The `keep_*` counts (each None or a positive int); `retention` excludes them."""
    counts = {name: check_optional_count(name, keep[name]) for name in KEEP_ARGS}
    if retention is not None and not isinstance(retention, Policy):
        raise invalid("retention", "a keras_ckpt.policies policy or None", retention)
    if retention is not None and any(v is not None for v in counts.values()):
        given = {k: v for k, v in counts.items() if v is not None}
        raise ValueError(
            "Pass either `retention` or the `keep_*`/`max_total_bytes` arguments, not both. "
            f"Received: retention={retention!r} and {given}"
        )
    return counts


def check_conflicts(callback: Any) -> None:
    """`ModelCheckpoint` arguments that are each valid but cannot work together."""
    monitor, save_freq = callback.monitor, callback.save_freq
    save_best_only, keep_best = callback.save_best_only, callback._keep["keep_best"]
    step_saves_on_val = isinstance(save_freq, int) and monitor.startswith("val_")
    if save_best_only and step_saves_on_val:
        raise ValueError(
            f"`save_best_only` with save_freq={save_freq} compares `{monitor}` after "
            "training steps, but validation metrics only exist at epoch end. Monitor a "
            "training metric (e.g. monitor='loss') or use save_freq='epoch'."
        )
    if keep_best and step_saves_on_val:
        raise ValueError(
            f"`keep_best={keep_best}` with save_freq={save_freq} ranks checkpoints by "
            f"`{monitor}`, but saves after training steps have no validation metrics, so "
            "nothing would ever be ranked or pruned. Monitor a training metric (e.g. "
            "monitor='loss') or use save_freq='epoch'."
        )
    if save_best_only and callback.save_on_train_end:
        raise ValueError(
            "`save_on_train_end=True` would replace the best model with the last one under "
            "`save_best_only=True`. Use a second ModelCheckpoint for the last model."
        )
    if "batch" in template_fields(callback.template) and not callback._schedule.needs_batch_hooks:
        raise ValueError(
            f"The filepath uses {{batch}} but saves happen only at epoch ends "
            f"(save_freq={save_freq!r}). Received: filepath={callback.filepath!r}"
        )


def check_backup_save_freq(
    save_freq: object, max_overhead: object, *, save_on_interrupt: bool, every_seconds: object
) -> tuple[str | int | bool, float | None]:
    """(save_freq, max_overhead) of `BackupAndRestore` as validated: `False` (signals or
    `every_seconds` only), `"auto"` (with its `max_overhead`), `"epoch"` or a positive int."""
    if save_freq is False:
        if not save_on_interrupt and every_seconds is None:
            raise ValueError(
                "Nothing would ever be backed up: save_freq=False needs save_on_interrupt=True or "
                "`every_seconds`. Received: save_freq=False, save_on_interrupt=False, "
                "every_seconds=None"
            )
    elif not (save_freq == "auto" and isinstance(save_freq, str)):
        save_freq = check_save_freq(save_freq)
    if save_freq == "auto":
        return "auto", check_max_overhead(
            DEFAULT_MAX_OVERHEAD if max_overhead is None else max_overhead
        )
    if max_overhead is not None:
        raise invalid("max_overhead", 'None unless save_freq="auto"', max_overhead)
    return save_freq, None  # type: ignore[return-value]


def check_keep_last(keep_last: object, double_checkpoint: bool) -> int:
    """How many backups to keep: `keep_last`, else 2 with `double_checkpoint`, else 1."""
    count = check_optional_count("keep_last", keep_last)
    if double_checkpoint and count is not None and count < 2:
        raise invalid("keep_last", "at least 2 with `double_checkpoint=True`", count)
    return count or (2 if double_checkpoint else 1)
