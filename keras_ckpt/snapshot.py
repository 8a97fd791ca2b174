"""Host snapshots of a model, written later as the same files `model.save`/`save_weights` write.

Background saving needs the state frozen at one step while training goes on. `take` runs Keras's
own saving walk (`saving_lib._save_state`) on the training thread into a store that only copies each
variable to host memory; `write_*` replays those copies into Keras's real `H5IOStore`, in any thread.
The files are Keras's own format, written by Keras's own code, so plain Keras loads them.

This and `state.py` are the modules that touch private Keras APIs (`keras.src.saving.saving_lib`);
`tests/test_snapshot.py` pins each one.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from keras.src import backend
from keras.src.saving import saving_lib

__all__ = ["Snapshot", "take", "write"]


def _saves_own_variables_by_index(owner: Any) -> bool:
    """True for an optimizer whose saving is Keras's `BaseOptimizer.save_own_variables`."""
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    return (
        isinstance(owner, BaseOptimizer)
        and type(owner).save_own_variables is BaseOptimizer.save_own_variables
    )


class _RecordingStore(saving_lib.H5IOStore):
    """Accepts what layers save and keeps host copies, in order; writes nothing."""

    def __init__(self) -> None:  # no file: the parent's __init__ would open one
        self.mode = "w"
        self.ops: list[tuple[str, Any, Any]] = []
        self.saved: dict[int, str] = {}
        self._group = "vars"

    def __bool__(self) -> bool:
        return True

    def make(self, path: str, metadata: dict[str, Any] | None = None) -> _RecordingStore:
        self.ops.append(("make", path, dict(metadata) if metadata else None))
        self._group = f"{path}/vars" if path else "vars"  # where `H5IOStore` puts its datasets
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        # Which variables the file holds as they are, by identity: layers hand over the variable
        # itself; Keras's optimizer hands over `self.variables[i].numpy()` as key `str(i)`
        # (`BaseOptimizer.save_own_variables`), so the caller's frame names the variable. A
        # temporary's id cannot be a live variable's: variables outlive the walk.
        dataset = f"{self._group}/{key}"
        self.saved[id(value)] = dataset
        owner: Any = sys._getframe(1).f_locals.get("self")
        if _saves_own_variables_by_index(owner) and key.isdigit():
            self.saved[id(owner.variables[int(key)])] = dataset
        array = np.array(backend.convert_to_numpy(value), copy=True)
        self.ops.append(("set", key, array))

    def close(self) -> None:
        pass


@dataclass
class Snapshot:
    """A model's savable state at one moment, in host memory.

    Attributes:
        weights_only: True for a `.weights.h5` file, False for a `.keras` file.
        ops: Keras's saving calls, in order, with host copies of every variable.
        config_json, metadata_json: The `.keras` file's JSON members (full models only).
        assets_dir: Local folder of saved assets (full models with assets only).
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

    def discard(self) -> None:
        """Frees the temporary assets folder (the arrays go with the object)."""
        if self.assets_dir:
            shutil.rmtree(os.path.dirname(self.assets_dir), ignore_errors=True)
            self.assets_dir = None


def take(model: Any, *, weights_only: bool) -> Snapshot:
    """Copies everything `model.save` (or `save_weights`) would write, to host memory."""
    store = _RecordingStore()
    assets = None if weights_only else saving_lib.DiskIOStore("assets", mode="w")
    try:
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
        store.saved,
    )


def _replay(ops: list[tuple[str, Any, Any]], store: saving_lib.H5IOStore) -> None:
    for kind, a, b in ops:
        if kind == "make":
            store.make(a, metadata=b)
        else:
            store[a] = b


def write(snapshot: Snapshot, path: str) -> None:
    """Writes `snapshot` to a local `path` as Keras would (`.keras` zip or `.weights.h5`)."""
    if snapshot.weights_only:
        store = saving_lib.H5IOStore(path, mode="w")
        try:
            _replay(snapshot.ops, store)
        finally:
            store.close()
        return
    # Keras builds the weights in a BytesIO through h5py's Python file driver (a callback into
    # Python, under the GIL, for every write) and copies it into the zip. Written to a real file
    # by HDF5's own driver and streamed into the zip, the same bytes cost training less.
    weights_path = f"{path}.{saving_lib._VARS_FNAME_H5}"
    store = saving_lib.H5IOStore(weights_path, mode="w")
    try:
        _replay(snapshot.ops, store)
    finally:
        store.close()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(saving_lib._METADATA_FILENAME, snapshot.metadata_json)
        archive.writestr(saving_lib._CONFIG_FILENAME, snapshot.config_json)
        archive.write(weights_path, saving_lib._VARS_FNAME_H5)
        if snapshot.assets_dir:
            for root, _, files in os.walk(snapshot.assets_dir):
                for name in files:
                    full = os.path.join(root, name)
                    relative = os.path.relpath(full, snapshot.assets_dir).replace(os.sep, "/")
                    archive.write(full, f"{saving_lib._ASSETS_DIRNAME}/{relative}")
    os.remove(weights_path)
