"""Worker side: what an executor runs, in whatever process it chose.

Workers compute and return plain records (metrics, curves, the saved model folder as bytes, their own start
and end times); they never talk to the tracking store. Data reaches them by reference (:class:`DataRef`: the
task, its data source and classes, and the digest to check) and is loaded once per process, so no task pickles
the arrays; the test seam may hand a worker a :class:`Dataset` itself.

    process.py      exit with the driver, core share, quiet TensorFlow, malloc's fast path
    training.py     the one fit routine; a fold; a final model
    model_files.py  a trained model as an MLflow model folder in bytes
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from functools import lru_cache

from mlflow_mnist.params import Params
from mlflow_mnist.planning import FoldTask
from mlflow_mnist.results import FoldResult
from mlflow_mnist.tasks import get_task
from mlflow_mnist.tasks.base import DataError, Dataset, Task
from mlflow_mnist.worker.process import allow_a_folds_working_set, configure_threads, exit_with_driver
from mlflow_mnist.worker.training import FinalResult, train_final, train_fold


class FinalSeedFailed(RuntimeError):
    """A final's seed raised while training or testing: one line (the error, redacted and shortened), not a
    traceback from a worker process."""


@dataclass(frozen=True)
class DataRef:
    """How a worker finds a task's data without anyone shipping it: the task (a registered name or
    ``module:attr``), a source it can load, the classes, and the training split's digest to check that it
    loaded the same examples as the driver."""

    task: str
    source: str  # "sample", an absolute path, or "" (the task's default)
    classes: str
    digest: str


def load_ref(ref: DataRef) -> Dataset:
    """Load what ``ref`` names and check its digest; a mismatch names this worker and what to fix."""
    data = get_task(ref.task).load(ref.source, classes=ref.classes)
    found = data.digest()
    if found != ref.digest:
        raise DataError(
            f"worker {socket.gethostname()} (pid {os.getpid()}) loaded {ref.source or 'the default data'} with "
            f"digest {found}, but the driver's data has digest {ref.digest}: give every worker the same files"
        )
    return data


@lru_cache(maxsize=2)
def _loaded(ref: DataRef) -> Dataset:
    return load_ref(ref)


def _data(source: DataRef | Dataset) -> Dataset:
    return source if isinstance(source, Dataset) else _loaded(source)


def _task(spec: str | Task) -> Task:
    return spec if isinstance(spec, Task) else get_task(spec)


@dataclass(frozen=True)
class FoldWorker:
    """The picklable per-fold function an executor runs: loads the data once per process, then trains."""

    task: str | Task
    data: DataRef | Dataset
    threads: int | None = 1
    with_model: bool = True
    driver_pid: int | None = None

    def __call__(self, fold: FoldTask) -> FoldResult:
        exit_with_driver(self.driver_pid)
        data = _data(self.data)
        return train_fold(
            _task(self.task), fold, data.x_train, data.y_train, threads=self.threads, with_model=self.with_model
        )


@dataclass(frozen=True)
class WarmUp:
    """What an executor runs once in each new pool process before its first task: the same set-up a first fold
    does (its share of the cores, TensorFlow imported, the data loaded and checked), done while the driver is
    still reaching its tracking store. ``data=None`` (arrays shipped with each task) warms TensorFlow alone."""

    data: DataRef | None
    threads: int | None = 1
    driver_pid: int | None = None

    def __call__(self) -> int:
        exit_with_driver(self.driver_pid)
        allow_a_folds_working_set()  # loky measures this process's size after this call: before any fold
        configure_threads(self.threads)
        import keras  # noqa: F401 - the import is the warm-up

        if self.data is not None:
            _loaded(self.data)
        return os.getpid()


@dataclass(frozen=True)
class FinalWorker:
    """The picklable per-seed function of ``final``: the same data loading, the whole training set, one test.

    ``configs`` holds the configurations a final trains, best first (one, or a search's best few); each task is
    a (seed, index into ``configs``) pair, and the result says which configuration it trained."""

    task: str | Task
    data: DataRef | Dataset
    configs: tuple[Params, ...]
    precision: str = "float32"
    threads: int | None = 1
    driver_pid: int | None = None

    def __call__(self, assignment: tuple[int, int]) -> FinalResult:
        seed, index = assignment
        exit_with_driver(self.driver_pid)
        try:
            result = train_final(
                _task(self.task),
                self.configs[index],
                _data(self.data),
                seed,
                precision=self.precision,
                threads=self.threads,
            )
        except Exception as error:  # noqa: BLE001 - said in one line by the driver, whatever the task raised
            from mlflow_mnist.redaction import error_line

            said = error_line(f"{type(error).__name__}: {error}")
            raise FinalSeedFailed(
                f"seed {seed} of the final failed with {said}: where the task's model or data breaks the task "
                f"contract (docs/tasks.md, build_model), fix the task; then run final again"
            ) from None
        return replace(result, config_index=index)


__all__ = [
    "DataRef",
    "FinalResult",
    "FinalSeedFailed",
    "FinalWorker",
    "FoldWorker",
    "WarmUp",
    "load_ref",
    "train_final",
    "train_fold",
]
