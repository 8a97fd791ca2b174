"""keras_ckpt.format._keras_private: the private Keras saving functions we call are checked at
import, so a Keras that changed them fails clearly, naming what changed."""

from __future__ import annotations

import pytest

from keras_ckpt.format import _keras_private


def test_missing_private_keras_function_fails_clearly_at_import(monkeypatch):
    monkeypatch.delattr(_keras_private.saving_lib, "_save_state")
    with pytest.raises(ImportError, match=r"private saving API changed.*_save_state` is missing"):
        _keras_private._check()


def test_changed_private_keras_signature_fails_clearly(monkeypatch):
    monkeypatch.setattr(_keras_private.saving_lib, "_load_state", lambda model, store: None)
    with pytest.raises(ImportError, match=r"_load_state.* changed"):
        _keras_private._check()
