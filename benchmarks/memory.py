"""Peak extra memory of a save: what a callback adds to the process's resident set while saving.

Each variant runs in a fresh subprocess (so nothing one variant keeps, such as reused host buffers,
is charged to another): build the model, train one epoch with no callback (warm-up: tracing,
first-use allocations), then reset the kernel's peak-RSS mark (`/proc/self/clear_refs` = 5),
note the resident set, train `saves` epochs with the callback saving at each epoch end, and read
the peak (`VmHWM`), then the resident set once `fit` has returned and glibc's `malloc_trim` has
given free memory back (what is still referenced), with the callback still alive: what a callback
keeps between fits counts.
Peak extra memory = peak - resident set before the timed fit, minus the same for a fit with no
callback (training's own transient allocations); held after `fit` likewise. Linux only;
elsewhere the section says so and is empty.

A background save holds one host copy of the state while the previous one is written at most, so
its expected extra memory is about one state size; Keras's `.keras` save builds the HDF5 file in a
`BytesIO` and copies it into the zip, about two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from benchmarks._common import Table, fmt

_CHILD = r"""
import json, os, sys, tempfile, warnings
sys.path.insert(0, sys.argv[1])
from benchmarks import _common
from benchmarks.saving import fit_with, variants

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

params, variant_name, saves = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
model = _common.build_model(params)
x, y = _common.training_data()
fit_with(model, x, y, 1, None)
found = {v.key: v for v in variants(include_orbax=False)[0]}
folder = tempfile.mkdtemp(prefix="keras-ckpt-mem-")
callback = found[variant_name].make(folder) if variant_name != "none" else None
reset_peak()
before = rss("VmRSS")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fit_with(model, x, y, saves, callback)
peak = rss("VmHWM")
import ctypes, gc
gc.collect()  # the callback is still alive: what it keeps after `fit` counts
try:  # give the allocator's free memory back, so that what is left is what is still referenced
    ctypes.CDLL(None).malloc_trim(0)
except (OSError, AttributeError):  # not glibc
    pass
print(json.dumps({"extra": peak - before, "retained": rss("VmRSS") - before}))
del callback
"""

# Keys of `saving.variants()`.
VARIANTS = (
    "keras_mc",
    "ours_keras_inline",
    "ours_keras",
    "keras_weights",
    "ours_weights",
    "keras_backup",
    "ours_backup",
)


def _measure(params: int, variant: str, saves: int) -> tuple[int, int]:
    """(peak extra resident memory during the fit, resident memory still held after it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, root, str(params), variant, str(saves)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return int(found["extra"]), int(found["retained"])


def run(
    params: int, label: str, state_bytes: int, saves: int = 3, log: Callable[[str], None] = print
) -> Table:
    table = Table(
        title=f"Peak extra memory while saving, {label} model "
        f"({state_bytes / 1e6:.0f} MB of state)",
        columns=["variant", "peak extra RSS", "x state size", "still held after fit"],
    )
    data: dict[str, Any] = {}
    if not os.path.exists("/proc/self/clear_refs"):
        table.notes.append("Needs Linux's /proc/self/clear_refs: not measured here.")
        table.data = {"model": label, "memory": data}
        return table
    from benchmarks.saving import variants

    names = {v.key: v.name for v in variants(include_orbax=False)[0]}
    log(f"  [{label}] memory: fit with no callback")
    baseline, baseline_held = _measure(params, "none", saves)
    for variant in VARIANTS:
        log(f"  [{label}] memory: {variant}")
        try:
            peak, held = _measure(params, variant, saves)
        except subprocess.CalledProcessError as e:
            table.notes.append(f"{variant} failed: {e.stderr.strip().splitlines()[-1:]}")
            continue
        extra, held = max(0, peak - baseline), max(0, held - baseline_held)
        data[variant] = {"peak_extra": extra, "held_after_fit": held}
        table.add(
            names[variant],
            fmt(extra, "B"),
            f"{extra / state_bytes:.2f}x",
            f"{fmt(held, 'B')} ({held / state_bytes:.2f}x)",
        )
    table.notes.append(
        f"One subprocess per variant, {saves} saves each; training's own transient memory "
        f"({fmt(baseline, 'B')}, a fit with no callback) is subtracted. Still held after fit: "
        "the resident set once `fit` has returned (the callback still alive), above the same "
        f"for a fit with no callback ({fmt(baseline_held, 'B')}), once `malloc_trim` has "
        "given the allocator's free memory back."
    )
    table.data = {"model": label, "memory": data}
    return table
