"""Multi-worker training: only the chief writes, every worker resumes from the same backup.

The two-process tests run `multiworker_child.py` twice as a real MultiWorkerMirroredStrategy
cluster on 127.0.0.1 (one module fixture, about 40 s): the first run is SIGKILLed mid-training, the
second resumes and finishes. The other tests check how the chief is chosen, per backend, and that
the callbacks on a non-chief worker leave the directory alone (the chief decision faked).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf
from conftest import build_model
from processes import kill, lines, wait_for

import keras_ckpt
from keras_ckpt import distribute
from keras_ckpt.callbacks.backup_and_restore import OWNER
from keras_ckpt.manager import CheckpointManager

CHILD = Path(__file__).with_name("multiworker_child.py")
PAUSE_AT = 10  # the child backs up every 5 steps: the killed run leaves backup-000000010
MC_OWNER = "ModelCheckpoint:model-{epoch:02d}.weights.h5"


# ------------------------------------------------------------------ two real workers


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(
    directory: Path,
    ports: list[int],
    logs: Path,
    run: str,
    pause_at: int | None = None,
    args: tuple[list[str], ...] = ([], []),
):
    """Starts both workers; worker 1 pauses after `pause_at` steps; worker i gets `args[i]` too.
    Output goes to files."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(len(ports)):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "KERAS_BACKEND": "tensorflow",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "TF_CONFIG": json.dumps(config),
        }
        cmd = [sys.executable, str(CHILD), str(directory), *args[index]]
        if pause_at is not None and index == 1:
            cmd += ["--pause-at", str(pause_at)]
        out = open(logs / f"{run}-{index}.out", "w")  # noqa: SIM115 - closed by the OS at exit
        err = open(logs / f"{run}-{index}.err", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env))
    return procs


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """Run "killed": worker 1 is SIGKILLed after step 10, the chief then fails or hangs (bounded).
    Run "resumed": both start again with the same TF_CONFIG and finish."""
    root = tmp_path_factory.mktemp("multiworker")
    directory, logs = root / "ckpt", root / "logs"
    logs.mkdir()
    ports = free_ports(2)
    backup_record = directory / "backup" / ".keras_ckpt" / f"backup-{PAUSE_AT:09d}.json"
    chief, worker = procs = launch(directory, ports, logs, "killed", pause_at=PAUSE_AT)
    survivor = {}
    try:
        wait_for(lambda: lines(logs, "killed", 1, "PAUSED"), 90, "worker 1 to pause")
        wait_for(backup_record.exists, 20, "the chief to commit the backup of step 10")
        kill(worker)
        try:  # the chief waits for worker 1 in the next all-reduce: it fails or hangs
            survivor["returncode"] = chief.wait(timeout=10)
        except subprocess.TimeoutExpired:
            survivor["returncode"] = "hung"
    finally:
        for proc in procs:
            kill(proc)
    after_kill = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))

    procs = launch(directory, ports, logs, "resumed")
    try:
        codes = [proc.wait(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            kill(proc)
    for index, code in enumerate(codes):
        assert code == 0, (logs / f"resumed-{index}.err").read_text()[-3000:]
    return {"dir": directory, "logs": logs, "survivor": survivor, "after_kill": after_kill}


def test_workers_know_their_role_from_tf_config(cluster_runs):
    logs = cluster_runs["logs"]
    for run in ("killed", "resumed"):
        assert lines(logs, run, 0, "ROLE") == [["0", "True"]]
        assert lines(logs, run, 1, "ROLE") == [["1", "False"]]


def test_only_the_chief_writes_into_the_directory(cluster_runs):
    logs = cluster_runs["logs"]
    for run in ("killed", "resumed"):
        assert lines(logs, run, 1, "WRITE") == []
        assert lines(logs, run, 0, "WRITE"), "the audit hook saw no write at all: it is broken"


def test_the_directory_holds_only_what_the_chief_recorded(cluster_runs):
    directory = cluster_runs["dir"]
    named = set()
    for sub in ("models", "backup"):
        manager = CheckpointManager(directory / sub)
        assert all(result.ok for result in manager.verify())
        for record in manager.checkpoints():
            named.add(f"{sub}/.keras_ckpt/{record.name}.json")
            named.update(f"{sub}/{entry.path}" for entry in record.files)
    files = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    own = {
        f"{sub}/.keras_ckpt/{name}"
        for sub in ("models", "backup")
        for name in ("lock", "history.jsonl")
    }
    assert files - own == named


def test_retention_runs_once_per_save_on_the_chief_only(cluster_runs):
    logs = cluster_runs["logs"]
    prunes = [p for run in ("killed", "resumed") for p in lines(logs, run, 0, "PRUNE")]
    assert all(lines(logs, run, 1, "PRUNE") == [] for run in ("killed", "resumed"))
    mc = [deleted for owner, deleted in prunes if owner == MC_OWNER]
    backups = [deleted for owner, deleted in prunes if owner == OWNER]
    assert mc == ["-", "-", "model-01.weights.h5"]  # epoch 1 (killed run), epochs 2 and 3
    # Killed run: steps 5, 10; resumed run: 15 (10, resumed from, is protected), 20. Each old
    # backup is deleted once; 10 and 20 go when the completed fit deletes its backups.
    assert backups == ["-", "backup-000000005", "-", "backup-000000015"]
    kept = [r.name for r in CheckpointManager(cluster_runs["dir"] / "models").checkpoints()]
    assert kept == ["model-02.weights.h5", "model-03.weights.h5"]


def test_kill_leaves_the_backup_of_step_10_and_no_partial_files(cluster_runs):
    assert cluster_runs["survivor"]["returncode"] != 0  # it could not train on alone
    after = cluster_runs["after_kill"]
    assert "backup/backup-000000010.weights.h5" in after
    assert not [p for p in after if "/staging/" in p or "/pending/" in p]


def test_both_workers_resume_from_the_same_backup(cluster_runs):
    logs = cluster_runs["logs"]
    [[step, paused]] = lines(logs, "killed", 1, "PAUSED")
    restored = [lines(logs, "resumed", i, "RESTORED") for i in (0, 1)]
    assert restored[0] == restored[1] == [[str(PAUSE_AT), paused]]
    assert step == str(PAUSE_AT)
    final = [lines(logs, "resumed", i, "FINAL") for i in (0, 1)]
    assert final[0] == final[1] and final[0][0][0] == "24"


def test_completed_fit_deletes_the_backups_once_on_the_chief(cluster_runs):
    assert CheckpointManager(cluster_runs["dir"] / "backup").checkpoints() == []


# ------------------------------------------------------------------ two real JAX processes

JAX_CHILD = Path(__file__).with_name("multiworker_jax_child.py")


def launch_jax(
    directory: Path,
    port: int,
    logs: Path,
    run: str,
    pause_at: int | None = None,
    args: tuple[list[str], ...] = ([], []),
):
    """Starts both JAX processes (`jax.distributed` on 127.0.0.1:port); process 1 pauses after
    `pause_at` steps; process i gets `args[i]` too. Output goes to files."""
    procs = []
    for index in range(2):
        cmd = [sys.executable, str(JAX_CHILD), str(directory), "--process-id", str(index)]
        cmd += args[index]
        cmd += ["--port", str(port)]
        if pause_at is not None and index == 1:
            cmd += ["--pause-at", str(pause_at)]
        env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("TF_CONFIG", None)
        out = open(logs / f"{run}-{index}.out", "w")  # noqa: SIM115 - closed by the OS at exit
        err = open(logs / f"{run}-{index}.err", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env))
    return procs


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory):
    """Run "killed": process 1 is SIGKILLed after step 10, then process 0 (hung in a collective).
    Run "resumed": both start again (a new coordinator port) and finish. About 100 s."""
    pytest.importorskip("jax")  # the [jax] extra; TensorFlow-only installs lack it
    root = tmp_path_factory.mktemp("multiworker-jax")
    directory, logs = root / "ckpt", root / "logs"
    logs.mkdir()
    backup_record = directory / "backup" / ".keras_ckpt" / f"backup-{PAUSE_AT:09d}.json"
    chief, worker = procs = launch_jax(directory, free_ports(1)[0], logs, "killed", PAUSE_AT)
    try:
        wait_for(lambda: lines(logs, "killed", 1, "PAUSED"), 180, "process 1 to pause")
        wait_for(backup_record.exists, 30, "the chief to commit the backup of step 10")
        kill(worker)
        try:  # the chief waits for process 1 in the next all-reduce: it fails or hangs
            chief.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for proc in procs:
            kill(proc)
    after_kill = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))

    procs = launch_jax(directory, free_ports(1)[0], logs, "resumed")
    try:
        codes = [proc.wait(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            kill(proc)
    for index, code in enumerate(codes):
        assert code == 0, (logs / f"resumed-{index}.err").read_text()[-3000:]
    return {"dir": directory, "logs": logs, "after_kill": after_kill}


def test_jax_processes_know_their_role_from_jax_distributed(jax_runs):
    logs = jax_runs["logs"]
    for run in ("killed", "resumed"):
        assert lines(logs, run, 0, "ROLE") == [["0", "True"]]
        assert lines(logs, run, 1, "ROLE") == [["1", "False"]]


def test_jax_kill_leaves_the_backup_of_step_10_and_no_partial_files(jax_runs):
    after = jax_runs["after_kill"]
    assert f"backup/backup-{PAUSE_AT:09d}.weights.h5" in after
    assert not [p for p in after if "/staging/" in p or "/pending/" in p]


def test_jax_processes_resume_from_the_same_step_with_the_same_weights(jax_runs):
    logs = jax_runs["logs"]
    [[step, paused]] = lines(logs, "killed", 1, "PAUSED")
    assert step == str(PAUSE_AT)
    restored = [lines(logs, "resumed", i, "RESTORED") for i in (0, 1)]
    assert restored[0] == restored[1] == [[str(PAUSE_AT), paused]]
    final = [lines(logs, "resumed", i, "FINAL") for i in (0, 1)]
    assert final[0] == final[1] and final[0][0][0] == "24"


def test_jax_completed_fit_deletes_the_backups_once_on_the_chief(jax_runs):
    assert CheckpointManager(jax_runs["dir"] / "backup").checkpoints() == []


# ------------------------------------------------------------------ agreed decisions
#
# Both callbacks save on the clock (`every_seconds=3`), and each worker's clock runs at its own
# rate: the chief's 1 s per step (due every 3 steps), worker 1's 0.45 s (due every 7). Worker 1
# then waits after step 13 until the test sends it, and only it, a SIGTERM. Every save decision and
# the stop must fall on the same step on both workers (the chief's clock; any worker's signal), or
# the first host copy taken by one worker alone hangs or desynchronises the job.

EVERY_SECONDS = 3
CLOCKS = ("1.0", "0.45")  # seconds per step on the chief and on worker 1
WAIT_AT = 13


def clock_args(*extra: str) -> tuple[list[str], list[str]]:
    return tuple(
        ["--every-seconds", str(EVERY_SECONDS), "--seconds-per-step", rate, *extra]
        for rate in CLOCKS
    )  # type: ignore[return-value]


def signal_worker_1(procs, logs: Path, run: str, timeout: float) -> list:
    """Sends SIGTERM to worker 1 once it waits for it; returns both exit codes ("hung" if one
    did not exit)."""
    wait_for(lambda: lines(logs, run, 1, "WAITING"), timeout, "worker 1 to wait for the signal")
    procs[1].send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            codes.append("hung")
    return codes


def finish(procs, logs: Path, run: str, timeout: float) -> None:
    try:
        codes = [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            kill(proc)
    for index, code in enumerate(codes):
        assert code == 0, (logs / f"{run}-{index}.err").read_text()[-3000:]


@pytest.fixture(scope="module")
def agreed_runs(tmp_path_factory):
    """Run "signalled": skewed clocks, worker 1 gets SIGTERM after step 13; both must stop.
    Run "resumed": both start again (same clocks) and finish. The workers agree at every step
    (`--agree-every-step`), so the chief's clock names the exact steps."""
    root = tmp_path_factory.mktemp("multiworker-agreed")
    directory, logs = root / "ckpt", root / "logs"
    logs.mkdir()
    ports = free_ports(2)
    extra = clock_args("--agree-every-step")
    wait = [*extra[1], "--wait-for-signal-at", str(WAIT_AT)]
    procs = launch(directory, ports, logs, "signalled", args=(extra[0], wait))
    try:
        codes = signal_worker_1(procs, logs, "signalled", timeout=120)
    finally:
        for proc in procs:
            kill(proc)
    backups = sorted(p.name for p in (directory / "backup").glob("backup-*"))
    finish(launch(directory, ports, logs, "resumed", args=extra), logs, "resumed", timeout=120)
    return {"dir": directory, "logs": logs, "codes": codes, "backups": backups}


def saves(logs: Path, run: str, index: int, callback: str) -> list[int]:
    return [int(step) for name, step in lines(logs, run, index, "SAVE") if name == callback]


def test_a_signal_on_one_worker_stops_every_worker_at_the_same_step(agreed_runs):
    logs = agreed_runs["logs"]
    assert agreed_runs["codes"] == [143, 143]  # both exit as a SIGTERM'd process does
    stopped = [lines(logs, "signalled", i, "STOPPED") for i in (0, 1)]
    assert stopped[0] == stopped[1] == [[str(WAIT_AT + 1), stopped[0][0][1]]]
    # The chief backed the stop step up, for both.
    assert agreed_runs["backups"][-1] == f"backup-{WAIT_AT + 1:09d}.weights.h5"


def test_saves_on_the_clock_fall_on_the_chiefs_steps_on_every_worker(agreed_runs):
    logs = agreed_runs["logs"]
    for callback in ("ModelCheckpoint", "BackupAndRestore"):
        signalled = [saves(logs, "signalled", i, callback) for i in (0, 1)]
        resumed = [saves(logs, "resumed", i, callback) for i in (0, 1)]
        assert signalled[0] == signalled[1] and resumed[0] == resumed[1]
        # Every 3 steps (the chief's clock; worker 1's says every 7), from 0 and from the resume.
        stop = [WAIT_AT + 1] if callback == "BackupAndRestore" else []
        assert signalled[0] == [3, 6, 9, 12, *stop]
        assert resumed[0] == [17, 20, 23]


def test_every_worker_resumes_from_the_stop_with_the_same_weights(agreed_runs, cluster_runs):
    logs = agreed_runs["logs"]
    [[step, weights]] = lines(logs, "signalled", 0, "STOPPED")
    assert [lines(logs, "resumed", i, "RESTORED") for i in (0, 1)] == [[[step, weights]]] * 2
    final = [lines(logs, "resumed", i, "FINAL") for i in (0, 1)]
    # The same training resumed after step 10 (the killed run) ends bit-identical.
    assert final[0] == final[1] == lines(cluster_runs["logs"], "resumed", 0, "FINAL")
    assert final[0][0][0] == "24"


@pytest.fixture(scope="module")
def jax_agreed_runs(tmp_path_factory):
    """As `agreed_runs`, with two JAX processes, agreeing at the steps the chief picks from its
    timings (the default)."""
    pytest.importorskip("jax")
    root = tmp_path_factory.mktemp("multiworker-jax-agreed")
    directory, logs = root / "ckpt", root / "logs"
    logs.mkdir()
    extra = clock_args()
    wait = [*extra[1], "--wait-for-signal-at", str(WAIT_AT)]
    procs = launch_jax(directory, free_ports(1)[0], logs, "signalled", args=(extra[0], wait))
    try:
        codes = signal_worker_1(procs, logs, "signalled", timeout=180)
    finally:
        for proc in procs:
            kill(proc)
    backups = sorted(p.name for p in (directory / "backup").glob("backup-*"))
    procs = launch_jax(directory, free_ports(1)[0], logs, "resumed", args=extra)
    finish(procs, logs, "resumed", timeout=180)
    return {"dir": directory, "logs": logs, "codes": codes, "backups": backups}


def test_jax_a_signal_on_one_process_stops_both_at_the_same_step(jax_agreed_runs):
    logs = jax_agreed_runs["logs"]
    assert jax_agreed_runs["codes"] == [143, 143]
    stopped = [lines(logs, "signalled", i, "STOPPED") for i in (0, 1)]
    assert stopped[0] == stopped[1] and int(stopped[0][0][0]) > WAIT_AT
    assert jax_agreed_runs["backups"][-1] == f"backup-{int(stopped[0][0][0]):09d}.weights.h5"
    for run in ("signalled", "resumed"):
        for callback in ("ModelCheckpoint", "BackupAndRestore"):
            assert saves(logs, run, 0, callback) == saves(logs, run, 1, callback)
    assert saves(logs, "signalled", 0, "BackupAndRestore"), "no save on the clock at all"


def test_jax_both_processes_resume_from_the_stop_with_the_same_weights(jax_agreed_runs, jax_runs):
    logs = jax_agreed_runs["logs"]
    [[step, weights]] = lines(logs, "signalled", 0, "STOPPED")
    assert [lines(logs, "resumed", i, "RESTORED") for i in (0, 1)] == [[[step, weights]]] * 2
    final = [lines(logs, "resumed", i, "FINAL") for i in (0, 1)]
    assert final[0] == final[1] == lines(jax_runs["logs"], "resumed", 0, "FINAL")


TORCH_WORKER = """
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import torch.distributed as dist
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
from keras_ckpt import distribute
print(distribute.agree([rank == 1, 1, 5 if rank == 0 else 0]))
dist.destroy_process_group()
"""


def test_torch_workers_agree_through_torch_distributed():
    pytest.importorskip("torch")
    port = str(free_ports(1)[0])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TORCH_WORKER, str(rank), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            kill(proc)
    for out, err in results:
        assert out.splitlines()[-1:] == ["(1, 2, 5)"], err[-2000:]


# ------------------------------------------------------------------ choosing the chief


@pytest.fixture
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("RANK", raising=False)


def tf_config(monkeypatch, task: dict | None, **cluster: list[str]) -> None:
    config: dict = {"cluster": cluster}
    if task is not None:
        config["task"] = task
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))


def test_a_single_process_is_its_own_chief(no_tf_config):
    assert distribute.is_chief() and distribute.worker_id() == 0


@pytest.mark.parametrize(
    "task, cluster, chief, rank",
    [
        ({"type": "worker", "index": 0}, {"worker": ["a:1", "b:1"]}, True, 0),
        ({"type": "worker", "index": 1}, {"worker": ["a:1", "b:1"]}, False, 1),
        ({"type": "chief", "index": 0}, {"chief": ["c:1"], "worker": ["a:1"]}, True, 0),
        ({"type": "worker", "index": 0}, {"chief": ["c:1"], "worker": ["a:1"]}, False, 1),
        ({"type": "worker"}, {"worker": ["a:1"]}, True, 0),
        (None, {"worker": ["a:1"]}, True, 0),
    ],
)
def test_tf_config_names_the_chief(monkeypatch, no_tf_config, task, cluster, chief, rank):
    tf_config(monkeypatch, task, **cluster)
    assert distribute.is_chief() is chief
    assert distribute.worker_id() == rank


@pytest.mark.parametrize("task_type", ["evaluator", "ps"])
def test_tasks_that_do_not_train_never_write(monkeypatch, no_tf_config, task_type):
    tf_config(monkeypatch, {"type": task_type, "index": 0}, worker=["a:1"], **{task_type: ["e:1"]})
    assert distribute.is_chief() is False
    with pytest.raises(ValueError, match=f"'{task_type}' task; only 'chief' and 'worker'"):
        distribute.worker_id()


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "TF_CONFIG is not a JSON object"),
        ("[1, 2]", "TF_CONFIG is not a JSON object"),
        ('{"cluster": [], "task": {"type": "worker"}}', "needs `cluster` and `task` objects"),
        ('{"task": {"type": "worker", "index": "1"}}', "string `type` and an int `index`"),
        ('{"task": {"type": "worker", "index": true}}', "string `type` and an int `index`"),
        ('{"task": {"type": "worker", "index": -1}}', "index must be 0 or more"),
    ],
)
def test_malformed_tf_config_is_rejected_with_the_value(monkeypatch, text, match):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ValueError, match=match):
        distribute.is_chief()


def test_the_models_strategy_wins_over_tf_config(monkeypatch, no_tf_config):
    tf_config(monkeypatch, {"type": "worker", "index": 0}, worker=["a:1", "b:1"])
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": ["a:1", "b:1"]}), task_type="worker", task_id=1
    )

    class Strategy:
        cluster_resolver = resolver

    class Model:
        distribute_strategy = Strategy()

    assert distribute.is_chief(Model()) is False and distribute.worker_id(Model()) == 1
    assert distribute.is_chief() is True  # without the model: TF_CONFIG


def test_a_strategy_without_a_cluster_defers_to_tf_config(monkeypatch, no_tf_config):
    tf_config(monkeypatch, {"type": "worker", "index": 1}, worker=["a:1", "b:1"])
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = build_model()
    assert distribute.is_chief(model) is False


@pytest.mark.parametrize("index, chief", [(0, True), (1, False)])
def test_jax_process_zero_is_the_chief(mocker, index, chief):
    jax = pytest.importorskip("jax")  # the [jax] extra; TensorFlow-only installs lack it
    mocker.patch.object(keras.backend, "backend", return_value="jax")
    mocker.patch.object(jax, "process_index", return_value=index)
    assert distribute.is_chief() is chief and distribute.worker_id() == index


@pytest.mark.parametrize("rank, chief", [("0", True), ("3", False)])
def test_torch_rank_from_torchrun(monkeypatch, mocker, no_tf_config, rank, chief):
    pytest.importorskip("torch")
    mocker.patch.object(keras.backend, "backend", return_value="torch")
    monkeypatch.setenv("RANK", rank)
    assert distribute.is_chief() is chief and distribute.worker_id() == int(rank)


def test_torch_rank_must_be_an_int(monkeypatch, mocker, no_tf_config):
    pytest.importorskip("torch")
    mocker.patch.object(keras.backend, "backend", return_value="torch")
    monkeypatch.setenv("RANK", "first")
    with pytest.raises(ValueError, match="RANK environment variable must be an int"):
        distribute.is_chief()


# ------------------------------------------------------------------ callbacks off the chief


WRITING = ("open_for_writing", "stage", "commit", "prune", "delete")


def spy_writes(mocker):
    return [mocker.spy(CheckpointManager, name) for name in WRITING]


def test_model_checkpoint_off_the_chief_touches_nothing(tmp_path, data, mocker):
    mocker.patch.object(distribute, "is_chief", return_value=False)
    spies = spy_writes(mocker)
    checkpoint = keras_ckpt.ModelCheckpoint(
        tmp_path / "ckpt" / "model-{epoch}.keras", monitor="loss", keep_last=1,
        save_on_train_end=True,
    )  # fmt: skip
    build_model().fit(*data, epochs=2, batch_size=16, verbose=0, callbacks=[checkpoint])
    assert not (tmp_path / "ckpt").exists()
    assert [spy.call_count for spy in spies] == [0] * len(WRITING)


def test_backup_off_the_chief_restores_the_chiefs_backup_and_writes_nothing(tmp_path, data, mocker):
    backup_dir = tmp_path / "backup"
    chief_model = build_model()
    chief_model.fit(
        *data, epochs=1, batch_size=16, verbose=0,
        callbacks=[keras_ckpt.BackupAndRestore(backup_dir, save_freq=2, delete_checkpoint=False)],
    )  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in backup_dir.rglob("*")}

    mocker.patch.object(distribute, "is_chief", return_value=False)
    spies = spy_writes(mocker)
    model = build_model(seed=1)
    restored = []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restored.append(int(self.model.optimizer.iterations.numpy()))

    backup = keras_ckpt.BackupAndRestore(backup_dir, save_freq=2)  # delete_checkpoint=True
    model.fit(*data, epochs=2, batch_size=16, verbose=0, callbacks=[backup, Probe()])
    assert restored == [4]  # the chief's backup of step 4 (end of epoch 1)
    assert {p: p.stat().st_mtime_ns for p in backup_dir.rglob("*")} == before
    assert [spy.call_count for spy in spies] == [0] * len(WRITING)
