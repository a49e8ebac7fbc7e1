"""Every task in this process, one after the other: for debugging, one core, and tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

from mlflow_mnist.executors.base import FuturesMixin, done_future, usable_cores

T = TypeVar("T")
R = TypeVar("R")


class SerialExecutor(FuturesMixin):
    name = "serial"
    remote = False  # its workers share this machine
    n_workers = 1

    def __init__(self, threads: int | None = None):
        self.threads_per_worker = threads or usable_cores()

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def submit(self, fn: Callable[[T], R], task: T) -> Future:
        return done_future(fn, task)

    def close(self) -> None:
        pass

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
