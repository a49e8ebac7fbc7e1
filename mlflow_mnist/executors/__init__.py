"""Executors decide where fold tasks run; each is one class in one file, registered here by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from mlflow_mnist.executors.base import (
    Executor,
    ExecutorError,
    ExecutorOptionError,
    NJobsError,
    resolve_n_jobs,
    usable_cores,
)
from mlflow_mnist.executors.joblib import JoblibExecutor
from mlflow_mnist.executors.serial import SerialExecutor


def _joblib(n_jobs: int | None, scheduler: str | None) -> Executor:
    resolve_n_jobs(n_jobs)
    return JoblibExecutor(n_jobs)


def _serial(n_jobs: int | None, scheduler: str | None) -> Executor:
    resolve_n_jobs(n_jobs)  # refused as every executor refuses it, though this one runs in this process
    return SerialExecutor()


def _dask(n_jobs: int | None, scheduler: str | None) -> Executor:
    from mlflow_mnist.executors.dask import DaskExecutor  # dask.distributed loads when used

    if remote_scheduler(scheduler):
        return DaskExecutor(scheduler, n_workers=n_jobs)  # counted against the cluster's threads once reached
    return DaskExecutor(scheduler, n_workers=resolve_n_jobs(n_jobs))


@dataclass(frozen=True)
class Registered:
    """An executor as the registry knows it: how it is made from ``n_jobs`` and ``scheduler``, and the words the
    CLI's ``--executor`` help gives it."""

    make: Callable[[int | None, str | None], Executor]
    help: str


DASK = "dask"  # DaskExecutor.name, without importing it: the one executor that takes a scheduler
#: Every executor by name (the CLI's choices and help, in this order): a new executor is one entry. Dask's class
#: is imported only when it is made.
REGISTRY: dict[str, Registered] = {
    JoblibExecutor.name: Registered(_joblib, "a local process pool"),
    SerialExecutor.name: Registered(_serial, "this process"),
    DASK: Registered(_dask, "a Dask cluster, local or --scheduler's"),
}
EXECUTORS = tuple(REGISTRY)


def make_executor(name: str = "joblib", *, n_jobs: int | None = None, scheduler: str | None = None) -> Executor:
    """The executor a user named; ``joblib`` with one job runs in-process like ``serial``.

    ``n_jobs`` follows joblib's convention everywhere (:func:`resolve_n_jobs`): a bad value raises
    :class:`NJobsError` before any worker starts. On a remote Dask cluster it counts the cluster's workers, not
    this machine's cores, so it is passed on as given. A ``scheduler`` for another executor would be ignored: it is
    refused (:class:`ExecutorOptionError`); ``$DASK_SCHEDULER_ADDRESS`` is read by Dask alone.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    if scheduler and name != DASK:
        from mlflow_mnist.redaction import redact

        raise ExecutorOptionError(
            f"--scheduler {redact(scheduler)} is for --executor dask, not {name}: add --executor dask or leave "
            f"--scheduler out"
        )
    return REGISTRY[name].make(n_jobs, scheduler)


def remote_scheduler(scheduler: str | None) -> str:
    """The Dask scheduler address a user gave (``--scheduler`` or ``$DASK_SCHEDULER_ADDRESS``), or ""."""
    return scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS", "")


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "JoblibExecutor",
    "ExecutorOptionError",
    "NJobsError",
    "REGISTRY",
    "Registered",
    "SerialExecutor",
    "make_executor",
    "resolve_n_jobs",
    "usable_cores",
]
