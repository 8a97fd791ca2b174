"""Sharded checkpoints: keras-ckpt's Orbax format against Keras's own `OrbaxCheckpoint`.

    python benchmarks/sharded.py [--params 4M] [--saves 5] [--steps-between 8]

JAX on 4 forced CPU devices, a 2x2 `DeviceMesh`, every Dense kernel sharded over the `model` axis
by a `LayoutMap`; the same functional Dense + Adam model (`_common.hidden_width`) trained once per
variant, saving every `--steps-between` steps (keep the newest 2 on both sides). One run each:

- blocked per save: the training thread's time in the callback's hooks (`_common.HookTimer`),
  waits for the previous save included, divided by the saves;
- fit overhead per save: the fit's wall time minus that of a fit without checkpoints, divided by
  the saves (`fit` returns after the last save is written on both sides);
- restore: `CheckpointManager.load_model("latest")` (every file's checksum checked first) against
  `keras.saving.load_model(dir)`, each from a warm page cache, onto the same mesh.

keras-ckpt's figures include what Keras's callback does not do: crc32c and fsync of every file,
the record, the history line and retention through the journal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402


def build(params: int):
    import keras

    keras.utils.set_random_seed(0)
    width = _common.hidden_width(params) // 8 * 8  # divisible by the mesh's model axis
    inputs = keras.Input((_common.INPUT_DIM,))
    hidden = inputs
    for i in range(_common.HIDDEN_LAYERS):
        hidden = keras.layers.Dense(width, activation="relu", name=f"dense{i}")(hidden)
    outputs = keras.layers.Dense(_common.OUTPUT_DIM, name="head")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="4M")
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--steps-between", type=int, default=8)
    args = parser.parse_args()
    params = _common.parse_size(args.params)

    import jax
    import keras

    import keras_ckpt

    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], jax.devices())
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*kernel"] = (None, "model")
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")
    )
    steps = args.saves * args.steps_between
    x, y = _common.training_data(steps)
    root = _common.scratch_root()

    def fit(callbacks):
        print(f"fit with {[type(c).__name__ for c in callbacks]}", file=sys.stderr, flush=True)
        model = build(params)
        model.fit(x[:16], y[:16], batch_size=_common.BATCH_SIZE, verbose=0)  # compile first
        timers = [_common.HookTimer(c) for c in callbacks]
        start = time.perf_counter()
        model.fit(x, y, batch_size=_common.BATCH_SIZE, shuffle=False, verbose=0,
                  callbacks=callbacks)  # fmt: skip
        wall = time.perf_counter() - start
        for timer in timers:
            slow = {k: [round(d, 3) for d in v if d > 0.01] for k, v in timer.calls.items()}
            print(f"  hooks over 10 ms: {slow}", file=sys.stderr, flush=True)
        return wall, sum(t.total for t in timers), model

    baseline, _, _ = fit([])
    keras_dir = os.path.join(root, "keras")
    keras_cb = keras.callbacks.OrbaxCheckpoint(
        keras_dir, save_freq=args.steps_between, max_to_keep=2
    )
    keras_wall, keras_blocked, _ = fit([keras_cb])
    _common.settle()
    ours_dir = os.path.join(root, "ours")
    ours_cb = keras_ckpt.ModelCheckpoint(
        os.path.join(ours_dir, "m-{epoch}-{batch}/"),
        save_freq=args.steps_between,
        keep_last=2,
    )
    ours_wall, ours_blocked, _ = fit([ours_cb])
    stats = ours_cb._pipeline.stats
    print(f"keras-ckpt waited {stats.waits} times, {stats.waited_seconds:.3f} s", file=sys.stderr)
    _common.settle()

    keras.saving.load_model(keras_dir)  # warm both caches and compilations once
    manager = keras_ckpt.CheckpointManager(ours_dir)
    manager.load_model("latest")
    start = time.perf_counter()
    keras.saving.load_model(keras_dir)
    keras_restore = time.perf_counter() - start
    start = time.perf_counter()
    manager.load_model("latest")
    ours_restore = time.perf_counter() - start

    n = args.saves
    rows = [
        ("blocked per save", ours_blocked / n, keras_blocked / n),
        ("fit overhead per save", (ours_wall - baseline) / n, (keras_wall - baseline) / n),
        ("restore (load_model)", ours_restore, keras_restore),
    ]
    size = _common.tree_bytes(os.path.join(ours_dir, manager.latest().name))
    print(
        f"{_common.size_label(params)} params, {size / 1e6:.1f} MB per checkpoint, "
        f"{n} saves every {args.steps_between} steps, 2x2 mesh on 4 CPU devices"
    )
    print("| | keras-ckpt | Keras OrbaxCheckpoint | ratio |")
    print("|---|---|---|---|")
    for label, ours, theirs in rows:
        ratio = ours / theirs if theirs > 0 else float("nan")
        print(f"| {label} | {_common.fmt(ours)} | {_common.fmt(theirs)} | {ratio:.2f}x |")
    _common.settle(root)


if __name__ == "__main__":
    main()
