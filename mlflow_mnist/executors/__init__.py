"""Executors decide where fold tasks run; each is one class in one file, registered here by name."""

from __future__ import annotations

from mlflow_mnist.executors.base import Executor
from mlflow_mnist.executors.joblib import JoblibExecutor
from mlflow_mnist.executors.serial import SerialExecutor

EXECUTORS = ("joblib", "serial", "dask")


def make_executor(name: str = "joblib", *, n_jobs: int = 0, scheduler: str | None = None) -> Executor:
    """The executor a user named; ``joblib`` with one job runs in-process like ``serial``."""
    if name == "serial":
        return SerialExecutor()
    if name == "joblib":
        return JoblibExecutor(n_jobs)
    if name == "dask":
        from mlflow_mnist.executors.dask import DaskExecutor  # dask.distributed loads only when asked for

        return DaskExecutor(scheduler, n_workers=n_jobs)
    raise ValueError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "JoblibExecutor", "SerialExecutor", "make_executor"]
