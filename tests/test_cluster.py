"""Scale-out for real: a Dask LocalCluster, and a PostgreSQL-backed `mlflow server` with a Dask scheduler and
workers as separate processes; faults (a killed worker, a lost scheduler, no workers, a second driver)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import FoldWatcher
from services import DaskCluster, MlflowServer, Postgres, postgres_bindir

from mlflow_mnist import tracking
from mlflow_mnist.worker import TRIM_ENV

pytestmark = pytest.mark.slow
STAGE = ["tune", "--data", "sample", "--folds", "2", "--experiment", "cluster"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlflow_mnist", *STAGE, *args]


def _env(uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "DASK_SCHEDULER_ADDRESS")}
    return {**env, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _runs(uri: str, experiment: str = "cluster"):
    client = tracking.connect(uri)
    found = client.get_experiment_by_name(experiment)
    return tracking.search_all(client, [found.experiment_id]) if found else []


def _finished_fold_keys(uri: str) -> Counter:
    return Counter(
        r.data.tags[tracking.FOLD_KEY]
        for r in _runs(uri)
        if r.data.tags.get(tracking.LEVEL) == "fold" and r.info.status == "FINISHED"
    )


def test_a_local_dask_cluster_gives_the_same_cv_results_as_joblib(tmp_path, monkeypatch):
    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.executors import JoblibExecutor
    from mlflow_mnist.executors.dask import DaskExecutor

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    means = {}
    for name, executor in (("joblib", JoblibExecutor(2)), ("dask", DaskExecutor(n_workers=2))):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/{name}.db")
        campaign = Campaign.open("sample", "2,7", folds=2, epochs=1, experiment="same")
        with executor:
            (outcome,) = campaign.tune("kernel_size", executor=executor, with_model=False, progress=False)
            if name == "dask":  # the nanny's MALLOC_TRIM_THRESHOLD_ would slow TensorFlow: our workers lack it
                assert set(executor.client.run(os.environ.get, TRIM_ENV).values()) == {None}
        means[name] = {row["candidate"]: row["mean_test_score"] for row in outcome.rows}
        assert outcome.trained == 8
    assert means["dask"] == means["joblib"]


FAULTS = """
import ctypes, json, resource
from mlflow_mnist.worker import restore_malloc_fast_path
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def page_faults():  # 50 batches' worth of a 2 MB activation: allocate, write, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        block = libc.malloc(2 << 20); ctypes.memset(block, 1, 2 << 20); libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
frozen = page_faults()
restored = restore_malloc_fast_path()
page_faults()  # the heap grows once
print(json.dumps({"frozen": frozen, "restored": restored, "after": page_faults()}))
"""


def test_a_worker_started_by_a_dask_nanny_gets_malloc_fast_path_back():
    """A `dask worker` someone else started carries MALLOC_TRIM_THRESHOLD_: every large buffer is a fresh mmap
    (a page fault per 4 KiB page, every time) until the worker raises glibc's thresholds."""
    proc = subprocess.run(
        [sys.executable, "-c", FAULTS], capture_output=True, text=True, env={**os.environ, TRIM_ENV: "65536"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    faults = json.loads(proc.stdout)
    assert faults["frozen"] >= 50 * 256 and faults["restored"]
    assert faults["after"] < 100


@pytest.fixture
def shared_server(tmp_path):
    """PostgreSQL from the OS binaries, and `mlflow server` on it with proxied artifacts."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries missing: `make test` installs them (apt-get install -y postgresql)")
    database = Postgres(tmp_path / "pg").start()
    server = MlflowServer(database.uri, tmp_path / "server").start()
    yield server
    server.stop()
    database.stop()


def test_postgres_server_and_dask_cluster_survive_a_killed_worker_and_a_lost_scheduler(shared_server, tmp_path):
    uri = shared_server.uri
    cluster = DaskCluster(tmp_path / "dask").start(n_workers=2)
    try:
        # A worker killed mid-stage: its fold is trained again elsewhere; nothing twice, nothing lost.
        stage = subprocess.Popen(
            _command("--stage", "kernel_size", "--epochs", "2", "--executor", "dask", "--scheduler", cluster.address),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_env(uri),
        )
        progress = FoldWatcher(stage.stderr)
        assert progress.wait_for(1, timeout=240), progress.text()[-3000:]
        os.killpg(cluster.workers[0].pid, signal.SIGKILL)
        stage.wait(timeout=600)
        progress.join()
        assert stage.returncode == 0, progress.text()[-3000:]
        keys = _finished_fold_keys(uri)
        assert len(keys) == 8 and set(keys.values()) == {1}
        assert not [r for r in _runs(uri) if r.info.status == "RUNNING"]

        # The scheduler gone mid-stage: one line, exit 2, finished folds kept; a rerun resumes.
        cluster.add_worker()
        command = _command(
            "--stage", "pool_size", "--epochs", "2", "--executor", "dask", "--scheduler", cluster.address
        )
        stage = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(uri))
        progress = FoldWatcher(stage.stderr)
        assert progress.wait_for(1, timeout=240), progress.text()[-3000:]
        cluster.stop()
        stage.wait(timeout=180)
        progress.join()
        err = progress.text()
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("I0000", "WARNING"))]
        assert stage.returncode == 2, err[-3000:]
        assert lines[-1].startswith(f"error: lost the Dask scheduler at {cluster.address}"), err[-2000:]
        assert "Traceback" not in err
        finished = sum(_finished_fold_keys(uri).values())
        cluster = DaskCluster(tmp_path / "dask2", port=cluster.port).start(n_workers=2)
        rerun = subprocess.run(command, capture_output=True, text=True, env=_env(uri), timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        keys = _finished_fold_keys(uri)
        assert set(keys.values()) == {1} and len(keys) == 8 + 6  # pool (2, 2) is kernel_size's best: reused
        assert f"reused {finished - 8 + 2}" in rerun.stdout
        assert not [r for r in _runs(uri) if r.info.status == "RUNNING"]
    finally:
        cluster.stop()


def test_no_workers_is_one_line_after_a_bounded_wait(tmp_path):
    cluster = DaskCluster(tmp_path / "dask").start_scheduler()
    try:
        started = time.time()
        proc = subprocess.run(
            _command("--stage", "kernel_size", "--epochs", "1", "--executor", "dask", "--scheduler", cluster.address),
            capture_output=True,
            text=True,
            env=_env(f"sqlite:///{tmp_path}/mlflow.db", MLFLOW_MNIST_DASK_WAIT="3"),
            timeout=120,
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert lines[-1].startswith(f"error: no Dask worker joined the scheduler at {cluster.address} within 3 s")
        assert time.time() - started < 60
    finally:
        cluster.stop()


def test_a_second_driver_is_refused_and_a_killed_drivers_lease_is_taken_over(tmp_path):
    env = _env(f"sqlite:///{tmp_path}/mlflow.db")
    # Eight epochs leave the first driver half a minute of work after its first fold while the second starts.
    command = _command("--stage", "kernel_size", "--epochs", "8", "--n-jobs", "1")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert FoldWatcher(first.stderr).wait_for(1, timeout=240), "the first driver finished no fold"
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 2
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("error: another driver is working on this experiment: mlflow-mnist tune")
    assert f"pid {first.pid}" in line
    first.send_signal(signal.SIGKILL)
    first.wait()
    started = time.time()
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert time.time() - started < 300
    keys = _finished_fold_keys(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(keys) == 8 and set(keys.values()) == {1}


def test_what_workers_receive_holds_no_store_address_or_credentials(monkeypatch):
    """A task is the fold (hyperparameters, split, key) and the worker function (data reference, threads):
    nothing about the tracking store travels to a worker."""
    import pickle

    from mlflow_mnist.data import DataRef
    from mlflow_mnist.planning import SearchSettings, resolve_fixed_params
    from mlflow_mnist.stages import get_step
    from mlflow_mnist.strategies.staged import plan_step
    from mlflow_mnist.worker import FoldWorker

    secret, address = "pw-Zq81-never-ship", "http://admin:pw-Zq81-never-ship@mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    plan = plan_step(get_step("kernel_size"), resolve_fixed_params("kernel_size", {}, {}, 1), SearchSettings(), {})
    payload = pickle.dumps((FoldWorker(DataRef("sample", (2, 7), "d"), None, True, 123), list(plan.to_train)))
    assert secret.encode() not in payload and b"mlflow.example" not in payload
