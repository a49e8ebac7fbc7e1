"""Fold tasks as Dask futures: on a running cluster (``--scheduler ADDRESS``) or, without an address, on a
``LocalCluster`` of one single-threaded worker process per core.

Futures rather than joblib's Dask backend: every fold is one task keyed by its fold key, so a fold whose worker
died is retried elsewhere as the *same* task (never a duplicate), ``retries=`` covers a task that raised, and
what is left is cancelled when the driver stops. Workers get the data by reference (each loads it once and
checks its digest); models are built inside the task; results come back to the driver, which alone writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from typing import TypeVar

from mlflow_mnist.executors.joblib import usable_cores

T = TypeVar("T")
R = TypeVar("R")
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
WAIT_FOR_WORKERS = float(os.environ.get("MLFLOW_MNIST_DASK_WAIT", "60"))
DEATH_TIMEOUT = 10  # seconds a local cluster's worker waits for a vanished scheduler before it exits
LOST_AFTER = 20.0  # seconds without the scheduler before the driver gives up (it cannot finish without it)


class ExecutorError(RuntimeError):
    """The cluster cannot be used (unreachable scheduler, no workers, scheduler lost); the message says what to do."""


def _task_key(fn: Callable, task) -> str:
    """The fold key when there is one: a fold resubmitted (a retry, a rerun) is the same Dask task."""
    from dask.base import tokenize

    key = getattr(task, "key", None)
    return f"fold-{key}" if key else f"task-{tokenize(fn, task)}"


class DaskExecutor:
    name = "dask"

    def __init__(self, scheduler: str | None = None, *, n_workers: int = 0, retries: int = 2):
        self.scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
        cores = usable_cores()
        self.n_workers = cores if n_workers in (None, 0, -1) else max(1, n_workers)
        # A local cluster's workers share this machine: one core each. A real cluster's workers size
        # TensorFlow from their own cores (None: the worker decides).
        self.threads_per_worker = max(1, cores // self.n_workers) if self.scheduler is None else None
        self.retries = retries
        self.client = None
        self.cluster = None

    @property
    def address(self) -> str:
        return self.scheduler or "a local cluster"

    def _connect(self):
        from distributed import Client, LocalCluster

        # The client logs reconnection attempts with tracebacks; what went wrong reaches the user as one line.
        for name in ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]:
            logging.getLogger(name).setLevel(logging.CRITICAL)

        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout="15s")
            except (OSError, TimeoutError) as error:
                raise ExecutorError(
                    f"cannot reach the Dask scheduler at {self.scheduler} ({type(error).__name__}): start it "
                    f"(`dask scheduler`) or fix --scheduler / ${SCHEDULER_ENV}"
                ) from None
        else:
            import dask

            from mlflow_mnist.worker import TRIM_ENV

            # Dask's nanny would start each worker with MALLOC_TRIM_THRESHOLD_=65536, which makes TensorFlow on
            # CPU about 1.3x slower per epoch (worker.restore_malloc_fast_path): our workers keep glibc's defaults.
            with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM_ENV}": None}):
                self.cluster = LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,  # worker shutdown chatter would bury our one-line messages
                    # The scheduler lives in this process: if a kill -9 takes it, the workers close themselves.
                    death_timeout=DEATH_TIMEOUT,
                )
            self.client = Client(self.cluster)
        try:
            self.client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
        except TimeoutError:
            self.close()
            raise ExecutorError(
                f"no Dask worker joined the scheduler at {self.address} within {WAIT_FOR_WORKERS:.0f} s: start "
                f"workers (`dask worker {self.scheduler or 'ADDRESS'}`) and run the same command again"
            ) from None
        return self.client

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        from distributed import wait

        tasks = list(tasks)
        if not tasks:
            return
        client = self.client or self._connect()
        futures = [client.submit(fn, task, key=_task_key(fn, task), retries=self.retries, pure=False) for task in tasks]
        pending, lost_since = set(futures), None
        try:
            while pending:
                try:
                    done, pending = wait(list(pending), timeout=2, return_when="FIRST_COMPLETED")
                    pending = set(pending)
                except TimeoutError:
                    done = set()
                for future in done:
                    yield future.result()
                if client.status == "running":
                    lost_since = None
                elif (lost_since := lost_since or time.monotonic()) + LOST_AFTER < time.monotonic():
                    raise ExecutorError(
                        f"lost the Dask scheduler at {self.address}: finished folds are kept; once it is back, "
                        f"run the same command again to resume"
                    )
        except (OSError, CancelledError, asyncio.CancelledError) as error:
            # A lost scheduler shows up as closed comms or as futures cancelled "scheduler-connection-lost".
            raise ExecutorError(
                f"lost the Dask scheduler at {self.address} ({type(error).__name__}): finished folds are kept; "
                f"once it is back, run the same command again to resume"
            ) from None
        finally:
            left = [f for f in futures if not f.done()]
            if left and client.status == "running":
                client.cancel(left)

    def close(self) -> None:
        for closable in (self.client, self.cluster):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # noqa: BLE001 - closing a lost cluster must not hide why we stopped
                    pass
        self.client = self.cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
