"""A pool of local worker processes through joblib (loky), each with an equal share of the cores."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class JoblibExecutor:
    """``n_jobs`` processes (0 or -1: one per core); n workers never oversubscribe the machine's cores.

    joblib's loky backend keeps its workers alive between calls, so TensorFlow is imported and the data is
    loaded once per worker for a whole multi-step stage, not once per step.
    """

    name = "joblib"

    def __init__(self, n_jobs: int = 0):
        cores = usable_cores()
        self.n_workers = cores if n_jobs in (None, 0, -1) else max(1, min(n_jobs, cores))
        self.threads_per_worker = max(1, cores // self.n_workers)

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        tasks = list(tasks)
        if not tasks:
            return
        if self.n_workers == 1:
            yield from map(fn, tasks)  # a pool of one would only add start-up time
            return
        from joblib import Parallel, delayed

        # Always the same n_jobs, so loky hands back the same warm workers on every call.
        parallel = Parallel(n_jobs=self.n_workers, return_as="generator_unordered")
        yield from parallel(delayed(fn)(task) for task in tasks)

    def close(self) -> None:
        pass  # loky's reusable pool shuts itself down after its idle timeout

    def __enter__(self) -> JoblibExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
