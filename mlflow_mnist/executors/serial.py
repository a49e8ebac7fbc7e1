"""Every task in this process, one after the other: for debugging, one core, and tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from mlflow_mnist.executors.base import usable_cores

T = TypeVar("T")
R = TypeVar("R")


class SerialExecutor:
    name = "serial"
    n_workers = 1

    def __init__(self, threads: int | None = None):
        self.threads_per_worker = threads or usable_cores()

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        pass

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
