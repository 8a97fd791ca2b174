"""keras_ckpt.training.writer: inline and background execution of saves."""

from __future__ import annotations

import threading
import time

import pytest

from keras_ckpt.training.writer import Writer


def test_inline_writer_writes_before_returning():
    done = []
    Writer(background=False).run(lambda: 1, done.append)
    assert done == [1]


def test_background_writer_runs_the_write_on_another_thread():
    threads = []
    writer = Writer(background=True)
    writer.run(lambda: None, lambda _: threads.append(threading.current_thread()))
    writer.wait()
    assert threads and threads[0] is not threading.main_thread()


def test_prepare_runs_on_the_calling_thread():
    where = []
    writer = Writer(background=True)
    writer.run(lambda: where.append(threading.current_thread()), lambda _: None)
    writer.wait()
    assert where == [threading.main_thread()]


def test_next_save_waits_for_the_one_in_flight_and_counts_the_wait():
    release = threading.Event()
    order = []
    writer = Writer(background=True)
    writer.run(
        lambda: order.append("prepare 1"), lambda _: (release.wait(5), order.append("write 1"))
    )
    threading.Timer(0.2, release.set).start()
    writer.run(lambda: order.append("prepare 2"), lambda _: order.append("write 2"))
    writer.wait()
    assert order == ["prepare 1", "write 1", "prepare 2", "write 2"]  # one snapshot alive at most
    assert writer.stats.saves == 2 and writer.stats.waits >= 1
    assert writer.stats.waited_seconds > 0


def test_background_error_is_raised_on_the_training_thread_once():
    writer = Writer(background=True)

    def fail(_):
        raise OSError(28, "No space left on device")

    writer.run(lambda: None, fail)
    while writer.busy:
        time.sleep(0.01)
    with pytest.raises(OSError, match="No space left"):
        writer.check()
    writer.check()  # reported once, not again


def test_background_error_surfaces_at_the_next_save():
    writer = Writer(background=True)
    writer.run(lambda: None, lambda _: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.run(lambda: None, lambda _: None)


def test_wait_with_nothing_in_flight_returns():
    writer = Writer(background=True)
    writer.wait()  # nothing ever started
    writer.run(lambda: None, lambda _: None)
    writer.wait()
    waits = writer.stats.waits
    writer.wait()  # the save is committed: nothing in flight, no wait counted
    assert writer.stats.waits == waits and writer.stats.saves == 1 and not writer.busy
