"""The public surface of `keras_ckpt` is exactly `__all__`, and every name in it resolves."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import keras_ckpt


def real_public_names() -> set[str]:
    """What the package really offers, found in the package, not written down a second time.

    Its own attributes without a leading underscore that keras-ckpt defines (imported helpers such
    as `typing.Any` come from elsewhere), the modules `__init__.py` imports by name (`from
    keras_ckpt import errors`; a submodule bound only as a side effect of importing from it is not
    surface), the names its `__getattr__` loads lazily, and `__version__`.
    """
    own = {
        name
        for name, value in vars(keras_ckpt).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith("keras_ckpt")
    }
    tree = ast.parse(Path(keras_ckpt.__file__).read_text())
    modules = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "keras_ckpt"
        for alias in node.names
    }
    # `keras_ckpt.callbacks` loads lazily only to reach its two classes, exported by name.
    lazy = set(keras_ckpt._CALLBACKS) | set(keras_ckpt._LAZY_MODULES) - {"callbacks"}
    return own | modules | lazy | {"__version__"}


def test_all_is_exactly_the_public_surface():
    assert sorted(keras_ckpt.__all__) == sorted(real_public_names())
    assert len(keras_ckpt.__all__) == len(set(keras_ckpt.__all__))


def test_the_lazy_callbacks_are_the_callbacks_package_exports():
    from keras_ckpt import callbacks

    assert set(callbacks.__all__) == set(keras_ckpt._CALLBACKS)
    for name in callbacks.__all__:
        assert getattr(keras_ckpt, name) is getattr(callbacks, name)


def test_every_exported_name_resolves():
    for name in keras_ckpt.__all__:
        assert getattr(keras_ckpt, name) is not None


def test_the_protocol_and_replay_flag_are_reachable_as_documented():
    assert callable(keras_ckpt.state.is_replaying)
    assert keras_ckpt.state.CheckpointStateful.__name__ == "CheckpointStateful"


def test_importing_the_package_does_not_import_keras():
    code = "import sys, keras_ckpt; keras_ckpt.CheckpointManager; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_says_so():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Checkpoint'"):
        keras_ckpt.Checkpoint  # noqa: B018
