"""Shared fixtures: a throw-away SQLite store, the shipped sample, and a CLI runner."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # services.py: PostgreSQL, mlflow server and Dask for the cluster tests
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """An empty SQLite tracking store in a temporary folder, which is also the working directory."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(uri)  # fluent calls (load_model) must not see an earlier test's store
    return uri


@pytest.fixture(scope="session")
def sample():
    from mlflow_mnist.tasks.mnist.data import load_mnist

    return load_mnist("sample")


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run ``python -m mlflow_mnist`` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mlflow_mnist", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


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
# done (seconds per file in the suite of 2026-12-03, 3 workers on a 2-core AMD EPYC: 639, 430, 373, 316, 308,
# 301, 206, 152, 119, 117, 103, 89). Files not named follow in their usual order; a file's tests keep theirs.
LONGEST_FIRST = (
    "test_reliability.py",
    "test_cluster.py",
    "test_bench_scripts.py",
    "test_tasks.py",
    "test_end_to_end.py",
    "test_registry.py",
    "test_redaction.py",
    "test_benchmark.py",
    "test_lock.py",
    "test_analysis.py",
    "test_strategies.py",
    "test_executors.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort
