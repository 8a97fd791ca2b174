"""Which process of a multi-worker job writes checkpoints: the chief, and only the chief.

In data-parallel training every process holds the same variables, so one copy on disk is enough and
two writers would corrupt each other's records and retention. Both callbacks ask `is_chief(model)`
before they lock, stage, commit, prune or delete; every process still reads the same backup when
it resumes (reading takes no lock).

How the chief is found, per Keras backend:

- TensorFlow: the cluster resolver of the model's `tf.distribute` strategy
  (`MultiWorkerMirroredStrategy`), else the `TF_CONFIG` environment variable. The task of type
  `"chief"` is the chief; without one, `"worker"` 0 is. `"evaluator"` and `"ps"` tasks never are.
- JAX: `jax.process_index() == 0`; `keras.distribution.initialize(...)` numbers the processes.
- PyTorch: rank 0 of `torch.distributed` if it is initialised, else the `RANK` variable `torchrun`
  sets.

A single process, without any of these, is its own chief.

Workers that train in lock step (every collective joined by all) must also *decide* in lock step:
a worker that takes its host copy (an all-reduce of the metric variables) or stops `fit` at a step
where another does not hangs or desynchronises the job. A signal reaches one worker, and each
worker's clock says something else about `every_seconds`, so such decisions go through `agree`,
one small all-reduce that every worker joins at the same point: a signal anywhere stops all of
them, and a time-based save happens when the chief's clock says so.
"""

from __future__ import annotations

import functools
import json
import os
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["agree", "is_chief", "worker_count", "worker_id"]

_TRAINING_TASKS = ("chief", "worker")


def is_chief(model: Any = None) -> bool:
    """True in the one process that writes checkpoints (always True outside multi-worker jobs).

    Args:
        model: The model being trained. On TensorFlow its `distribute_strategy` names the cluster;
            without it, the strategy in scope or `TF_CONFIG` does.

    Example:

    >>> import json, os
    >>> os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
    ...                                       "task": {"type": "worker", "index": 1}})
    >>> is_chief(), worker_id()  # worker 1 of a cluster without a chief task
    (False, 1)
    >>> del os.environ["TF_CONFIG"]
    >>> is_chief()  # a single process is its own chief
    True
    """
    task_type, task_id, cluster = _task(model)
    if task_type not in _TRAINING_TASKS:
        return False
    return _rank(task_type, task_id, cluster) == 0


def worker_id(model: Any = None) -> int:
    """This process's rank among the processes that train; 0 is the chief.

    On TensorFlow the chief task is 0 and worker `i` is `i + 1` when the cluster has a chief,
    else `i` (the numbering `MultiWorkerMirroredStrategy` uses).

    Raises:
        ValueError: this TensorFlow task does not train (`"evaluator"`, `"ps"`).

    Example:

    >>> worker_id()  # not in a multi-worker job
    0
    """
    task_type, task_id, cluster = _task(model)
    if task_type not in _TRAINING_TASKS:
        raise ValueError(
            f"This process is a {task_type!r} task; only 'chief' and 'worker' tasks train and "
            "have a worker id."
        )
    return _rank(task_type, task_id, cluster)


def worker_count(model: Any = None) -> int:
    """How many processes train (1 outside multi-worker jobs).

    Example:

    >>> worker_count()
    1
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return int(jax.process_count())
    if backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_world_size())
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    _, _, cluster = _task(model)
    return max(1, sum(len(cluster.get(kind) or ()) for kind in _TRAINING_TASKS))


def agree(votes: Sequence[int], model: Any = None) -> tuple[int, ...]:
    """Sums each vote over every training worker; every worker receives the same sums.

    A collective: every worker must call it at the same point of training (the same step) with as
    many votes, or the job hangs. Build decisions from the sums: "any worker" is a sum above 0
    (every worker votes), "the chief's decision" is the sum of a vote only the chief casts (the
    others vote 0), so one call settles both.

    Outside a multi-worker job there is nothing to agree with: the votes come back as they are,
    with no collective at all. The same holds when the workers do not train in lock step (a
    TensorFlow cluster without `MultiWorkerMirroredStrategy`, `torch.distributed` not initialised).

    Args:
        votes: Small non-negative ints (flags, counts), the same number on every worker.
        model: The model being trained. On TensorFlow its `distribute_strategy` performs the
            all-reduce; without it, the strategy in scope does.

    Returns:
        The sum of each vote over the workers.

    Example:

    >>> agree([1, 0])  # a single process agrees with itself
    (1, 0)
    """
    local = tuple(int(v) for v in votes)
    if worker_count(model) <= 1 or not local:
        return local
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_sum(local)
    if backend == "torch":
        return _torch_sum(local)
    if backend == "tensorflow":
        return _tf_sum(local, model)
    return local


def _jax_sum(votes: tuple[int, ...]) -> tuple[int, ...]:
    import jax
    import numpy as np

    summed, sharding, shape = _jax_sum_function(len(votes))
    local = np.asarray(votes, dtype=np.int32)[None]
    pieces = [jax.device_put(local, device) for device in jax.local_devices()]
    stacked = jax.make_array_from_single_device_arrays(shape, sharding, pieces)
    return tuple(int(v) for v in np.asarray(summed(stacked).addressable_data(0)))


@functools.lru_cache(maxsize=8)
def _jax_sum_function(length: int) -> tuple[Any, Any, tuple[int, int]]:
    """A compiled sum over processes of one row per process (each process's devices hold its
    row). Built once: `multihost_utils.process_allgather` rebuilds its mesh at every call and
    costs about 2.5 times as much per step."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices()).reshape(jax.process_count(), jax.local_device_count())
    mesh = Mesh(devices, ("processes", "local_devices"))
    summed = jax.jit(
        lambda rows: rows.sum(axis=0), out_shardings=NamedSharding(mesh, PartitionSpec())
    )
    sharding = NamedSharding(mesh, PartitionSpec("processes"))
    return summed, sharding, (jax.process_count(), length)


def _torch_sum(votes: tuple[int, ...]) -> tuple[int, ...]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return votes
    # NCCL reduces only tensors on the GPU; gloo and MPI take them on the CPU.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(votes, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tuple(int(v) for v in tensor.tolist())


_tf_sums: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _tf_sum(votes: tuple[int, ...], model: Any) -> tuple[int, ...]:
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None) if model is not None else None
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return votes  # no collective training: nothing runs in lock step
    summed = _tf_sums.get(strategy)
    if summed is None:
        summed = _tf_sums[strategy] = _tf_sum_function(strategy)
    result = summed(tf.constant(votes, dtype=tf.float32))
    local = strategy.experimental_local_results(result)[0]
    return tuple(round(float(v)) for v in local.numpy())


def _tf_sum_function(strategy: Any) -> Any:
    """A compiled all-reduce over the strategy's replicas, counting each worker once."""
    import tensorflow as tf

    per_worker = max(1, len(strategy.extended.worker_devices))

    def replica_sum(votes: Any) -> Any:
        context = tf.distribute.get_replica_context()
        first = tf.cast(context.replica_id_in_sync_group % per_worker == 0, votes.dtype)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, votes * first)

    @tf.function
    def summed(votes: Any) -> Any:
        return strategy.run(replica_sum, args=(votes,))

    return summed


def _rank(task_type: str, task_id: int, cluster: dict[str, Any]) -> int:
    if task_type == "chief":
        return 0
    return task_id + (1 if cluster.get("chief") else 0)


def _task(model: Any) -> tuple[str, int, dict[str, Any]]:
    """(task type, task index, cluster dict), in TensorFlow's terms, for any backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "worker", int(jax.process_index()), {}
    if backend == "torch":
        return "worker", _torch_rank(), {}
    if backend == "tensorflow":
        found = _strategy_task(model)
        if found is not None:
            return found
    return _tf_config_task(os.environ.get("TF_CONFIG"))


def _strategy_task(model: Any) -> tuple[str, int, dict[str, Any]] | None:
    """The task of the model's (or the current) strategy, if it runs in a multi-worker cluster."""
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None) if model is not None else None
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type is None:
        return None
    cluster = resolver.cluster_spec().as_dict()
    return task_type, int(resolver.task_id or 0), cluster


def _tf_config_task(text: str | None) -> tuple[str, int, dict[str, Any]]:
    """(task type, index, cluster) from a `TF_CONFIG` value; `("chief", 0, {})` when unset.

    Raises:
        ValueError: `TF_CONFIG` is not JSON of the form TensorFlow documents
            (`{"cluster": {...}, "task": {"type": ..., "index": ...}}`).
    """
    if not text:
        return "chief", 0, {}
    example = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise ValueError(
            f"TF_CONFIG is not a JSON object like {example}. Received: TF_CONFIG={text!r}"
        )
    cluster = config.get("cluster", {})
    task = config.get("task", {})
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(
            f"TF_CONFIG needs `cluster` and `task` objects, like {example}. "
            f"Received: TF_CONFIG={text!r}"
        )
    task_type = task.get("type")
    if task_type is None:
        return "chief", 0, cluster  # a cluster without a task: TensorFlow runs it as one process
    index = task.get("index", 0)
    if not isinstance(task_type, str) or isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(
            "TF_CONFIG `task` needs a string `type` and an int `index`, like "
            f'{{"type": "worker", "index": 0}}. Received: task={task!r}'
        )
    if index < 0:
        raise ValueError(f"TF_CONFIG task index must be 0 or more. Received: task={task!r}")
    return task_type, index, cluster


def _torch_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    rank = os.environ.get("RANK", "0")
    try:
        return int(rank)
    except ValueError:
        raise ValueError(
            f"The RANK environment variable must be an int (torchrun sets it). Received: {rank!r}"
        ) from None
