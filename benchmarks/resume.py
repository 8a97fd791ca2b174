"""Resume time: loading through keras-ckpt against plain Keras, same files, same run.

Pairs, each timed `reps` times with the order rotating between repetitions:

- weights: `model.load_weights(path)` on a `.weights.h5` Keras wrote, against
  `CheckpointManager(directory).load_weights(model)` ("latest") on the `.weights.h5`
  keras-ckpt's `ModelCheckpoint` wrote. Ours pays for a fresh manager (a restarted process has
  none), reading the records, and verifying the checksum of the file before loading it.
- full model: `keras.saving.load_model(path)` against `CheckpointManager(directory).load_model()`.
- backup: `on_train_begin` of a fresh `keras.callbacks.BackupAndRestore` on a backup it wrote (that
  is where it restores), against the same for `keras_ckpt.BackupAndRestore` (which restores more:
  RNG and callback state, and the position inside the epoch). Their `on_train_end` runs after
  the timing.

The model loaded into is a second instance of the same architecture with its optimizer built, so
every load restores the optimizer too. The files are in the page cache (they were just written):
this is the CPU cost of resuming, the case where a checksum pass is most visible; from a cold disk
both sides pay the same read and the ratio shrinks.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks._common import Stat, Table, build_model, ratio_cell, rotated, settle


def _prepare(model: Any, x: Any, y: Any, root: str) -> dict[str, str]:
    """Writes every file the loads read, once, with the model's current state."""
    import keras

    import keras_ckpt
    from benchmarks.saving import fit_with

    paths = {
        "keras_dir": os.path.join(root, "keras"),
        "ours_weights": os.path.join(root, "ours-weights"),
        "ours_model": os.path.join(root, "ours-model"),
        "keras_backup": os.path.join(root, "keras-backup"),
        "ours_backup": os.path.join(root, "ours-backup"),
    }
    os.makedirs(paths["keras_dir"])
    paths["keras_weights_file"] = os.path.join(paths["keras_dir"], "m.weights.h5")
    paths["keras_model_file"] = os.path.join(paths["keras_dir"], "m.keras")
    model.save_weights(paths["keras_weights_file"])
    model.save(paths["keras_model_file"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_with(
            model,
            x,
            y,
            1,
            keras_ckpt.ModelCheckpoint(
                os.path.join(paths["ours_weights"], "m-{epoch:03d}.weights.h5"),
                save_weights_only=True,
            ),
        )
        fit_with(
            model,
            x,
            y,
            1,
            keras_ckpt.ModelCheckpoint(os.path.join(paths["ours_model"], "m-{epoch:03d}.keras")),
        )
        fit_with(
            model,
            x,
            y,
            1,
            keras.callbacks.BackupAndRestore(paths["keras_backup"], delete_checkpoint=False),
        )
        fit_with(
            model,
            x,
            y,
            1,
            keras_ckpt.BackupAndRestore(paths["ours_backup"], delete_checkpoint=False),
        )
    settle()
    return paths


def _backup_resume(callback: Any, model: Any) -> Callable[[], None]:
    """Restores at `fit` start (`on_train_begin`); returns the untimed end of that `fit`."""
    callback.set_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # "resuming from ...", once per repetition
        callback.on_train_begin()
    return callback.on_train_end  # gives the directory's lock and the signal handlers back


def run(
    model: Any,
    x: Any,
    y: Any,
    params: int,
    root: str,
    label: str,
    reps: int = 5,
    log: Callable[[str], None] = print,
) -> Table:
    import keras

    import keras_ckpt

    log(f"  [{label}] resume: writing the files")
    paths = _prepare(model, x, y, root)
    target = build_model(params, seed=1)
    notes: list[str] = []

    def keras_load_model() -> None:
        loaded = keras.saving.load_model(paths["keras_model_file"])
        del loaded

    def ours_load_model() -> None:
        loaded = keras_ckpt.CheckpointManager(paths["ours_model"]).load_model()
        del loaded

    pairs: list[tuple[str, str, Callable[[], Any], str, Callable[[], Any]]] = [
        (
            "weights",
            "model.load_weights(.weights.h5)",
            lambda: target.load_weights(paths["keras_weights_file"]),
            "CheckpointManager(dir).load_weights(model)",
            lambda: keras_ckpt.CheckpointManager(paths["ours_weights"]).load_weights(target),
        ),
        (
            "full model",
            "keras.saving.load_model(.keras)",
            keras_load_model,
            "CheckpointManager(dir).load_model()",
            ours_load_model,
        ),
    ]
    pairs.append(
        (
            "backup",
            "keras BackupAndRestore.on_train_begin",
            lambda: _backup_resume(
                keras.callbacks.BackupAndRestore(paths["keras_backup"], delete_checkpoint=False),
                target,
            ),
            "keras-ckpt BackupAndRestore.on_train_begin",
            lambda: _backup_resume(
                keras_ckpt.BackupAndRestore(paths["ours_backup"], delete_checkpoint=False), target
            ),
        )
    )

    stats: dict[str, Stat] = {}
    jobs: list[tuple[str, Callable[[], Any]]] = []
    for _, keras_name, keras_fn, ours_name, ours_fn in pairs:
        stats[keras_name] = Stat()
        stats[ours_name] = Stat()
        jobs += [(keras_name, keras_fn), (ours_name, ours_fn)]

    failed: set[str] = set()
    for name, fn in jobs:  # warm-up, and find what cannot run here
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cleanup = fn()
                if callable(cleanup):
                    cleanup()
        except Exception as e:
            failed.add(name)
            notes.append(f"{name} failed: {type(e).__name__}: {e}"[:300])
    for rep in range(reps):
        log(f"  [{label}] resume repetition {rep + 1}/{reps}")
        for name, fn in rotated(jobs, rep):
            if name in failed:
                continue
            gc.collect()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                cleanup = fn()
                stats[name].add(time.perf_counter() - start)
                if callable(cleanup):
                    cleanup()
    settle(root)

    table = Table(
        title=f"Resume time, {label} model, {reps} repetitions (files in page cache)",
        columns=[
            "what",
            "Keras",
            "time median (min-max)",
            "keras-ckpt",
            "time median (min-max)",
            "keras-ckpt / Keras",
        ],
    )
    data: dict[str, Any] = {}
    for what, keras_name, _, ours_name, _ in pairs:
        ratio, ratio_data = ratio_cell(stats[ours_name], stats[keras_name])
        table.add(
            what, keras_name, stats[keras_name].cell(), ours_name, stats[ours_name].cell(), ratio
        )
        data[what] = {
            "keras": {"name": keras_name, **stats[keras_name].to_json()},
            "ours": {"name": ours_name, **stats[ours_name].to_json()},
            "ratio": ratio_data,
        }
    table.notes += notes
    table.data = {"model": label, "pairs": data}
    return table
