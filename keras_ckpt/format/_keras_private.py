"""The private Keras saving functions keras-ckpt relies on, checked once at import.

The one-pass writer (`h5write`) and the in-place reader (`h5read`) reproduce the layout of Keras's
`H5IOStore`, so they depend on Keras's saving walk and store. A Keras release that renames or
changes them must fail here with a clear message, never write a wrong file: names and signatures
are checked at import (and `h5write.layout_matches_keras()` compares the layout our writer makes
with the one Keras's own store makes for the same calls).

`values_from_the_file` builds a model whose variables take their first value from the file rather
than from their initializers (see there); the private variable methods it needs are checked at
import too, and where they are missing it is simply not used.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import keras

try:
    from keras.src.saving import object_registration, saving_lib, serialization_lib
except ImportError as e:  # pragma: no cover - depends on the installed Keras
    raise ImportError(
        "keras-ckpt needs Keras 3 (>= 3.10): `keras.src.saving.saving_lib` is missing "
        f"({e}). Install a supported Keras version."
    ) from e

__all__ = ["saving_lib", "values_from_the_file", "uninitialized", "compile_from_config"]

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


def _variable_api() -> tuple[Any, Any] | None:
    """Keras's StatelessScope and its global state, if they and Variable are as we use them."""
    try:
        import keras
        from keras.src.backend.common import global_state
        from keras.src.backend.common.variables import Variable
    except ImportError:  # pragma: no cover - depends on the installed Keras
        return None
    scope = getattr(keras, "StatelessScope", None)
    if scope is None or "initialize_variables" not in inspect.signature(scope).parameters:
        return None  # pragma: no cover - depends on the installed Keras
    for name in ("_initialize", "_deferred_initialize"):
        if not callable(getattr(Variable, name, None)):
            return None  # pragma: no cover - depends on the installed Keras
    for name in ("get_global_attribute", "set_global_attribute"):
        if not callable(getattr(global_state, name, None)):
            return None  # pragma: no cover - depends on the installed Keras
    if not all(hasattr(serialization_lib, n) for n in ("SafeModeScope", "ObjectSharingScope")):
        return None  # pragma: no cover - depends on the installed Keras
    return scope, global_state


_VARIABLE_API = _variable_api()
_SCOPE = "stateless_scope"
_UNINITIALIZED = "uninitialized_variables"


@contextlib.contextmanager
def values_from_the_file() -> Iterator[bool]:
    """Builds and loads a model without running the initializers of what the file then fills.

    Inside, Keras's `StatelessScope` defers every new variable's initialization and records every
    assignment (the last one to a variable wins, as it would have). On a normal exit each variable
    created inside is initialized once: with the value assigned to it, else (nothing in the file
    for it: a `skip_mismatch`, a seed generator) by its own initializer, as Keras's `load_model`
    leaves it; a variable made before gets what was assigned to it. What is saved is the random
    draw of every initializer and a copy of each value (the initial value is the loaded one). The
    caller checks that every variable got a value (`uninitialized`): the names of Keras's global
    state used here are private too, and a renamed one must not leave a model half built.

    An optimizer cannot be made inside (its step counter starts from a number, which a stateless
    scope refuses; TensorFlow's reads the model's variables): compile after, and load it then.

    Yields False (and does nothing) where this Keras lacks what it needs, with JAX's NNX (whose
    variables initialize themselves), or inside a caller's own stateless scope. On an exception
    the variables created inside are forgotten, uninitialized: the caller drops the model and
    builds it again the plain way.
    """
    if _VARIABLE_API is None or _nnx_enabled():
        yield False
        return
    scope_class, global_state = _VARIABLE_API
    if global_state.get_global_attribute(_SCOPE) is not None:
        yield False
        return

    class Recording(scope_class):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(initialize_variables=False)
            self.assigned: list[tuple[Any, Any]] = []

        def add_update(self, update: tuple[Any, Any]) -> None:
            super().add_update(update)
            self.assigned.append(update)

    before = global_state.get_global_attribute(_UNINITIALIZED)
    global_state.set_global_attribute(_UNINITIALIZED, [])
    try:
        with Recording() as scope:
            yield True
        created = global_state.get_global_attribute(_UNINITIALIZED) or []
        deferred = {id(variable) for variable in created}
        first: dict[int, tuple[Any, Any]] = {}  # the last assignment wins, as it would have
        for variable, value in scope.assigned:
            if id(variable) in deferred or getattr(variable, "_value", True) is None:
                first[id(variable)] = (variable, value)
            else:  # made before the deferral
                variable.assign(value)
        for variable in created:
            if id(variable) not in first:
                variable._deferred_initialize()
        copies = keras.backend.backend() != "tensorflow"  # a tf.Variable copies its initial value
        for variable, value in first.values():  # on PyTorch `value` is a view of the file's bytes
            variable._initialize(keras.ops.copy(value) if copies else value)
            variable._initializer = None
    finally:
        global_state.set_global_attribute(_UNINITIALIZED, before)


def uninitialized(variables: Any) -> list[Any]:
    """The variables that have no value (left so by a deferral that did not reach them)."""
    return [v for v in variables if getattr(v, "_value", True) is None]


def compile_from_config(
    model: Any, compile_config: dict[str, Any], custom_objects: Any, safe_mode: bool
) -> None:
    """What Keras's deserialization does with a model's `compile_config`: custom objects and
    `safe_mode` as for the model; objects shared between the model's config and its compile
    config (rare) are not shared, as they are in a fresh object-sharing scope."""
    with (
        serialization_lib.ObjectSharingScope(),
        object_registration.CustomObjectScope(custom_objects),
        serialization_lib.SafeModeScope(safe_mode),
    ):
        model.compile_from_config(compile_config)
        model.compiled = True


def _nnx_enabled() -> bool:
    try:
        from keras.src.backend import config
    except ImportError:  # pragma: no cover - depends on the installed Keras
        return False
    enabled = getattr(config, "is_nnx_enabled", None)
    return bool(enabled()) if callable(enabled) else False
