"""Retention policies: examples, argument checks, and properties of what they (and prune) keep."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_ckpt import CheckpointManager
from keras_ckpt.policies import (
    AnyOf,
    KeepBest,
    KeepEvery,
    KeepLast,
    MaxTotalBytes,
    Policy,
    infer_mode,
    ranked_metrics,
)


@dataclass(frozen=True)
class Info:
    """The smallest thing that satisfies `CheckpointInfo`."""

    epoch: int = 0
    global_step: int = 0
    wall_time: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    size: int = 1


def kept(policy: Policy, records) -> list[int]:
    """Indices of the records `policy` keeps."""
    return [i for i, reasons in enumerate(policy.reasons(records)) if reasons]


def losses(*values) -> list[Info]:
    return [Info(metrics={} if v is None else {"val_loss": v}) for v in values]


# ------------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("n", "count", "expected"),
    [(1, 5, [4]), (3, 5, [2, 3, 4]), (5, 5, [0, 1, 2, 3, 4]), (10, 3, [0, 1, 2]), (2, 0, [])],
)
def test_keep_last_keeps_the_n_newest(n, count, expected):
    assert kept(KeepLast(n), [Info(epoch=i) for i in range(count)]) == expected


def test_keep_last_gives_its_reason():
    assert KeepLast(2).reasons([Info(), Info(), Info()]) == [(), ("last 2",), ("last 2",)]


@pytest.mark.parametrize(
    ("mode", "values", "n", "expected"),
    [
        pytest.param("min", (0.5, 0.2, 0.9, 0.1), 2, [1, 3], id="min"),
        pytest.param("max", (0.5, 0.2, 0.9, 0.1), 2, [0, 2], id="max"),
        pytest.param("min", (0.3, 0.3, 0.3), 1, [2], id="min-tie-newer-wins"),
        pytest.param("max", (0.7, 0.9, 0.9, 0.1), 1, [2], id="max-tie-newer-wins"),
        pytest.param("min", (0.3, 0.3, 0.3), 2, [1, 2], id="tie-two-newest"),
        pytest.param("min", (0.4, None, 0.1, None), 3, [0, 2], id="missing-not-ranked"),
        pytest.param("min", (math.nan, 0.4, 0.5), 1, [1], id="nan-not-ranked"),
        pytest.param("max", (math.nan, 0.4, 0.5), 3, [1, 2], id="nan-never-kept"),
        pytest.param("min", (None, None), 1, [], id="nothing-ranked"),
    ],
)
def test_keep_best_keeps_the_n_best_ranked_records(mode, values, n, expected):
    policy = KeepBest(n, monitor="val_loss", mode=mode)
    assert kept(policy, losses(*values)) == expected


def test_keep_best_gives_its_reason():
    reasons = KeepBest(1, monitor="val_loss").reasons(losses(0.5, 0.1))
    assert reasons == [(), ("best 1 by val_loss (min)",)]


@pytest.mark.parametrize(
    ("policy", "records", "expected"),
    [
        pytest.param(
            KeepEvery(epochs=5),
            [Info(epoch=e) for e in range(1, 13)],
            [4, 9],  # epochs 5 and 10
            id="epochs",
        ),
        pytest.param(
            KeepEvery(epochs=5),
            [Info(epoch=e) for e in (2, 4, 6, 8, 11, 12)],
            [2, 4],  # first at or after 5 (epoch 6) and 10 (epoch 11)
            id="epochs-first-after-multiple",
        ),
        pytest.param(
            KeepEvery(steps=100),
            [Info(global_step=s) for s in (50, 100, 150, 250, 320)],
            [1, 3, 4],
            id="steps",
        ),
        pytest.param(
            KeepEvery(seconds=60),
            [Info(wall_time=t) for t in (6000, 6030, 6059, 6060, 6200, 6201)],
            [0, 3, 4],  # the first of each clock minute
            id="seconds",
        ),
    ],
)
def test_keep_every_keeps_the_first_checkpoint_of_each_interval(policy, records, expected):
    assert kept(policy, records) == expected


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (KeepEvery(epochs=5), "every 5 epochs"),
        (KeepEvery(steps=100), "every 100 steps"),
        (KeepEvery(seconds=1.5), "every 1.5 s"),
    ],
)
def test_keep_every_gives_its_reason(policy, reason):
    records = [Info(epoch=10, global_step=1000, wall_time=1000.0)]
    assert policy.reasons(records) == [(reason,)]


def test_keep_every_seconds_keeps_what_it_kept_after_older_checkpoints_are_deleted():
    records = [Info(wall_time=t) for t in (0.0, 5.0, 10.0, 15.0, 20.0)]
    policy = KeepEvery(seconds=10)
    survivors = [records[i] for i in kept(policy, records)]
    assert kept(policy, survivors) == list(range(len(survivors)))


@pytest.mark.parametrize(
    ("n", "sizes", "expected"),
    [
        pytest.param(100, (40, 40, 40, 40), [2, 3], id="newest-that-fit"),
        pytest.param(120, (40, 40, 40, 40), [1, 2, 3], id="exact-fit"),
        pytest.param(100, (10, 90, 20), [2], id="stops-at-first-that-overflows"),
        pytest.param(10, (5, 50), [], id="newest-alone-too-big"),
    ],
)
def test_max_total_bytes_keeps_the_newest_that_fit(n, sizes, expected):
    assert kept(MaxTotalBytes(n), [Info(size=s) for s in sizes]) == expected


def test_max_total_bytes_gives_its_reason():
    assert MaxTotalBytes(10).reasons([Info(size=4)]) == [("within 10 bytes",)]


def test_or_keeps_what_either_policy_keeps_with_both_reasons():
    records = losses(0.1, 0.5, 0.4, 0.9)
    policy = KeepBest(1, monitor="val_loss") | KeepLast(1)
    assert policy.reasons(records) == [
        ("best 1 by val_loss (min)",),
        (),
        (),
        ("last 1",),
    ]


def test_or_of_several_policies_is_one_flat_any_of():
    a, b, c = KeepLast(1), KeepLast(2), MaxTotalBytes(5)
    assert (a | b) | c == AnyOf((a, b, c))
    assert a | (b | c) == AnyOf((a, b, c))


def test_a_record_kept_twice_lists_both_reasons():
    records = losses(0.1)
    policy = KeepLast(1) | KeepBest(1, monitor="val_loss")
    assert policy.reasons(records) == [("last 1", "best 1 by val_loss (min)")]


def test_or_with_a_non_policy_raises_type_error():
    with pytest.raises(TypeError, match="unsupported operand"):
        KeepLast(1) | 3  # noqa: B018


def test_policies_touch_no_records_when_there_are_none():
    policy = KeepLast(1) | KeepBest(1, "loss") | KeepEvery(seconds=1) | MaxTotalBytes(1)
    assert policy.reasons([]) == []


# ------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "3", None])
@pytest.mark.parametrize("make", [KeepLast, MaxTotalBytes], ids=["KeepLast", "MaxTotalBytes"])
def test_count_policies_reject_what_is_not_a_positive_int(make, n):
    with pytest.raises(ValueError, match=r"argument `n`\. Expected a positive int\. Received: n="):
        make(n)


@pytest.mark.parametrize("make", [KeepLast, MaxTotalBytes], ids=["KeepLast", "MaxTotalBytes"])
def test_count_policies_accept_the_nearest_valid_count(make):
    assert make(1).n == 1


@pytest.mark.parametrize("n", [0, -1, True, 1.5])
def test_keep_best_rejects_a_bad_count(n):
    with pytest.raises(ValueError, match=r"Received: n="):
        KeepBest(n, monitor="val_loss")


@pytest.mark.parametrize("mode", ["bogus", "MIN", None])
def test_keep_best_rejects_an_unknown_mode(mode):
    with pytest.raises(ValueError, match=r'Expected "auto" or "min" or "max"\. Received: mode='):
        KeepBest(1, monitor="val_loss", mode=mode)


@pytest.mark.parametrize(
    "monitor, mode", [("val_loss", "min"), ("val_accuracy", "max"), ("mae_error", "min")]
)
def test_keep_best_auto_mode_is_settled_from_the_name(monitor, mode):
    assert KeepBest(1, monitor=monitor).mode == mode


def test_keep_best_auto_mode_refuses_a_name_it_cannot_judge():
    with pytest.raises(ValueError, match='Pass mode="min" or mode="max"'):
        KeepBest(1, monitor="my_custom_metric")


@pytest.mark.parametrize("mode", ["min", "max"])
def test_keep_best_accepts_min_and_max(mode):
    assert KeepBest(1, monitor="val_loss", mode=mode).mode == mode


@pytest.mark.parametrize("monitor", ["", None, 3])
def test_keep_best_rejects_a_missing_monitor(monitor):
    with pytest.raises(ValueError, match=r"Expected a metric name\. Received: monitor="):
        KeepBest(1, monitor=monitor)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"epochs": 1, "steps": 1}, {"steps": 5, "seconds": 1.0}, {"epochs": 1, "seconds": 1}],
)
def test_keep_every_needs_exactly_one_interval(kwargs):
    with pytest.raises(ValueError, match="exactly one of `epochs`, `steps` or `seconds`"):
        KeepEvery(**kwargs)


@pytest.mark.parametrize("kwargs", [{"epochs": 1}, {"steps": 1}, {"seconds": 0.001}])
def test_keep_every_accepts_the_smallest_valid_interval(kwargs):
    assert KeepEvery(**kwargs).reasons([Info()]) == [()]


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"steps": -1}, {"epochs": True}, {"steps": 2.5}])
def test_keep_every_rejects_a_count_interval_that_is_not_a_positive_int(kwargs):
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=rf"Expected a positive int\. Received: {name}="):
        KeepEvery(**kwargs)


@pytest.mark.parametrize("seconds", [0, -1.0, True, "60", math.inf, math.nan])
def test_keep_every_rejects_seconds_that_are_not_a_positive_number(seconds):
    with pytest.raises(ValueError, match=r"Expected a positive number of seconds\. Received"):
        KeepEvery(seconds=seconds)


@pytest.mark.parametrize(
    "policies", [(), (KeepLast(1), "KeepLast(1)"), [KeepLast(1)], KeepLast(1)], ids=repr
)
def test_any_of_rejects_what_is_not_a_non_empty_tuple_of_policies(policies):
    with pytest.raises(ValueError, match="Expected a non-empty tuple of policies"):
        AnyOf(policies)


def test_any_of_accepts_the_nearest_valid_value_and_joins_with_or():
    assert AnyOf((KeepLast(1),)) | KeepLast(2) == AnyOf((KeepLast(1), KeepLast(2)))


@dataclass(frozen=True)
class Answers(Policy):
    """A user's policy that answers whatever it is told to (wrongly, in these tests)."""

    answer: object

    def reasons(self, records):
        return self.answer(records) if callable(self.answer) else self.answer


@pytest.mark.parametrize(
    "answer, match",
    [
        (
            lambda records: [("mine",)] * (len(records) - 1),
            r"answered for 2 checkpoints, expected 3",
        ),
        (
            lambda records: [("mine",)] * (len(records) + 1),
            r"answered for 4 checkpoints, expected 3",
        ),
        (None, r"answered for None, expected 3"),
        (lambda records: ["mine"] * len(records), r"must be a tuple of strings"),
        (lambda records: [(1,)] * len(records), r"must be a tuple of strings"),
    ],
    ids=["one-too-few", "one-too-many", "none", "a-string-not-a-tuple", "not-strings"],
)
def test_any_of_refuses_a_sub_policy_whose_answer_does_not_fit(answer, match):
    policy = Answers(answer) | KeepLast(1)
    with pytest.raises(ValueError, match=match + r".*[Nn]othing was deleted"):
        policy.reasons(losses(0.1, 0.2, 0.3))


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [
        ("loss", "min"),
        ("val_loss", "min"),
        ("val_mean_squared_error", "min"),
        ("accuracy", "max"),
        ("val_acc", "max"),
        ("val_sparse_categorical_accuracy", "max"),
        ("val_auc", "max"),
    ],
)
def test_infer_mode_reads_the_direction_from_the_metric_name(monitor, mode):
    assert infer_mode(monitor) == mode


def test_infer_mode_refuses_to_guess():
    with pytest.raises(ValueError, match='Cannot tell whether `lr`.*Pass mode="min"'):
        infer_mode("lr")


# ------------------------------------------------------------------------------ properties

infos = st.lists(
    st.builds(
        Info,
        epoch=st.integers(0, 30),
        global_step=st.integers(0, 3000),
        wall_time=st.floats(0, 1000, allow_nan=False),
        metrics=st.one_of(
            st.just({}),
            st.fixed_dictionaries({"val_loss": st.sampled_from([0.1, 0.2, 0.3, math.nan])}),
            st.fixed_dictionaries({"val_loss": st.floats(0, 1, allow_nan=False)}),
        ),
        size=st.integers(1, 40),
    ),
    max_size=10,
)
single_policies = st.one_of(
    st.builds(KeepLast, st.integers(1, 4)),
    st.builds(
        KeepBest,
        st.integers(1, 4),
        monitor=st.just("val_loss"),
        mode=st.sampled_from(["min", "max"]),
    ),
    st.builds(KeepEvery, epochs=st.integers(1, 10)),
    st.builds(KeepEvery, steps=st.integers(1, 1000)),
    st.builds(KeepEvery, seconds=st.floats(0.5, 300)),
    st.builds(MaxTotalBytes, st.integers(1, 100)),
)
policies = st.one_of(
    single_policies, st.builds(lambda a, b: a | b, single_policies, single_policies)
)

MANAGER_SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def ranked(info: Info) -> bool:
    value = info.metrics.get("val_loss")
    return value is not None and not math.isnan(value)


@given(records=infos, n=st.integers(1, 5), mode=st.sampled_from(["min", "max"]))
def test_keep_best_keeps_exactly_the_n_best_of_the_records_with_the_metric(records, n, mode):
    chosen = kept(KeepBest(n, monitor="val_loss", mode=mode), records)
    candidates = [i for i, r in enumerate(records) if ranked(r)]
    assert len(chosen) == min(n, len(candidates))
    assert set(chosen) <= set(candidates)
    sign = 1 if mode == "min" else -1
    worst_kept = max((sign * records[i].metrics["val_loss"] for i in chosen), default=None)
    for i in set(candidates) - set(chosen):
        assert sign * records[i].metrics["val_loss"] >= worst_kept


@given(records=infos, a=single_policies, b=single_policies)
def test_or_keeps_exactly_the_union_of_what_each_keeps(records, a, b):
    assert set(kept(a | b, records)) == set(kept(a, records)) | set(kept(b, records))


@given(records=infos, policy=policies)
def test_a_policy_keeps_what_it_kept_once_the_others_are_gone(records, policy):
    survivors = [r for i, r in enumerate(records) if i in set(kept(policy, records))]
    assert kept(policy, survivors) == list(range(len(survivors)))


def without_fsync():
    """Retention is what these tests check, not durability: skip the disk flushes (fast)."""
    return mock.patch("keras_ckpt.store.local.os.fsync")


class Directory:
    """A real checkpoint directory holding one tiny file per generated record."""

    def __init__(self, folder: str, records: list[Info]):
        self.manager = CheckpointManager(folder)
        clock = iter([r.wall_time for r in records])
        fake_time = SimpleNamespace(time=lambda: next(clock))
        with mock.patch("keras_ckpt.store.journal.time", fake_time):
            for i, info in enumerate(records):
                with self.manager.stage() as staging:
                    path = os.path.join(staging, "f")
                    with open(path, "wb") as f:
                        f.write(b"x" * info.size)
                    self.manager.commit(
                        {f"ckpt-{i}.bin": path},
                        name=f"ckpt-{i}",
                        kind="weights",
                        epoch=info.epoch,
                        global_step=info.global_step,
                        metrics=info.metrics,
                    )

    def names(self) -> list[str]:
        return [r.name for r in CheckpointManager(self.manager.directory).checkpoints()]


def refused(directory, policy, records) -> bool:
    """True (after checking it) when prune must refuse: KeepBest's metric is in no record."""
    # Records keep finite metrics only (records.clean_metrics drops NaN).
    recorded = {k for r in records for k, v in r.metrics.items() if math.isfinite(v)}
    if not records or not (ranked_metrics(policy) - recorded):
        return False
    before = directory.names()
    with pytest.raises(ValueError, match="which no checkpoint in .* records"):
        directory.manager.prune(policy)
    assert directory.names() == before  # nothing deleted
    return True


@MANAGER_SETTINGS
@given(records=infos.filter(bool), policy=policies)
def test_prune_never_deletes_the_newest(records, policy):
    with tempfile.TemporaryDirectory() as folder, without_fsync():
        directory = Directory(folder, records)
        if not refused(directory, policy, records):
            directory.manager.prune(policy)
        assert directory.names()[-1] == f"ckpt-{len(records) - 1}"
        directory.manager.close()


@MANAGER_SETTINGS
@given(records=infos, n=st.integers(1, 4), mode=st.sampled_from(["min", "max"]))
def test_prune_with_keep_best_leaves_the_best_and_the_newest(records, n, mode):
    with tempfile.TemporaryDirectory() as folder, without_fsync():
        directory = Directory(folder, records)
        if refused(directory, KeepBest(n, monitor="val_loss", mode=mode), records):
            return
        directory.manager.prune(KeepBest(n, monitor="val_loss", mode=mode))
        best = {f"ckpt-{i}" for i in kept(KeepBest(n, "val_loss", mode), records)}
        newest = {f"ckpt-{len(records) - 1}"} if records else set()
        assert set(directory.names()) == best | newest
        directory.manager.close()


@MANAGER_SETTINGS
@given(records=infos, a=single_policies, b=single_policies)
def test_prune_with_or_leaves_the_union_of_what_each_keeps(records, a, b):
    with tempfile.TemporaryDirectory() as folder, without_fsync():
        directory = Directory(folder, records)
        if refused(directory, a | b, records):
            return
        directory.manager.prune(a | b)
        union = set(kept(a, records)) | set(kept(b, records)) | {len(records) - 1}
        assert set(directory.names()) == {f"ckpt-{i}" for i in union if i >= 0}
        directory.manager.close()


@MANAGER_SETTINGS
@given(records=infos, policy=policies)
def test_pruning_twice_deletes_nothing_the_second_time(records, policy):
    with tempfile.TemporaryDirectory() as folder, without_fsync():
        directory = Directory(folder, records)
        if refused(directory, policy, records):
            return
        directory.manager.prune(policy)
        again = directory.manager.prune(policy)
        assert again.deleted == ()
        assert len(directory.names()) == len(again.kept)
        directory.manager.close()
