"""A pool of local worker processes through joblib (loky), each with an equal share of the cores."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from mlflow_mnist.executors.base import ExecutorError, FuturesMixin, done_future, resolve_n_jobs, usable_cores
from mlflow_mnist.redaction import first_line

T = TypeVar("T")
R = TypeVar("R")
IDLE_TIMEOUT = 300  # seconds an idle pool process stays warm, as joblib's own default
# What usually sends each signal to a training process: the kernel's OOM killer sends SIGKILL.
LIKELY_CAUSE = {"SIGKILL": "out of memory?", "SIGSEGV": "a crash in native code", "SIGBUS": "a crash in native code"}


def _exit_codes(error: BaseException) -> list[int]:
    """The dead workers' exit codes, which loky writes into its message as ``{SIGKILL(-9), EXIT(1)}``."""
    return [int(code) for code in re.findall(r"\((-?\d+)\)", str(error).split("exit codes of the workers are")[-1])]


def _how_it_died(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    cause = LIKELY_CAUSE.get(name)
    return f"killed by signal {-code}, {name}" + (f": {cause}" if cause else "")


def pool_failure(error: BrokenProcessPool, n_workers: int) -> ExecutorError:
    """One line for a pool that broke: which worker died how, and what to run next."""
    codes = _exit_codes(error)
    fewer = f"--n-jobs {n_workers - 1}" if n_workers > 2 else "--n-jobs 1"
    if codes or "terminated" in str(error):
        how = "; ".join(dict.fromkeys(map(_how_it_died, codes))) or "cause unknown"
        return ExecutorError(
            f"a worker process died ({how}): finished folds are kept; run the same command again to resume, "
            f"with fewer workers ({fewer}) if memory is short"
        )
    reason = first_line(error, 160)
    return ExecutorError(
        f"the worker pool broke ({reason}): finished folds are kept; run the same command again to resume, "
        f"or with --executor serial to see the error in this process"
    )


def _call(fn: Callable[[], R]) -> R:
    return fn()


class JoblibExecutor(FuturesMixin):
    """``n_jobs`` processes in joblib's convention (:func:`resolve_n_jobs`); n workers never oversubscribe the
    machine's cores.

    joblib's loky backend keeps its workers alive between calls, so TensorFlow is imported and the data is
    loaded once per worker for a whole multi-step stage, not once per step. A worker that dies (OOM kill,
    segfault) breaks the pool: that is one :class:`ExecutorError`, not loky's traceback.
    """

    name = "joblib"
    remote = False  # its workers share this machine

    def __init__(self, n_jobs: int | None = None):
        self.n_workers = resolve_n_jobs(n_jobs)
        self.threads_per_worker = max(1, usable_cores() // self.n_workers)
        self.warm_ups: list[Future] = []

    def start(self, warm_up: Callable[[], object] | None = None) -> JoblibExecutor:
        """Start the pool's processes now and run ``warm_up`` once in each, without waiting for it.

        A pool process spends its first seconds importing TensorFlow and loading the data (7-12 s of a 2-core
        stage's 110-120 s, benchmarks/bench_stage.py); started here, that overlaps the driver's own set-up (its
        tracking store, 3.5 s for a new SQLite one) instead of following it. The warm-ups go first in the queue,
        one per process: each takes seconds, so no process takes two while another starts. A warm-up that fails
        (data that will not load) is ignored: the first fold meets the same error and reports it.
        """
        if warm_up is not None and self.n_workers > 1:
            self.warm_ups = [self.submit(_call, warm_up) for _ in range(self.n_workers)]
        return self

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Every task on the pool at once, results as they finish (the same pool :meth:`submit` uses)."""
        tasks = list(tasks)
        if not tasks:
            return
        if self.n_workers == 1:
            yield from map(fn, tasks)  # a pool of one would only add start-up time
            return
        handles = [self.submit(fn, task) for task in tasks]
        try:
            while handles:
                for handle in self.wait_first(handles):
                    handles.remove(handle)
                    yield self.result(handle)
        finally:
            for handle in handles:
                handle.cancel()

    def submit(self, fn: Callable[[T], R], task: T) -> Future:
        """One task on loky's reusable pool (the one joblib uses, so its workers stay warm); in this process when
        there is one worker."""
        if self.n_workers == 1:
            return done_future(fn, task)
        from joblib.executor import get_memmapping_executor

        try:
            # joblib's own reusable pool, as Parallel(n_jobs) would get it: always the same size, so its warm
            # workers (TensorFlow imported, data loaded) serve a whole search, and joblib code in this process
            # (a scikit-learn peer in a benchmark) shares it instead of breaking it.
            return get_memmapping_executor(self.n_workers, timeout=IDLE_TIMEOUT).submit(fn, task)
        except BrokenProcessPool as error:  # loky's BrokenProcessPool and TerminatedWorkerError derive from it
            raise pool_failure(error, self.n_workers) from None

    def result(self, handle: Future) -> R:
        try:
            return handle.result()
        except BrokenProcessPool as error:
            raise pool_failure(error, self.n_workers) from None

    def close(self) -> None:
        pass  # loky's reusable pool shuts itself down after its idle timeout

    def __enter__(self) -> JoblibExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["JoblibExecutor", "pool_failure", "usable_cores"]
