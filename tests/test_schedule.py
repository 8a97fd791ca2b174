"""keras_ckpt.schedule: progress counting and save triggers (pure, no Keras)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_ckpt.schedule import Progress, Schedule, check_save_freq


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(schedule: Schedule, steps_per_epoch: int, epochs: int, per_execution: int = 1):
    """Drives `schedule` like fit does; returns (epoch, step) of every due save."""
    progress, saves = Progress(), []
    schedule.start(0)
    for epoch in range(epochs):
        progress.begin_epoch(epoch)
        ends = list(range(per_execution - 1, steps_per_epoch, per_execution))
        if not ends or ends[-1] != steps_per_epoch - 1:
            ends.append(steps_per_epoch - 1)  # the epoch's last, shorter, execution
        for end in ends:
            progress.end_batch(end)
            if schedule.needs_batch_hooks and schedule.due_after_batch(progress.global_step):
                saves.append((progress.epoch, progress.step))
        progress.end_epoch(epoch)
        if schedule.due_after_epoch(progress.epoch, progress.global_step):
            saves.append((progress.epoch, progress.step))
    return saves


def test_progress_counts_epochs_steps_and_global_steps():
    progress = Progress()
    progress.begin_epoch(0)
    progress.end_batch(0)
    progress.end_batch(2)  # steps_per_execution=2: the hook sees the last step of each run
    assert (progress.epoch, progress.step, progress.global_step) == (0, 3, 3)
    progress.end_epoch(0)
    assert (progress.epoch, progress.step, progress.global_step) == (1, 0, 3)


def test_progress_state_round_trip_resumes_inside_an_epoch():
    progress = Progress(epoch=2, step=5, global_step=25)
    restored = Progress()
    restored.set_state(progress.get_state())
    restored.begin_epoch(2)  # the resumed epoch keeps its restored steps
    restored.end_batch(5)
    assert (restored.step, restored.global_step) == (6, 26)


def test_epoch_schedule_saves_at_every_epoch_end():
    assert run(Schedule("epoch"), steps_per_epoch=4, epochs=3) == [(1, 0), (2, 0), (3, 0)]


def test_every_n_epochs_replaces_every_epoch():
    assert run(Schedule("epoch", every_n_epochs=2), 4, 5) == [(2, 0), (4, 0)]


@given(
    freq=st.integers(1, 12),
    steps=st.integers(1, 10),
    epochs=st.integers(1, 5),
    per_execution=st.integers(1, 3),
)
def test_integer_save_freq_saves_every_freq_global_steps(freq, steps, epochs, per_execution):
    saves = run(Schedule(freq), steps, epochs, per_execution)
    # Global step of each save: the first end of a run of steps at or past each multiple.
    global_steps, last = [], 0
    for epoch, step in saves:
        assert step > 0  # integer save_freq never saves at epoch end
        global_steps.append(epoch * steps + step)
    for g in global_steps:
        assert freq <= g - last < freq + per_execution
        last = g
    assert len(saves) <= epochs * steps // freq
    assert epochs * steps - last < freq + per_execution  # no due save was missed at the end


def test_every_seconds_fires_on_the_clock_and_restarts_it():
    clock = Clock()
    schedule = Schedule(None, every_seconds=10, clock=clock)
    schedule.start(0)
    assert not schedule.due_after_batch(1)
    clock.now = 10
    assert schedule.due_after_batch(2)
    clock.now = 15
    assert not schedule.due_after_batch(3)
    clock.now = 20.5
    assert schedule.due_after_epoch(1, 4)


def test_schedule_state_round_trip_keeps_the_step_count():
    schedule = Schedule(5)
    schedule.start(0)
    assert schedule.due_after_batch(5)
    restored = Schedule(5)
    restored.set_state(schedule.get_state())
    assert not restored.due_after_batch(9) and restored.due_after_batch(10)


@pytest.mark.parametrize("value", [0, -5, True, False, 2.0, "batch", None])
def test_check_save_freq_rejects(value):
    with pytest.raises(
        ValueError, match=r'Expected "epoch" or a positive int\. Received: save_freq='
    ):
        check_save_freq(value)


@pytest.mark.parametrize("value", ["epoch", 1, 10**9])
def test_check_save_freq_accepts(value):
    assert check_save_freq(value) == value


def test_no_trigger_at_all_is_refused():
    with pytest.raises(ValueError, match="Nothing would ever be saved"):
        Schedule(None)


@pytest.mark.parametrize("seconds", [0, -1, True, float("inf"), "5"])
def test_every_seconds_rejects(seconds):
    with pytest.raises(ValueError, match="every_seconds"):
        Schedule(every_seconds=seconds)


def test_an_agreed_time_decision_replaces_this_process_clock():
    """Multi-worker: saves on the clock follow the chief's clock, as every worker agreed."""
    clock = Clock()
    schedule = Schedule(save_freq=None, every_seconds=10, clock=clock)
    schedule.start(0)
    clock.now = 11.0
    assert schedule.seconds_due()
    assert not schedule.due_after_batch(1, seconds_due=False)  # the chief's clock said no
    assert schedule.seconds_due()  # nothing fired: still due here
    clock.now = 12.0
    assert not schedule.due_after_epoch(1, 2, seconds_due=False)
    assert schedule.due_after_batch(3, seconds_due=True)
    assert not schedule.seconds_due()  # fired: counts from now
    assert schedule.due_after_batch(4, seconds_due=True)  # the chief's clock is due, ours not


def test_step_triggers_need_no_agreement():
    schedule = Schedule(save_freq=2, every_seconds=10, clock=Clock())
    schedule.start(0)
    assert schedule.due_after_batch(2, seconds_due=False)
