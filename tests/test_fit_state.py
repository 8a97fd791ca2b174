"""fit_state: one test per private Keras attribute it touches (Keras may move them)."""

from __future__ import annotations

import random

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import build_model

from keras_ckpt.state import is_replaying
from keras_ckpt.training import fit_state as st


class Capture(keras.callbacks.Callback):
    """Runs `fn(self)` in `on_train_begin` and keeps what it returns."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.result = fn, None

    def on_train_begin(self, logs=None):
        self.result = self.fn(self)


def test_training_variables_include_seed_generators_optimizer_and_metrics(data):
    model = build_model(dropout=0.5)
    model.fit(*data, epochs=1, verbose=0)
    paths = [v.path for v in st.training_variables(model)]
    assert any("seed_generator_state" in p for p in paths)
    assert any(p.endswith("iteration") for p in paths)
    assert any(p.startswith("accuracy/") for p in paths)
    assert st.optimizer_iterations(model) == 2


def test_training_variables_build_the_optimizer():
    model = build_model()
    assert not model.optimizer.built
    st.training_variables(model)
    assert model.optimizer.built


def test_global_seed_generator_is_found_once_created():
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    # Keras 3.15's set_random_seed drops the global generator; Keras 3.10's leaves it.
    key = getattr(seed_generator, "GLOBAL_SEED_GENERATOR", "global_seed_generator")
    global_state.set_global_attribute(key, None)
    assert st._global_seed_generator() is None
    st.ensure_global_seed_generator()
    assert st._global_seed_generator() is not None


def test_initial_epoch_is_read_by_fit_and_cleared(data):
    model = build_model()
    epochs = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    setter = Capture(lambda cb: st.set_initial_epoch(cb.model, 2))
    model.fit(*data, epochs=3, verbose=0, callbacks=[setter, Record()])
    assert epochs == [2]
    st.clear_initial_epoch(model)
    assert model._initial_epoch is None


def test_host_rng_round_trip():
    saved = st.capture_host_rng()
    expected = (random.random(), np.random.rand())
    st.restore_host_rng(saved)
    assert (random.random(), np.random.rand()) == expected


def test_tf_global_generator_round_trip():
    tf.random.get_global_generator()
    saved = st.capture_tf_rng()
    expected = tf.random.get_global_generator().normal([3]).numpy()
    st.restore_tf_rng(saved)
    np.testing.assert_array_equal(tf.random.get_global_generator().normal([3]).numpy(), expected)


def test_find_fit_context_sees_callbacks_and_epoch_iterator(data):
    other = keras.callbacks.EarlyStopping()
    probe = Capture(lambda cb: st.find_fit_context(cb.model))
    build_model().fit(*data, epochs=1, verbose=0, callbacks=[probe, other])
    context = probe.result
    assert probe in context.callbacks and other in context.callbacks
    assert context.epoch_iterator is not None


def _tf_dataset(x, y):
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return dataset.shuffle(64, seed=5, reshuffle_each_iteration=True).batch(64)


def test_iterator_counter_catches_up_tf_data_reshuffling(data):
    x, y = data
    dataset = _tf_dataset(x, y)
    orders = [next(iter(dataset))[0].numpy() for _ in range(3)]

    class Fake:
        _num_batches = 1

        def _get_iterator(self):
            return fresh

    fresh = _tf_dataset(x, y)
    counter = st.IteratorCounter(Fake())
    counter.catch_up(2)
    assert counter.created == 2
    np.testing.assert_array_equal(next(iter(counter.epoch_iterator._get_iterator()))[0], orders[2])
    assert counter.num_batches == 1


def test_build_metrics_creates_compiled_metric_variables(data):
    model = build_model()
    probe = Capture(
        lambda cb: (
            st.build_metrics(cb.model, st.find_fit_context(cb.model).epoch_iterator),
            [v.path for v in cb.model.metrics_variables],
        )[1]
    )
    model.fit(*data, epochs=1, verbose=0, callbacks=[probe])
    assert any(p.startswith("accuracy/") for p in probe.result)


def test_replay_consumes_batches_without_training(data):
    model = build_model()
    model.fit(*data, epochs=1, verbose=0)
    before = [v.numpy().copy() for v in model.trainable_variables]
    flags = []

    class Start(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            st.start_replay(self.model, 2)

        def on_train_batch_end(self, batch, logs=None):
            flags.append(is_replaying(self.model))

    model.fit(*data, epochs=1, batch_size=32, verbose=0, callbacks=[Start()])
    assert flags == [True, True]
    assert st.optimizer_iterations(model) == 2
    for a, b in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    st.stop_replay(model)
    assert not is_replaying(model)


def test_early_stopping_state_round_trip(data):
    model = build_model()
    stop = keras.callbacks.EarlyStopping("loss", restore_best_weights=True)
    model.fit(*data, epochs=2, verbose=0, callbacks=[stop])
    state, arrays = st.callback_state(stop)
    assert state["best_weights"] == len(arrays) > 0
    fresh = keras.callbacks.EarlyStopping("loss", restore_best_weights=True)
    st.set_callback_state(fresh, state, arrays)
    assert (fresh.wait, fresh.best, fresh.best_epoch) == (stop.wait, stop.best, stop.best_epoch)
    assert all(
        np.array_equal(a, b) for a, b in zip(fresh.best_weights, stop.best_weights, strict=True)
    )


def test_reduce_lr_on_plateau_state_round_trip(data):
    model = build_model()
    reduce = keras.callbacks.ReduceLROnPlateau("loss", patience=5, min_delta=10.0)
    model.fit(*data, epochs=2, verbose=0, callbacks=[reduce])
    state, arrays = st.callback_state(reduce)
    assert state["wait"] == 1 and arrays == []
    fresh = keras.callbacks.ReduceLROnPlateau("loss")
    st.set_callback_state(fresh, state, [])
    assert (fresh.wait, fresh.cooldown_counter, fresh.best) == (1, 0, reduce.best)


class Stateful(keras.utils.PyDataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return np.zeros((2, 8), "float32"), np.zeros(2, "int32")

    def on_epoch_end(self):
        pass

    def get_checkpoint_state(self):
        return {}

    def set_checkpoint_state(self, state):
        pass


class Plain(Stateful):
    get_checkpoint_state = set_checkpoint_state = None


@pytest.mark.parametrize("dataset,holder,warn", [(Stateful(), True, False), (Plain(), False, True)])
def test_pydataset_state_holder(dataset, holder, warn):
    probe = Capture(lambda cb: st.find_fit_context(cb.model).epoch_iterator)
    build_model().fit(dataset, epochs=1, verbose=0, callbacks=[probe])
    assert (st.input_state_holder(probe.result) is not None) == holder
    assert st.needs_input_protocol(probe.result) == warn


def test_custom_callback_implements_the_protocol():
    class Counter(keras.callbacks.Callback):
        def get_checkpoint_state(self):
            return {"n": 1}

        def set_checkpoint_state(self, state):
            self.n = state["n"]

    callback = Counter()
    assert st.is_stateful(callback) and not st.is_stateful(keras.callbacks.History())
    st.set_callback_state(callback, *st.callback_state(callback))
    assert callback.n == 1


@pytest.mark.parametrize(
    "module, cls, attribute",
    [
        ("keras.src.trainers.epoch_iterator", "EpochIterator", "_get_iterator"),
        ("keras.src.trainers.trainer", "Trainer", "_symbolic_build"),
    ],
)
def test_a_private_attribute_gone_from_keras_fails_at_import(module, cls, attribute, monkeypatch):
    import importlib

    owner = getattr(importlib.import_module(module), cls)
    monkeypatch.delattr(owner, attribute)
    monkeypatch.setattr(st, "_source", lambda module, name: "class Moved:\n    pass\n")
    with pytest.raises(ImportError, match=rf"`{cls}\.{attribute}` is gone"):
        st._check()


def test_every_private_attribute_is_found_in_the_installed_keras():
    st._check()  # the real sources: nothing reported
    for module, cls, attribute in st._PRIVATE:
        source = st._source(module, cls)
        assert source is not None and attribute in source, (cls, attribute)
