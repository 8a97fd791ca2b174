"""Sharded checkpoints, written and read by Orbax: a folder per checkpoint that plain Keras loads.

A variable sharded across processes (Keras's distribution API on JAX: `ModelParallel` with a
`LayoutMap`) is not whole on any one process, so no process can write a Keras file of it. This
format hands the model's state to `orbax-checkpoint` (TensorStore underneath): every process
writes only the shards it holds, a replicated shard once, and nothing is gathered on any host.

A checkpoint `<name>` is a folder laid out as Keras's `OrbaxCheckpoint` lays out one step::

    <name>/<global step>/_CHECKPOINT_METADATA     Orbax's step metadata (the record's first file)
    <name>/<global step>/pytree/...               model.get_state_tree(): trainable, non-trainable,
                                                  optimizer and metric variables (weights only:
                                                  the first two)
    <name>/<global step>/model_config/...         the model's config (full models)
    <name>/<global step>/assets/...               its assets, if any (full models)
    <name>/<global step>/keras_ckpt/...           our JSON: the variables' layout, the mesh it was
                                                  saved on, a backup's training state
    <name>/<global step>/keras_ckpt_arrays/...    a backup's arrays Keras's state tree leaves out

so `keras.saving.load_model("<dir>/<name>")` and `model.load_weights("<dir>/<name>")` (Keras
3.14+) load it without keras-ckpt. Every file is listed in the record with its size and crc32c.

A save runs in the usual two halves. `capture` (training thread) starts Orbax's asynchronous save
into a folder under `.keras_ckpt/staging/` that every process computes alike; it returns once the
state is copied to host memory (the only part that blocks training). `write` (the chief's writer
thread) waits for Orbax to finish, which is after every process has written its shards and Orbax
has finalised the step, then checksums and fsyncs every file; the pipeline then commits them
(renamed into place, record last). Other processes keep their save in flight until their next
`capture` or the end of `fit` (`contribute`, `release`), so each process has at most one save in
flight and an error in one is raised on its training thread.

Reading restores every array straight onto the layout of the variable it is assigned to (its
`sharding`), so a checkpoint saved on one mesh loads onto another: Orbax reshards, each process
reading only what it holds, and one line says so when the device count or mesh differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_ckpt.errors import CorruptCheckpointError
from keras_ckpt.format.base import Format, Staged
from keras_ckpt.store.base import SealedFile
from keras_ckpt.store.local import seal_file

__all__ = [
    "FORMAT",
    "MARKER",
    "OrbaxDir",
    "check_available",
    "is_orbax_record",
    "process_sharded",
]

FORMAT = "keras_ckpt.orbax/1"
MARKER = "_CHECKPOINT_METADATA"  # Orbax's step metadata: the record's first file
_STATE = "keras_ckpt"
_ARRAYS = "keras_ckpt_arrays"
_GROUPS = ("trainable_variables", "non_trainable_variables", "optimizer_variables")
_METRICS = "metrics_variables"
_INSTALL = 'pip install "keras-ckpt[orbax]"'


def check_available() -> None:
    """Raises `ImportError` (saying how to install it) without Orbax or the JAX backend."""
    import keras

    if keras.backend.backend() != "jax":
        raise ImportError(
            "Sharded checkpoints are written by Orbax, which needs the JAX backend; this process "
            f"runs Keras on {keras.backend.backend()!r} (set KERAS_BACKEND=jax)."
        )
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"Sharded checkpoints need orbax-checkpoint, which is not installed ({e}). "
            f"Install it with `{_INSTALL}`."
        ) from e


def _ocp() -> Any:
    check_available()
    import orbax.checkpoint as ocp

    return ocp.v1


def is_orbax_record(record: Any) -> bool:
    """True if `record` is a sharded (Orbax) checkpoint: its first file is Orbax's step metadata.

    Example:

    >>> from keras_ckpt.records import FileEntry, Record
    >>> entry = FileEntry("m-1/10/_CHECKPOINT_METADATA", 360, "crc32c:00000000")
    >>> is_orbax_record(Record("m-1", "model", (entry,)))
    True
    """
    return bool(record.files) and record.files[0].path.endswith("/" + MARKER)


def process_sharded(model: Any) -> bool:
    """True if some variable of `model` is split across processes (JAX): held whole by none of
    them, so no process can write a Keras file of it. Replicated variables do not count."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    if jax.process_count() == 1:
        return False
    for variable in model.variables:
        value = getattr(variable, "value", None)
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            if not value.sharding.is_fully_replicated:
                return True
    return False


def _groups(model: Any, *, weights_only: bool) -> dict[str, list[Any]]:
    """Keras's `get_state_tree` groups of `model`, in its order (weights only: the first two)."""
    optimizer = getattr(model, "optimizer", None)
    groups = {
        "trainable_variables": list(model.trainable_variables),
        "non_trainable_variables": list(model.non_trainable_variables),
    }
    if not weights_only:
        groups["optimizer_variables"] = list(optimizer.variables) if optimizer is not None else []
        groups[_METRICS] = list(getattr(model, "metrics_variables", []) or [])
    return groups


def _nest(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Keras's nesting of `get_state_tree`: a variable path `a/b/c` becomes `{a: {b: {c: v}}}`."""
    nested: dict[str, Any] = {}
    for path, value in pairs:
        *parents, leaf = path.split("/")
        current = nested
        for part in parents:
            current = current.setdefault(part, {})
        current[leaf] = value
    return nested


def _leaf(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _host_copy(value: Any) -> np.ndarray:
    """A host copy of a small array held whole (replicated) on this process."""
    import jax

    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = value.addressable_shards[0].data
    return np.array(value, copy=True)


def _mesh() -> dict[str, Any]:
    """The devices (and mesh, if a distribution is set) a checkpoint is saved on or loaded onto."""
    import jax
    import keras

    described: dict[str, Any] = {"devices": jax.device_count(), "processes": jax.process_count()}
    distribution = keras.distribution.distribution()
    mesh = getattr(distribution, "device_mesh", None)
    if mesh is not None:
        described["mesh"] = dict(zip(mesh.axis_names, (int(n) for n in mesh.shape), strict=True))
        described["devices"] = int(np.prod(mesh.shape))
    return described


def _mesh_text(described: Mapping[str, Any]) -> str:
    mesh = described.get("mesh")
    shape = f", mesh {' x '.join(f'{k}={v}' for k, v in mesh.items())}" if mesh else ""
    return f"{described.get('devices')} devices{shape}"


@dataclass
class Captured:
    """A save under way: Orbax writes `path` (a step folder) in the background."""

    path: str
    step: int
    response: Any
    chief: bool

    def result(self) -> None:
        self.response.result()


class OrbaxDir(Format):
    """Sharded checkpoints through Orbax: a folder per checkpoint, each process writing its shards.

    Args:
        kind: `"model"` (model config, assets, every variable of `get_state_tree`), `"weights"`
            (trainable and non-trainable variables) or `"training_state"` (a backup: the whole
            state tree, the variables it leaves out, and the training state as JSON).
        directory: The checkpoint directory (local or a shared filesystem every process sees);
            only needed to save.
        tag: Tells this writer's staging folders from another's in the same directory.
        chief: This process commits (the others write their shards only).

    Example (JAX backend, orbax-checkpoint installed):

        fmt = OrbaxDir("model", directory="runs/exp")
        staged = fmt.write(fmt.capture(model), folder, "model-3")   # chief
        list(staged.files)[0]   # 'model-3/<step>/_CHECKPOINT_METADATA'
    """

    snapshots = True

    def __init__(
        self, kind: str, *, directory: str | None = None, tag: str = "", chief: bool = True
    ):
        if kind not in ("model", "weights", "training_state"):
            raise ValueError(
                "Invalid value for argument `kind`. Expected 'model', 'weights' or "
                f"'training_state'. Received: kind={kind!r}"
            )
        self.kind = kind
        self.directory = directory
        self.tag = hashlib.sha1(tag.encode()).hexdigest()[:8]
        self.chief = chief
        self._count = 0
        self._inflight: Captured | None = None

    # ------------------------------------------------------------------ saving

    def _staging(self) -> str:
        if self.directory is None:
            raise ValueError("OrbaxDir needs its checkpoint `directory` to save.")
        if "://" in self.directory:
            raise ValueError(
                "Sharded checkpoints are written to a local or shared filesystem path every "
                f"process sees. Received: {self.directory!r}"
            )
        self._count += 1
        # The same path on every process: all of them capture at the same steps, in this order.
        return os.path.join(  # absolute: Orbax refuses relative paths
            os.path.abspath(self.directory),
            ".keras_ckpt",
            "staging",
            f"orbax-{self.tag}-{self._count:06d}",
        )

    def capture(self, model: Any, extra: Any = None) -> Captured:
        """Starts Orbax's save of `model`; returns once the state is on the host."""
        ocp = _ocp()
        self.settle()  # at most one save in flight on this process
        payload, state = self._payload(model, extra)
        payload[_STATE] = {"state": json.dumps(state)}
        optimizer = getattr(model, "optimizer", None)
        step = int(np.asarray(optimizer.iterations)) if optimizer is not None else 0
        root = self._staging()
        path = os.path.join(root, str(step))
        if self.chief:
            shutil.rmtree(root, ignore_errors=True)  # left by a run whose staging was not cleared
        os.makedirs(root, exist_ok=True)
        with ocp.Context():
            response = ocp.save_checkpointables_async(path, payload)
        self._inflight = Captured(path, step, response, self.chief)
        return self._inflight

    def _payload(self, model: Any, extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        groups = _groups(model, weights_only=self.kind == "weights")
        layout: list[list[Any]] = []
        tree: dict[str, Any] = {}
        where: dict[int, str] = {}
        for group, variables in groups.items():
            pairs = []
            for variable in variables:
                pairs.append((variable.path, variable.value))
                where[id(variable)] = f"{group}/{variable.path}"
            if len({p for p, _ in pairs}) != len(pairs):
                raise ValueError(
                    f"Sharded checkpoints need unique variable paths; {group} of this model "
                    "repeats one. Give its layers unique names."
                )
            tree[group] = _nest(pairs)
        payload: dict[str, Any] = {"pytree": tree}
        state: dict[str, Any] = {"format": FORMAT, "kind": self.kind, "saved_on": _mesh()}
        if self.kind == "model":
            from keras_ckpt.format._keras_private import saving_lib

            config_json, _ = saving_lib._serialize_model_as_json(model)
            payload["model_config"] = {"config": config_json}
            assets = saving_lib._save_assets_to_dict(model)
            if assets:
                payload["assets"] = assets
        if self.kind != "training_state":
            for group, variables in groups.items():
                for variable in variables:
                    entry = [f"{group}/{variable.path}", variable.path, list(variable.shape)]
                    layout.append([*entry, str(variable.dtype)])
            state["layout"] = layout
            return payload, state
        from keras_ckpt.format.backup_file import BackupInputs

        if not isinstance(extra, BackupInputs):
            raise TypeError(f"A backup needs its BackupInputs. Received: extra={extra!r}")
        arrays: dict[str, Any] = {"variables": {}, "callbacks": {}}
        for i, variable in enumerate(extra.variables):
            found = where.get(id(variable))
            if found is None:  # not in Keras's state tree (SeedGenerator states): small, whole
                arrays["variables"][str(i)] = _host_copy(variable.value)
                found = f"{_ARRAYS}/variables/{i}"
            layout.append([found, variable.path, list(variable.shape), str(variable.dtype)])
        entries: list[dict[str, Any]] = []
        for k, (class_name, callback_state, callback_arrays) in enumerate(extra.callbacks):
            count = len(callback_arrays)
            entries.append({"class": class_name, "state": callback_state, "arrays": count})
            arrays["callbacks"][str(k)] = {
                str(j): np.array(a, copy=True) for j, a in enumerate(callback_arrays)
            }
        if arrays["variables"] or any(arrays["callbacks"].values()):
            payload[_ARRAYS] = {k: v for k, v in arrays.items() if v and any_leaf(v)}
        state.update(extra.state)
        state["format"] = FORMAT
        state["layout"] = layout
        state["callbacks"] = entries
        return payload, state

    def write(self, captured: Any, folder: str, name: str) -> Staged:
        captured.result()  # every process wrote its shards; Orbax finalised the step
        staged = Staged()
        for relative in _files(captured.path):
            source = os.path.join(captured.path, relative)
            final = f"{name}/{captured.step}/{relative}"
            staged.files[final] = source
            staged.sealed[final] = seal_file(source)  # checksummed and fsynced, whoever wrote it
        return staged

    def discard(self, captured: Any) -> None:
        with contextlib.suppress(Exception):  # its error, if any, was raised by `write`
            captured.result()
        if self._inflight is captured:
            self._inflight = None
        if captured.chief:
            shutil.rmtree(os.path.dirname(captured.path), ignore_errors=True)

    def checkpoint_name(self, name: str) -> str:
        """A folder: a file template's extension goes (`m-3.keras` -> `m-3`), as Keras tells an
        Orbax folder from its files by the extension."""
        for suffix in (".weights.h5", ".keras", ".h5"):
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return name

    def contribute(self, model: Any, extra: Any = None) -> None:
        """A process that does not commit: starts writing its shards and keeps the save in flight
        (waited for at its next save or at the end of `fit`, where its error is raised)."""
        self.capture(model, extra)

    def settle(self) -> None:
        """Waits for this process's save in flight; raises its error, if any."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def release(self) -> None:
        self.settle()

    # ------------------------------------------------------------------ reading

    def _open(self, path: str, name: str) -> tuple[str, dict[str, Any]]:
        """(step folder, our JSON state) of the checkpoint whose first file is local `path`."""
        step = os.path.dirname(os.path.abspath(os.fspath(path)))
        ocp = _ocp()
        try:
            with ocp.Context():
                loaded = ocp.load_checkpointables(step, {_STATE: None})
            state = json.loads(loaded[_STATE]["state"])
        except Exception as e:
            raise CorruptCheckpointError(f"{name}: cannot read the sharded checkpoint ({e})") from e
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CorruptCheckpointError(f"{name}: not a keras-ckpt sharded checkpoint")
        return step, state

    def _restore(
        self, step: str, state: Mapping[str, Any], targets: Mapping[int, Any], name: str
    ) -> dict[int, Any]:
        """The arrays of layout entries `targets` (index -> variable), each restored onto its
        variable's sharding; says so in one line when the checkpoint was saved on another mesh."""
        import jax

        ocp = _ocp()
        layout = state["layout"]
        request: dict[str, Any] = {}
        for index, (where, _path, shape, *_dtype) in enumerate(layout):
            item, key = ("pytree", where)
            if where.startswith(f"{_ARRAYS}/"):
                item, key = _ARRAYS, where[len(_ARRAYS) + 1 :]
            variable = targets.get(index)
            if variable is None:
                leaf: Any = ocp.PLACEHOLDER
            elif item == _ARRAYS:
                leaf = None  # a small host array
            else:
                value = variable.value
                if tuple(shape) != tuple(value.shape):
                    raise ValueError(
                        f"Checkpoint {name} does not match this model: {_path} has shape "
                        f"{tuple(shape)} there, {tuple(value.shape)} here."
                    )
                leaf = jax.ShapeDtypeStruct(tuple(shape), value.dtype, sharding=value.sharding)
            *parents, last = key.split("/")
            current = request.setdefault(item, {})
            for part in parents:
                current = current.setdefault(part, {})
            current[last] = leaf
        saved_on, here = state.get("saved_on", {}), _mesh()
        if {k: saved_on.get(k) for k in ("devices", "mesh")} != {
            k: here.get(k) for k in ("devices", "mesh")
        }:
            shown = name.split("/")[0]
            print(
                f"keras-ckpt: {shown} was saved on {_mesh_text(saved_on)}; restoring it onto "
                f"{_mesh_text(here)}, resharded by Orbax.",
                flush=True,
            )
        _fill_placeholders(request, step, ocp)
        try:
            with ocp.Context():
                loaded = ocp.load_checkpointables(step, request)
        except Exception as e:
            raise CorruptCheckpointError(f"{name}: cannot read the sharded checkpoint ({e})") from e
        restored = {}
        for index, (where, *_rest) in enumerate(layout):
            if index in targets:
                if where.startswith(f"{_ARRAYS}/"):
                    restored[index] = _leaf(loaded[_ARRAYS], where[len(_ARRAYS) + 1 :])
                else:
                    restored[index] = _leaf(loaded["pytree"], where)
        return restored

    def _assign_model(self, model: Any, step: str, state: Mapping[str, Any], name: str) -> None:
        """Assigns the checkpoint's variables to `model`'s, matched by group and position."""
        if state.get("kind") == "training_state":
            variables = _training_variables(model)
            layout_vars: dict[int, Any] = {}
            for index, variable in enumerate(variables[: len(state["layout"])]):
                layout_vars[index] = variable
            # Only what a weights file holds: the model's and optimizer's variables.
            keep = {id(v) for vs in _groups(model, weights_only=False).values() for v in vs}
            metrics = {id(v) for v in getattr(model, "metrics_variables", []) or []}
            targets = {
                i: v for i, v in layout_vars.items() if id(v) in keep and id(v) not in metrics
            }
        else:
            groups = _groups(model, weights_only=False)
            counters = {group: 0 for group in groups}
            targets = {}
            for index, (where, *_rest) in enumerate(state["layout"]):
                group = where.split("/", 1)[0]
                position = counters.get(group)
                if position is None:
                    continue
                counters[group] = position + 1
                if group == _METRICS:
                    continue  # a loaded model's metrics start afresh, as with Keras's files
                if position < len(groups[group]):
                    targets[index] = groups[group][position]
            wanted = {g: len(groups[g]) for g in _GROUPS if g in groups}
            saved = {g: c for g, c in counters.items() if g in wanted}
            for group in ("trainable_variables", "non_trainable_variables"):
                if saved.get(group) != wanted[group]:
                    raise ValueError(
                        f"Checkpoint {name} does not match this model: it holds "
                        f"{saved.get(group)} {group.replace('_', ' ')}, the model has "
                        f"{wanted[group]}."
                    )
            if saved.get("optimizer_variables", 0) != wanted.get("optimizer_variables", 0):
                targets = {
                    i: v
                    for i, v in targets.items()
                    if not state["layout"][i][0].startswith("optimizer_variables/")
                }
        for index, value in self._restore(step, state, targets, name).items():
            targets[index].assign(value)

    def load_model(self, path: str, expected: SealedFile, *, name: str, **kwargs: Any) -> Any:
        if self.kind != "model":
            return super().load_model(path, expected, name=name)
        from keras_ckpt.format._keras_private import saving_lib

        step, state = self._open(path, name)
        ocp = _ocp()
        with ocp.Context():
            loaded = ocp.load_checkpointables(step, {"model_config": None})
        model = saving_lib._model_from_config(
            loaded["model_config"]["config"],
            custom_objects=kwargs.get("custom_objects"),
            compile=kwargs.get("compile", True),
            safe_mode=kwargs.get("safe_mode", True),
        )
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        self._assign_model(model, step, state, name)
        if os.path.isdir(os.path.join(step, "assets")):
            with ocp.Context():
                assets = ocp.load_checkpointables(step, {"assets": None})["assets"]
            saving_lib._load_assets_from_dict(model, assets)
        return model

    def load_weights(self, model: Any, path: str, expected: SealedFile, *, name: str) -> None:
        step, state = self._open(path, name)
        self._assign_model(model, step, state, name)

    def describe(self, path: str, expected: SealedFile | None = None, *, name: str = "") -> Any:
        """What `keras-ckpt show` says of it: its architecture, weights and optimizer state, from
        its layout and config (no array is read)."""
        step, state = self._open(path, name or path)
        weights = {"arrays": 0, "parameters": 0, "bytes": 0}
        optimizer: dict[str, Any] = {"variables": 0, "bytes": 0, "iterations": None, "name": None}
        layers = set()
        for where, variable, shape, *dtype in state["layout"]:
            size = int(np.prod(shape))
            nbytes = size * (np.dtype(dtype[0]).itemsize if dtype and dtype[0] else 4)
            if where.startswith(("trainable_variables/", "non_trainable_variables/")):
                weights["arrays"] += 1
                weights["parameters"] += size
                weights["bytes"] += nbytes
                layers.add(variable.rsplit("/", 1)[0])
            elif where.startswith("optimizer_variables/"):
                optimizer["variables"] += 1
                optimizer["bytes"] += nbytes
                optimizer["name"] = variable.split("/", 1)[0]
        weights["layers_with_weights"] = len(layers)
        info: dict[str, Any] = {
            "format": "sharded checkpoint written by Orbax, saved on "
            + _mesh_text(state["saved_on"]),
            "parts": {},
            "weights": weights,
            "optimizer": optimizer if optimizer["variables"] else None,
            "load_path": os.path.dirname(os.path.dirname(name or path)),  # the folder
        }
        if state.get("kind") == "model":
            ocp = _ocp()
            with ocp.Context():
                loaded = ocp.load_checkpointables(step, {"model_config": None})
            config = json.loads(loaded["model_config"]["config"])
            inner = config.get("config", {}) if isinstance(config, dict) else {}
            info["architecture"] = {
                "class_name": config.get("class_name"),
                "name": inner.get("name"),
                "layers": len(inner["layers"]) if isinstance(inner.get("layers"), list) else None,
            }
        return info

    def read(
        self, path: str | os.PathLike[str], expected: SealedFile | None = None, *, name: str = ""
    ) -> Any:
        """A backup's contents; its arrays are restored when bound to the variables they go to
        (`SharedArrays.resolve`), onto their layouts."""
        from keras_ckpt.format.backup_file import BackupContents

        shown = name or os.fspath(path)
        step, state = self._open(os.fspath(path), shown)
        layout = [(str(e[1]), tuple(int(n) for n in e[2])) for e in state["layout"]]
        callbacks = state.get("callbacks", [])
        arrays = SharedArrays(self, step, state, shown)
        callback_arrays = arrays.callback_arrays(callbacks)
        return BackupContents(os.fspath(path), state, layout, arrays, callback_arrays)  # type: ignore[arg-type]


class SharedArrays(Mapping[int, Any]):
    """A sharded backup's variables by layout index, restored by `resolve(variables)` onto the
    sharding of the variables they are assigned to."""

    def __init__(self, fmt: OrbaxDir, step: str, state: Mapping[str, Any], name: str):
        self._fmt, self._step, self._state, self._name = fmt, step, state, name
        self._arrays: dict[int, Any] | None = None

    def resolve(self, variables: Sequence[Any]) -> SharedArrays:
        if self._arrays is None:
            targets = dict(enumerate(variables[: len(self._state["layout"])]))
            self._arrays = self._fmt._restore(self._step, self._state, targets, self._name)
        return self

    def callback_arrays(self, entries: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        if not any(int(e.get("arrays", 0)) for e in entries):
            return [[] for _ in entries]
        ocp = _ocp()
        with ocp.Context():
            loaded = ocp.load_checkpointables(self._step, {_ARRAYS: None})[_ARRAYS]
        saved = loaded.get("callbacks", {})
        return [
            [np.asarray(saved[str(k)][str(j)]) for j in range(int(entry.get("arrays", 0)))]
            for k, entry in enumerate(entries)
        ]

    def _restored(self) -> dict[int, Any]:
        if self._arrays is None:
            raise RuntimeError("A sharded backup's arrays are read by `resolve(variables)` first.")
        return self._arrays

    def __getitem__(self, index: int) -> Any:
        return self._restored()[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self._restored())

    def __len__(self) -> int:
        return len(self._state["layout"])


def any_leaf(tree: Any) -> bool:
    if isinstance(tree, dict):
        return any(any_leaf(v) for v in tree.values())
    return True


def _training_variables(model: Any) -> list[Any]:
    """The backup's variable order (`training.fit_state.training_variables`), without building."""
    optimizer = getattr(model, "optimizer", None)
    seen: set[int] = set()
    ordered = []
    groups = [model.variables, optimizer.variables if optimizer is not None else []]
    groups.append(model.metrics_variables)
    for group in groups:
        for variable in group:
            if id(variable) not in seen:
                seen.add(id(variable))
                ordered.append(variable)
    return ordered


def _fill_placeholders(request: dict[str, Any], step: str, ocp: Any) -> None:
    """Orbax restores a pytree whole: leaves the request does not name become placeholders
    (skipped), from the checkpoint's own metadata."""
    with ocp.Context():
        metadata = ocp.pytree_metadata(step, checkpointable_name="pytree").metadata
    _fill(request.setdefault("pytree", {}), metadata, ocp.PLACEHOLDER)
    if _ARRAYS in request:
        with ocp.Context():
            meta = ocp.pytree_metadata(step, checkpointable_name=_ARRAYS).metadata
        _fill(request[_ARRAYS], meta, None)


def _fill(request: dict[str, Any], metadata: Any, placeholder: Any) -> None:
    for key, meta in metadata.items():
        if isinstance(meta, dict):
            _fill(request.setdefault(key, {}), meta, placeholder)
        elif key not in request:
            request[key] = placeholder


def _files(root: str) -> list[str]:
    """Every file under `root`, relative, Orbax's step metadata first."""
    found = []
    for folder, _dirs, names in os.walk(root):
        for file_name in names:
            found.append(
                os.path.relpath(os.path.join(folder, file_name), root).replace(os.sep, "/")
            )
    if MARKER not in found:
        raise CorruptCheckpointError(f"Orbax wrote no {MARKER} in {root}")
    return [MARKER] + sorted(f for f in found if f != MARKER)
