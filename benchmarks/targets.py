"""The must-reach table: each row a ratio of keras-ckpt to Keras, met or missed by its median.

Rows are computed from one model's results (`saving.measure` and `resume.run`), never across
runs. A row's ratio is the ratio of the two medians; its spread is the min-max of the ratios of
the same round (blocked, overhead) or repetition (resume), which pairs measurements taken
minutes apart on the same machine. The verdict uses the median alone; "rounds met" says how many
of the paired ratios were under the limit.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._common import Stat, Table, fmt


@dataclass(frozen=True)
class Row:
    """`ours / keras` for one measure, and the limit it must reach (None: shown, not judged)."""

    key: str
    label: str
    measure: str  # "blocked", "overhead", or "resume:<pair>"
    keras: str  # variant key (or "keras" for resume pairs)
    ours: str
    must_reach: float | None
    # (applies, why not): a row that only means something under a condition.
    condition: Callable[[dict[str, Any]], tuple[bool, str]] | None = None


def _unsynced_comparable(result: dict[str, Any]) -> tuple[bool, str]:
    """An fsynced save can only match an unsynced one where the disk's floor leaves room."""
    if "floors" not in result:
        return False, "floors not measured"
    floor = result["floors"]["write_fsync"]["median"]
    keras = result["variants"].get("keras_mc", {}).get("blocked_per_save", {}).get("median")
    if keras is None:
        return False, "Keras ModelCheckpoint not measured"
    share = floor / keras
    if share < 0.75:
        return True, f"write + fsync floor is {share:.2f}x Keras's save"
    return False, f"write + fsync floor is {share:.2f}x Keras's save (>= 0.75x): not judged"


ROWS = (
    Row(
        "keras_background_blocked",
        "`.keras` background (default): blocked / Keras ModelCheckpoint blocked",
        "blocked",
        "keras_mc",
        "ours_keras",
        0.25,
    ),
    Row(
        "keras_background_overhead",
        "`.keras` background: whole-fit overhead / Keras ModelCheckpoint's",
        "overhead",
        "keras_mc",
        "ours_keras",
        0.4,
    ),
    Row(
        "keras_inline_vs_fsync",
        "`.keras` async_save=False (durable) / Keras ModelCheckpoint + fsync (equal durability)",
        "blocked",
        "keras_mc_fsync",
        "ours_keras_inline",
        0.6,
    ),
    Row(
        "keras_inline_vs_unsynced",
        "`.keras` async_save=False / Keras ModelCheckpoint unsynced "
        "(where write + fsync is under 0.75x of Keras's save)",
        "blocked",
        "keras_mc",
        "ours_keras_inline",
        1.0,
        _unsynced_comparable,
    ),
    Row(
        "backup_blocked",
        "BackupAndRestore: blocked / Keras BackupAndRestore blocked",
        "blocked",
        "keras_backup",
        "ours_backup",
        0.3,
    ),
    Row(
        "backup_overhead",
        "BackupAndRestore: whole-fit overhead / Keras's",
        "overhead",
        "keras_backup",
        "ours_backup",
        0.6,
    ),
    Row(
        "keras_background_vs_orbax",
        "`.keras` background: whole-fit overhead / Keras OrbaxCheckpoint (background)",
        "overhead",
        "keras_orbax",
        "ours_keras",
        0.3,
    ),
    Row(
        "restore",
        "restore at `fit` start / Keras BackupAndRestore's",
        "resume:backup",
        "keras",
        "ours",
        0.7,
    ),
    Row(
        "load_model",
        "`CheckpointManager.load_model` / `keras.saving.load_model`",
        "resume:full model",
        "keras",
        "ours",
        0.5,
    ),
    # Shown for the record, no limit.
    Row(
        "keras_background_vs_fsync",
        "`.keras` background: blocked / Keras ModelCheckpoint + fsync blocked",
        "blocked",
        "keras_mc_fsync",
        "ours_keras",
        None,
    ),
    Row(
        "weights_blocked",
        "`.weights.h5` background: blocked / Keras ModelCheckpoint .weights.h5",
        "blocked",
        "keras_weights",
        "ours_weights",
        None,
    ),
    Row(
        "weights_overhead",
        "`.weights.h5` background: whole-fit overhead / Keras ModelCheckpoint .weights.h5's",
        "overhead",
        "keras_weights",
        "ours_weights",
        None,
    ),
    Row(
        "backup_inline_vs_fsync",
        "BackupAndRestore async_save=False / Keras BackupAndRestore + fsync (blocked)",
        "blocked",
        "keras_backup_fsync",
        "ours_backup_inline",
        None,
    ),
    Row(
        "load_weights",
        "`CheckpointManager.load_weights` / `model.load_weights`",
        "resume:weights",
        "keras",
        "ours",
        None,
    ),
)


def _samples(result: dict[str, Any], measure: str, side: str) -> tuple[list[float], str] | None:
    """The per-round samples of one side of a row, and the name of what was measured."""
    if measure.startswith("resume:"):
        pair = result.get("resume", {}).get(measure.split(":", 1)[1])
        if not pair:
            return None
        return list(pair[side]["samples"]), pair[side]["name"]
    entry = result.get("variants", {}).get(side)
    if entry is None:
        return None
    return list(entry[f"{measure}_per_save"]["samples"]), entry["name"]


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of `ROWS` for one model's results: values, ratio, spread and verdict."""
    rows = []
    for row in ROWS:
        out: dict[str, Any] = {
            "key": row.key,
            "label": row.label,
            "measure": row.measure,
            "must_reach": row.must_reach,
        }
        keras, ours = (
            _samples(result, row.measure, row.keras),
            _samples(result, row.measure, row.ours),
        )
        if keras is None or ours is None:
            out.update(verdict="not measured", met=None)
            rows.append(out)
            continue
        (keras_samples, keras_name), (ours_samples, ours_name) = keras, ours
        keras_median = statistics.median(keras_samples)
        ours_median = statistics.median(ours_samples)
        ratio = ours_median / keras_median if keras_median > 0 else None
        paired = [o / k for o, k in zip(ours_samples, keras_samples, strict=True) if k > 0]
        out.update(
            keras_name=keras_name,
            ours_name=ours_name,
            keras=Stat(keras_samples).to_json(),
            ours=Stat(ours_samples).to_json(),
            ratio=ratio,
            paired_ratios=paired,
        )
        applies, why = (True, "") if row.condition is None else row.condition(result)
        out["condition"] = why
        if ratio is None:
            out.update(verdict="Keras's figure is not positive: no ratio", met=None)
        elif row.must_reach is None:
            out.update(verdict="", met=None)
        elif not applies:
            out.update(verdict=f"not judged: {why}", met=None)
        else:
            met = ratio <= row.must_reach
            under = sum(p <= row.must_reach for p in paired)
            margin = (
                f"met, {1 - ratio / row.must_reach:.0%} under"
                if met
                else f"MISSED by {ratio / row.must_reach - 1:.0%}"
            )
            out.update(
                met=met,
                rounds_met=f"{under}/{len(paired)}",
                verdict=f"{margin} ({under}/{len(paired)})",
            )
        rows.append(out)
    return rows


def table(result: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    config = result.get("config", {})
    out = Table(
        title=(
            f"Must reach, {result['model']} model ({result['state_bytes'] / 1e6:.0f} MB of state): "
            "per save or load, median (min-max)"
        ),
        columns=["row", "Keras", "keras-ckpt", "ratio (paired min-max)", "must reach", "verdict"],
    )
    for row in rows:
        if "ratio" not in row:
            out.add(row["label"], "-", "-", "-", _limit(row["must_reach"]), row["verdict"])
            continue
        keras, ours = Stat(row["keras"]["samples"]), Stat(row["ours"]["samples"])
        paired = row["paired_ratios"]
        spread = f" ({min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else ""
        out.add(
            row["label"],
            keras.cell(),
            ours.cell(),
            fmt(row["ratio"], "x") + spread,
            _limit(row["must_reach"]),
            row["verdict"],
        )
    floors = result.get("floors", {})
    if floors:
        copy = floors["copy_reused"]["median"]
        write = floors["write_fsync"]["median"]
        out.notes.append(
            f"Floors in this run: host copy {fmt(copy)}, write {fmt(floors['write']['median'])}, "
            f"write + fsync {fmt(write)} ({result['state_bytes'] / 1e6:.0f} MB)."
        )
    if config.get("cadence"):
        out.notes.append(f"Cadence: {config['cadence']}.")
    out.notes.append(
        "Verdict by the median ratio; in brackets how many paired rounds (or repetitions) were "
        "under the limit. Ratios of medians; the spread is the min-max of the paired ratios (a "
        "round whose Keras figure is not positive, which noise can make of an overhead, has none)."
    )
    return out


def _limit(value: float | None) -> str:
    return "" if value is None else f"{value:g}x"
