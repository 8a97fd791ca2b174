"""Checkpoint file names from Keras-style templates (`model-{epoch:03d}-{val_loss:.4f}.keras`)."""

from __future__ import annotations

import os
import posixpath
import string
from collections.abc import Mapping
from typing import Any

from keras_ckpt._validate import invalid
from keras_ckpt.records import validate_name

NAME_MAX = 255  # bytes in one file name on common file systems


def split_filepath(filepath: object) -> tuple[str, str]:
    """(directory, file-name template) of `filepath`, a local path or an fsspec URL.

    Only the file name may be a template: a folder that changes with the logs would scatter one
    run over many directories, out of reach of its records and its retention.
    """
    if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath):
        raise invalid("filepath", "a non-empty path or URL", filepath)
    text = os.fspath(filepath)
    directory, template = (posixpath if "://" in text else os.path).split(text)
    if not template:
        raise invalid("filepath", "a path that ends in a file name", filepath)
    if template_fields(directory):
        raise ValueError(
            "Invalid value for argument `filepath`. Expected `{...}` fields in the file name "
            f"only, not in its folder. Received: filepath={text!r}"
        )
    template_fields(template)  # raises on malformed templates
    return directory or ".", template


def template_fields(template: str) -> set[str]:
    """Names of the fields in `template`; positional fields (`{}`, `{0}`) are rejected."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(
            f"Invalid value for argument `filepath`. Expected a str.format template. "
            f"Received: {template!r} ({e})"
        ) from None
    fields = set()
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = field.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            raise ValueError(
                "Invalid value for argument `filepath`. Expected named fields such as {epoch} "
                f"or {{val_loss:.4f}}. Received a positional field in {template!r}"
            )
        fields.add(root)
    return fields


def format_name(
    template: str, epoch_index: int, batch_index: int | None, logs: Mapping[str, Any]
) -> str:
    """The file name Keras's ModelCheckpoint would use: `{epoch}` and `{batch}` are 1-based."""
    values = dict(logs)
    values["epoch"] = epoch_index + 1
    if batch_index is not None and "batch" not in logs:
        values["batch"] = batch_index + 1
    try:
        name = template.format(**values)
    except KeyError as e:
        raise KeyError(
            f"Failed to format this callback filepath: {template!r}: no value for {e}. "
            f"Keys available at this save: {', '.join(sorted(values))}"
        ) from None
    if len(name.encode()) > NAME_MAX:
        raise ValueError(
            f"Cannot save a checkpoint named from the filepath template {template!r}: the name is "
            f"{len(name.encode())} bytes long, and file systems allow {NAME_MAX}. Shorten the "
            f"template or its format specs. Name: {name[:80]!r}..."
        )
    return validate_name(name)


def check_template(template: str, filepath: str, *, step_saves: bool) -> None:
    """Formats `template` with stand-in values now, so a mistake in `filepath` fails at
    construction instead of at the first save, an epoch later.

    `{epoch}` and `{batch}` get 1, every metric 0.0 (logs hold floats). A name that could not be a
    file name (a leading '.', a NUL byte) or a format spec that does not apply raises here, naming
    `filepath`. With step saves, a `val_` field could never be filled: validation metrics exist
    only at epoch end.
    """
    if "\0" in filepath:
        raise invalid("filepath", "a path without NUL bytes", filepath)
    fields = template_fields(template)
    values: dict[str, Any] = {key: 0.0 for key in fields}
    values.update(epoch=1, batch=1)
    try:
        name = template.format(**values)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise ValueError(
            "Invalid value for argument `filepath`. Expected a template whose fields format "
            f"(`{{epoch}}` is an int, metrics are floats). Received: filepath={filepath!r} ({e})"
        ) from None
    try:
        validate_name(name)
    except ValueError:
        raise ValueError(
            "Invalid value for argument `filepath`. Expected a file name that does not start "
            f"with '.' (it would be hidden). Received: filepath={filepath!r}"
        ) from None
    if len(name.encode()) > NAME_MAX:
        raise ValueError(
            "Invalid value for argument `filepath`. Expected a file name of at most "
            f"{NAME_MAX} bytes once formatted (file systems refuse longer ones); with {{epoch}}=1 "
            f"and metrics 0.0 it is {len(name.encode())} bytes. Received: filepath={filepath!r}"
        )
    impossible = sorted(f for f in fields if f.startswith("val_"))
    if step_saves and impossible:
        raise ValueError(
            f"Invalid value for argument `filepath`. {{{impossible[0]}}} cannot be filled at a "
            "save after a training step (save_freq=<int> or every_seconds): validation metrics "
            "exist only at epoch end. Use a training metric (e.g. {loss}) in the name, or "
            f"save_freq='epoch'. Received: filepath={filepath!r}"
        )


def split_extension(name: str) -> tuple[str, str]:
    """(`best`, `.weights.h5`) for `best.weights.h5`; the Keras extensions stay whole."""
    for ext in (".weights.h5", ".keras", ".h5"):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    stem, ext = os.path.splitext(name)
    return stem, ext
