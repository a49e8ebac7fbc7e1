"""``--n-jobs`` means the same for every executor, and a pool worker that dies is one line, not loky's traceback."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import FoldWatcher

from mlflow_mnist.executors import (
    EXECUTORS,
    ExecutorError,
    JoblibExecutor,
    NJobsError,
    SerialExecutor,
    make_executor,
    resolve_n_jobs,
    usable_cores,
)


@pytest.mark.parametrize(
    "n_jobs, workers",
    [(None, 8), (-1, 8), (-2, 7), (-7, 2), (-8, 1), (1, 1), (3, 3), (8, 8), (20, 8)],
)
def test_n_jobs_follows_joblib(n_jobs, workers):
    assert resolve_n_jobs(n_jobs, cores=8) == workers


@pytest.mark.parametrize(
    "n_jobs, message",
    [
        (0, "--n-jobs 0 runs no worker: use 1 to 8, -1 for every core or -2 for all but one"),
        (-9, "--n-jobs -9 leaves no worker on 8 cores"),
        (-100, "--n-jobs -100 leaves no worker on 8 cores"),
        (1.5, "--n-jobs 1.5 is not a whole number"),
        (True, "--n-jobs True is not a whole number"),
    ],
)
def test_n_jobs_that_names_no_worker_is_one_line(n_jobs, message):
    with pytest.raises(NJobsError) as raised:
        resolve_n_jobs(n_jobs, cores=8)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_each_registered_name_makes_its_executor_and_the_cli_and_readme_name_them_all(monkeypatch):
    """The registry is the one list: the CLI's --executor choices and help, and the README's option row, name each
    registered executor (MLproject gives only the default, which must be one)."""
    import yaml

    from mlflow_mnist.cli import tune

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert all(make_executor(name, n_jobs=1).name == name for name in EXECUTORS)  # nothing starts until used
    option = next(param for param in tune.params if param.name == "executor")
    readme = Path(__file__).parents[1].joinpath("README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--executor`"))
    assert list(option.type.choices) == list(EXECUTORS) and option.default in EXECUTORS
    assert all(f"({name})" in option.help and f"`{name}`" in row for name in EXECUTORS)
    entry_points = yaml.safe_load(Path(__file__).parents[1].joinpath("MLproject").read_text())["entry_points"]
    defaults = [
        point["parameters"]["executor"]["default"]
        for point in entry_points.values()
        if "executor" in point["parameters"]
    ]
    assert len(defaults) == 2 and set(defaults) <= set(EXECUTORS)


@pytest.mark.parametrize("name", EXECUTORS)
def test_every_executor_refuses_the_same_n_jobs_before_starting_anything(name):
    cores = usable_cores()
    for bad in (0, -(cores + 1)):
        with pytest.raises(NJobsError):
            make_executor(name, n_jobs=bad)


def test_joblib_pool_size_is_resolved_once_for_every_command():
    cores = usable_cores()
    assert make_executor("joblib", n_jobs=-cores).n_workers == 1
    assert make_executor("joblib", n_jobs=cores + 3).n_workers == cores
    assert make_executor("joblib").n_workers == JoblibExecutor(-1).n_workers == cores


# -- a pool worker that dies -------------------------------------------------------------------------------
# The tasks are module-level functions: loky's workers import this module by name (they get the parent's
# sys.path). Each task announces its process id in `folder` before doing what it does.


def _announce(folder: str) -> None:
    Path(folder, f"{os.getpid()}.pid").touch()


def sleep_in_worker(task: tuple[str, float]) -> int:
    folder, seconds = task
    _announce(folder)
    time.sleep(seconds)
    return os.getpid()


def crash_in_worker(task: tuple[str, float]) -> int:
    folder, _ = task
    _announce(folder)
    ctypes.string_at(0)  # a segmentation fault, as a crash in native code would be
    return 0


def exit_in_worker(task: tuple[str, float]) -> int:
    folder, _ = task
    _announce(folder)
    os._exit(3)


def _kill_first_worker_that_starts(folder: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = list(folder.glob("*.pid"))
        if pids:
            os.kill(int(pids[0].stem), signal.SIGKILL)
            return
        time.sleep(0.02)


def _pool_processes() -> list[psutil.Process]:
    """This test process's loky workers (its resource tracker is not one of them)."""
    children = psutil.Process().children(recursive=True)
    return [p for p in children if "LokyProcess" in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _run_until_failure(fn, folder: Path) -> ExecutorError:
    pool = JoblibExecutor(2)
    if pool.n_workers < 2:
        pytest.skip("one usable core: JoblibExecutor runs in-process, there is no pool to break")
    with pytest.raises(ExecutorError) as raised:
        list(pool.map_unordered(fn, [(str(folder), 60.0)] * 4))
    return raised.value


def test_worker_killed_mid_task_is_one_line_naming_the_signal_and_the_fix(tmp_path):
    """SIGKILL is what the kernel's OOM killer sends: the user learns that, and to use fewer workers."""
    killer = threading.Thread(target=_kill_first_worker_that_starts, args=(tmp_path,), daemon=True)
    killer.start()
    started = time.time()
    error = _run_until_failure(sleep_in_worker, tmp_path)
    message = str(error)
    assert message.startswith("a worker process died (killed by signal 9, SIGKILL: out of memory?)"), message
    assert "finished folds are kept" in message and "--n-jobs 1" in message and "\n" not in message
    assert error.__suppress_context__ and error.__cause__ is None  # no loky traceback chained to it
    assert time.time() - started < 50, "the failure must not wait for the other worker's 60 s task"
    deadline = time.time() + 30
    while _pool_processes() and time.time() < deadline:  # the surviving worker is stopped, not orphaned
        time.sleep(0.2)
    assert not _pool_processes()


@pytest.mark.parametrize(
    "fn, how",
    [(crash_in_worker, "killed by signal 11, SIGSEGV: a crash in native code"), (exit_in_worker, "exited with code 3")],
)
def test_worker_that_crashes_or_exits_is_one_line(tmp_path, fn, how):
    message = str(_run_until_failure(fn, tmp_path))
    assert message.startswith(f"a worker process died ({how}"), message
    assert "\n" not in message


def test_an_error_inside_a_task_is_not_a_pool_failure(tmp_path):
    """A task that raises keeps its own exception (the fold's error handling sees it), not an ExecutorError."""
    with pytest.raises(ZeroDivisionError):
        list(JoblibExecutor(2).map_unordered(divide_by_zero, [1, 2]))


def divide_by_zero(value: int) -> float:
    return value / 0


# -- warming the pool while the driver sets up ----------------------------------------------------------------
_WARMED: list[int] = []


def mark_warm(seconds: float) -> int:
    time.sleep(seconds)  # long enough that no process takes both warm-ups while the other starts
    _WARMED.append(os.getpid())
    return os.getpid()


def warmed_here(_: object) -> bool:
    return os.getpid() in _WARMED


def fail_to_warm() -> None:
    raise OSError("the data is not here")


def test_joblib_start_warms_each_pool_process_once_ahead_of_its_first_task_without_waiting():
    pool = JoblibExecutor(2)
    if pool.n_workers < 2:
        pytest.skip("one usable core: JoblibExecutor runs in-process, there is nothing to warm")
    started = time.perf_counter()
    pool.start(warm_up=functools.partial(mark_warm, 1.5))
    assert time.perf_counter() - started < 1.0, "start() must not wait for the warm-ups"
    tasks = [pool.submit(warmed_here, index) for index in range(4)]
    assert len({pool.result(handle) for handle in pool.warm_ups}) == 2, "one warm-up per process"
    assert [pool.result(handle) for handle in tasks] == [True] * 4


def test_a_warm_up_that_fails_leaves_the_pool_to_its_tasks():
    pool = JoblibExecutor(2).start(warm_up=fail_to_warm)
    assert list(pool.map_unordered(abs, [-1, -2])) in ([1, 2], [2, 1])
    assert all(isinstance(handle.exception(), OSError) for handle in pool.warm_ups)


@pytest.mark.slow
def test_the_warm_up_loads_and_checks_the_data_a_fold_then_finds_loaded():
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.tasks.base import DataError
    from mlflow_mnist.worker import DataRef, WarmUp, _data, _loaded

    digest = get_task("mnist").load("sample", classes="2,7").digest()
    ref = DataRef("mnist", "sample", "2,7", digest)
    _loaded.cache_clear()
    WarmUp(ref, threads=None)()
    _data(ref)  # what a fold does first
    assert (_loaded.cache_info().misses, _loaded.cache_info().hits) == (1, 1)
    with pytest.raises(DataError, match="digest"):
        WarmUp(DataRef("mnist", "sample", "2,7", "not-" + digest), threads=None)()


_HELD: list[bytearray] = []


def grow(megabytes: int) -> int:
    """A fold's working set, as loky sees it: memory the process holds after the task."""
    _HELD.append(bytearray(megabytes << 20))  # zero-filled: every page touched, so resident
    time.sleep(1.5)  # loky checks a process's size at most once a second; and both processes take one
    return os.getpid()


def let_go(_: object) -> int:
    _HELD.clear()
    return os.getpid()


@pytest.mark.slow
def test_a_warmed_pool_process_is_not_restarted_when_its_first_fold_grows_it():
    """loky measures a process after its first call (the warm-up, which trains nothing) and restarts it once it
    has grown 300 MB past that; a fold grows it more than that, so the warm-up raises the allowance."""
    from mlflow_mnist.worker import WarmUp

    pool = JoblibExecutor(2)
    if pool.n_workers < 2:
        pytest.skip("one usable core: JoblibExecutor runs in-process, there is nothing to restart")
    pool.start(warm_up=WarmUp(None, threads=1, driver_pid=os.getpid()))
    warmed = {pool.result(handle) for handle in pool.warm_ups}
    grown = {pool.result(handle) for handle in [pool.submit(grow, 450) for _ in range(2)]}
    after = {pool.result(handle) for handle in [pool.submit(let_go, index) for index in range(4)]}
    assert grown <= warmed and after <= warmed, "a warmed process was replaced after it grew"


class StartSpy(SerialExecutor):
    """An executor that notes when its workers would start, and whether the SQLite store existed then."""

    def __init__(self, store: Path):
        super().__init__()
        self.store, self.started = store, []

    def start(self, warm_up=None) -> StartSpy:
        self.started.append(self.store.exists())
        return self


def test_workers_start_only_once_the_store_cannot_refuse_and_before_a_new_store_is_built(tmp_path, monkeypatch):
    """A refused command starts no worker process; a new SQLite store's schema build overlaps their start."""
    from services import free_port

    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.tracking import TrackingError

    closed = free_port()  # nobody listens there
    store = tmp_path / "mlflow.db"
    spy = StartSpy(store)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}")
    with pytest.raises(TrackingError, match="cannot reach"):
        Campaign.open(data="sample", folds=2, executor=spy)
    assert spy.started == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    Campaign.open(data="sample", folds=2, executor=spy)
    assert spy.started == [False] and store.exists()
    Campaign.open(data="sample", folds=2, executor=spy)  # an existing store: once it answered
    assert spy.started == [False, True]


FORGET_PROBE = """
import gc, weakref
import keras
from mlflow_mnist.worker.process import forget_models

def a_fold_model_freed_only_by_the_collector():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    cycle = {"model": model}
    cycle["itself"] = cycle  # reachable from a reference cycle: reference counting alone never frees it
    return weakref.ref(model)

first = a_fold_model_freed_only_by_the_collector()
forget_models()
frozen = gc.get_freeze_count()
second = a_fold_model_freed_only_by_the_collector()
forget_models()
print(first() is None, second() is None, frozen, gc.get_freeze_count())
"""


@pytest.mark.slow
def test_forgetting_a_folds_models_frees_them_and_keeps_later_collections_off_the_imports():
    """Every fold's model is freed at once, the first and every later one, while what the process imported is
    moved out of the collector's way once (the full collection clear_session runs would walk it every fold)."""
    proc = subprocess.run([sys.executable, "-c", FORGET_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first_freed, second_freed, frozen, frozen_later = proc.stdout.split()
    assert first_freed == second_freed == "True"
    # TensorFlow's and Keras' objects frozen once; a frozen object freed by its reference count leaves the count.
    assert int(frozen) > 100_000 and int(frozen_later) <= int(frozen)


ORPHAN_PROBE = """
import os, sys, time
from mlflow_mnist.worker.process import exit_with_driver

def first_task_after_the_driver_died(args):
    driver_pid, folder = args
    with open(os.path.join(folder, "worker.pid"), "w") as out:
        out.write(str(os.getpid()))
    while os.getppid() == driver_pid:  # the driver is killed while this pool process is still starting
        time.sleep(0.05)
    exit_with_driver(driver_pid)
    open(os.path.join(folder, "survived"), "w").close()
    time.sleep(60)

if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    from mlflow_mnist.executors import JoblibExecutor
    from orphan_probe import first_task_after_the_driver_died

    JoblibExecutor(2).submit(first_task_after_the_driver_died, (os.getpid(), sys.argv[1]))
    while not os.path.exists(os.path.join(sys.argv[1], "worker.pid")):
        time.sleep(0.05)
    os.kill(os.getpid(), 9)
"""


def test_a_pool_process_whose_driver_died_before_its_first_task_exits_too(tmp_path):
    """A driver killed while its pool was still starting: the re-parented process exits once it runs anything."""
    if usable_cores() < 2:
        pytest.skip("one usable core: JoblibExecutor runs in-process, there is no pool to orphan")
    (tmp_path / "orphan_probe.py").write_text(ORPHAN_PROBE)
    driver = subprocess.run([sys.executable, str(tmp_path / "orphan_probe.py"), str(tmp_path)], timeout=120)
    assert driver.returncode == -signal.SIGKILL
    worker_pid = int((tmp_path / "worker.pid").read_text())
    deadline = time.monotonic() + 20
    while psutil.pid_exists(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if psutil.pid_exists(worker_pid):
        os.kill(worker_pid, signal.SIGKILL)
    assert not (tmp_path / "survived").exists(), "the orphaned pool process went on after its driver died"


@pytest.mark.slow
def test_cli_reports_a_killed_pool_worker_in_one_line_and_keeps_finished_folds(tmp_path):
    """As the kernel's OOM killer would: SIGKILL to a pool process while a `tune` stage trains."""
    if usable_cores() < 2:
        pytest.skip("one usable core: JoblibExecutor runs in-process, there is no pool to break")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_RUN_ID": ""}
    command = [sys.executable, "-m", "mlflow_mnist", "tune", "--stage", "kernel_size", "--data", "sample"]
    command += ["--epochs", "4", "--folds", "2", "--n-jobs", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    stderr = FoldWatcher(proc.stderr)
    try:
        assert stderr.wait_for(1, timeout=300), stderr.text()[-1000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = [p for p in children if "LokyProcess" in " ".join(_cmdline(p))]
        assert workers, "no pool process to kill"
        workers[0].send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    stderr.join()
    lines = [line for line in stderr.text().replace("\r", "\n").splitlines() if line.strip()]
    assert proc.returncode == 2, stderr.text()[-2000:]
    assert lines[-1].startswith("error: a worker process died (killed by signal 9, SIGKILL: out of memory?)")
    assert "Traceback" not in stderr.text()
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        statuses = dict(db.execute("select status, count(*) from runs group by status").fetchall())
    assert statuses.get("FINISHED", 0) >= 1 and "RUNNING" not in statuses  # finished folds kept, none left open
