"""Checkpoint file names from Keras-style templates (`model-{epoch:03d}-{val_loss:.4f}.keras`)."""

from __future__ import annotations

import os
import posixpath
import string
from collections.abc import Mapping
from typing import Any

from keras_ckpt._validate import invalid
from keras_ckpt.records import validate_name


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
    return validate_name(name)
