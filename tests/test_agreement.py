"""keras_ckpt.training.agreement: what the workers agree on, and how often.

The two-process tests in `tests/test_distribute.py` run it between real workers. Here one process
agrees with itself (`distribute.agree` returns its votes), with an injected clock; the all-reduce's
cost is made to pass on that clock.
"""

from __future__ import annotations

import signal

import keras
import pytest
from conftest import build_model

import keras_ckpt
from keras_ckpt import distribute
from keras_ckpt.training import agreement
from keras_ckpt.training.agreement import MAX_DELAY, MAX_OVERHEAD, StepAgreement


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def train(agreed: StepAgreement, clock: Clock, steps: int, step_time: float, caught=None):
    """Drives `agreed` like fit does, a signal `caught` (step, signum) staying pending; returns the
    steps at which it agreed and what."""
    decisions = []
    for step in range(1, steps + 1):
        clock.now += step_time
        before = agreed.agreements
        pending = caught[1] if caught is not None and step >= caught[0] else None
        result = agreed.decide(step, pending, seconds_due=True)
        if agreed.agreements > before:
            decisions.append((step, result))
    return decisions


@pytest.fixture
def costly(mocker):
    """Each agreement adds `cost` seconds to the step after it (the all-reduce and the lost
    overlap of the next step), on the injected clock."""
    clock = Clock()
    state = {"cost": 0.0}

    def agree(votes, model=None):
        clock.now += state["cost"]
        return tuple(votes)

    mocker.patch.object(distribute, "agree", side_effect=agree)
    return clock, state


def test_the_first_batch_end_agrees_and_returns_the_signal_and_the_chiefs_clock(costly):
    clock, _ = costly
    agreed = StepAgreement(None, chief=True, clock=clock)
    assert agreed.decide(1, signal.SIGTERM, seconds_due=True) == (signal.SIGTERM, True)


def test_only_the_chiefs_clock_counts():
    agreed = StepAgreement(None, chief=False)
    assert agreed.decide(1, None, seconds_due=True) == (None, False)
    assert agreed.period == 1  # no announcement from a chief: agree at every step


@pytest.mark.parametrize(
    ("step_time", "cost", "period"),
    [
        (0.010, 0.002, 20),  # cheap enough: 2 ms per 20 steps of 10 ms is 1 %
        (0.100, 0.005, 5),
        (0.400, 0.050, 2),  # soon enough: 2 steps of 0.4 s before a signal is acted on
        (2.000, 0.010, 1),
    ],
)
def test_the_chief_picks_a_period_cheap_enough_and_soon_enough(costly, step_time, cost, period):
    clock, state = costly
    state["cost"] = cost
    agreed = StepAgreement(None, chief=True, clock=clock)
    decisions = train(agreed, clock, 200, step_time)
    assert agreed.period == period
    assert period == max(1, min(-(-cost // (MAX_OVERHEAD * step_time)), MAX_DELAY // step_time))
    steps = [step for step, _ in decisions]
    assert steps[:2] == [1, 2]  # at every step until it knows the step time
    assert all(b - a == period for a, b in zip(steps[1:], steps[2:], strict=False))


def test_what_an_agreement_costs_the_next_step_counts_too(mocker):
    """On JAX the all-reduce also ends the overlap of the next step's dispatch with this one: the
    step after an agreement is slower by more than the call itself took."""
    clock = Clock()
    slower = {"next": 0.0}

    def agree(votes, model=None):
        clock.now += 0.001  # the call
        slower["next"] = 0.003  # the overlap lost
        return tuple(votes)

    mocker.patch.object(distribute, "agree", side_effect=agree)
    agreed = StepAgreement(None, chief=True, clock=clock)
    for step in range(1, 1001):
        clock.now += 0.010 + slower["next"]
        slower["next"] = 0.0
        agreed.decide(step, None, seconds_due=False)
    assert agreed.period == 40  # 4 ms per agreement is 1 % of 40 steps of 10 ms, not 10 steps


def test_a_signal_between_agreements_waits_for_the_next_one(costly):
    clock, state = costly
    state["cost"] = 0.002
    agreed = StepAgreement(None, chief=True, clock=clock)
    decisions = dict(train(agreed, clock, 60, 0.010, caught=(41, signal.SIGINT)))
    assert list(decisions) == [1, 2, 22, 42]  # then every 20 steps: 2 ms is 1 % of 20 steps
    assert decisions[22] == (None, True)
    assert decisions[42] == (signal.SIGINT, True)  # caught at 41, acted on by all at 42


def test_epoch_ends_agree_whatever_the_period(costly):
    clock, state = costly
    state["cost"] = 0.002
    agreed = StepAgreement(None, chief=True, clock=clock)
    train(agreed, clock, 30, 0.010)
    assert agreed.decide(31, None, seconds_due=False) == (None, False)  # between agreements
    assert agreed.decide(31, signal.SIGTERM, seconds_due=False, now=True) == (
        signal.SIGTERM,
        False,
    )


def test_a_single_process_never_agrees(tmp_path, data, mocker):
    """No collective, not even a call, in a single-process job, whatever is configured."""
    agree = mocker.spy(distribute, "agree")
    checkpoint = keras_ckpt.ModelCheckpoint(
        tmp_path / "m-{epoch}-{batch}.weights.h5", save_weights_only=True, every_seconds=1e-9,
        save_freq=None, monitor="loss",
    )  # fmt: skip
    backup = keras_ckpt.BackupAndRestore(tmp_path / "backup", every_seconds=1e-9)
    build_model().fit(*data, epochs=1, batch_size=16, verbose=0, callbacks=[checkpoint, backup])
    assert checkpoint._triggers.agreement is None and backup._triggers.agreement is None
    assert agree.call_count == 0
    assert agreement.StepAgreement.needed(None, active=True) is False


def test_agree_in_a_single_process_returns_the_votes():
    assert distribute.agree([2, 0, 1], keras.Sequential()) == (2, 0, 1)
