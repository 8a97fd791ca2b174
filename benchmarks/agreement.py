"""What agreeing on signals and time-based saves costs a multi-worker job, per training step.

Starts two workers on 127.0.0.1 (TensorFlow `MultiWorkerMirroredStrategy`, JAX `jax.distributed`
with gloo) and times, on the chief:

- `agree`: one `keras_ckpt.distribute.agree` call (the all-reduce of a few ints), alone;
- the step time of a tiny model's `fit` with `BackupAndRestore` and nothing to agree on
  (`save_on_interrupt=False`, no `every_seconds`), agreeing at every step, and agreeing every
  `period` steps as the chief picks it (the default), with the period it picked;
- what one agreement adds to the step after it, as the chief estimates it (the all-reduce and the
  lost overlap of the next step), and that divided by the period: the cost per step.

A tiny model is the worst case: its steps are short, so a round trip is a large share of them.

Each worker pair runs the three settings in turn, `--rounds` times, and reports medians.

Run: .venv/bin/python benchmarks/agreement.py [--steps 400] [--rounds 3] [--backends tensorflow,jax]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("none", "every step", "default")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def worker(backend: str, index: int, ports: list[int], rounds: int, steps: int) -> None:
    os.environ["KERAS_BACKEND"] = backend
    if backend == "tensorflow":
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        from multiworker_child import work_around_keras_20585

        work_around_keras_20585(strategy)
        scope = strategy.scope()
    else:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        import keras

        keras.distribution.initialize(
            job_addresses=f"127.0.0.1:{ports[0]}", num_processes=2, process_id=index
        )
        distribution = keras.distribution.DataParallel(devices=jax.devices())
        distribution.auto_shard_dataset = False
        keras.distribution.set_distribution(distribution)
        import contextlib

        scope = contextlib.nullcontext()
    import keras
    import numpy as np

    import keras_ckpt
    from keras_ckpt import distribute
    from keras_ckpt.training import agreement

    default_delay = agreement.MAX_DELAY
    with scope:
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
        )
        model.compile(optimizer="adam", loss="mse")

    calls = []
    for _ in range(60):
        started = time.perf_counter()
        distribute.agree([0, 0, 0, 0, 0], model)
        calls.append(time.perf_counter() - started)

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    rng = np.random.default_rng(index)
    x = rng.normal(size=(steps * 8, 8)).astype("float32")
    y = rng.normal(size=(steps * 8, 3)).astype("float32")
    found: dict[str, list] = {mode: [] for mode in MODES}
    for _ in range(rounds):  # the modes interleaved, so that the machine's load hits all alike
        for mode in MODES:
            agreement.MAX_DELAY = 0.0 if mode == "every step" else default_delay
            backup = keras_ckpt.BackupAndRestore(
                tempfile.mkdtemp(prefix=f"keras-ckpt-bench-{index}-"),
                save_freq=10**9,
                save_on_interrupt=mode != "none",
            )
            timer = Timer()
            model.fit(
                x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[backup, timer]
            )
            gaps = np.diff(timer.ends[steps // 4 :])  # past warm-up
            agreed = backup._agreement
            found[mode].append(
                (
                    float(np.median(gaps)),
                    float(np.mean(gaps)),
                    agreed.agreements if agreed is not None else 0,
                    agreed.period if agreed is not None else 0,
                    # What one agreement adds to the step after it, as the chief estimates it
                    # (agreeing at every step leaves no step without: the call's own time).
                    _extra(agreed._costs) if agreed is not None else 0.0,
                )
            )
    result = {"agree_ms": 1e3 * statistics.median(calls[10:])}
    for mode, runs in found.items():
        result[mode] = {
            "step_ms": 1e3 * statistics.median(r[0] for r in runs),
            "mean_ms": 1e3 * statistics.median(r[1] for r in runs),
            "agreements": statistics.median(r[2] for r in runs),
            "period": statistics.median(r[3] for r in runs),
            "extra_ms": 1e3 * statistics.median(r[4] for r in runs),
        }
    print(json.dumps(result), flush=True)


def _extra(costs) -> float:
    found = costs.extra if costs.extra is not None else costs.call
    return found or 0.0


def run_pair(backend: str, rounds: int, steps: int) -> dict:
    ports = free_ports(2)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    procs = []
    for i in range(2):
        cmd = [__file__, "--worker", backend, str(i), ",".join(map(str, ports)), str(rounds)]
        procs.append(
            subprocess.Popen(
                [sys.executable, *cmd, str(steps)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        )
    outputs = [proc.communicate(timeout=1800)[0] for proc in procs]
    chief = [line for line in outputs[0].splitlines() if line.startswith("{")]
    if not chief:
        raise RuntimeError(f"{backend}: the chief reported nothing")
    return json.loads(chief[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        backend, index, ports, rounds, steps = sys.argv[2:7]
        worker(backend, int(index), [int(p) for p in ports.split(",")], int(rounds), int(steps))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="tensorflow,jax")
    args = parser.parse_args()
    print(f"{'backend':<11} {'agreeing':<11} {'step ms':>8} {'mean ms':>8} {'+ms/step':>8} "
          f"{'agreements':>10} {'period':>6} {'1 agreement ms':>14} {'ms/step':>8}"
          "   agree() alone")  # fmt: skip
    for backend in args.backends.split(","):
        r = run_pair(backend, args.rounds, args.steps)
        base = r["none"]["step_ms"]
        for mode in MODES:
            m = r[mode]
            print(
                f"{backend:<11} {mode:<11} {m['step_ms']:>8.2f} {m['mean_ms']:>8.2f} "
                f"{m['step_ms'] - base:>+8.2f} {m['agreements']:>10.0f} {m['period']:>6.0f} "
                f"{m['extra_ms']:>14.2f} {m['extra_ms'] / max(m['period'], 1):>8.3f}"
                + (f"   {r['agree_ms']:.2f} ms" if mode == "none" else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
