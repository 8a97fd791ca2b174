"""The private Keras saving functions keras-ckpt relies on, checked once at import.

The one-pass writer (`h5write`) and the in-place reader (`h5read`) reproduce the layout of Keras's
`H5IOStore`, so they depend on Keras's saving walk and store. A Keras release that renames or
changes them must fail here with a clear message, never write a wrong file: names and signatures
are checked at import, and `layout_matches_keras()` compares the layout our writer would make with
the one Keras's own store makes for the same calls (run once, lazily, before the first fast write;
on a mismatch the writers use Keras's own store instead).
"""

from __future__ import annotations

import functools
import inspect
import io
from typing import Any

import numpy as np

try:
    from keras.src.saving import saving_lib
except ImportError as e:  # pragma: no cover - depends on the installed Keras
    raise ImportError(
        "keras-ckpt needs Keras 3 (>= 3.10): `keras.src.saving.saving_lib` is missing "
        f"({e}). Install a supported Keras version."
    ) from e

__all__ = ["saving_lib", "layout_matches_keras"]

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

# Calls covering each layout rule: a group with metadata, a nested path, a path made but never
# written (deferred or eager group), the root, bfloat16 and bool datasets.
_PROBE_CALLS: list[tuple[str, Any, Any]] = [
    ("make", "", None),
    ("make", "layers/dense", {"name": "dense"}),
    ("set", "0", np.zeros((2, 3), "float32")),
    ("set", "1", np.zeros((), "int64")),
    ("make", "layers/empty", None),
    ("make", "layers/nameless", None),
    ("set", "0", np.zeros((4,), "bool")),
    ("make", "optimizer", {"name": "adam"}),
    ("set", "0", np.zeros((3,), "float32").astype("bfloat16")),
]


def _tree(file: Any) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {"/": sorted((k, str(v)) for k, v in file.attrs.items())}

    def visit(name: str, obj: Any) -> None:
        attrs = sorted((k, str(v)) for k, v in obj.attrs.items())
        if isinstance(obj, h5py.Dataset):
            out[name] = ("dataset", obj.shape, obj.id.get_type().dtype.str, attrs)
        else:
            out[name] = ("group", attrs)

    file.visititems(visit)
    return out


def _keras_store_replay(calls: list[tuple[str, Any, Any]]) -> io.BytesIO:
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    entry: Any = store
    for kind, a, b in calls:
        if kind == "make":
            entry = store.make(a, metadata=b)
        else:
            entry[a] = b
    store.close()
    return buffer


@functools.cache
def layout_matches_keras() -> tuple[bool, bool]:
    """(whether our layout equals Keras's for the probe calls, whether Keras makes groups eagerly).

    Keras 3.10 creates a `vars` group at every `make`; later versions create it at the first
    value unless the saveable has metadata. Both are detected here, then checked.
    """
    import h5py

    from keras_ckpt import h5write

    theirs = _keras_store_replay(_PROBE_CALLS)
    with h5py.File(theirs, "r") as f:
        expected = _tree(f)
        eager = "layers/empty/vars" in f
    ours = io.BytesIO()
    with h5py.File(ours, "w") as f:
        h5write.lay_out_plainly(f, _PROBE_CALLS, eager_groups=eager)
    with h5py.File(ours, "r") as f:
        found = _tree(f)
    return expected == found, eager
