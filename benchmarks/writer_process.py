"""Background writing: a thread or a separate process? What each costs training, on this machine.

PyTorch's async checkpointing moved its writer to a process after GIL contention halved training
throughput. keras-ckpt's writer now spends its time in `os.pwrite`, `fsync` and crc32c over host
buffers, which release the GIL; this measures whether a process still wins here.

One model (Dense + Adam, `--size`, default 14.2M parameters), `fit` for `--epochs` epochs of
`--steps` steps, saving the whole state (model + optimizer variables) at every epoch end, in three
ways, interleaved over `--reps` repetitions:

- none: no save (baseline).
- thread: the training thread copies every variable into buffers allocated once (`np.copyto`, the
  blocking part); one background thread writes the buffers with `os.pwrite`, computes crc32c over
  them and fsyncs. The next save waits for the previous one.
- process: the training thread copies every variable into shared memory
  (`multiprocessing.shared_memory`, allocated once); a persistent writer process, told over a pipe,
  does the same pwrite + crc32c + fsync from the shared memory. The next save waits for its answer.

Both pay the same host copy on the training thread and the same bytes written; what differs is
where the writing runs (a thread of the training process, contending for its GIL, or another
process). Overhead per save = (fit time - baseline fit time of the same repetition) / saves.

    .venv/bin/python -m benchmarks.writer_process [--size 14.2M] [--reps 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from multiprocessing import shared_memory
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402
from benchmarks._common import Stat, Table, parse_size, print_table, rotated  # noqa: E402


def _write_buffers(path: str, buffers: list[Any]) -> int:
    import google_crc32c

    crc = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        offset = 0
        for buffer in buffers:
            raw = buffer.reshape(-1).view("uint8")
            os.pwrite(fd, raw, offset)
            crc = google_crc32c.extend(crc, raw)
            offset += raw.nbytes
        os.fsync(fd)
    finally:
        os.close(fd)
    return crc


def _writer_main(conn: Any, names: list[tuple[str, int]]) -> None:
    import numpy as np

    blocks = [shared_memory.SharedMemory(name=name) for name, _ in names]
    buffers = [
        np.ndarray((size,), np.uint8, buffer=block.buf)
        for block, (_, size) in zip(blocks, names, strict=True)
    ]
    while True:
        path = conn.recv()
        if path is None:
            break
        conn.send(_write_buffers(path, buffers))
    del buffers
    for block in blocks:
        block.close()


class _ThreadSaver:
    def __init__(self, variables: list[Any], folder: str):
        import numpy as np

        self.variables = variables
        self.buffers = [np.empty(v.shape, v.dtype) for v in variables]
        for b in self.buffers:
            b.fill(0)  # pre-fault
        self.folder = folder
        self.thread: threading.Thread | None = None
        self.count = 0

    def save(self) -> None:
        import numpy as np

        self.wait()
        for buffer, variable in zip(self.buffers, self.variables, strict=True):
            np.copyto(buffer, variable.numpy())
        self.count += 1
        path = os.path.join(self.folder, f"t{self.count}.bin")
        self.thread = threading.Thread(target=_write_buffers, args=(path, self.buffers))
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def close(self) -> None:
        self.wait()


class _ProcessSaver:
    def __init__(self, variables: list[Any], folder: str):
        import numpy as np

        self.variables = variables
        self.blocks, self.buffers = [], []
        for v in variables:
            nbytes = max(1, int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize)
            block = shared_memory.SharedMemory(create=True, size=nbytes)
            array = np.ndarray(v.shape, v.dtype, buffer=block.buf)
            array.fill(0)
            self.blocks.append(block)
            self.buffers.append(array)
        names = [(b.name, a.nbytes) for b, a in zip(self.blocks, self.buffers, strict=True)]
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_writer_main, args=(child, names), daemon=True)
        self.process.start()
        self.folder = folder
        self.busy = False
        self.count = 0

    def save(self) -> None:
        import numpy as np

        self.wait()
        for buffer, variable in zip(self.buffers, self.variables, strict=True):
            np.copyto(buffer, variable.numpy())
        self.count += 1
        self.conn.send(os.path.join(self.folder, f"p{self.count}.bin"))
        self.busy = True

    def wait(self) -> None:
        if self.busy:
            self.conn.recv()
            self.busy = False

    def close(self) -> None:
        self.wait()
        self.conn.send(None)
        self.process.join()
        del self.buffers
        for block in self.blocks:
            block.close()
            block.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writer_process")
    parser.add_argument("--size", default="14.2M")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="Saves per fit (one per epoch).")
    parser.add_argument("--steps", type=int, default=3, help="Training steps between saves.")
    args = parser.parse_args(argv)

    import keras

    params = parse_size(args.size)
    model = _common.build_model(params)
    x, y = _common.training_data(args.steps)
    variables = _common.state_variables(model)
    state = sum(v.numpy().nbytes for v in variables)
    folder = tempfile.mkdtemp(prefix="keras-ckpt-writer-")
    savers: dict[str, Any] = {
        "thread": _ThreadSaver(variables, folder),
        "process": _ProcessSaver(variables, folder),
    }

    class Save(keras.callbacks.Callback):
        def __init__(self, saver: Any):
            super().__init__()
            self.saver = saver

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.saver.save()

        def on_train_end(self, logs: Any = None) -> None:
            self.saver.wait()

    def fit(name: str) -> float:
        callbacks = [] if name == "none" else [Save(savers[name])]
        start = time.perf_counter()
        model.fit(
            **_common.fit_data(x, y),
            epochs=args.epochs,
            verbose=0,
            callbacks=callbacks,
        )
        seconds = time.perf_counter() - start
        _common.settle(None)
        for entry in os.scandir(folder):
            os.remove(entry.path)
        return seconds

    names = ["none", "thread", "process"]
    for name in names:
        fit(name)  # warm-up
    stats = {name: Stat() for name in names}
    for rep in range(args.reps):
        for name in rotated(names, rep):
            stats[name].add(fit(name))
    for saver in savers.values():
        saver.close()
    os.rmdir(folder)

    table = Table(
        title=(
            f"Background writer: thread or process, {_common.size_label(params)} model "
            f"({state / 1e6:.0f} MB), {args.epochs} saves per fit, {args.steps} steps apart, "
            f"{args.reps} repetitions"
        ),
        columns=["writer", "fit time median (min-max)", "overhead per save median (min-max)"],
    )
    for name in names:
        overhead = Stat(
            [
                (t - b) / args.epochs
                for t, b in zip(stats[name].samples, stats["none"].samples, strict=True)
            ]
        )
        table.add(name, stats[name].cell(), "-" if name == "none" else overhead.cell())
    table.notes.append(f"load average at end: {os.getloadavg()}")
    print_table(table, plain=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
