"""What a save costs training: time blocked in the callback, and whole-fit overhead, per save.

Two figures per callback, from the same fits (PyTorch DCP and Orbax report the same pair):

- **blocked**: the time the training thread spent inside the callback's hooks, timed directly
  (`_common.HookTimer` wraps every hook of the callback instance), divided by the saves. It
  includes `on_train_begin` and the final flush in `on_train_end` (a background writer's last
  save, waited for there), and any wait in `wait_until_finished()` after `fit` returns.
- **overhead**: (fit time with the callback - fit time without) / saves. A background writer
  takes CPU from training on a busy machine; that shows up here and not as blocked time.

Method, for one model:

- Every fit trains the same model for `saves` epochs of `steps` steps and the callback saves at
  every epoch end (`save_freq="epoch"` for all of them, Keras's and ours).
- **Cadence where the disk keeps up.** Without `steps`, the interval is chosen from the measured
  step time and the write + fsync floor: at least `min_steps` steps, at least `min_seconds` of
  training, and at least `disk_factor` times the floor, so that a durable writer can finish
  before the next save. The output says which, with the floor.
- **Paired fits, order varied between rounds.** A round runs `B V1 B V2 ... B Vn B` (B: the
  same fit with no callback); each variant's overhead is measured against the mean of the two
  baseline fits around it, so a slow drift of the machine cancels. The variants' order is a
  seeded permutation in even rounds, run backwards in the odd round after (ABBA-like,
  `_common.round_order`), so no variant always runs early, nor next to the same one. Medians
  over rounds, with the min-max. The process's CPU time is compared the same way ("extra
  CPU"): a callback's work on any thread, less disturbed by other processes than wall time.
- **Floors** at the start of every round: copying the state to host memory (fresh arrays, and
  into buffers reused across saves), writing its bytes to one file, and writing + fsyncing them.
- After every fit, outside the timing, its folder is deleted and `os.sync()` flushes what an
  unsynced writer left in the page cache, so that write-back does not land on the next fit. One
  untimed warm-up fit per variant comes first (tracing, imports, first-use allocations).

References: Keras's `ModelCheckpoint` (`.keras` and `.weights.h5`) and `BackupAndRestore`, each
unsynced (as Keras ships them) and followed by an fsync of every file written and of its folder
(the durability a keras-ckpt save has), and `keras.callbacks.OrbaxCheckpoint` (background, the
default; it is durable: Orbax writes into a temporary folder and renames it) when
`orbax-checkpoint` is installed. Keras 3.15's `OrbaxCheckpoint` runs on TensorFlow, JAX and
PyTorch: off JAX it converts the state to NumPy on the training thread, then writes in the
background.
"""

from __future__ import annotations

import functools
import gc
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._common import (
    BATCH_SIZE,
    HookTimer,
    Stat,
    Table,
    fit_data,
    fmt,
    fsync_path,
    round_order,
    settle,
    state_variables,
    training_data,
    tree_bytes,
)


@dataclass(frozen=True)
class Variant:
    """One callback configuration. `make(folder)` builds a fresh callback writing into `folder`."""

    key: str
    name: str
    make: Callable[[str], Any]
    ours: bool = False
    background: bool = False
    durable: bool = False


@functools.cache
def _synced_classes() -> tuple[type, type]:
    """Keras's `ModelCheckpoint` and `BackupAndRestore`, each save followed by fsyncs.

    Equal durability with keras-ckpt's saves: every file the save wrote, then its folder (which
    makes the new entries durable). Everything else is Keras's own code.
    """
    import keras

    class SyncedModelCheckpoint(keras.callbacks.ModelCheckpoint):
        def _save_model(self, epoch: int, batch: int | None, logs: dict | None) -> None:
            super()._save_model(epoch, batch, logs)
            path = self._get_file_path(epoch, batch, logs)
            fsync_path(path)
            fsync_path(os.path.dirname(path) or ".")

    class SyncedBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self) -> None:
            super()._save_model()
            fsync_path(self._weights_path)
            fsync_path(self._training_metadata_path)
            fsync_path(self.backup_dir)

    return SyncedModelCheckpoint, SyncedBackupAndRestore


def orbax_available() -> bool:
    import importlib.util

    import keras

    return (
        hasattr(keras.callbacks, "OrbaxCheckpoint")
        and importlib.util.find_spec("orbax") is not None
        and importlib.util.find_spec("orbax.checkpoint") is not None
    )


def variants(include_orbax: bool = True) -> tuple[list[Variant], list[str]]:
    """Every variant this environment can run, and notes on the ones it cannot."""
    import keras

    import keras_ckpt

    synced_mc, synced_backup = _synced_classes()
    mc, backup = keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore
    full, weights = "m-{epoch:03d}.keras", "m-{epoch:03d}.weights.h5"
    found = [
        Variant("keras_mc", "Keras ModelCheckpoint .keras", lambda d: mc(os.path.join(d, full))),
        Variant(
            "keras_mc_fsync",
            "Keras ModelCheckpoint .keras + fsync",
            lambda d: synced_mc(os.path.join(d, full)),
            durable=True,
        ),
        Variant(
            "keras_weights",
            "Keras ModelCheckpoint .weights.h5",
            lambda d: mc(os.path.join(d, weights), save_weights_only=True),
        ),
        Variant(
            "keras_weights_fsync",
            "Keras ModelCheckpoint .weights.h5 + fsync",
            lambda d: synced_mc(os.path.join(d, weights), save_weights_only=True),
            durable=True,
        ),
        Variant(
            "keras_backup",
            "Keras BackupAndRestore",
            lambda d: backup(d, delete_checkpoint=False),
        ),
        Variant(
            "keras_backup_fsync",
            "Keras BackupAndRestore + fsync",
            lambda d: synced_backup(d, delete_checkpoint=False),
            durable=True,
        ),
        Variant(
            "ours_keras",
            "keras-ckpt ModelCheckpoint .keras (background, default)",
            lambda d: keras_ckpt.ModelCheckpoint(os.path.join(d, full)),
            ours=True,
            background=True,
            durable=True,
        ),
        Variant(
            "ours_keras_inline",
            "keras-ckpt ModelCheckpoint .keras, async_save=False",
            lambda d: keras_ckpt.ModelCheckpoint(os.path.join(d, full), async_save=False),
            ours=True,
            durable=True,
        ),
        Variant(
            "ours_weights",
            "keras-ckpt ModelCheckpoint .weights.h5 (background, default)",
            lambda d: keras_ckpt.ModelCheckpoint(os.path.join(d, weights), save_weights_only=True),
            ours=True,
            background=True,
            durable=True,
        ),
        Variant(
            "ours_backup",
            "keras-ckpt BackupAndRestore (background, default)",
            lambda d: keras_ckpt.BackupAndRestore(d, delete_checkpoint=False),
            ours=True,
            background=True,
            durable=True,
        ),
        Variant(
            "ours_backup_inline",
            "keras-ckpt BackupAndRestore, async_save=False",
            lambda d: keras_ckpt.BackupAndRestore(d, delete_checkpoint=False, async_save=False),
            ours=True,
            durable=True,
        ),
    ]
    notes: list[str] = []
    if include_orbax and orbax_available():
        found.insert(
            6,
            Variant(
                "keras_orbax",
                "Keras OrbaxCheckpoint (background, default)",
                lambda d: keras.callbacks.OrbaxCheckpoint(
                    os.path.join(d, "orbax"), max_to_keep=None
                ),
                background=True,
                durable=True,
            ),
        )
    elif include_orbax:
        notes.append(
            "orbax-checkpoint is not installed (`pip install -e .[bench]`): no OrbaxCheckpoint."
        )
    return found, notes


def quiet_orbax() -> None:
    """Orbax logs a warning per save through absl; the tables are the output."""
    try:
        import absl.logging

        absl.logging.set_verbosity("error")
    except ImportError:
        pass


def wait_for(callback: Any) -> None:
    """Whatever a callback may still be writing after `fit` returned."""
    fn = getattr(callback, "wait_until_finished", None)
    if callable(fn):
        fn()


def fit_with(model: Any, x: Any, y: Any, epochs: int, callback: Any | None) -> None:
    """`model.fit` for `epochs` epochs with one callback (or none), then waits for its writes."""
    model.fit(
        **fit_data(x, y),
        epochs=epochs,
        verbose=0,
        callbacks=[callback] if callback is not None else [],
    )
    if callback is not None:
        wait_for(callback)


# ----------------------------------------------------------------------------- floors


class Floors:
    """What no checkpoint of this state can beat, measured on the same machine in the same run."""

    NAMES = ("copy_fresh", "copy_reused", "write", "write_fsync")
    TITLES = {
        "copy_fresh": "host copy, fresh arrays (np.array of every variable)",
        "copy_reused": "host copy into buffers reused across saves (np.copyto)",
        "write": "write the state's bytes (page cache)",
        "write_fsync": "write + fsync the state's bytes",
    }

    def __init__(self, model: Any, folder: str):
        import numpy as np

        self.model = model
        self.path = os.path.join(folder, "floor.bin")
        self.buffers = [np.array(v) for v in state_variables(model)]
        self.state_bytes = sum(b.nbytes for b in self.buffers)
        self.stats = {name: Stat() for name in self.NAMES}

    def measure(self) -> None:
        for name in self.NAMES:
            gc.collect()
            self.stats[name].add(getattr(self, "_" + name)())
            settle()

    def _copy_fresh(self) -> float:
        import numpy as np

        start = time.perf_counter()
        copies = [np.array(v) for v in state_variables(self.model)]
        seconds = time.perf_counter() - start
        del copies
        return seconds

    def _copy_reused(self) -> float:
        import numpy as np

        start = time.perf_counter()
        for buffer, variable in zip(self.buffers, state_variables(self.model), strict=True):
            np.copyto(buffer, np.asarray(variable))
        return time.perf_counter() - start

    def _write(self, sync: bool = False) -> float:
        start = time.perf_counter()
        with open(self.path, "wb") as f:
            for buffer in self.buffers:
                f.write(memoryview(buffer).cast("B"))
            f.flush()
            if sync:
                os.fsync(f.fileno())
        seconds = time.perf_counter() - start
        os.remove(self.path)
        return seconds

    def _write_fsync(self) -> float:
        return self._write(sync=True)

    def to_json(self) -> dict[str, Any]:
        return {name: stat.to_json() for name, stat in self.stats.items()}


# ----------------------------------------------------------------------------- fits


@dataclass
class Cadence:
    steps: int
    step_seconds: float
    floor_seconds: float
    reason: str

    @property
    def between_saves(self) -> float:
        return self.steps * self.step_seconds

    @property
    def keeps_up(self) -> bool:
        return self.floor_seconds <= 0.5 * self.between_saves

    def describe(self) -> str:
        share = self.floor_seconds / self.between_saves if self.between_saves else math.nan
        verdict = (
            "the disk keeps up"
            if self.keeps_up
            else "the disk may NOT keep up: durable background rows measure the disk"
        )
        return (
            f"a save every {self.steps} steps = {fmt(self.between_saves)} of training "
            f"({fmt(self.step_seconds)} a step, batch {BATCH_SIZE}; {self.reason}); "
            f"write + fsync floor {fmt(self.floor_seconds)} = {share:.0%} of it: {verdict}"
        )


def choose_cadence(
    step_seconds: float,
    floor_seconds: float,
    steps: int | None,
    min_steps: int = 12,
    min_seconds: float = 2.0,
    disk_factor: float = 4.0,
) -> Cadence:
    """The steps between saves: given, or the fewest that leave the disk time to keep up."""
    if steps is not None:
        return Cadence(steps, step_seconds, floor_seconds, "as given")
    by_time = math.ceil(min_seconds / step_seconds)
    by_disk = math.ceil(disk_factor * floor_seconds / step_seconds)
    chosen = max(min_steps, by_time, by_disk)
    if chosen == by_disk and by_disk > max(min_steps, by_time):
        reason = f"{disk_factor:g}x the write + fsync floor"
    elif chosen == by_time and by_time > min_steps:
        reason = f"at least {fmt(min_seconds)} of training"
    else:
        reason = f"at least {min_steps} steps"
    return Cadence(chosen, step_seconds, floor_seconds, reason)


def measure(
    model: Any,
    root: str,
    label: str,
    *,
    saves: int = 6,
    rounds: int = 4,
    steps: int | None = None,
    min_steps: int = 12,
    min_seconds: float = 2.0,
    include_orbax: bool = True,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the warm-up, the cadence choice, the floors and `rounds` rounds of paired fits.

    Returns every raw measurement (each fit's time and per-hook durations, each floor sample)
    and their summaries per variant, ready for JSON.
    """
    quiet_orbax()
    found, notes = variants(include_orbax)
    if only is not None:
        unknown = set(only) - {v.key for v in found}
        if unknown:
            raise ValueError(
                f"Invalid value for argument `only`. Expected variant keys among "
                f"{[v.key for v in found]}. Received: {sorted(unknown)}"
            )
        found = [v for v in found if v.key in only]
    fit_folder = os.path.join(root, "fit")

    def fit_once(variant: Variant | None, x: Any, y: Any, epochs: int) -> dict[str, Any]:
        os.makedirs(fit_folder)
        callback = variant.make(fit_folder) if variant is not None else None
        timer = HookTimer(callback) if callback is not None else None
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu = time.process_time()
            start = time.perf_counter()
            model.fit(
                **fit_data(x, y),
                epochs=epochs,
                verbose=0,
                callbacks=[callback] if callback is not None else [],
            )
            seconds = time.perf_counter() - start
            if callback is not None:
                wait_for(callback)
            after = time.perf_counter() - start - seconds
            cpu = time.process_time() - cpu
        record = {
            "variant": variant.key if variant is not None else None,
            "seconds": seconds + after,
            "cpu_seconds": cpu,
            "after_fit_wait": after,
            "saves": epochs,
            "hooks": timer.calls if timer is not None else {},
            "bytes_on_disk": tree_bytes(fit_folder),
        }
        del callback
        settle(fit_folder)
        return record

    log(f"  [{label}] warm-up and cadence")
    probe_steps = steps or min_steps
    x, y = training_data(probe_steps)
    fit_once(None, x, y, 1)  # tracing
    # Keras, TensorFlow and the traced model are hundreds of thousands of long-lived objects:
    # frozen, they are out of every garbage collection (the explicit ones between fits took
    # 0.3 s each, and the automatic ones run during the timed fits). `run` unfreezes them.
    gc.freeze()
    probe = fit_once(None, x, y, 2)
    step_seconds = probe["seconds"] / (2 * probe_steps)
    floors = Floors(model, root)
    floors.measure()
    cadence = choose_cadence(
        step_seconds,
        floors.stats["write_fsync"].median,
        steps,
        min_steps=min_steps,
        min_seconds=min_seconds,
    )
    log(f"  [{label}] {cadence.describe()}")
    if cadence.steps != probe_steps:
        x, y = training_data(cadence.steps)
    usable = []
    for variant in found:
        try:
            fit_once(variant, x, y, 1)
            usable.append(variant)
        except Exception as e:  # a variant that cannot run here is reported, not fatal
            notes.append(f"{variant.name} left out: {type(e).__name__}: {e}"[:300])
            settle(fit_folder)

    fits: list[dict[str, Any]] = []
    for r in range(rounds):
        order = round_order(usable, r)
        log(f"  [{label}] round {r + 1}/{rounds}: floors, then {2 * len(order) + 1} fits")
        floors.measure()
        sequence: list[Variant | None] = [None]
        for variant in order:
            sequence += [variant, None]
        for position, variant in enumerate(sequence):
            record = fit_once(variant, x, y, saves)
            record.update({"round": r, "position": position})
            fits.append(record)

    summary = summarize(fits, usable, saves)
    return {
        "model": label,
        "parameters": model.count_params(),
        "state_bytes": floors.state_bytes,
        "config": {
            "steps_per_save": cadence.steps,
            "saves_per_fit": saves,
            "rounds": rounds,
            "batch_size": BATCH_SIZE,
            "step_seconds": step_seconds,
            "training_between_saves_seconds": cadence.between_saves,
            "disk_keeps_up": cadence.keeps_up,
            "cadence": cadence.describe(),
        },
        "floors": floors.to_json(),
        "fits": fits,
        "notes": notes,
        **summary,
    }


def summarize(fits: list[dict[str, Any]], usable: list[Variant], saves: int) -> dict[str, Any]:
    """Per variant: blocked and overhead per save, one sample per round, from the raw fits."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for record in fits:
        by_round.setdefault(record["round"], []).append(record)
    baseline = Stat()
    out: dict[str, dict[str, Any]] = {
        v.key: {
            "name": v.name,
            "ours": v.ours,
            "background": v.background,
            "durable": v.durable,
            "blocked_per_save": Stat(),
            "overhead_per_save": Stat(),
            "cpu_per_save": Stat(),
            "train_end_per_save": Stat(),
            "fit_seconds": Stat(),
            "bytes_on_disk": None,
        }
        for v in usable
    }
    for _, records in sorted(by_round.items()):
        records = sorted(records, key=lambda rec: rec["position"])
        for i, record in enumerate(records):
            if record["variant"] is None:
                baseline.add(record["seconds"])
                continue
            around = [records[j] for j in (i - 1, i + 1)]
            entry = out[record["variant"]]
            hooks = record["hooks"]
            blocked = sum(sum(d) for d in hooks.values()) + record["after_fit_wait"]
            end = sum(hooks.get("on_train_end", [])) + record["after_fit_wait"]
            entry["blocked_per_save"].add(blocked / saves)
            entry["train_end_per_save"].add(end / saves)
            without = sum(r["seconds"] for r in around) / 2
            entry["overhead_per_save"].add((record["seconds"] - without) / saves)
            without_cpu = sum(r["cpu_seconds"] for r in around) / 2
            entry["cpu_per_save"].add((record["cpu_seconds"] - without_cpu) / saves)
            entry["fit_seconds"].add(record["seconds"])
            entry["bytes_on_disk"] = record["bytes_on_disk"]
    for entry in out.values():
        for name in (
            "blocked_per_save",
            "overhead_per_save",
            "cpu_per_save",
            "train_end_per_save",
            "fit_seconds",
        ):
            entry[name] = entry[name].to_json()
    return {"variants": out, "baseline_fit": baseline.to_json()}


# ----------------------------------------------------------------------------- table


def table(result: dict[str, Any]) -> Table:
    """Every variant's blocked time and overhead per save, and the floors, for one model."""
    config = result["config"]
    floor = result["floors"]["write_fsync"]["median"]
    out = Table(
        title=(
            f"Per save during fit, {result['model']} model "
            f"({result['state_bytes'] / 1e6:.0f} MB of state), {config['saves_per_fit']} saves "
            f"per fit, {config['rounds']} rounds: median (min-max)"
        ),
        columns=[
            "callback",
            "blocked",
            "of which at fit end",
            "overhead (fit with - without)",
            "extra CPU (process)",
            "blocked / write+fsync floor",
            "on disk after fit",
        ],
    )
    for key, entry in result["variants"].items():
        blocked = _stat(entry["blocked_per_save"])
        out.add(
            entry["name"],
            blocked.cell(),
            _stat(entry["train_end_per_save"]).cell(),
            _stat(entry["overhead_per_save"]).cell(),
            _stat(entry["cpu_per_save"]).cell(),
            fmt(blocked.median / floor, "x") if floor else "-",
            fmt(entry["bytes_on_disk"], "B"),
        )
        out.data[key] = entry["name"]
    for name in Floors.NAMES:
        stat = _stat(result["floors"][name])
        out.add(
            f"floor: {Floors.TITLES[name]}",
            stat.cell(),
            "",
            "",
            "",
            fmt(stat.median / floor, "x") if floor else "-",
            fmt(result["state_bytes"], "B"),
        )
    training = _stat(result["baseline_fit"])
    out.add(f"(fit with no callback, {config['saves_per_fit']} epochs)", training.cell(), "", "")
    out.notes.append(f"Cadence: {config['cadence']}.")
    out.notes.append(
        "blocked: time the training thread spent in the callback's hooks (timed directly), "
        "fit end included; overhead: the fit's time minus the mean of the two fits with no "
        "callback around it, per save; extra CPU: the same difference in the process's CPU time "
        "(every thread: training, the writer, the checksums), less sensitive to other load."
    )
    out.notes += result["notes"]
    return out


def _stat(data: dict[str, Any]) -> Stat:
    return Stat(list(data["samples"]), data.get("unit", "s"))
