"""Shared fixtures: a throw-away SQLite store, the shipped sample, and a CLI runner."""

from __future__ import annotations

import atexit
import gzip
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # services.py: PostgreSQL, mlflow server and Dask for the cluster tests
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One TensorFlow thread pool thread per process where the code under test leaves TensorFlow's defaults (folds
# trained in the test process or a driver's own process; pool and cluster workers set theirs): three test
# processes share two cores, and TensorFlow's default of a thread per core spins on the others' cores. Three
# in-process `tune`s at once on 2 cores (2-core AMD EPYC): 22.6-22.9 s of CPU each with the defaults, 18.8-19.0 s
# with these. Such folds are a small part of the suite: its CPU time moved within its run-to-run spread (30.0 min
# of user CPU with these; 30.0 and 32.3 min without).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def _in_memory_temp(folder: Path = Path("/dev/shm"), *, free_bytes: int = 4 << 30) -> None:
    """Temporary files (pytest's tmp_path, and every process the tests start) in memory where the machine has a
    tmpfs with room, unless TMPDIR says where. The tests make hundreds of SQLite stores, and each commit is an
    fsync on disk: test_strategies.py took 63 s and 56 s of CPU with its stores on disk, 45 s and 45 s in
    /dev/shm (2-core AMD EPYC, two runs each); test_final.py 60 s and 89 s against 49 s and 72 s."""
    if "TMPDIR" in os.environ or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return
    stats = os.statvfs(folder)
    if stats.f_bavail * stats.f_frsize >= free_bytes:
        os.environ["TMPDIR"] = str(folder)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


_in_memory_temp()


def use_store(patch: pytest.MonkeyPatch, folder: Path) -> str:
    """Point everything at the SQLite store in ``folder`` (also the working directory), with no run or experiment
    inherited from the environment; returns its URI."""
    uri = f"sqlite:///{folder}/mlflow.db"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.delenv("MLFLOW_RUN_ID", raising=False)
    patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    patch.chdir(folder)
    import mlflow

    mlflow.set_tracking_uri(uri)  # fluent calls (load_model) must not see an earlier test's store
    return uri


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """An empty SQLite tracking store in a temporary folder, which is also the working directory."""
    return use_store(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def sample():
    from mlflow_mnist.tasks.mnist.data import load_mnist

    return load_mnist("sample")


def cli(*args: str, **options):
    """Run ``python -m mlflow_mnist ARGS`` as a user would; returns the CompletedProcess (``python``'s options)."""
    return python("-m", "mlflow_mnist", *args, **options)


def python(
    *argv: str,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: int = 600,
    inherit: bool = True,
    fresh: bool = False,
):
    """Run ``python ARGV`` (a script, or ``-m MODULE``, and its arguments); returns the CompletedProcess. ``env``
    adds to this process's environment, or is the whole of it where not ``inherit``. The process is forked from
    this test process's CLI server (tests/cli_server.py: the libraries imported once), or is a fresh interpreter
    where ``fresh`` (a test of what importing prints) or where another thread holds the server."""
    full_env = {**(os.environ if inherit else {}), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    command = [sys.executable, *argv]
    if not fresh and _CLI_SERVER.lock.acquire(blocking=False):
        try:
            return _CLI_SERVER.run(command, env=full_env, cwd=cwd, timeout=timeout)
        finally:
            _CLI_SERVER.lock.release()
    return subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


class _CliServer:
    """This test process's tests/cli_server.py, started at its first use and ended with the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._pending = b""  # read from the server's pipe, not yet a whole line

    def _reply(self, timeout: float | None = None) -> dict | None:
        """The server's next reply line, or None once ``timeout`` seconds passed without one."""
        fd = self._process.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            assert chunk, "the CLI server ended"
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "cli_server.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                cwd=ROOT,
            )
            self._pending = b""
            assert self._reply() == {"ready": True}, "the CLI server did not start"
        return self._process

    def close(self) -> None:
        """End the server (it stops at the end of its input) and close its pipes."""
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait(timeout=30)
            self._process.stdout.close()
            self._process = None

    def run(self, command: list[str], *, env: dict, cwd: Path | None, timeout: float):
        server = self._started()
        with tempfile.TemporaryDirectory(prefix="cli-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {
                "argv": command[1:],
                "env": env,
                "cwd": str(cwd or os.getcwd()),
                "stdout": str(out),
                "stderr": str(err),
            }
            server.stdin.write(json.dumps(request).encode() + b"\n")
            server.stdin.flush()
            pid = self._reply()["pid"]
            ended = self._reply(timeout)
            if ended is None:  # the server has not reaped the child: its pid is still its own
                os.kill(pid, signal.SIGKILL)
            status = (ended or self._reply())["status"]
            stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if ended is None:
            raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), stdout, stderr)


_CLI_SERVER = _CliServer()
atexit.register(_CLI_SERVER.close)


def write_idx(path: Path, array: np.ndarray, compress: bool = True, magic: int | None = None) -> Path:
    """Write ``array`` (uint8) as an IDX file, the format MNIST ships in."""
    magic = magic if magic is not None else {1: 2049, 3: 2051}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(payload)
    return path


def write_idx_folder(folder: Path, data, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", data.x_train, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", data.y_train, compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", data.x_test, compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", data.y_test, compress)
    return folder


class FoldWatcher:
    """Reads a `tune` child's stderr on a thread and counts the folds its progress line reports finished.

    Tests that stop a stage part-way wait on this rather than poll the SQLite store the child writes: reading a
    pipe cannot meet a locked database or miss a short window between polls. With SQLite the run tree writes a
    fold before the progress line shows it; against a tracking server it logs folds on threads, so a test that
    needs the fold *in the store* there polls the server (which has no locks to meet).
    """

    # The bar's postfix: "..., 2.09s/fold, kernel_size=(7, 7) fold 2/2: ok 0.8533]", redrawn more than once.
    _FOLD_DONE = re.compile(r"fold(?:/s)?, ([^\]]+? fold \d+/\d+): ok ")

    def __init__(self, stream):
        self._buffer = bytearray()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream.fileno(),), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        while chunk := os.read(fd, 65536):
            with self._changed:
                self._buffer += chunk
                self._changed.notify_all()

    def finished(self) -> int:
        return len(set(self._FOLD_DONE.findall(self.text())))

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.finished() >= count, timeout=timeout)

    def join(self, timeout: float = 10) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        return self._buffer.decode(errors="replace")


# `make test` hands whole files to its workers in collection order (--dist loadfile --no-loadscope-reorder). The
# files that take longest go first, so that none of them starts last and runs alone while the other workers are
# done (seconds per file, the mean of two suites of 2026-12-07, 3 workers on a 2-core AMD EPYC: 532, 368, 353, 236,
# 226, 180, 169, 116, 114, 111, 93, 78, 73, 71, 48). Files not named follow in their usual order; a file's tests
# keep theirs.
LONGEST_FIRST = (
    "test_reliability.py",
    "test_tasks.py",
    "test_bench_scripts.py",
    "test_cluster.py",
    "test_registry.py",
    "test_end_to_end.py",
    "test_final.py",
    "test_analysis.py",
    "test_benchmark.py",
    "test_final_resume.py",
    "test_strategies.py",
    "test_redaction.py",
    "test_fold_models_on_test.py",
    "test_lock.py",
    "test_executors.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort
