"""Every public class and function documents itself with an example, and every example runs."""

from __future__ import annotations

import doctest
import inspect

import pytest

import keras_ckpt
from keras_ckpt import (
    cadence,
    distribute,
    errors,
    manager,
    policies,
    records,
    results,
    selection,
    state,
)
from keras_ckpt.callbacks import _adopt, _runs, backup_and_restore, model_checkpoint
from keras_ckpt.format import (
    averaging,
    backup_file,
    checked,
    h5read,
    h5write,
    keras_file,
    orbax_dir,
    snapshot,
)
from keras_ckpt.store import history
from keras_ckpt.training import announcements, pipeline, signals, triggers

PUBLIC = [
    *(getattr(keras_ckpt, name) for name in keras_ckpt.__all__ if name[0].isupper()),
    *(getattr(policies, name) for name in policies.__all__),
    *(getattr(errors, name) for name in errors.__all__),
    *(getattr(distribute, name) for name in distribute.__all__),
    state.CheckpointStateful,
    state.is_replaying,
    state.is_preempted,
    records.validate_name,
    records.validate_path,
    records.clean_metrics,
]
MODULES = [
    policies,
    errors,
    records,
    manager,
    results,
    distribute,
    state,
    model_checkpoint,
    backup_and_restore,
    history,
    averaging,
    cadence,
    snapshot,
    h5write,
    checked,
    h5read,
    selection,
    keras_ckpt.store,
    keras_ckpt.format,
    keras_file,
    backup_file,
    orbax_dir,
    pipeline,
    signals,
    triggers,
    announcements,
    _runs,
    _adopt,
]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__name__)
def test_public_object_has_an_example(obj):
    doc = inspect.getdoc(obj) or ""
    assert "Example:" in doc and ">>>" in doc, f"{obj.__qualname__} has no runnable example"


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write relative paths such as runs/doc
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in doctest.DocTestFinder().find(module, module.__name__):
        runner.run(test)
    assert runner.tries > 0, f"{module.__name__} has no examples"
    assert runner.failures == 0, f"{runner.failures} failing examples in {module.__name__}"
