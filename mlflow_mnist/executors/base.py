"""The executor protocol (where fold tasks run; the search never knows which one it has), what ``--n-jobs``
means for every executor, and the one error an executor raises when its workers cannot go on."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ExecutorError(RuntimeError):
    """The workers cannot go on (a pool process died, an unreachable or lost cluster); the message is one line
    naming the cause and the fix, and finished folds are already in the store."""


class ExecutorOptionError(ValueError):
    """An executor option that cannot apply (``--scheduler`` without ``--executor dask``); the message says so."""


class NJobsError(ExecutorOptionError):
    """``--n-jobs`` names no usable number of workers; the message says which values do."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or ``taskset``'s share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_n_jobs(n_jobs: int | None, *, cores: int | None = None) -> int:
    """How many workers ``n_jobs`` asks for, in joblib's convention, out of ``cores`` (default: this machine's).

    ``None`` or -1: every core; -2: all but one; -k: ``cores + 1 - k``; a positive number: that many, at most
    ``cores`` (more processes than cores only slow each other down). 0 and values below ``-cores`` name no
    worker: :class:`NJobsError`.
    """
    cores = cores or usable_cores()
    if n_jobs is None:
        return cores
    fix = f"use 1 to {cores}, -1 for every core" + (" or -2 for all but one" if cores > 1 else "")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
        raise NJobsError(f"--n-jobs {n_jobs!r} is not a whole number: {fix}")
    if n_jobs > 0:
        return min(n_jobs, cores)
    if n_jobs == 0:
        raise NJobsError(f"--n-jobs 0 runs no worker: {fix}")
    workers = cores + 1 + n_jobs
    if workers < 1:
        raise NJobsError(f"--n-jobs {n_jobs} leaves no worker on {cores} cores (-k is every core but k-1): {fix}")
    return workers


class Executor(Protocol):
    """Runs ``fn(task)`` for each task and yields the results as they finish (completion order); or, one task at
    a time, ``submit`` returns a handle, ``wait_first`` blocks until some handles are done and ``result`` gives a
    done handle's result (the engine keeps every worker busy that way, across groups).

    ``fn`` is picklable and self-contained (it loads its data by reference); an executor may run it in this
    process, in a pool of local processes or on a cluster. ``threads_per_worker`` is the TensorFlow thread
    share each worker should take (``None``: let the worker use the cores it sees). ``start`` reaches the workers
    before anything is written; its ``warm_up``, where the executor starts its own worker processes, readies each
    of them (TensorFlow imported, data loaded) while the driver goes on setting up. Executors are context
    managers: leaving the block releases their workers. A failure of the workers themselves (not of ``fn``)
    is raised as :class:`ExecutorError`. ``remote``: the workers run on other machines (a cluster reached at an
    address), whose CPUs ``--precision auto`` probes through the executor's ``run_on_each_worker(fn, task)`` and
    ``run_on(workers, fn, task)`` (:class:`mlflow_mnist.precision.ClusterWorkers`).
    """

    name: str
    n_workers: int
    threads_per_worker: int | None
    remote: bool

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]: ...

    def submit(self, fn: Callable[[T], R], task: T) -> Any: ...

    def wait_first(self, handles: list[Any], timeout: float | None = None) -> list[Any]: ...

    def result(self, handle: Any) -> R: ...

    def start(self, warm_up: Callable[[], Any] | None = None) -> Executor: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc) -> None: ...


class FuturesMixin:
    """``wait_first`` and ``result`` for executors whose handles are ``concurrent.futures`` futures."""

    def start(self, warm_up: Callable[[], Any] | None = None):
        """Nothing to reach: local pools start with their first task (or their warm-up)."""
        return self

    def wait_first(self, handles: list[Future], timeout: float | None = None) -> list[Future]:
        """The handles that are done, once one is or ``timeout`` seconds have passed (then maybe none)."""
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return [handle for handle in handles if handle in done]  # in submission order: reproducible

    def result(self, handle: Future) -> Any:
        return handle.result()


def done_future(fn: Callable[[T], R], task: T) -> Future:
    """``fn(task)`` run now, as a finished future (its exception kept for ``result``)."""
    future: Future = Future()
    try:
        future.set_result(fn(task))
    except BaseException as error:  # noqa: BLE001 - handed back through result(), as a pool would
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        future.set_exception(error)
    return future
