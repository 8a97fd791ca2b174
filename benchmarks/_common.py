"""Shared pieces of the benchmarks: the model, timing statistics, hook timing, tables, environment.

Nothing here is timed itself. The sections (`saving`, `resume`, `memory`, `listing`) build on it,
`targets` turns their results into the must-reach table, `run.py` ties them together and `plot.py`
draws the table from the JSON file a run writes.
"""

from __future__ import annotations

import functools
import gc
import importlib.metadata
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

INPUT_DIM = 128
OUTPUT_DIM = 10
HIDDEN_LAYERS = 4
BATCH_SIZE = 16
STEPS_PER_EPOCH = 8


def parse_size(text: str) -> int:
    """`"25M"` -> 25_000_000; also accepts `k`/`G` suffixes and plain integers."""
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    value = float(number) * scale
    if value < 10_000:
        raise ValueError(f"Model size {text!r} is too small to be meaningful here (min 10k).")
    return int(value)


def size_label(params: int) -> str:
    """`9_200_000` -> `"9.2M"`, `25_000_000` -> `"25M"`, `20_000` -> `"20k"`."""
    value, suffix = (params / 1e6, "M") if params >= 1e6 else (params / 1e3, "k")
    return f"{value:.1f}".rstrip("0").rstrip(".") + suffix


def hidden_width(params: int) -> int:
    """Width w of the hidden Dense layers so that the model has about `params` parameters.

    Parameters: (INPUT_DIM + 1) w + (HIDDEN_LAYERS - 1)(w + 1) w + (w + 1) OUTPUT_DIM.
    """
    a = HIDDEN_LAYERS - 1
    b = INPUT_DIM + 1 + (HIDDEN_LAYERS - 1) + OUTPUT_DIM
    c = OUTPUT_DIM - params
    return max(8, int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def build_model(params: int, seed: int = 0) -> Any:
    """A compiled Dense + Adam model of about `params` parameters, its optimizer already built.

    Adam holds two moments per weight, so the saved state is about 3x the weights (12 bytes/param).
    """
    import keras

    keras.utils.set_random_seed(seed)
    width = hidden_width(params)
    layers = [keras.Input((INPUT_DIM,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(HIDDEN_LAYERS)]
    layers.append(keras.layers.Dense(OUTPUT_DIM))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def training_data(steps: int = STEPS_PER_EPOCH, seed: int = 0) -> tuple[Any, Any]:
    """Random inputs for `steps` batches per epoch: one epoch is the training between two saves."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = BATCH_SIZE * steps
    x = rng.standard_normal((n, INPUT_DIM), dtype=np.float32)
    y = rng.standard_normal((n, OUTPUT_DIM), dtype=np.float32)
    return x, y


def fit_data(x: Any, y: Any) -> dict[str, Any]:
    """Keyword arguments for `model.fit` that feed `x`, `y` in `BATCH_SIZE` batches, unshuffled.

    On TensorFlow, a `tf.data.Dataset` with autotuning off. From NumPy arrays Keras builds a
    pipeline whose autotune thread `fit` waits for when it returns: measured on the development
    VM, one 250-step fit in two then sat idle 11-16 s after its last callback (every such fit
    lasting exactly 41.0 s), and a new epoch's first batch waited up to 5 s, which swamps any
    per-save difference. Other backends get the arrays.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return {"x": x, "y": y, "batch_size": BATCH_SIZE, "shuffle": False}
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE)
    # `shuffle=False`: a dataset is never shuffled by `fit` anyway; Keras warns if it is asked to.
    return {"x": dataset.with_options(options), "shuffle": False}


def state_variables(model: Any) -> list[Any]:
    """Every variable a full checkpoint holds: the model's and the optimizer's."""
    return list(model.variables) + list(model.optimizer.variables)


# ----------------------------------------------------------------------------- statistics


@dataclass
class Stat:
    """Samples of one measurement (seconds unless `unit` says otherwise)."""

    samples: list[float] = field(default_factory=list)
    unit: str = "s"

    def add(self, value: float) -> None:
        self.samples.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan

    def cell(self) -> str:
        """`median (min-max)`, or just the value for one sample."""
        if not self.samples:
            return "-"
        if len(self.samples) == 1:
            return fmt(self.median, self.unit)
        low = fmt(self.min, self.unit, like=self.median)
        high = fmt(self.max, self.unit, like=self.median)
        return f"{fmt(self.median, self.unit)} ({low}-{high})"

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "samples": self.samples,
        }


def _time_scale(seconds: float) -> tuple[float, str, int]:
    magnitude = abs(seconds)
    if magnitude >= 1:
        return 1.0, "s", 2
    if magnitude >= 0.1:
        return 1e3, "ms", 0
    if magnitude >= 1e-3:
        return 1e3, "ms", 1
    return 1e6, "us", 0


def fmt(value: float | None, unit: str = "s", like: float | None = None) -> str:
    """Human units: seconds as s/ms/us, ratios as `0.42x`, bytes as MB.

    With `like`, a time is written bare (no suffix) in the scale chosen for `like`, so a median and
    its min-max read in one unit: `31.7 ms (28.1-47.8)`.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "B":
        return f"{value / 1e6:.0f} MB"
    if unit == "s":
        factor, suffix, digits = _time_scale(value if like is None else like)
        text = f"{value * factor:.{digits}f}"
        return text if like is not None else f"{text} {suffix}"
    return f"{value:.3g}"


def ratio_cell(numerator: Stat, denominator: Stat, paired: bool = True) -> tuple[str, dict]:
    """Ratio of medians, with the min-max of the per-repetition ratios when they are paired."""
    if not numerator.samples or not denominator.samples or denominator.median == 0:
        return "-", {}
    value = numerator.median / denominator.median
    data: dict[str, Any] = {"ratio_of_medians": value}
    text = fmt(value, "x")
    if paired and len(numerator.samples) == len(denominator.samples) > 1:
        pairs = zip(numerator.samples, denominator.samples, strict=True)
        per_rep = [a / b for a, b in pairs if b > 0]
        if per_rep:
            data["per_rep"] = per_rep
            text += f" ({min(per_rep):.2f}-{max(per_rep):.2f})"
    return text, data


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def round_order(items: Sequence[Any], round_index: int) -> list[Any]:
    """The order of `items` in one round of paired fits: ABBA-like, neighbours not fixed.

    Rounds come in pairs: an even round is a permutation drawn with the round's index as the seed,
    the odd round after it runs the same permutation backwards, so every item runs early in one
    and late in the other. A fixed rotation would keep the same items next to each other in every
    round, sharing whatever burst of load hit that stretch of the run.
    """
    import random

    order = list(items)
    random.Random(round_index - round_index % 2).shuffle(order)
    if round_index % 2:
        order.reverse()
    return order


def rotated(items: Sequence[Any], rep: int) -> list[Any]:
    """`items` starting at position `rep`: every variant runs early and late across repetitions."""
    if not items:
        return []
    k = rep % len(items)
    return list(items[k:]) + list(items[:k])


# ----------------------------------------------------------------------------- hooks

# Every hook `fit` calls on a callback, on the training thread (TensorFlow runs batch hooks there;
# JAX and PyTorch may run batch-end hooks in a pool, which the benchmarks do not time).
HOOKS = (
    "set_model",
    "set_params",
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_test_begin",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_test_end",
    "on_train_end",
)


class HookTimer:
    """Times the training thread's stay in every hook of one callback: the time it was blocked.

    The callback's hook methods are replaced on the instance by timed wrappers (the class is
    untouched). `functools.wraps` keeps Keras's `_is_default` mark, so `CallbackList` still sees
    which hooks the callback really overrides. A hook calling another of its own hooks is timed
    once, as the outer call.

    Example:
        >>> import keras
        >>> callback = keras.callbacks.Callback()
        >>> timer = HookTimer(callback)
        >>> callback.on_epoch_end(0)
        >>> len(timer.calls["on_epoch_end"])
        1
    """

    def __init__(self, callback: Any):
        self.calls: dict[str, list[float]] = {}
        self._depth = 0
        for name in HOOKS:
            method = getattr(callback, name, None)
            if callable(method):
                setattr(callback, name, self._timed(name, method))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def hook(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append(time.perf_counter() - start)
                self._depth -= 1

        return hook

    @property
    def total(self) -> float:
        return sum(sum(durations) for durations in self.calls.values())


def fsync_path(path: str) -> None:
    """fsyncs a file or a folder by path (a folder's fsync makes a new entry in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- files


def scratch_root() -> str:
    """Where the benchmarks write: $KERAS_CKPT_BENCH_DIR, else a fresh folder in the temp dir."""
    base = os.environ.get("KERAS_CKPT_BENCH_DIR") or None
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="keras-ckpt-bench-", dir=base)


def settle(path: str | None = None) -> None:
    """Removes `path` and flushes the page cache's dirty pages, outside any timing.

    Without it an unsynced writer's data would be written back while the next variant is timed.
    """
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()


def tree_bytes(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, *cells: str) -> None:
        self.rows.append([str(c) for c in cells])

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
            "data": self.data,
        }


def print_table(table: Table, plain: bool = False) -> None:
    try:
        if plain:
            raise ImportError
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        print(plain_text(table))
        return
    rich_table = RichTable(title=table.title, title_justify="left")
    for i, column in enumerate(table.columns):
        rich_table.add_column(column, justify="left" if i == 0 else "right")
    for row in table.rows:
        rich_table.add_row(*row)
    console = Console(width=max(180, shutil.get_terminal_size((180, 20)).columns))
    console.print(rich_table)
    for note in table.notes:
        console.print(f"  {note}", highlight=False, markup=False)
    console.print()


def plain_text(table: Table) -> str:
    """The table as Markdown (what the README shows)."""
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    aligns = ["---" if i == 0 else "---:" for i in range(len(table.columns))]
    lines.append("|" + "|".join(aligns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    packages = ("keras", "tensorflow-cpu", "tensorflow", "numpy", "h5py", "orbax-checkpoint", "jax")
    for package in packages:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info
