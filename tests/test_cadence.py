"""`save_freq="auto"`: the backup interval chosen from measured costs (pure), and in a real fit."""

from __future__ import annotations

import math
import re
import threading

import keras
import numpy as np
import pytest
from conftest import build_model
from hypothesis import given
from hypothesis import strategies as st

from keras_ckpt import BackupAndRestore, CheckpointManager
from keras_ckpt.cadence import Cadence, check_max_overhead, interval_for
from keras_ckpt.format.backup_file import BackupFile
from keras_ckpt.store.local import LocalStorage
from keras_ckpt.training import triggers

seconds = st.floats(1e-5, 10.0, allow_nan=False, allow_infinity=False)
overheads = st.floats(1e-3, 0.9, allow_nan=False)


def overhead(interval, step, blocking, write, background, stolen=0.0):
    """Training time lost per backup over training time between backups."""
    lost = blocking + (stolen + max(0.0, write - interval * step) if background else 0.0)
    return lost / (interval * step)


@given(
    step=seconds,
    blocking=seconds,
    write=seconds,
    m=overheads,
    background=st.booleans(),
    stolen=st.one_of(st.just(0.0), seconds),
)
def test_the_interval_is_the_smallest_that_keeps_the_overhead(
    step, blocking, write, m, background, stolen
):
    write = max(write, blocking) if not background else write
    stolen = stolen if background else 0.0
    interval = interval_for(step, blocking, write, m, background=background, stolen_seconds=stolen)
    assert interval >= 1
    assert overhead(interval, step, blocking, write, background, stolen) <= m * (1 + 1e-6)
    if interval > 1:
        assert overhead(interval - 1, step, blocking, write, background, stolen) > m * (1 - 1e-6)


@given(step=seconds, blocking=seconds, write=seconds, m=overheads, slower=st.floats(1.0, 100.0))
def test_slower_backups_never_shorten_the_interval(step, blocking, write, m, slower):
    for background in (True, False):
        base = interval_for(step, blocking, write, m, background=background)
        slow = interval_for(step, blocking * slower, write * slower, m, background=background)
        assert slow >= base


@given(step=seconds, blocking=seconds, m=overheads)
def test_a_larger_budget_never_lengthens_the_interval(step, blocking, m):
    tight = interval_for(step, blocking, blocking, m, background=False)
    loose = interval_for(step, blocking, blocking, min(0.99, m * 2), background=False)
    assert loose <= tight


def measured(cadence, *, step, blocking, write, samples=5):
    cadence.record_save(blocking, 0.0)
    cadence.record_write(write)
    for _ in range(samples):
        cadence.record_steps(2, 2 * step)
    return cadence.decide()


def test_cadence_probes_once_then_measures_then_decides():
    cadence = Cadence(0.05, background=True)
    assert cadence.save_freq == 1
    cadence.record_steps(1, 30.0)  # the first step (compilation) is not a step time
    assert cadence.step_seconds is None
    cadence.record_save(0.01, 0.0)
    assert cadence.save_freq is None
    for _ in range(4):
        cadence.record_steps(1, 0.02)
        assert cadence.decide() is None  # not enough step timings yet
    cadence.record_steps(1, 0.02)
    assert cadence.decide() is None  # the first backup is still being written
    cadence.record_write(0.2)
    message = cadence.decide()
    assert cadence.save_freq == interval_for(0.02, 0.01, 0.2, 0.05, background=True) == 10
    assert message.startswith("backs up every 10 steps (a step takes 20.0 ms")


def test_steps_a_background_write_slows_are_charged_to_the_backup():
    quiet, busy = Cadence(0.05, background=True), Cadence(0.05, background=True)
    for cadence, overlapped in ((quiet, 0.02), (busy, 0.06)):
        cadence.record_save(0.01, 0.0)
        for _ in range(4):  # the steps the first write overlapped
            cadence.record_steps(1, overlapped, writing=True)
        cadence.record_write(0.08)
        for _ in range(5):
            cadence.record_steps(1, 0.02)
        cadence.decide()
    assert quiet.step_seconds == busy.step_seconds == pytest.approx(0.02)  # overlapped: apart
    assert quiet.interval == interval_for(0.02, 0.01, 0.08, 0.05, background=True) == 10
    # 4 steps 40 ms slower each: 160 ms more per backup
    assert busy.interval == interval_for(
        0.02, 0.01, 0.08, 0.05, background=True, stolen_seconds=0.16
    )
    assert busy.interval == 170
    busy.record_save(0.01, 0.0)  # settles the first backup's overlap
    assert busy.stolen_seconds == pytest.approx(0.16)
    assert busy.get_state()["stolen_seconds"] == pytest.approx(0.16)
    assert busy.measured_overhead == pytest.approx((0.01 + 0.16 + 0.01) / (0.08 + 0.1))


def test_inline_backups_are_not_charged_for_overlap():
    cadence = Cadence(0.05, background=False, min_samples=1)
    cadence.record_save(0.01, 0.0)
    cadence.record_write(0.01)
    cadence.record_steps(1, 0.5, writing=True)  # inline, nothing overlaps: a plain step
    cadence.record_steps(1, 0.5)
    message = cadence.decide()
    assert message is not None and "slows the steps" not in message
    assert cadence.step_seconds == pytest.approx(0.5)
    cadence.record_save(0.01, 0.0)
    assert cadence.stolen_seconds is None
    assert cadence.measured_overhead == pytest.approx(0.02 / 1.0)


def test_two_writes_settled_together_are_each_charged_their_share():
    """A second backup (`every_seconds`, an epoch end) before any step time is known: the
    overlapped steps of both writes are settled later, split between them."""
    cadence = Cadence(0.05, background=True, min_samples=1)
    cadence.record_save(0.01, 0.0)
    cadence.record_steps(2, 0.2, writing=True)
    cadence.record_save(0.01, 0.0)  # no step time yet: nothing settled
    assert cadence.stolen_seconds is None
    cadence.record_steps(2, 0.2, writing=True)
    cadence.record_write(0.1)
    cadence.record_steps(1, 0.02)
    cadence.record_save(0.01, 0.0)
    # 4 overlapped steps took 0.4 s, 0.32 s more than 4 plain ones: 0.16 s per write
    assert cadence.stolen_seconds == pytest.approx(0.16)
    assert cadence.measured_overhead == pytest.approx((0.03 + 0.32) / (0.42 - 0.32))


def test_cadence_redecides_only_when_costs_drift():
    cadence = Cadence(0.1, background=False, weight=1.0, step_weight=1.0)
    measured(cadence, step=0.01, blocking=0.01, write=0.01)
    assert cadence.interval == 10
    assert measured(cadence, step=0.01, blocking=0.012, write=0.012) is None  # 12: within 1.5x
    assert cadence.interval == 10
    message = measured(cadence, step=0.01, blocking=0.05, write=0.05)
    assert cadence.interval == 50
    assert message.startswith("now backs up every 50 steps instead of 10: costs drifted")


def test_cadence_state_is_json():
    import json

    cadence = Cadence(0.02)
    measured(cadence, step=0.01, blocking=0.001, write=0.01)
    state = json.loads(json.dumps(cadence.get_state()))
    assert state["save_freq"] == "auto" and state["interval"] == cadence.interval
    assert state["max_overhead"] == 0.02 and state["measured_overhead"] > 0


@pytest.mark.parametrize(
    "value", [0, 0.0, -0.1, 1, 1.0, 1.5, True, False, "0.02", None, float("nan"), math.inf]
)
def test_invalid_max_overhead_is_refused(value, tmp_path):
    message = r"Invalid value for argument `max_overhead`\. Expected a float in \(0, 1\)"
    with pytest.raises(ValueError, match=message):
        check_max_overhead(value)
    if value is not None:
        with pytest.raises(ValueError, match=message):
            BackupAndRestore(tmp_path, save_freq="auto", max_overhead=value)


@pytest.mark.parametrize("value", [1e-6, 0.02, 0.999])
def test_the_nearest_valid_max_overhead_is_accepted(value, tmp_path):
    assert BackupAndRestore(tmp_path, save_freq="auto", max_overhead=value).max_overhead == value


@pytest.mark.parametrize("save_freq", ["epoch", 10, False])
def test_max_overhead_only_with_auto(save_freq, tmp_path):
    with pytest.raises(ValueError, match=r'`max_overhead`\. Expected None unless save_freq="auto"'):
        BackupAndRestore(tmp_path, save_freq=save_freq, max_overhead=0.02)


def test_auto_defaults_to_two_percent(tmp_path):
    assert BackupAndRestore(tmp_path, save_freq="auto").max_overhead == 0.02
    assert BackupAndRestore(tmp_path).max_overhead is None


# --------------------------------------------------------------------------- in a real fit


_CAPTURE, _PUBLISH = BackupFile.capture, LocalStorage.publish  # the real ones, under any clock


class FakeTime(keras.callbacks.Callback):
    """The auto cadence's clock (`triggers._clock`), moved by the test, never by the
    machine: a training step takes `step` seconds, and a backup's write costs training `write`.

    Written inline (`background=False`), a write's publish moves the clock itself: training waits
    for it. Written in the background, the write is held (at its publish) until the next step has
    ended, and that step waits for the write to finish: the write overlaps that one step, which
    takes `write` seconds longer. Goes before `backup` in the callbacks.
    """

    def __init__(self, *, background: bool, step: float = 10.0, write: float = 0.0):
        super().__init__()
        self.now, self.step, self.write, self.background = 0.0, step, write, background
        self._ended = threading.Condition()
        self._steps = 0  # steps (and epochs) ended
        self._saved_at = 0  # steps ended when the last backup was captured
        self._charge = False  # the next step is slowed by a background write
        self.backup: BackupAndRestore | None = None

    def __call__(self) -> float:
        return self.now

    def install(self, monkeypatch) -> FakeTime:
        monkeypatch.setattr(triggers, "_clock", self)

        def noted_capture(fmt, model, extra=None):  # on the training thread, at the backup
            with self._ended:
                self._saved_at, self._charge = self._steps, self.background
            return _CAPTURE(fmt, model, extra)

        def slowed_publish(storage, staged):
            if not self.background:
                self.now += self.write
            else:
                with self._ended:
                    held = self._ended.wait_for(lambda: self._steps > self._saved_at, 120)
                if not held:
                    raise RuntimeError("no training step ended while a background write waited")
            return _PUBLISH(storage, staged)

        monkeypatch.setattr(BackupFile, "capture", noted_capture)
        monkeypatch.setattr(LocalStorage, "publish", slowed_publish)
        return self

    def _end(self, seconds: float) -> None:
        with self._ended:
            self.now += seconds
            self._steps += 1
            self._charge = False
            self._ended.notify_all()

    def on_train_batch_end(self, batch, logs=None):
        charge = self._charge
        self._end(self.step + (self.write if charge else 0.0))
        if charge:  # the write overlaps this step, and only this one
            assert self.backup is not None
            self.backup.wait_until_finished()

    def on_epoch_end(self, epoch, logs=None):
        self._end(0.0)  # no step: a write still under way costs no timed step

    def on_train_end(self, logs=None):
        self._end(0.0)


def fit(tmp_path, name, *, samples=96, epochs=2, clock=None, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 8)).astype("float32")
    y = rng.integers(0, 3, size=samples).astype("int32")
    backup = BackupAndRestore(tmp_path / name, save_freq="auto", delete_checkpoint=False, **kwargs)
    callbacks = [backup]
    if clock is not None:
        clock.backup = backup
        callbacks.insert(0, clock)
    build_model().fit(x, y, batch_size=2, epochs=epochs, callbacks=callbacks, verbose=0)
    return backup


def intervals(output):
    return [int(n) for n in re.findall(r"backs up every (\d+) steps", output)]


@pytest.mark.parametrize("async_save", [False, True])
def test_a_fit_with_auto_writes_backups_and_says_and_records_its_interval(
    tmp_path, capsys, monkeypatch, async_save
):
    clock = FakeTime(background=async_save, write=20.0).install(monkeypatch)
    fit(tmp_path, "auto", max_overhead=0.5, clock=clock, async_save=async_save)
    out = capsys.readouterr().out
    chosen = intervals(out)
    assert chosen == [4], out  # a 20 s backup every 4 steps of 10 s costs 50%
    assert out.count('BackupAndRestore(save_freq="auto"): ') == len(chosen)
    records = CheckpointManager(tmp_path / "auto").checkpoints()
    assert records and records[-1].global_step > 1  # more than the probe after step 1
    cadence = records[-1].owner_state["cadence"]
    assert cadence["save_freq"] == "auto" and cadence["max_overhead"] == 0.5
    assert cadence["interval"] in chosen


@pytest.mark.parametrize("async_save", [False, True])
def test_steps_are_timed_one_by_one_never_across_an_epoch_start(
    tmp_path, mocker, monkeypatch, async_save
):
    """Keras builds an epoch's iterator after `on_epoch_begin` (seconds on TensorFlow): the first
    step of an epoch is not timed; the steps a background write overlapped are marked."""
    clock = FakeTime(background=async_save, write=400.0).install(monkeypatch)
    spy = mocker.spy(Cadence, "record_steps")
    fit(
        tmp_path,
        "timed",
        samples=400,
        epochs=2,
        max_overhead=0.5,
        async_save=async_save,
        clock=clock,
    )
    calls = [c.args[1:] + (c.kwargs["writing"],) for c in spy.call_args_list]
    assert len(calls) == 2 * (200 - 1)  # 200 steps an epoch, all but the first timed
    assert all(steps == 1 for steps, _, _ in calls)
    writing = [w for _, _, w in calls]
    assert any(writing) == async_save  # the first backup's write overlaps the next step
    assert not all(writing)


def test_auto_is_refused_in_a_multi_worker_job(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "TF_CONFIG",
        '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
        '"task": {"type": "worker", "index": 0}}',
    )
    with pytest.raises(
        ValueError,
        match=r'save_freq="auto" is for single-process training; '
        r"this job has 2 workers",
    ):
        fit(tmp_path, "multi", epochs=1)
    assert not (tmp_path / "multi").exists()  # refused before anything was written


@pytest.mark.parametrize("async_save", [False, True])
def test_slower_saves_make_the_interval_grow(tmp_path, capsys, monkeypatch, async_save):
    fast = FakeTime(background=async_save, write=20.0).install(monkeypatch)
    fit(tmp_path, "fast", epochs=1, max_overhead=0.5, async_save=async_save, clock=fast)
    fast_intervals = intervals(capsys.readouterr().out)
    slow = FakeTime(background=async_save, write=400.0).install(monkeypatch)
    fit(tmp_path, "slow", epochs=1, max_overhead=0.5, async_save=async_save, clock=slow)
    slow_intervals = intervals(capsys.readouterr().out)
    assert fast_intervals and slow_intervals
    assert slow_intervals[-1] > fast_intervals[-1], (fast_intervals, slow_intervals)


# --------------------------------------------------------------------------- what it says


def simulate(cadence, step_seconds, steps, *, blocking, write=0.03):
    """Drives `cadence` as the callback does, inline, on a clock moved by the test: each step
    takes `step_seconds(global_step)`; backup `i` blocks training `blocking(i)` seconds.
    Returns the lines it gave to print, with their step."""
    now, last, lines = 0.0, 0, []
    for step in range(1, steps + 1):
        now += step_seconds(step)
        line = cadence.batch_end(now, step, False)
        if line is not None:
            lines.append((step, line))
        if cadence.save_freq is not None and step - last >= cadence.save_freq:
            cost = blocking(cadence.saves)
            cadence.record_save(cost, 0.0)
            cadence.record_write(write)
            now, last = now + cost, step
        cadence.tick(now, step, False)
    return lines


def under_load(step):
    """1 ms steps, and every 300 steps a burst of 20 steps of 15 ms (another job on the cores)."""
    return 0.015 if step % 300 < 20 else 0.001


def test_swinging_costs_are_said_once_then_only_when_a_change_lasts():
    cadence = Cadence(0.02, background=False, warmup=1)
    lines = simulate(cadence, under_load, 3000, blocking=lambda i: 0.03)
    assert len(lines) == 2, lines  # the first choice, then the level the swings settle around
    assert lines[0][1].startswith("backs up every ")
    assert lines[1][1].startswith(f"now backs up every {cadence._said} steps instead of ")
    everything = simulate(Cadence(0.02, background=False, warmup=1, verbose=2), under_load, 3000,
                          blocking=lambda i: 0.03)  # fmt: skip
    assert len(everything) > 20  # the interval itself still follows the costs


def test_a_lasting_change_is_said_after_it_lasted():
    def slower(step):
        return 0.001 if step < 1000 else 0.004  # the steps get 4x slower, for good

    cadence = Cadence(0.02, background=False, warmup=1)
    lines = simulate(cadence, slower, 4000, blocking=lambda i: 0.03)
    assert len(lines) == 2, lines
    assert lines[0][1].startswith("backs up every 1500 steps (a step takes 1.0 ms")
    said = re.match(r"now backs up every (\d+) steps instead of 1500: costs drifted", lines[1][1])
    assert said and 375 <= int(said[1]) < 750  # 4x the step time: a quarter of the interval
    assert 1000 + int(said[1]) <= lines[1][0]  # said once it had lasted that many steps
    assert 375 <= cadence.interval <= 375 * cadence.drift  # settled: nothing more to say


def test_verbose_0_says_nothing():
    cadence = Cadence(0.02, background=False, warmup=1, verbose=0)
    assert simulate(cadence, under_load, 3000, blocking=lambda i: 0.03) == []
    assert cadence.interval is not None


def test_the_first_line_reports_a_backup_without_the_first_use_costs():
    """The first backup of a process pays tracing, buffer allocation and imports (84 ms against
    10-20 ms for the next ones, measured on an 18k-parameter model): not what a backup costs."""
    cadence = Cadence(0.02, background=False, warmup=1)
    lines = simulate(cadence, lambda step: 0.001, 200, blocking=lambda i: 0.3 if i == 0 else 0.03)
    assert "a backup blocks training 30.0 ms" in lines[0][1]
    assert cadence.warmup_blocking_seconds == pytest.approx(0.3)
    assert cadence.get_state()["blocking_seconds"] == pytest.approx(0.03)


@pytest.mark.parametrize(
    ("argument", "value"), [("warmup", -1), ("warmup", True), ("verbose", 3), ("verbose", True)]
)
def test_invalid_cadence_arguments_are_refused(argument, value):
    with pytest.raises(ValueError, match=rf"argument `{argument}`.*Received: {argument}={value}"):
        Cadence(0.02, **{argument: value})


class FirstUse(FakeTime):
    """FakeTime whose backups block training `capture` seconds, and the first one `first_use`
    seconds more (tracing, buffers, imports)."""

    def __init__(self, *, capture: float, first_use: float, **kwargs):
        super().__init__(**kwargs)
        self.capture, self.first_use, self.captures = capture, first_use, 0

    def install(self, monkeypatch) -> FirstUse:
        super().install(monkeypatch)
        noted = BackupFile.capture

        def costly(fmt, model, extra=None):
            self.now += self.capture + (self.first_use if self.captures == 0 else 0.0)
            self.captures += 1
            return noted(fmt, model, extra)

        monkeypatch.setattr(BackupFile, "capture", costly)
        return self


@pytest.mark.parametrize("async_save", [False, True])
def test_in_a_fit_the_first_line_leaves_the_first_use_costs_out(
    tmp_path, capsys, monkeypatch, async_save
):
    clock = FirstUse(capture=2.0, first_use=30.0, background=async_save, write=0.0)
    fit(
        tmp_path, "first", max_overhead=0.5, async_save=async_save, clock=clock.install(monkeypatch)
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert "a backup blocks training 2000.0 ms" in first, first


def test_in_a_fit_verbose_0_prints_nothing(tmp_path, capsys, monkeypatch):
    clock = FakeTime(background=True, write=20.0).install(monkeypatch)
    fit(tmp_path, "quiet", max_overhead=0.5, clock=clock, verbose=0)
    assert capsys.readouterr().out == ""
    assert CheckpointManager(tmp_path / "quiet").checkpoints()  # backed up all the same
