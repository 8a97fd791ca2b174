"""Helpers for tests that run several training processes: their output, waiting, killing."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def lines(logs: Path, run: str, index: int, kind: str) -> list[list[str]]:
    """The words after `kind` of each line process `index` of `run` printed that starts with it."""
    text = (logs / f"{run}-{index}.out").read_text()
    return [line.split()[1:] for line in text.splitlines() if line.split()[:1] == [kind]]


def wait_for(predicate, timeout: float, what: str) -> None:
    """Returns once `predicate()` holds; `TimeoutError` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.1)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILLs `proc` if it still runs, and reaps it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
