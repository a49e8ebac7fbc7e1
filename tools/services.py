"""Real services for the cluster tests, started from their own binaries on loopback and stopped afterwards:
PostgreSQL (from the OS packages), ``mlflow server`` on it with proxied artifacts, a Dask scheduler and workers.

The tests (tests/test_cluster.py) and ``make cluster-demo`` (tools/cluster_demo.py) both start them here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 90, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listened on port {port} within {seconds} s")


def postgres_bindir() -> Path | None:
    """The PostgreSQL server binaries (``pg_config --bindir``, else the Debian layout), or None."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Postgres:
    """A throw-away PostgreSQL cluster in ``folder``; ``initdb`` refuses root, so it runs as user postgres."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.bindir = postgres_bindir()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # User postgres cannot enter root's private temporary folders: give it one of its own under /tmp.
        self.folder = Path(tempfile.mkdtemp(prefix="mlflow-mnist-pg-")) if self.as_user else Path(folder)

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True)

    def start(self) -> Postgres:
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")
        data = self.folder / "pgdata"
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.folder / "pg.log"),
            "-w",
            "start",
        )
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow")
        return self

    def stop(self) -> None:
        if self.bindir is not None and (self.folder / "pgdata").exists():
            pg_ctl = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.folder / "pgdata")]
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        if self.as_user:
            shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on a backend store URI, with proxied artifacts in a local folder."""

    def __init__(self, backend: str, folder: Path):
        self.backend, self.folder, self.port = backend, Path(folder), free_port()
        self.process = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2"]
        command += ["--backend-store-uri", self.backend, "--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.folder / "mlflow-server.log", "ab")  # noqa: SIM115 - the server outlives this call
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, cwd=self.folder)
        wait_for_port(self.port, process=self.process)
        time.sleep(1)
        return self

    def stop(self) -> None:
        _stop(self.process)


class DaskCluster:
    """``dask scheduler`` and ``dask worker`` processes (one thread each), as on real machines."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = Path(folder), port or free_port()
        self.scheduler = None
        self.workers: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _spawn(self, *args: str, name: str) -> subprocess.Popen:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the process outlives this call
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("MLFLOW_TRACKING_URI", None)  # workers never see the store, let alone its credentials
        return subprocess.Popen(
            [str(BIN / "dask"), *args], stdout=log, stderr=log, start_new_session=True, cwd=self.folder, env=env
        )

    def start_scheduler(self) -> DaskCluster:
        self.scheduler = self._spawn(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard", name="scheduler"
        )
        wait_for_port(self.port, process=self.scheduler)
        return self

    def add_worker(self) -> subprocess.Popen:
        worker = self._spawn(
            "worker",
            self.address,
            "--nthreads",
            "1",
            "--no-dashboard",
            "--no-nanny",
            name=f"worker-{len(self.workers)}",
        )
        self.workers.append(worker)
        return worker

    def start(self, n_workers: int = 2) -> DaskCluster:
        self.start_scheduler()
        for _ in range(n_workers):
            self.add_worker()
        return self

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            _stop(process)
