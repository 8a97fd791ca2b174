"""Where one synchronous `keras_ckpt.ModelCheckpoint` save spends its time (pyinstrument).

The save is driven through the callback's public hooks (`on_train_begin`, `on_epoch_begin`,
`on_epoch_end`) on a model whose optimizer is built, after one unprofiled save (first-use costs:
imports, h5py setup). pyinstrument samples the Python stack every millisecond; each sample is
charged to the innermost frame that belongs to a category below, so time inside h5py called from
Keras's saving code counts as h5py, an `os.fsync` inside `seal_file` counts as fsync, and so on:

- h5 bytes into BytesIO: for `.keras`, Keras has h5py write the weights file into an
  `io.BytesIO` (growing, so copied more than once), then copies it into the zip
- write() to the file: the bytes going into the page cache; zipfile's own zlib.crc32 of every byte
- h5py / zip archive: their Python and library overhead around those writes
- keras saving: Keras's own Python (config JSON, walking layers, `saving_lib`)
- variables -> NumPy: Keras reading each variable's value into a NumPy array (`convert_to_numpy`)
- host copy: keras-ckpt's snapshot (only in async saves; a sync save writes from the live model)
- read file back / crc32c: `seal_file` reading the file again and computing its crc32c
- fsync, rename, record, staging: the rest of the commit protocol

The full pyinstrument tree is written next to the JSON output (or into the scratch folder) for the
engineer optimising the save.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks._common import Table, fmt

# (category, test on (function, file path)); the first match wins, innermost frame first.
CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [
    ("fsync (file and folder)", lambda fn, path: fn in ("fsync", "fsync_dir")),
    ("crc32c (checksum)", lambda fn, path: "crc32c" in path or fn == "update"),
    ("zlib.crc32 (zipfile's own)", lambda fn, path: fn == "crc32"),
    ("read file back (checksum pass)", lambda fn, path: fn in ("read", "readinto")),
    ("h5 bytes into an in-memory BytesIO", lambda fn, path: fn.startswith("BytesIO.")),
    ("write() to the file (page cache)", lambda fn, path: fn.rsplit(".", 1)[-1] == "write"),
    ("rename (os.replace)", lambda fn, path: fn == "replace"),
    ("record JSON + write", lambda fn, path: fn in ("to_json", "write_atomic")),
    ("staging folder (mkdir, rmtree)", lambda fn, path: fn in ("staging", "rmtree", "makedirs")),
    ("zip archive (zipfile python)", lambda fn, path: "zipfile" in path),
    ("h5py (python + HDF5)", lambda fn, path: "/h5py/" in path),
    ("host copy (keras_ckpt.format.snapshot)", lambda fn, path: "keras_ckpt/snapshot" in path),
    (
        "variables -> NumPy (TF reads, np.array)",
        lambda fn, path: "tensorflow" in path or fn in ("numpy", "array", "convert_to_numpy"),
    ),
    ("keras saving (python)", lambda fn, path: "/keras/" in path),
    ("keras-ckpt (other)", lambda fn, path: "keras_ckpt" in path),
]


def _category(function: str, path: str) -> str | None:
    short = function.rsplit(".", 1)[-1]  # "FileIO.read" -> "read"
    for name, test in CATEGORIES:
        if test(function, path) or test(short, path):
            return name
    return None


def _attribute(frame: Any, inherited: str, totals: dict[str, float]) -> None:
    own = _category(frame.function or "", frame.file_path or "") or inherited
    children = list(frame.children)
    self_time = frame.time - sum(child.time for child in children)
    if self_time > 0:
        totals[own] = totals.get(own, 0.0) + self_time
    for child in children:
        _attribute(child, own, totals)


def run(
    model: Any,
    root: str,
    label: str,
    out_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> Table:
    from pyinstrument import Profiler

    import keras_ckpt

    folder = os.path.join(root, "profile")
    from benchmarks.saving import sync_kwargs

    callback = keras_ckpt.ModelCheckpoint(
        os.path.join(folder, "m-{epoch:03d}.keras"), **sync_kwargs(keras_ckpt.ModelCheckpoint)
    )
    callback.set_model(model)
    logs = {"loss": 0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callback.on_train_begin()
        callback.on_epoch_begin(0)
        callback.on_epoch_end(0, logs)  # warm-up save
        callback.on_epoch_begin(1)
        log(f"  [{label}] profiling one sync save")
        profiler = Profiler(interval=0.001)
        profiler.start()
        callback.on_epoch_end(1, logs)
        profiler.stop()
        callback.on_train_end()
    session = profiler.last_session
    totals: dict[str, float] = {}
    root_frame = session.root_frame()
    _attribute(root_frame, "other", totals)
    total = sum(totals.values())
    text = profiler.output_text(unicode=False, color=False, show_all=True)
    target_dir = out_dir or root
    os.makedirs(target_dir, exist_ok=True)
    tree_path = os.path.join(target_dir, f"profile-sync-save-{label}.txt")
    with open(tree_path, "w") as f:
        f.write(text)

    table = Table(
        title=f"Profile of one sync keras-ckpt ModelCheckpoint save (.keras), {label} model",
        columns=["where", "time", "share"],
    )
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        table.add(name, fmt(seconds), f"{seconds / total:.0%}")
    table.add("total (sampled)", fmt(total), "100%")
    table.notes.append(f"Full pyinstrument tree: {tree_path}")
    table.data = {"seconds": totals, "total": total, "tree": tree_path}
    from benchmarks._common import settle

    settle(folder)
    return table
