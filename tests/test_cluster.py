"""Scale-out for real: a Dask LocalCluster, and a PostgreSQL-backed `mlflow server` with a Dask scheduler and
workers as separate processes, secured as README "Running on a cluster" says (passwords in files and environment
variables, basic-auth, TLS, loopback); faults (a killed worker, a lost scheduler, no workers, a second driver)
and set-up mistakes (an address, TLS settings, a worker without the project), each one line before any write."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FoldWatcher, cli
from services import (
    DaskCluster,
    MlflowServer,
    Postgres,
    argv_holding,
    dask_client_env,
    free_port,
    listening_addresses,
    postgres_bindir,
    process_tree,
    write_tls_files,
)

from mlflow_mnist import schema, tracking
from mlflow_mnist.worker.process import TRIM_ENV

pytestmark = pytest.mark.slow
STAGE = ["tune", "--data", "sample", "--folds", "2", "--experiment", "cluster"]
DASK_SETTINGS = ("DASK_SCHEDULER_ADDRESS", "DASK_DISTRIBUTED__")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlflow_mnist", *STAGE, *args]


def _env(uri: str, **extra: str) -> dict[str, str]:
    drop = ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_", *DASK_SETTINGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _runs(uri: str, experiment: str = "cluster"):
    client = tracking.connect(uri)
    found = client.get_experiment_by_name(experiment)
    return tracking.search_all(client, [found.experiment_id]) if found else []


def _finished_fold_keys(uri: str, experiment: str = "cluster") -> Counter:
    return Counter(
        r.data.tags[schema.FOLD_KEY]
        for r in _runs(uri, experiment)
        if r.data.tags.get(schema.LEVEL) == "fold" and r.info.status == "FINISHED"
    )


def _summary(stdout: str) -> tuple[int, int]:
    """(trained, reused) from a stage's closing line: `...; trained 10 folds, reused 0`."""
    trained, reused = re.findall(r"trained (\d+) folds, reused (\d+)", stdout)[-1]
    return int(trained), int(reused)


def _written(folder: Path) -> list[str]:
    """What a command left in ``folder`` (its working directory, holding the SQLite store): runs and experiments
    in the store, and any other file (artifacts such as grid.json)."""
    found = [p.name for p in folder.iterdir() if p.name != "mlflow.db"]
    db = folder / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as store:
            tables = {row[0] for row in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "runs" in tables:
                found += [f"run {row[0]}" for row in store.execute("SELECT run_uuid FROM runs")]
            if "experiments" in tables:
                found += [
                    f"experiment {r[0]}" for r in store.execute("SELECT name FROM experiments") if r[0] != "Default"
                ]
    return found


def _refused(folder: Path, *args: str, timeout: float = 120, **env: str) -> str:
    """Run a dask stage in ``folder`` that must fail before writing: its one stderr line (exit 2, nothing written)."""
    proc = cli(
        *STAGE,
        *("--stage", "kernel_size", "--epochs", "1", "--executor", "dask", *args),
        env=_env(f"sqlite:///{folder}/mlflow.db", **env),
        inherit=False,
        cwd=folder,
        timeout=timeout,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert _written(folder) == []
    return lines[0]


def test_a_local_dask_cluster_trains_every_fold_over_tls_on_loopback_without_the_trim_setting(tmp_path, monkeypatch):
    """A search on the local cluster ``--executor dask`` starts. That it scores what joblib scores (to 1e-9, every
    candidate) is test_reliability's test_kill_nine_at_random_moments_loses_and_duplicates_nothing[dask]: a killed
    and resumed Dask stage against joblib's uninterrupted one."""
    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.executors.dask import DaskExecutor
    from mlflow_mnist.strategies import make_strategy

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/dask.db")
    campaign = Campaign.open("sample", "2,7", folds=2, epochs=1, experiment="same")
    steps = tuple(campaign.task.steps_of("kernel_size"))
    strategy = make_strategy("staged", campaign.request(stage="kernel_size", steps=steps))
    with DaskExecutor(n_workers=2) as executor:
        (outcome,) = campaign.search(strategy, executor=executor, with_model=False, progress=False).groups
        # The nanny's MALLOC_TRIM_THRESHOLD_ would slow TensorFlow: our workers lack it.
        assert set(executor.client.run(os.environ.get, TRIM_ENV).values()) == {None}
        # Other users of this machine reach loopback too: the local cluster speaks TLS, on loopback only.
        assert executor.cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert all(address.startswith("tls://127.0.0.1:") for address in executor.client.nthreads())
    assert outcome.trained == 2 * len(outcome.rows) >= 8  # every candidate's two folds, nothing reused
    assert all(0 < row["mean_test_score"] <= 1 for row in outcome.rows)


FAULTS = """
import ctypes, json, resource
from mlflow_mnist.worker.process import restore_malloc_fast_path
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


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tcp://127.0.0.1:notaport", "port 'notaport' is not a number"),
        ("udp://127.0.0.1:8786", "has scheme 'udp', not tls:// or tcp://"),
        ("tls://alice:s3cretPW@127.0.0.1:8786", "holds a user name or password"),
    ],
)
def test_a_malformed_scheduler_address_is_one_line_and_writes_nothing(tmp_path, address, expected):
    started = time.time()
    line = _refused(tmp_path, "--scheduler", address)
    assert expected in line and "write tls://HOST:PORT" in line
    assert "s3cretPW" not in line
    assert time.time() - started < 30  # no connection was tried


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    line = _refused(tmp_path, "--scheduler", address)
    assert line.startswith(f"error: cannot reach the Dask scheduler at {address} within 15 s")


def test_tls_mistakes_are_one_line_before_anything_is_written(tmp_path):
    """A scheduler that requires TLS, met by drivers whose Dask settings are missing, from another CA, plain TCP,
    or unreadable: each is refused in one line that names the setting to fix."""
    cluster = DaskCluster(tmp_path / "dask").start_scheduler()
    foreign = dask_client_env(write_tls_files(tmp_path / "foreign-ca"))
    right = cluster.client_env()
    plain = f"tcp://127.0.0.1:{cluster.port}"
    cases = [
        ({}, cluster.address, "speaks TLS but Dask's configuration lacks distributed.comm.tls.ca-file"),
        (foreign, cluster.address, f"TLS handshake with the Dask scheduler at {cluster.address} failed"),
        ({}, plain, f"the Dask scheduler at {plain} closed the connection"),
        (right, plain, "requires encryption (distributed.comm.require-encryption) but the scheduler address"),
        (
            {**right, "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(tmp_path / "gone.key")},
            cluster.address,
            f"cannot read {tmp_path / 'gone.key'} (distributed.comm.tls.client.key",
        ),
    ]
    try:
        for index, (settings, address, expected) in enumerate(cases):
            folder = tmp_path / f"driver-{index}"
            folder.mkdir()
            line = _refused(folder, "--scheduler", address, **settings)
            assert expected in line, line
    finally:
        cluster.stop()


def test_a_fold_that_kills_its_worker_is_one_line(monkeypatch):
    """A task that takes its worker process down every time (as an OOM kill does) ends the search with one line
    once the scheduler gives up on it (``distributed.scheduler.allowed-failures``), not with a traceback."""
    import dask
    import distributed  # noqa: F401 - its defaults must be in Dask's configuration before we override one

    from mlflow_mnist.executors.dask import DaskExecutor, ExecutorError

    started = time.time()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), DaskExecutor(n_workers=1) as executor:
        with pytest.raises(ExecutorError) as raised:
            list(executor.map_unordered(os._exit, [9]))
    message = str(raised.value)
    assert "killed every Dask worker that ran it (2, the last tls://127.0.0.1:" in message, message
    assert "ran out of memory" in message and "\n" not in message
    assert time.time() - started < 120


def test_a_caller_that_stops_pulling_results_stops_the_workers():
    """Back-pressure: while the driver is busy (its logging queue full), the cluster runs at most two tasks per
    worker thread ahead of it and keeps no result the driver has taken."""
    from mlflow_mnist.executors.dask import DaskExecutor

    with DaskExecutor(n_workers=1) as executor:
        results = executor.map_unordered(time.sleep, [0.05 + i / 1000 for i in range(12)])  # 12 distinct tasks
        next(results)
        time.sleep(3)  # 11 tasks of 0.05 s would all have run by now
        known = executor.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        assert 1 <= known <= 2
        assert len(list(results)) == 11


@pytest.mark.parametrize("without_project", ["worker", "scheduler"])
def test_a_cluster_that_cannot_import_the_project_is_refused_before_writing(tmp_path, without_project):
    """A worker without the project would die on every task it unpickles, a scheduler without it fails every
    task graph (Dask unpickles graphs on the scheduler): the driver names the process before creating any run."""
    hide = tmp_path / "without_project.py"
    hide.write_text("import sys\nsys.modules['mlflow_mnist'] = None  # an environment without the project\n")
    preload = ["--preload", str(hide)]
    cluster = DaskCluster(tmp_path / "dask").start_scheduler(*(preload if without_project == "scheduler" else []))
    cluster.add_worker(*(preload if without_project == "worker" else []))
    folder = tmp_path / "driver"
    folder.mkdir()
    try:
        line = _refused(folder, "--scheduler", cluster.address, timeout=180, **cluster.client_env())
        if without_project == "worker":
            assert line.startswith(f"error: Dask worker {cluster.address.rsplit(':', 1)[0]}:"), line
        else:
            assert line.startswith(f"error: the Dask scheduler at {cluster.address} cannot import"), line
        assert "cannot import mlflow_mnist.worker" in line and "install this project" in line
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """PostgreSQL from the OS binaries (password in a passfile), `mlflow server` on it with basic-auth over HTTPS
    and proxied artifacts (as docs/cluster.md deploys it), and a user `driver` created through the auth API (its
    name and password). Started once for this module (half a minute of a 2-core machine's CPU); each test works
    in an experiment of its own."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries missing: `make test` installs them (apt-get install -y postgresql)")
    folder = tmp_path_factory.mktemp("shared-server")
    database = Postgres(folder / "pg").start()
    server = MlflowServer(
        database.uri, folder / "server", auth_database=database.auth_uri, env=database.env(), tls=True
    )
    server.start()
    yield SimpleNamespace(server=server, database=database, driver=server.add_user("driver"))
    server.stop()
    database.stop()


def test_the_documented_cluster_keeps_its_secrets_and_survives_a_killed_worker_and_a_lost_scheduler(
    shared_server, tmp_path, monkeypatch
):
    """The README's recipe on one machine: while a stage runs, no password in any process's argv (which `ps` shows
    every user), no listening socket off 127.0.0.1, no store credential in a worker's environment; the server
    refuses anonymous requests and other users. Then a worker killed mid-stage and the scheduler lost mid-stage
    lose and duplicate nothing."""
    import requests

    server, database, driver = shared_server.server, shared_server.database, shared_server.driver
    uri, name = server.uri, "survival"  # the module's server: an experiment of its own
    for variable, value in server.client_env(driver).items():  # this process reads the store as the driver
        monkeypatch.setenv(variable, value)
    cluster = DaskCluster(tmp_path / "dask").start(n_workers=2)
    other = server.add_user("someone-else")
    db_password = database.passfile.read_text().strip().rsplit(":", 1)[1]
    secrets_ = [db_password, *server.secrets(), driver[1], other[1]]

    def on_dask(cluster: DaskCluster) -> tuple[str, ...]:
        return ("--executor", "dask", "--scheduler", cluster.address, "--experiment", name)

    try:
        # A worker killed mid-stage: its fold is trained again elsewhere; nothing twice, nothing lost.
        stage = subprocess.Popen(
            _command("--stage", "kernel_size", "--epochs", "2", *on_dask(cluster)),
            stdout=open(tmp_path / "kernel_size.out", "w"),  # noqa: SIM115 - the child writes it
            stderr=subprocess.PIPE,
            env=_env(uri, **server.client_env(driver), **cluster.client_env()),
        )
        progress = FoldWatcher(stage.stderr)
        assert progress.wait_for(1, timeout=240), progress.text()[-3000:]
        postmaster = int((database.folder / "pgdata" / "postmaster.pid").read_text().split()[0])
        services = process_tree([postmaster, server.process.pid, cluster.scheduler.pid, *cluster.worker_pids()])
        everything = [*services, *process_tree([stage.pid])]
        assert len(services) >= 2 + 2 + 1 + 4  # scheduler, 2 workers, server (+ workers), postgres (+ backends)
        assert argv_holding(secrets_) == {}  # every process on this machine, while all of them run
        assert listening_addresses(everything) == {"127.0.0.1"}
        for worker in cluster.worker_pids():
            environ = Path(f"/proc/{worker}/environ").read_bytes()
            assert b"MLFLOW_TRACKING" not in environ and b"PGPASSFILE" not in environ
            assert driver[1].encode() not in environ
        os.killpg(cluster.workers[0].pid, signal.SIGKILL)
        stage.wait(timeout=600)
        progress.join()
        assert stage.returncode == 0, progress.text()[-3000:]
        keys = _finished_fold_keys(uri, name)
        first, reused = _summary((tmp_path / "kernel_size.out").read_text())
        assert len(keys) == first >= 8 and reused == 0 and set(keys.values()) == {1}
        assert not [r for r in _runs(uri, name) if r.info.status == "RUNNING"]
        search = f"{server.uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
        assert server.uri.startswith("https://")
        assert requests.get(search, timeout=30, verify=server.verify).status_code == 401  # anonymous
        assert requests.get(search, auth=other, timeout=30, verify=server.verify).status_code == 403  # not shared
        assert requests.get(search, auth=driver, timeout=30, verify=server.verify).status_code == 200

        # The scheduler gone mid-stage: one line, exit 2, finished folds kept; a rerun resumes.
        cluster.add_worker()
        command = _command("--stage", "pool_size", "--epochs", "2", *on_dask(cluster))
        env = _env(uri, **server.client_env(driver), **cluster.client_env())
        stage = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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
        finished = sum(_finished_fold_keys(uri, name).values())
        cluster = DaskCluster(tmp_path / "dask2", port=cluster.port).start(n_workers=2)  # a new CA, too
        env = _env(uri, **server.client_env(driver), **cluster.client_env())
        rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        keys = _finished_fold_keys(uri, name)
        trained, reused = _summary(rerun.stdout)
        # Nothing trained twice (one FINISHED run per fold key), and every fold the interrupted attempt finished
        # was reused by the rerun, beside any of kernel_size's.
        assert set(keys.values()) == {1} and len(keys) > finished
        assert reused >= finished - first and trained + reused >= len(keys) - first
        assert not [r for r in _runs(uri, name) if r.info.status == "RUNNING"]
    finally:
        cluster.stop()


def test_no_workers_is_one_line_after_a_bounded_wait_and_writes_nothing(tmp_path):
    cluster = DaskCluster(tmp_path / "dask").start_scheduler()
    folder = tmp_path / "driver"
    folder.mkdir()
    try:
        started = time.time()
        line = _refused(folder, "--scheduler", cluster.address, MLFLOW_MNIST_DASK_WAIT="3", **cluster.client_env())
        assert line.startswith(f"error: no Dask worker joined the scheduler at {cluster.address} within 3 s")
        assert time.time() - started < 60
    finally:
        cluster.stop()


def test_what_workers_receive_holds_no_store_address_or_credentials(monkeypatch):
    """A task is the fold (hyperparameters, split, key) and the worker function (data reference, threads):
    nothing about the tracking store travels to a worker."""
    import pickle

    from mlflow_mnist.planning import Group, SearchSettings, plan_candidates
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.worker import DataRef, FoldWorker

    secret, address = "pw-Zq81-never-ship", "http://admin:pw-Zq81-never-ship@mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    mnist = get_task("mnist")
    group = Group(name="kernel_size", step="kernel_size", varied=("kernel_size",))
    candidates = [{**mnist.start, "kernel_size": size} for size in ((3, 3), (5, 5))]
    plan = plan_candidates(group, candidates, SearchSettings(mnist, 2, 0, 1, "d", 2), {})
    worker = FoldWorker("mnist", DataRef("mnist", "sample", "2,7", "d"), None, True, 123)
    payload = pickle.dumps((worker, list(plan.to_train)))
    assert len(plan.to_train) == 4
    assert secret.encode() not in payload and b"mlflow.example" not in payload


def test_precision_auto_probes_a_remote_clusters_worker_not_the_driver(tmp_path, monkeypatch):
    """With a scheduler address, the workers' CPUs decide: every worker says what it is and the probe runs as a
    task on one of them (this machine's own CPU reading and probe are made to fail here, so only a worker's can
    give the verdict). Both workers run on this machine, so they are one kind: one probe."""
    from distributed import LocalCluster

    from mlflow_mnist import precision
    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.executors.dask import DaskExecutor
    from mlflow_mnist.testing import tiny_dataset
    from mlflow_mnist.worker import process

    def refuse(*args, **kwargs):
        raise AssertionError("probed the driver")

    monkeypatch.setattr(precision, "CACHE", tmp_path / "precision.json")
    monkeypatch.setattr(precision, "PROBE_EXAMPLES", 256)  # the driver slices the examples it ships: a short probe
    monkeypatch.setattr(precision, "cpu_identity", refuse)
    monkeypatch.setattr(precision, "measure", refuse)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        DaskExecutor(scheduler=cluster.scheduler_address) as executor,
    ):
        campaign = Campaign.open(task="digits", precision="auto", dataset=tiny_dataset(), executor=executor)
        worker_flags = next(iter(executor.client.run(lambda: Path("/proc/cpuinfo").read_text().split()).values()))
        fold_threads = next(iter(executor.client.run(process.fold_threads).values()))
        # Each worker answers for itself, under its own address; a call asked of one worker runs there.
        addresses = sorted(executor.client.nthreads())
        answers = executor.run_on_each_worker(precision.worker_cpu, None)
        assert sorted(answers) == addresses and answers[addresses[0]] == answers[addresses[1]]
        for address in addresses:
            assert executor.run_on([address], precision.worker_cpu, None)[0] == address
    why = campaign.precision_because
    assert "(a Dask worker's)" in why, why
    cache = json.loads(precision.CACHE.read_text()) if precision.CACHE.exists() else {}
    if set(precision.NATIVE_BF16) & set(worker_flags):  # measured there, kept here under the worker's CPU
        [entry] = cache.values()
        assert "measured" in why and entry["threads"] == fold_threads, why  # a fold's thread share there
        faster = entry["speedup"] >= precision.MIN_SPEEDUP
        assert campaign.settings.precision == ("mixed_bfloat16" if faster else "float32")
    else:
        assert "no native bfloat16" in why and cache == {} and campaign.settings.precision == "float32"
