"""Host snapshots of a model: what `model.save`/`save_weights` would write, frozen at one step.

`Snapshotter.take` runs Keras's own saving walk (`saving_lib._save_state`) on the training thread
into a store that writes nothing: it learns *what* Keras would write (groups, their metadata
attributes, datasets, `bfloat16` markers) and takes each variable's value once. Keras's optimizer
hands over `variable.numpy()` (a copy) for each of its variables; during the walk it hands over
the variable itself instead, so nothing is copied twice.

What a value becomes depends on whether training can change it before it is written:

- A background snapshot copies each value into a host buffer the snapshotter owns and reuses at
  the next save (allocated once, large ones in huge pages; re-allocated only when a shape or dtype
  changes), on every backend: on JAX, Keras donates the state buffers to the next step, so a
  view could change under the writer; a PyTorch tensor is changed in place; on TensorFlow,
  holding the tensors instead would make the next step copy each one (copy-on-write) into
  TensorFlow's allocator, which keeps that memory after `fit` ends. Host buffers are plain memory
  the callbacks free when `fit` ends (`release`).
- A save written inline, before training's next step, copies nothing on any backend:
  `Snapshotter(copy=False)` keeps the backend's own memory where it cannot change before the
  write. Only what a layer hands over as a NumPy array of its own is copied (a buffer it may
  refill for the next key), in every mode.

At most one save is in flight (`writer.Writer`), so at most one extra copy of the state exists.
`keras_ckpt.format.h5write` turns a snapshot into the file.

Keras's saving walk is private API (`keras.src.saving.saving_lib`); `_keras_private` checks it at
import.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from keras_ckpt.format._keras_private import saving_lib
from keras_ckpt.format._memory import empty_like

__all__ = ["Snapshot", "Snapshotter", "take"]

# Arrays below this size are copied plainly and written by h5py with the file's layout.
_SMALL = 4096
# Dtypes the one-pass writer lays out itself; anything else goes through Keras's own writer.
_PLAIN_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
)


def _is_bfloat16(dtype: np.dtype) -> bool:
    return keras.backend.standardize_dtype(dtype) == "bfloat16"


def _host_view(value: Any) -> np.ndarray:
    """The value's bytes as a NumPy array, without a copy where the backend allows one.

    Valid until the next training step: the caller copies it at once, or writes it before then.
    """
    if isinstance(value, np.ndarray):
        return value
    if keras.backend.backend() == "tensorflow":
        try:
            variable = getattr(value, "value", value)  # a Keras variable holds a tf.Variable
            read = getattr(variable, "read_value", None)
            tensor = read() if callable(read) else variable
            # EagerTensor's private `_numpy()`: a view, where `.numpy()` would copy.
            array = tensor._numpy()
        except Exception:  # not an eager tensor (or TF changed): Keras's way below
            array = None
        if isinstance(array, np.ndarray):
            return array
    return np.asarray(keras.ops.convert_to_numpy(value))


def _is_stable(value: Any) -> bool:
    """True when nothing but a training step can change `value`'s memory: a Keras variable, or an
    immutable backend tensor (TensorFlow, JAX). A NumPy array handed over by a layer's own
    `save_own_variables` may be a buffer it refills for the next key, and a PyTorch tensor can be
    changed in place, so neither is."""
    if isinstance(value, keras.Variable):
        return True
    return keras.backend.backend() in ("tensorflow", "jax") and keras.ops.is_tensor(value)


def _saves_own_variables_by_index(owner: Any) -> bool:
    """True for an optimizer whose saving is Keras's `BaseOptimizer.save_own_variables`."""
    base = keras.optimizers.Optimizer
    return isinstance(owner, base) and type(owner).save_own_variables is base.save_own_variables


def _hand_over_variables(self: Any, store: Any) -> None:
    """Keras's `BaseOptimizer.save_own_variables`, handing over each variable rather than a copy
    of it (`variable.numpy()`): the store takes its value once, as for a layer's variables."""
    for i, variable in enumerate(self.variables):
        store[str(i)] = variable


def _optimizers(model: Any) -> list[Any]:
    """The model's optimizer and the ones it wraps (`LossScaleOptimizer.inner_optimizer`)."""
    found: list[Any] = []
    optimizer = getattr(model, "optimizer", None)
    while isinstance(optimizer, keras.optimizers.Optimizer) and optimizer not in found:
        found.append(optimizer)
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return found


@contextlib.contextmanager
def _optimizers_hand_over_variables(model: Any) -> Iterator[None]:
    """During Keras's saving walk, the model's optimizers that save as Keras's base optimizer
    does hand over their variables (`_hand_over_variables`), as an attribute of the instance
    that is removed afterwards. The walk runs on the calling thread and nothing else saves the
    optimizer meanwhile."""
    patched = [o for o in _optimizers(model) if _saves_own_variables_by_index(o)]
    patched = [o for o in patched if "save_own_variables" not in vars(o)]
    for optimizer in patched:
        vars(optimizer)["save_own_variables"] = functools.partial(_hand_over_variables, optimizer)
    try:
        yield
    finally:
        for optimizer in patched:
            vars(optimizer).pop("save_own_variables", None)


class _RecordingStore(saving_lib.H5IOStore):
    """Takes what layers save: records Keras's calls in order, copies each value to host memory."""

    def __init__(self, snapshotter: Snapshotter) -> None:  # no file: the parent would open one
        self.mode = "w"
        self.ops: list[tuple[str, Any, Any]] = []
        self.saved: dict[int, str] = {}
        self._group = "vars"
        self._snapshotter = snapshotter
        self.plain = True  # every value has a dtype the one-pass writer handles

    def __bool__(self) -> bool:
        return True

    def make(self, path: str, metadata: dict[str, Any] | None = None) -> _RecordingStore:
        self.ops.append(("make", path, dict(metadata) if metadata else None))
        self._group = f"{path}/vars" if path else "vars"  # where `H5IOStore` puts its datasets
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        # Which variables the file holds as they are, by identity: layers hand over the variable
        # itself, and so does Keras's optimizer during `take`; an optimizer saving as Keras's
        # does outside it hands over `self.variables[i].numpy()` as key `str(i)`
        # (`BaseOptimizer.save_own_variables`), so the caller's frame names the variable. A
        # temporary's id cannot be a live variable's: variables outlive the walk.
        dataset = f"{self._group}/{key}"
        self.saved[id(value)] = dataset
        owner: Any = sys._getframe(1).f_locals.get("self")
        made_for_key = _saves_own_variables_by_index(owner) and key.isdigit()
        if made_for_key:
            self.saved[id(owner.variables[int(key)])] = dataset
        source = _host_view(value)
        if source.dtype not in _PLAIN_DTYPES and not _is_bfloat16(source.dtype):
            self.plain = False
            self.ops.append(("set", key, np.array(source, copy=True)))
            return
        stable = made_for_key or _is_stable(value)
        self.ops.append(("set", key, self._snapshotter._copy(len(self.ops), source, stable)))

    def close(self) -> None:
        pass


class Snapshotter:
    """Takes snapshots of one model that stay as they were while training goes on.

    A snapshot's arrays are host buffers the snapshotter reuses: the next `take` overwrites
    them, so write (or discard) a snapshot before taking the next (`writer.Writer` runs one save
    at a time). Use one snapshotter per callback, and drop it when `fit` ends.

    Args:
        copy: False for saves written inline, before the model changes: the snapshot's arrays
            are then the backend's memory wherever that memory is stable until the next
            training step (a variable, an immutable backend tensor, or the arrays Keras's
            optimizer makes for exactly one key, its `variable.numpy()`), and no buffers are
            kept between saves. Anything else a `save_own_variables` hands over (a NumPy buffer
            it may refill for the next key, say) is still copied, once.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> snapshotter = Snapshotter()
    >>> first = snapshotter.take(model, weights_only=True)
    >>> second = snapshotter.take(model, weights_only=True)  # same buffers, refreshed
    >>> first.nbytes == second.nbytes == 12
    True
    """

    def __init__(self, *, copy: bool = True) -> None:
        self._buffers: dict[int, np.ndarray] = {}
        self.generation = 0
        self.copy = copy

    def _copy(self, slot: int, source: np.ndarray, stable: bool = False) -> np.ndarray:
        if not self.copy:
            return source if stable else np.array(source, copy=True)
        if source.nbytes < _SMALL:
            return np.array(source, copy=True)
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
            buffer = empty_like(source)  # in huge pages: the first copy of a fit faults fast
            self._buffers[slot] = buffer
        np.copyto(buffer, source, casting="no")
        return buffer

    def take(self, model: Any, *, weights_only: bool) -> Snapshot:
        """Copies everything `model.save` (or `save_weights`) would write, to host memory."""
        self.generation += 1
        store = _RecordingStore(self)
        assets = None if weights_only else saving_lib.DiskIOStore("assets", mode="w")
        try:
            with _optimizers_hand_over_variables(model):
                saving_lib._save_state(
                    model,
                    weights_store=store,
                    assets_store=assets,
                    inner_path="",
                    visited_saveables=set(),
                )
            config_json, metadata_json = ("", "")
            if not weights_only:
                config_json, metadata_json = saving_lib._serialize_model_as_json(model)
        except BaseException:
            if assets is not None:
                assets.close()  # removes its temporary folder
            raise
        assets_dir = None
        if assets is not None:
            if any(os.scandir(assets.working_dir)):
                assets_dir = assets.working_dir  # kept until the snapshot is written
            else:
                assets.close()
        nbytes = sum(op[2].nbytes for op in store.ops if op[0] == "set")
        return Snapshot(
            weights_only,
            store.ops,
            config_json,
            metadata_json,
            assets_dir,
            nbytes,
            plain=store.plain,
            saved=store.saved,
            owner=self,
            generation=self.generation,
        )


@dataclass
class Snapshot:
    """A model's savable state at one moment, in host memory.

    Attributes:
        weights_only: True for a `.weights.h5` file, False for a `.keras` file.
        ops: Keras's saving calls, in order: `("make", path, metadata)` and
            `("set", key, host array)`.
        config_json, metadata_json: The `.keras` file's JSON members (full models only).
        assets_dir: Local folder of saved assets (full models with assets only).
        nbytes: Bytes of array data.
        plain: Every array has a dtype the one-pass writer lays out (else Keras's writer is used).
        saved: `id()` of every object the walk handed to the store, mapped to its dataset's path
            in the `.weights.h5` file: the variables the file holds as they are (a layer that
            saves a computed array instead is not among them).
    """

    weights_only: bool
    ops: list[tuple[str, Any, Any]]
    config_json: str = ""
    metadata_json: str = ""
    assets_dir: str | None = None
    nbytes: int = field(default=0)
    saved: dict[int, str] = field(default_factory=dict)
    plain: bool = True
    owner: Snapshotter | None = field(default=None, repr=False)
    generation: int = 0

    def check_current(self) -> None:
        """Raises if a later `take` of the same snapshotter has overwritten this one's buffers."""
        if self.owner is not None and self.owner.generation != self.generation:
            raise RuntimeError(
                "This snapshot's buffers were reused by a later take(); write a snapshot before "
                "taking the next one with the same Snapshotter."
            )

    def discard(self) -> None:
        """Frees the temporary assets folder (the arrays go with the object)."""
        if self.assets_dir:
            shutil.rmtree(os.path.dirname(self.assets_dir), ignore_errors=True)
            self.assets_dir = None


def take(model: Any, *, weights_only: bool) -> Snapshot:
    """A snapshot in fresh buffers (use a `Snapshotter` to reuse them across saves).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> take(model, weights_only=True).nbytes
    12
    """
    return Snapshotter().take(model, weights_only=weights_only)
