"""The private Keras saving functions keras-ckpt relies on, checked once at import.

The one-pass writer (`h5write`) and the in-place reader (`h5read`) reproduce the layout of Keras's
`H5IOStore`, so they depend on Keras's saving walk and store. A Keras release that renames or
changes them must fail here with a clear message, never write a wrong file: names and signatures
are checked at import (and `h5write.layout_matches_keras()` compares the layout our writer makes
with the one Keras's own store makes for the same calls).
"""

from __future__ import annotations

import inspect

try:
    from keras.src.saving import saving_lib
except ImportError as e:  # pragma: no cover - depends on the installed Keras
    raise ImportError(
        "keras-ckpt needs Keras 3 (>= 3.10): `keras.src.saving.saving_lib` is missing "
        f"({e}). Install a supported Keras version."
    ) from e

__all__ = ["saving_lib"]

_REQUIRED: dict[str, tuple[str, ...]] = {
    "_save_state": ("saveable", "weights_store", "assets_store", "inner_path", "visited_saveables"),
    "_load_state": ("saveable", "weights_store", "assets_store", "inner_path"),
    "_serialize_model_as_json": ("model",),
    "_model_from_config": ("config_json", "custom_objects", "compile", "safe_mode"),
    "_raise_loading_failure": ("error_msgs",),
}
_CONSTANTS = ("_CONFIG_FILENAME", "_METADATA_FILENAME", "_VARS_FNAME_H5", "_ASSETS_DIRNAME")
_CLASSES = ("H5IOStore", "DiskIOStore")


def _check() -> None:
    problems = []
    for name, params in _REQUIRED.items():
        function = getattr(saving_lib, name, None)
        if not callable(function):
            problems.append(f"`saving_lib.{name}` is missing")
            continue
        found = list(inspect.signature(function).parameters)
        if list(params) != found[: len(params)]:
            problems.append(f"`saving_lib.{name}{inspect.signature(function)}` changed")
    for name in _CONSTANTS + _CLASSES:
        if not hasattr(saving_lib, name):
            problems.append(f"`saving_lib.{name}` is missing")
    if problems:
        import keras

        raise ImportError(
            f"keras-ckpt cannot use Keras {keras.__version__}: its private saving API changed ("
            + "; ".join(problems)
            + "). Install a Keras version keras-ckpt supports (see pyproject.toml)."
        )


_check()
