"""The executor protocol: where fold tasks run. The search never knows which one it has."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn(task)`` for each task and yields the results as they finish (completion order).

    ``fn`` is picklable and self-contained (it loads its data by reference); an executor may run it in this
    process, in a pool of local processes or on a cluster. ``threads_per_worker`` is the TensorFlow thread
    share each worker should take (``None``: let the worker use the cores it sees). Executors are context
    managers: leaving the block releases their workers.
    """

    name: str
    n_workers: int
    threads_per_worker: int | None

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc) -> None: ...
