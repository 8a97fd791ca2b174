"""A writer for the kill tests: run as a script, killed with SIGKILL by the parent test.

    python tests/crash_commit_child.py commit-loop DIR   # commit checkpoints until killed
    python tests/crash_commit_child.py hold-lock DIR     # take the writer lock, then sleep
    python tests/crash_commit_child.py fork-and-die DIR  # take it, fork a sleeper, then die

Prints "ready" once it holds the directory's writer lock. It loads keras_ckpt's foundation
modules without the package `__init__` (which imports Keras, seconds per start) and writes its
records like a tool without Keras, so a child starts in a fraction of a second and the kills land in
commits.
"""

from __future__ import annotations

import os
import sys
import time
import types

_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_ckpt")


def _import_manager():
    sys.modules["keras"] = None  # type: ignore[assignment]  # `import keras` raises ImportError
    package = types.ModuleType("keras_ckpt")
    package.__path__ = [_PACKAGE]
    sys.modules["keras_ckpt"] = package
    from keras_ckpt.manager import CheckpointManager
    from keras_ckpt.policies import KeepLast

    return CheckpointManager, KeepLast


FIXED_NAME = "fixed"  # replaced again and again in place
MB = 1024 * 1024


def payload(counter: int, size: int) -> bytes:
    """`size` bytes that differ from one commit to the next (so a mixed file fails its checksum)."""
    block = counter.to_bytes(8, "little") * (MB // 8)
    return (block * (size // MB + 1))[:size]


def commit_loop(directory: str) -> None:
    CheckpointManager, KeepLast = _import_manager()
    manager = CheckpointManager(directory)
    manager.open_for_writing()
    counter = max((r.sequence for r in manager.checkpoints()), default=0)
    print("ready", flush=True)
    while True:
        counter += 1
        fixed = counter % 3 == 0
        name = FIXED_NAME if fixed else f"ckpt-{counter:05d}"
        size = (1 + counter % 4) * MB
        with manager.stage() as staging:
            files = {}
            # New names get two files, so that a kill can fall between publishing them; the fixed
            # name is replaced in place, which the manager allows for one-file checkpoints only.
            parts = [(f"{name}/data.bin", size)]
            if not fixed:
                parts.append((f"{name}/extra.bin", 4096))
            for relpath, nbytes in parts:
                local = os.path.join(staging, relpath.replace("/", "_"))
                with open(local, "wb") as f:
                    f.write(payload(counter, nbytes))
                files[relpath] = local
            manager.commit(files, name=name, kind="training_state", global_step=counter)
        manager.prune(KeepLast(3))


def hold_lock(directory: str) -> None:
    CheckpointManager, _ = _import_manager()
    CheckpointManager(directory).open_for_writing()
    print("ready", flush=True)
    time.sleep(600)


def fork_and_die(directory: str) -> None:
    """A trainer with a forked data-loader worker: the trainer dies, the worker lives on.

    The worker reports in `DIR.child` whether it could still write (it must not), then sleeps.
    """
    CheckpointManager, _ = _import_manager()
    manager = CheckpointManager(directory)
    manager.open_for_writing()
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the parent's reader waits for the trainer's output only
        try:
            with manager.stage():
                pass
            outcome = "wrote"
        except Exception as e:  # the test reads which error it was
            outcome = f"{type(e).__name__}: {e}"
        with open(f"{directory}.child", "w") as f:
            f.write(outcome)
        time.sleep(600)
        os._exit(0)
    print(f"ready {pid}", flush=True)
    os._exit(0)  # killed trainer: no close, no release


if __name__ == "__main__":
    mode, directory = sys.argv[1:3]
    {"commit-loop": commit_loop, "hold-lock": hold_lock, "fork-and-die": fork_and_die}[mode](
        directory
    )
