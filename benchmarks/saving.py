"""Training-time overhead per save: keras-ckpt's callbacks against Keras's, one model, one process.

What is measured, for one model size:

- overhead per save on fit = (time of `model.fit` with the callback saving N times - time of the
  same `fit` with no callback, measured in the same repetition) / N. Every variant runs the same
  model on the same data (a few batches per epoch, `save_freq="epoch"`, N epochs). The timing
  covers the whole `fit` call, so a background writer that is still busy when training ends is
  waited for (`on_train_end`, and `wait_until_finished()`/`wait()`/`join()` when the callback has
  one) and its cost counts.
- The batches per epoch (`--steps`, default 8) are the training a background writer can hide
  behind: with too few, an async save finds the previous one still running and degenerates into a
  sync save that also competes for the CPU. The table title gives the training time per epoch;
  it should be longer than a Keras save for the async rows to mean what they say.
- The floors, measured in the same repetitions: copying every variable (model and optimizer) to
  host memory with `np.array`, and writing those bytes to one file with a plain `write`, with and
  without `fsync`. No checkpoint can cost less than copy + write + fsync.

Variants (those that cannot be built here are left out with a note): Keras's `ModelCheckpoint`
(`.keras`, and `.weights.h5` with `save_weights_only`), `BackupAndRestore` and `OrbaxCheckpoint`
(background saving, `max_to_keep=None`; needs `orbax-checkpoint`), keras-ckpt's `ModelCheckpoint`
in both formats, and, when their signatures have `async_save`, the `async_save=True` variants and
keras-ckpt's `BackupAndRestore`. Keras's `.weights.h5` holds the optimizer too (it is built), so
both formats carry about 12 bytes per parameter; Orbax's weights-only checkpoint leaves the
optimizer out and is about a third of that. Both `BackupAndRestore`s run with
`delete_checkpoint=False`, so neither pays for deleting its backup when `fit` ends.

Fairness: every `fit` writes into a fresh folder; after it, outside the timing, the folder is
deleted and `os.sync()` flushes what an unsynced writer left in the page cache, so that write-back
does not land on the next variant. The order of the variants rotates between repetitions and one
untimed warm-up `fit` per variant comes first (tracing, imports, first-use allocations).

The machine matters: on 2 cores a background writer competes with training for CPU, and other
processes on the machine add noise; read the min-max, not only the median.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._common import (
    BATCH_SIZE,
    Stat,
    Table,
    fit_data,
    fmt,
    ratio_cell,
    rotated,
    settle,
    state_variables,
    tree_bytes,
)


@dataclass
class Variant:
    """One callback configuration. `make(folder)` builds a fresh callback writing into `folder`."""

    name: str
    kind: str  # "full" or "weights"
    make: Callable[[str], Any]
    ours: bool = False
    background: bool = False


def supports_async(cls: Any) -> bool:
    return cls is not None and "async_save" in inspect.signature(cls).parameters


def orbax_available() -> bool:
    import importlib.util

    import keras

    return (
        hasattr(keras.callbacks, "OrbaxCheckpoint")
        and importlib.util.find_spec("orbax") is not None
        and importlib.util.find_spec("orbax.checkpoint") is not None
    )


def sync_kwargs(cls: Any) -> dict[str, Any]:
    """`async_save=False` where the callback has the argument (its default may be True)."""
    return {"async_save": False} if supports_async(cls) else {}


CORE = (
    "Keras ModelCheckpoint .keras",
    "keras-ckpt ModelCheckpoint .keras (sync)",
    "keras-ckpt ModelCheckpoint .keras (async)",
    "Keras ModelCheckpoint .weights.h5",
    "keras-ckpt ModelCheckpoint .weights.h5 (sync)",
    "keras-ckpt ModelCheckpoint .weights.h5 (async)",
)


def variants(include_orbax: bool = True) -> tuple[list[Variant], list[str]]:
    """Every variant this environment can run, and notes on the ones it cannot."""
    import keras

    import keras_ckpt

    notes: list[str] = []
    ours_sync = sync_kwargs(keras_ckpt.ModelCheckpoint)
    found = [
        Variant(
            "Keras ModelCheckpoint .keras",
            "full",
            lambda d: keras.callbacks.ModelCheckpoint(os.path.join(d, "m-{epoch:03d}.keras")),
        ),
        Variant(
            "keras-ckpt ModelCheckpoint .keras (sync)",
            "full",
            lambda d: keras_ckpt.ModelCheckpoint(
                os.path.join(d, "m-{epoch:03d}.keras"), **ours_sync
            ),
            ours=True,
        ),
        Variant(
            "Keras ModelCheckpoint .weights.h5",
            "weights",
            lambda d: keras.callbacks.ModelCheckpoint(
                os.path.join(d, "m-{epoch:03d}.weights.h5"), save_weights_only=True
            ),
        ),
        Variant(
            "keras-ckpt ModelCheckpoint .weights.h5 (sync)",
            "weights",
            lambda d: keras_ckpt.ModelCheckpoint(
                os.path.join(d, "m-{epoch:03d}.weights.h5"), save_weights_only=True, **ours_sync
            ),
            ours=True,
        ),
        Variant(
            "Keras BackupAndRestore",
            "weights",
            lambda d: keras.callbacks.BackupAndRestore(d, delete_checkpoint=False),
        ),
    ]
    if supports_async(keras_ckpt.ModelCheckpoint):
        found.insert(
            2,
            Variant(
                "keras-ckpt ModelCheckpoint .keras (async)",
                "full",
                lambda d: keras_ckpt.ModelCheckpoint(
                    os.path.join(d, "m-{epoch:03d}.keras"), async_save=True
                ),
                ours=True,
                background=True,
            ),
        )
        found.append(
            Variant(
                "keras-ckpt ModelCheckpoint .weights.h5 (async)",
                "weights",
                lambda d: keras_ckpt.ModelCheckpoint(
                    os.path.join(d, "m-{epoch:03d}.weights.h5"),
                    save_weights_only=True,
                    async_save=True,
                ),
                ours=True,
                background=True,
            ),
        )
    else:
        notes.append("keras_ckpt.ModelCheckpoint has no `async_save` yet: async rows left out.")
    ours_backup = getattr(keras_ckpt, "BackupAndRestore", None)
    if ours_backup is not None:
        found.append(
            Variant(
                "keras-ckpt BackupAndRestore (sync)",
                "weights",
                lambda d: ours_backup(d, delete_checkpoint=False, **sync_kwargs(ours_backup)),
                ours=True,
            )
        )
        if supports_async(ours_backup):
            found.append(
                Variant(
                    "keras-ckpt BackupAndRestore (async)",
                    "weights",
                    lambda d: ours_backup(d, delete_checkpoint=False, async_save=True),
                    ours=True,
                    background=True,
                )
            )
    else:
        notes.append("keras_ckpt.BackupAndRestore does not exist yet: left out.")
    if include_orbax and orbax_available():
        found.append(
            Variant(
                "Keras OrbaxCheckpoint (background)",
                "full",
                lambda d: keras.callbacks.OrbaxCheckpoint(
                    os.path.join(d, "orbax"), max_to_keep=None
                ),
                background=True,
            )
        )
        found.append(
            Variant(
                "Keras OrbaxCheckpoint weights-only (background)",
                "weights",
                lambda d: keras.callbacks.OrbaxCheckpoint(
                    os.path.join(d, "orbax"), max_to_keep=None, save_weights_only=True
                ),
                background=True,
            )
        )
    elif include_orbax:
        notes.append("orbax-checkpoint is not installed: OrbaxCheckpoint rows left out.")
    return found, notes


def _quiet_orbax() -> None:
    try:
        import absl.logging

        absl.logging.set_verbosity("error")
    except ImportError:
        pass


def _wait(callback: Any) -> None:
    for method in ("wait_until_finished", "wait", "join"):
        fn = getattr(callback, method, None)
        if callable(fn):
            fn()
            return


def _fit(model: Any, x: Any, y: Any, epochs: int, callback: Any | None) -> None:
    model.fit(
        **fit_data(x, y),
        epochs=epochs,
        verbose=0,
        callbacks=[callback] if callback is not None else [],
    )
    if callback is not None:
        _wait(callback)


def host_copy(model: Any) -> list[Any]:
    import numpy as np

    return [np.array(v) for v in state_variables(model)]


def write_arrays(path: str, arrays: list[Any], sync: bool) -> None:
    with open(path, "wb") as f:
        for array in arrays:
            f.write(memoryview(array).cast("B"))
        f.flush()
        if sync:
            os.fsync(f.fileno())


def run(
    model: Any,
    x: Any,
    y: Any,
    root: str,
    label: str,
    saves: int = 3,
    reps: int = 3,
    include_orbax: bool = True,
    core_only: bool = False,
    log: Callable[[str], None] = print,
) -> Table:
    """Measures every variant and the floors for one model; returns the section's table.

    `core_only` keeps the `ModelCheckpoint` rows (Keras's and ours), for models so large that
    every variant would not fit the time budget.
    """
    import gc

    _quiet_orbax()
    found, notes = variants(include_orbax)
    if core_only:
        left_out = [v.name for v in found if v.name not in CORE]
        found = [v for v in found if v.name in CORE]
        if left_out:
            notes.append(f"Left out for time at this size: {', '.join(left_out)}.")

    def fit_once(variant: Variant | None, epochs: int) -> tuple[float, int]:
        folder = os.path.join(root, "fit")
        os.makedirs(folder)
        callback = variant.make(folder) if variant is not None else None
        gc.collect()
        start = time.perf_counter()
        _fit(model, x, y, epochs, callback)
        seconds = time.perf_counter() - start
        on_disk = tree_bytes(folder)
        del callback
        settle(folder)
        return seconds, on_disk

    log(f"  [{label}] warm-up")
    _fit(model, x, y, 1, None)
    usable = []
    for variant in found:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit_once(variant, 1)
            usable.append(variant)
        except Exception as e:  # a variant that cannot run here is reported, not fatal
            notes.append(f"{variant.name} left out: {type(e).__name__}: {e}"[:300])
            settle(os.path.join(root, "fit"))

    arrays = host_copy(model)
    state_bytes = sum(a.nbytes for a in arrays)
    floor_file = os.path.join(root, "floor.bin")

    baseline = Stat()
    fits = {v.name: Stat() for v in usable}
    on_disk: dict[str, int] = {}
    floors = {"copy": Stat(), "write": Stat(), "write+fsync": Stat()}

    def measure_floor(which: str) -> float:
        if which == "copy":
            seconds, copies = _timed(lambda: host_copy(model))
            del copies
            return seconds
        seconds, _ = _timed(lambda: write_arrays(floor_file, arrays, sync=which == "write+fsync"))
        os.remove(floor_file)
        settle()
        return seconds

    items: list[Any] = [None, *usable, *floors]
    for rep in range(reps):
        log(f"  [{label}] repetition {rep + 1}/{reps}")
        for item in rotated(items, rep):
            if isinstance(item, str):
                floors[item].add(measure_floor(item))
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seconds, size = fit_once(item, saves)
            if item is None:
                baseline.add(seconds)
            else:
                fits[item.name].add(seconds)
                on_disk[item.name] = size

    overhead = {
        name: Stat([(t - b) / saves for t, b in zip(stat.samples, baseline.samples, strict=True)])
        for name, stat in fits.items()
    }
    steps = len(x) // BATCH_SIZE
    training = f"{steps} steps ({baseline.median / saves:.1f} s) of training between saves"
    table = _table(
        label, saves, reps, usable, overhead, on_disk, baseline, floors, state_bytes, notes
    )
    table.title += f", {training}"
    table.data["model"] = label
    table.data["steps_per_epoch"] = steps
    return table


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _table(
    label: str,
    saves: int,
    reps: int,
    usable: list[Variant],
    overhead: dict[str, Stat],
    on_disk: dict[str, int],
    baseline: Stat,
    floors: dict[str, Stat],
    state_bytes: int,
    notes: list[str],
) -> Table:
    table = Table(
        title=(
            f"Overhead per save on fit, {label} model ({state_bytes / 1e6:.0f} MB of state), "
            f"{saves} saves per fit, {reps} repetitions"
        ),
        columns=[
            "variant",
            "per save: median (min-max)",
            "x Keras MC, same format",
            "x Keras MC .keras",
            "x write+fsync floor",
            "on disk after fit",
        ],
    )
    keras_full = overhead.get("Keras ModelCheckpoint .keras")
    keras_weights = overhead.get("Keras ModelCheckpoint .weights.h5")
    keras_backup = overhead.get("Keras BackupAndRestore")
    floor_sync = floors["write+fsync"]
    data: dict[str, Any] = {"overhead_per_save": {}, "ratios": {}, "floors": {}}
    for kind, reference in (("full", keras_full), ("weights", keras_weights)):
        for variant in (v for v in usable if v.kind == kind):
            stat = overhead[variant.name]
            same, same_data = ratio_cell(stat, reference) if reference else ("-", {})
            full, full_data = ratio_cell(stat, keras_full) if keras_full else ("-", {})
            if stat is reference:
                same = "ref"
            if stat is keras_full:
                full = "ref"
            floor, _ = ratio_cell(stat, floor_sync)
            table.add(
                variant.name, stat.cell(), same, full, floor, fmt(on_disk.get(variant.name), "B")
            )
            data["overhead_per_save"][variant.name] = stat.to_json()
            data["ratios"][variant.name] = {"same_format": same_data, "keras_keras": full_data}
            if variant.ours and "BackupAndRestore" in variant.name and keras_backup:
                data["ratios"][variant.name]["keras_backup"] = ratio_cell(stat, keras_backup)[1]
    for name, title in (
        ("copy", "floor: np.array of every variable"),
        ("write", "floor: write the same bytes (page cache)"),
        ("write+fsync", "floor: write + fsync the same bytes"),
    ):
        floor_ratio, _ = ratio_cell(floors[name], floor_sync)
        full, _ = ratio_cell(floors[name], keras_full) if keras_full else ("-", {})
        table.add(title, floors[name].cell(), "-", full, floor_ratio, fmt(state_bytes, "B"))
        data["floors"][name] = floors[name].to_json()
    table.add(f"(fit with no callback, {saves} epochs)", baseline.cell(), "", "", "", "")
    data["baseline_fit"] = baseline.to_json()
    data["state_bytes"] = state_bytes
    data["saves_per_fit"] = saves
    table.notes += notes
    table.notes.append(
        "Ratios are ratios of medians; in brackets the min-max of the per-repetition ratios."
    )
    table.data = data
    return table
