"""Executors decide where fold tasks run; each is one class in one file, registered here by name."""

from __future__ import annotations

import os

from mlflow_mnist.executors.base import Executor, ExecutorError, NJobsError, resolve_n_jobs, usable_cores
from mlflow_mnist.executors.joblib import JoblibExecutor
from mlflow_mnist.executors.serial import SerialExecutor

EXECUTORS = ("joblib", "serial", "dask")


def make_executor(name: str = "joblib", *, n_jobs: int | None = None, scheduler: str | None = None) -> Executor:
    """The executor a user named; ``joblib`` with one job runs in-process like ``serial``.

    ``n_jobs`` follows joblib's convention everywhere (:func:`resolve_n_jobs`): a bad value raises
    :class:`NJobsError` before any worker starts. On a remote Dask cluster it counts the cluster's workers, not
    this machine's cores, so it is passed on as given.
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    workers = resolve_n_jobs(n_jobs)
    if name == "serial":
        return SerialExecutor()
    if name == "joblib":
        return JoblibExecutor(n_jobs)
    from mlflow_mnist.executors.dask import SCHEDULER_ENV, DaskExecutor  # dask.distributed loads when used

    remote = scheduler or os.environ.get(SCHEDULER_ENV)
    return DaskExecutor(scheduler, n_workers=n_jobs if remote else workers)


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "JoblibExecutor",
    "NJobsError",
    "SerialExecutor",
    "make_executor",
    "resolve_n_jobs",
    "usable_cores",
]
