"""What keras-ckpt reads and sets inside a running `fit`: the training side's only module that
touches private Keras attributes.

Every function here that reaches into Keras, TensorFlow or a built-in callback names the private
attribute it uses and has its own test in `tests/test_fit_state.py`; `_check()` verifies at import
that each one still exists in the installed Keras, so a release that moves one fails with a clear
message instead of resuming wrongly. `BackupAndRestore` and `keras_ckpt.training.backup` only
compose these functions.
"""

from __future__ import annotations

import inspect
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_ckpt.state import CheckpointStateful, set_replaying

__all__ = [
    "FitContext",
    "IteratorCounter",
    "callback_state",
    "build_metrics",
    "capture_host_rng",
    "drop_epoch_from_history",
    "clear_initial_epoch",
    "compiled_direction",
    "find_fit_context",
    "input_state_holder",
    "restore_host_rng",
    "set_callback_state",
    "set_initial_epoch",
    "start_replay",
    "stop_replay",
    "training_variables",
    "unsynced_model",
]

_REAL_TRAIN_FUNCTION = "_keras_ckpt_real_train_function"

# Private Keras attributes this module reads or sets: (module, class, attribute). Each must still
# be assigned (`self.<attribute>`) or defined in that class's source, or `_check` refuses to load.
_PRIVATE: tuple[tuple[str, str, str], ...] = (
    ("keras.src.trainers.trainer", "Trainer", "_initial_epoch"),
    ("keras.src.trainers.trainer", "Trainer", "_compile_metrics"),
    ("keras.src.trainers.trainer", "Trainer", "_symbolic_build"),
    ("keras.src.trainers.epoch_iterator", "EpochIterator", "_get_iterator"),
    ("keras.src.trainers.epoch_iterator", "EpochIterator", "_num_batches"),
    ("keras.src.trainers.epoch_iterator", "EpochIterator", "data_adapter"),
    ("keras.src.trainers.data_adapters.py_dataset_adapter", "PyDatasetAdapter", "py_dataset"),
    ("keras.src.callbacks.callback_list", "CallbackList", "callbacks"),
    ("keras.src.callbacks.callback", "Callback", "_model"),
    ("keras.src.metrics.accuracy_metrics", "Accuracy", "_direction"),
)
# `fit` of the backend's trainer reads `self._initial_epoch` and keeps `epoch_iterator` local.
_FIT_NAMES = ("self._initial_epoch", "epoch_iterator")
_TRAINERS = {
    "tensorflow": ("keras.src.backend.tensorflow.trainer", "TensorFlowTrainer"),
    "jax": ("keras.src.backend.jax.trainer", "JAXTrainer"),
    "torch": ("keras.src.backend.torch.trainer", "TorchTrainer"),
}


def _source(module: str, name: str) -> str | None:
    import importlib

    try:
        return inspect.getsource(getattr(importlib.import_module(module), name))
    except (OSError, TypeError):  # no source shipped: nothing to check against
        return None


def _check() -> None:
    """Refuses to import against a Keras whose private training attributes moved.

    A renamed attribute would not fail loudly: `fit` would silently restart the epoch or lose the
    shuffle order on resume. Names are checked in the installed sources, once.
    """
    import importlib

    import keras

    problems = []
    for module, cls, attribute in _PRIVATE:
        owner = getattr(importlib.import_module(module), cls, None)
        if owner is None:
            problems.append(f"`{module}.{cls}` is missing")
            continue
        source = _source(module, cls)
        if hasattr(owner, attribute) or source is None:
            continue
        if f"self.{attribute} =" not in source and f"def {attribute}(" not in source:
            problems.append(f"`{cls}.{attribute}` is gone")
    trainer = _TRAINERS.get(keras.backend.backend())
    if trainer is not None:
        fit = _source(*trainer)
        for name in _FIT_NAMES:
            if fit is not None and name not in fit:
                problems.append(f"`{trainer[1]}.fit` no longer uses `{name}`")
    if problems:
        raise ImportError(
            f"keras-ckpt cannot resume training with Keras {keras.__version__}: its private "
            "training API changed (" + "; ".join(problems) + "). Install a Keras version "
            "keras-ckpt supports (see pyproject.toml)."
        )


_check()


# ------------------------------------------------------------------ variables


def training_variables(model: Any) -> list[Any]:
    """Every variable a backup holds, in a fixed order, without duplicates.

    `model.variables` (layer weights and `SeedGenerator` states, which `save_weights` leaves out),
    the optimizer's variables (built first if needed, so `iterations` and the moments exist),
    `model.metrics_variables`, and Keras's global `SeedGenerator` if unseeded random ops created it.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    groups = [model.variables, optimizer.variables if optimizer is not None else []]
    groups.append(model.metrics_variables)
    generator = _global_seed_generator()
    if generator is not None:
        groups.append([generator.state])
    seen: set[int] = set()
    out = []
    for group in groups:
        for variable in group:
            if id(variable) not in seen:
                seen.add(id(variable))
                out.append(variable)
    return out


def _global_seed_generator() -> Any:
    """Keras's global `SeedGenerator` (private global attribute), or None if never created.

    Keras 3.10 names the attribute with a literal; later releases with `GLOBAL_SEED_GENERATOR`."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    key = getattr(seed_generator, "GLOBAL_SEED_GENERATOR", "global_seed_generator")
    return global_state.get_global_attribute(key)


def ensure_global_seed_generator() -> None:
    """Creates Keras's global `SeedGenerator` so a backup that holds its state can restore it."""
    from keras.src.random import seed_generator

    seed_generator.global_seed_generator()


def build_metrics(model: Any, epoch_iterator: Any) -> None:
    """Creates the compiled metrics' variables before the first step, so a backup's metric state
    can be restored into them (Keras builds them lazily, inside the first train step). Uses the
    private `model._compile_metrics` and `model._symbolic_build` with the input's element spec
    (private `epoch_iterator._distributed_dataset`, TensorFlow backend), which reads no data."""
    metrics = getattr(model, "_compile_metrics", None)
    if metrics is None or metrics.built or epoch_iterator is None:
        return
    dataset = getattr(epoch_iterator, "_distributed_dataset", None)
    spec = getattr(dataset, "element_spec", None)
    if spec is not None:
        model._symbolic_build(data_batch=spec)


def optimizer_iterations(model: Any) -> int:
    optimizer = getattr(model, "optimizer", None)
    return 0 if optimizer is None else int(np.asarray(optimizer.iterations))


def compiled_direction(model: Any, name: str) -> str | None:
    """`"up"`/`"down"` as declared by the compiled Keras metric called `name`, if any.

    Keras keeps the direction in the private `Metric._direction` (None where a Keras release
    drops it: the metric's name decides then).
    """
    pending = list(getattr(model, "metrics", []) or [])
    while pending:
        metric = pending.pop()
        pending.extend(getattr(metric, "metrics", []) or [])
        if getattr(metric, "name", None) == name:
            direction = getattr(metric, "_direction", None)
            if direction in ("up", "down"):
                return direction
    return None


def unsynced_model(callback: Any) -> Any:
    """The callback's model without `Callback.model`'s sync (private `Callback._model`).

    On JAX, `Callback.model` copies the trainer's state into every variable at each read, which
    costs time in per-batch hooks and, from a signal handler between steps, could make a backup
    hold an older state than its label. Flags and identity checks need no sync.
    """
    return callback._model


# ------------------------------------------------------------------ initial epoch


def set_initial_epoch(model: Any, epoch: int) -> None:
    """Makes the running `fit` start at `epoch` (private `model._initial_epoch`, read by `fit`
    right after `on_train_begin`)."""
    model._initial_epoch = epoch


def clear_initial_epoch(model: Any) -> None:
    """Undoes `set_initial_epoch` once `fit` has read it, so it cannot leak into a later `fit`."""
    if getattr(model, "_initial_epoch", None) is not None:
        model._initial_epoch = None


# ------------------------------------------------------------------ host RNG


def capture_host_rng() -> dict[str, Any]:
    """Python `random`, NumPy's and (PyTorch backend) torch's global CPU RNG state, as JSON.

    On PyTorch, Keras shuffles array inputs with `torch.utils.data.RandomSampler`, which draws
    from torch's global generator: without it a resumed epoch sees other batches."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    torch_state = capture_torch_rng()
    if torch_state is not None:
        state["torch"] = torch_state
    return state


def restore_host_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    restore_torch_rng(state.get("torch"))


def capture_torch_rng() -> list[int] | None:
    """torch's global CPU RNG state (PyTorch backend only, else None).

    Keras's PyTorch `Dropout` without a seed draws from it at every step, so a resumed run needs
    it as it was at the backup's step too, not only at the epoch's start (see `start_replay`)."""
    if _backend() != "torch":
        return None
    import torch

    return [int(x) for x in torch.get_rng_state().tolist()]


def restore_torch_rng(state: list[int] | None) -> None:
    if state is None or _backend() != "torch":
        return
    import torch

    torch.set_rng_state(torch.tensor(state, dtype=torch.uint8))


def _backend() -> str:
    import keras

    return str(keras.backend.backend())


def capture_tf_rng() -> list[int] | None:
    """State of TensorFlow's global `tf.random.Generator` (private module global), if it exists."""
    generator = _tf_global_generator()
    if generator is None:
        return None
    return [int(x) for x in np.asarray(generator.state)]


def restore_tf_rng(state: list[int] | None) -> None:
    if state is None:
        return
    import tensorflow as tf

    tf.random.get_global_generator().reset(np.asarray(state, dtype=np.int64))


def _tf_global_generator() -> Any:
    if "tensorflow" not in sys.modules:
        return None  # never imported, so no generator; importing TF costs seconds on JAX/torch
    try:
        from tensorflow.python.ops import stateful_random_ops
    except ImportError:
        return None
    return getattr(stateful_random_ops, "global_generator", None)


# ------------------------------------------------------------------ the running fit


@dataclass
class FitContext:
    """What `fit` keeps in local variables and a callback needs: the other callbacks and the
    training epoch iterator. Either is None when it could not be found."""

    callbacks: list[Any] | None
    epoch_iterator: Any | None


def find_fit_context(model: Any) -> FitContext:
    """Finds the running `fit`'s `CallbackList` and training `EpochIterator` on the call stack.

    Keras keeps neither on the model. A callback's `on_train_begin` is called by
    `CallbackList.on_train_begin` (whose `self` is the list), called by `fit` (whose locals hold
    `epoch_iterator`). Call this from `on_train_begin`.
    """
    from keras.src.callbacks.callback_list import CallbackList
    from keras.src.trainers.epoch_iterator import EpochIterator

    callbacks = epoch_iterator = None
    frame = inspect.currentframe()
    try:
        while frame is not None and (callbacks is None or epoch_iterator is None):
            local = frame.f_locals
            owner = local.get("self")
            if callbacks is None and isinstance(owner, CallbackList):
                callbacks = list(owner.callbacks)
            if owner is model and isinstance(local.get("epoch_iterator"), EpochIterator):
                epoch_iterator = local["epoch_iterator"]
            frame = frame.f_back
    finally:
        del frame
    return FitContext(callbacks, epoch_iterator)


class IteratorCounter:
    """Counts the input iterators `fit` creates, and creates and drops more to catch up.

    A `tf.data` pipeline with `shuffle(..., seed=s, reshuffle_each_iteration=True)` draws a new
    shuffle seed each time an iterator is created, and Keras creates one or two per epoch. A
    resumed run must create (and drop) as many as the interrupted run had created before the
    resumed epoch, so the next one draws the same seed. Wraps the epoch iterator's private
    `_get_iterator`.
    """

    def __init__(self, epoch_iterator: Any):
        self.epoch_iterator = epoch_iterator
        self.created = 0
        original: Callable[[], Any] = epoch_iterator._get_iterator
        self._original = original

        def counting() -> Any:
            self.created += 1
            return original()

        epoch_iterator._get_iterator = counting

    def catch_up(self, total: int) -> None:
        """Creates and drops iterators until `total` have been created."""
        while self.created < total:
            self.created += 1
            iter(self._original())

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch that Keras learnt (private `_num_batches`; None while unknown)."""
        return self.epoch_iterator._num_batches

    def restore_num_batches(self, num_batches: int | None) -> None:
        """Tells Keras the cardinality the interrupted run had learnt, so it creates the same
        iterators per epoch as that run did."""
        if num_batches is not None and self.epoch_iterator._num_batches is None:
            self.epoch_iterator._num_batches = num_batches


def input_state_holder(epoch_iterator: Any) -> CheckpointStateful | None:
    """The user's `PyDataset` given to `fit` if it implements `CheckpointStateful` (private
    `data_adapter.py_dataset`), else None."""
    adapter = getattr(epoch_iterator, "data_adapter", None)
    dataset = getattr(adapter, "py_dataset", None)
    return dataset if isinstance(dataset, CheckpointStateful) else None


def needs_input_protocol(epoch_iterator: Any) -> bool:
    """True for a `PyDataset` input that overrides `on_epoch_end` without `CheckpointStateful`:
    its own state (typically a reshuffled index) cannot be restored."""
    import keras

    adapter = getattr(epoch_iterator, "data_adapter", None)
    dataset = getattr(adapter, "py_dataset", None)
    if dataset is None or isinstance(dataset, CheckpointStateful):
        return False
    return type(dataset).on_epoch_end is not keras.utils.PyDataset.on_epoch_end


# ------------------------------------------------------------------ replay


def start_replay(model: Any, batches: int, on_done: Callable[[], None] | None = None) -> None:
    """Makes the next `fit` steps pull `batches` batches from the input without training.

    `fit` calls `model.train_function` at every step; until `batches` batches are consumed it is
    replaced by a function that only pulls the step's batches and returns the current metrics, so
    the data order and any randomness inside the input pipeline advance exactly as in the
    interrupted run. `keras_ckpt.state.is_replaying(model)` is True until `stop_replay`. Each
    backend's `fit` calls it differently: TensorFlow `train_function(iterator)`; JAX
    `train_function(state, iterator)` -> `(logs, state)`, the state living outside the variables
    (which are purged mid-epoch); PyTorch `train_function(batches)`, the batches already pulled by
    the epoch iterator.
    `on_done` runs once the last replayed batch is pulled, before the first real step.
    """
    if batches <= 0:
        return
    real = getattr(model, _REAL_TRAIN_FUNCTION, None) or model.train_function
    per_call = int(getattr(model, "steps_per_execution", 1) or 1)
    remaining = [batches]
    backend = _backend()

    def advance(iterator: Any) -> None:
        if iterator is not None:
            for _ in range(min(per_call, remaining[0])):
                next(iterator)
        remaining[0] -= per_call
        if remaining[0] <= 0:
            model.train_function = real
            if on_done is not None:
                on_done()

    def replay(*args: Any) -> Any:
        if backend == "jax":
            state, iterator = args
            advance(iterator)
            import keras

            # Metric values live in `state`, not in the (purged) variables.
            mapping = list(zip(model.metrics_variables, state[3], strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                return model.get_metrics_result(), state
        advance(None if backend == "torch" else args[0])
        return model.get_metrics_result()

    setattr(model, _REAL_TRAIN_FUNCTION, real)
    model.train_function = replay
    set_replaying(model, True)


def stop_replay(model: Any) -> None:
    """Ends a replay: clears the flag and puts the real train function back if still replaced."""
    real = getattr(model, _REAL_TRAIN_FUNCTION, None)
    if real is not None:
        model.train_function = real
        setattr(model, _REAL_TRAIN_FUNCTION, None)
    set_replaying(model, False)


# ------------------------------------------------------------------ callbacks


def _builtin_callback_fields(callback: Any) -> tuple[str, ...] | None:
    import keras

    if isinstance(callback, keras.callbacks.EarlyStopping):
        return ("wait", "stopped_epoch", "best", "best_epoch")
    if isinstance(callback, keras.callbacks.ReduceLROnPlateau):
        return ("wait", "cooldown_counter", "best")
    return None


def is_stateful(callback: Any) -> bool:
    """True for callbacks whose state a backup holds."""
    if isinstance(callback, CheckpointStateful):
        return True
    return _builtin_callback_fields(callback) is not None


def callback_state(callback: Any) -> tuple[dict[str, Any], list[np.ndarray]]:
    """JSON state and arrays of a stateful callback.

    `CheckpointStateful` callbacks give their own state. For `EarlyStopping` and
    `ReduceLROnPlateau` it is their counters and best value (attributes Keras does not document),
    plus `EarlyStopping.best_weights` as arrays.
    """
    fields = _builtin_callback_fields(callback)
    if fields is None:
        return dict(callback.get_checkpoint_state()), []
    state = {name: _plain(getattr(callback, name, None)) for name in fields}
    arrays: list[np.ndarray] = []
    best_weights = getattr(callback, "best_weights", None)
    if best_weights is not None:
        arrays = [np.asarray(w) for w in best_weights]
        state["best_weights"] = len(arrays)
    return state, arrays


def set_callback_state(callback: Any, state: dict[str, Any], arrays: Sequence[np.ndarray]) -> None:
    fields = _builtin_callback_fields(callback)
    if fields is None:
        callback.set_checkpoint_state(state)
        return
    for name in fields:
        if name in state:
            setattr(callback, name, state[name])
    if "best_weights" in state:
        callback.best_weights = list(arrays)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.item() if np.ndim(value) == 0 else value.tolist()
    if hasattr(value, "numpy"):
        return _plain(value.numpy())
    return value


# ------------------------------------------------------------------ history


def drop_epoch_from_history(model: Any, epoch: int | None) -> None:
    """Takes epoch `epoch` out of Keras's `History` (`model.history`) if it is the last one logged.

    `fit` returned after a signal cut that epoch short (raise_on_interrupt=False): `History`
    logged it as if whole. `History.epoch` and `.history` are public, but editing them is ours.
    """
    history = getattr(model, "history", None)
    epochs = getattr(history, "epoch", None)
    if epoch is None or not epochs or epochs[-1] != epoch:
        return
    epochs.pop()
    for values in getattr(history, "history", {}).values():
        if values:
            values.pop()
