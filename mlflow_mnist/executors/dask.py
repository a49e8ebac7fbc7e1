"""Fold tasks as Dask futures: on a running cluster (``--scheduler ADDRESS``) or, without an address, on a
``LocalCluster`` of one single-threaded worker process per core.

Futures rather than joblib's Dask backend: every fold is one task keyed by its fold key, so a fold whose worker
died is retried elsewhere as the *same* task (never a duplicate), ``retries=`` covers a task that raised, and
what is left is cancelled when the driver stops. Workers get the data by reference (each loads it once and
checks its digest); models are built inside the task; results come back to the driver, which alone writes.

:meth:`DaskExecutor.start` does everything that can fail about the cluster (the address, TLS settings, reaching
the scheduler, a worker that can import this project) before the caller writes anything. Security settings are
Dask's own configuration, which ``Client`` reads by itself: ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``,
``..._TLS__CLIENT__CERT``, ``..._TLS__CLIENT__KEY`` and ``DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION`` (or the
same keys in a Dask YAML file). A local cluster always speaks TLS with a throw-away certificate held in memory,
so no other user of this machine can hand its workers code.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import TypeVar

from mlflow_mnist.executors.base import ExecutorError, resolve_n_jobs, usable_cores

T = TypeVar("T")
R = TypeVar("R")
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
WAIT_ENV = "MLFLOW_MNIST_DASK_WAIT"
WAIT_FOR_WORKERS = 60.0  # seconds for a worker to join, without $MLFLOW_MNIST_DASK_WAIT (read by wait_for_workers)
WAIT_RANGE = (1.0, 86400.0)
CONNECT_TIMEOUT = 15  # seconds to reach the scheduler (Dask retries inside it)
DEATH_TIMEOUT = 10  # seconds a local cluster's worker waits for a vanished scheduler before it exits
LOST_AFTER = 20.0  # seconds without the scheduler before the driver gives up (it cannot finish without it)
AHEAD_PER_THREAD = 2  # map_unordered's tasks per worker: one running, one queued so no worker waits on the driver
PROJECT_MODULE = "mlflow_mnist.worker"  # every task unpickles a class from it: a worker must import it
SCHEMES = ("tcp", "tls")
TLS_SETTINGS = (
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"
)
_ADDRESS = re.compile(r"(?:(?P<scheme>[^:/]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@]+)(?::(?P<port>[^/]*))?")
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+")


def parse_scheduler_address(text: str) -> str:
    """``text`` as ``tcp://HOST:PORT`` or ``tls://HOST:PORT``; a bare ``HOST:PORT`` takes Dask's default scheme
    (``distributed.comm.default-scheme``, tcp), as ``Client`` would. Anything else is an :class:`ExecutorError`."""
    import dask

    fix = "write tls://HOST:PORT (or tcp://HOST:PORT), e.g. tls://10.0.0.5:8786, in --scheduler or $" + SCHEDULER_ENV
    if "@" in text:  # user:password@host: never echo it
        raise ExecutorError(
            f"the scheduler address holds a user name or password: Dask authenticates with TLS certificates, "
            f"not passwords; {fix}"
        )
    match = _ADDRESS.fullmatch(text.strip())
    if match is None or not _HOST.fullmatch(match["host"]):
        raise ExecutorError(f"{text!r} is not a Dask scheduler address: {fix}")
    scheme = (
        match["scheme"] if match["scheme"] is not None else dask.config.get("distributed.comm.default-scheme", "tcp")
    )
    if scheme not in SCHEMES:
        raise ExecutorError(f"scheduler address {text!r} has scheme {scheme!r}, not tls:// or tcp://: {fix}")
    port = match["port"]
    if port is None or not port.isdigit() or not 0 < int(port) < 65536:
        found = "no port" if port is None else f"port {port!r} is not a number from 1 to 65535"
        raise ExecutorError(f"scheduler address {text!r}: {found}: {fix}")
    return f"{scheme}://{match['host']}:{int(port)}"


def wait_for_workers() -> float:
    """Seconds to wait for a Dask worker: ``$MLFLOW_MNIST_DASK_WAIT`` (default 60), checked when an executor is
    made (before anything is written), never at import; a bad value is an :class:`ExecutorError` naming it."""
    from mlflow_mnist.lock import env_seconds

    return env_seconds(WAIT_ENV, WAIT_FOR_WORKERS, *WAIT_RANGE, error=ExecutorError)


def _task_key(fn: Callable, task) -> str:
    """The fold key when there is one: a fold resubmitted (a retry, a rerun) is the same Dask task."""
    from dask.base import tokenize

    key = getattr(task, "key", None)
    return f"fold-{key}" if key else f"task-{tokenize(fn, task)}"


def _reason(error: BaseException) -> str:
    """One short line for a comm or TLS error (their texts hold addresses and library messages, no secrets)."""
    text = (str(error).strip().splitlines() or [""])[0][:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Watch:
    """While tasks wait: the scheduler must come back within ``LOST_AFTER`` seconds, and a worker must be there
    within ``WAIT_FOR_WORKERS`` (workers that all died, each killed by a task it could not run, never return)."""

    def __init__(self, executor: DaskExecutor):
        self.executor, self.lost_since, self.alone_since = executor, None, None

    def check(self) -> None:
        executor, now = self.executor, time.monotonic()
        if executor.client.status != "running":
            self.lost_since = self.lost_since or now
            if self.lost_since + LOST_AFTER < now:
                raise executor._lost()
            return
        self.lost_since = None
        if executor._threads() > 0:
            self.alone_since = None
            return
        self.alone_since = self.alone_since or now
        if self.alone_since + executor.wait_for_workers < now:
            raise ExecutorError(
                f"every Dask worker left the scheduler at {executor.address} and none joined within "
                f"{executor.wait_for_workers:.0f} s: their logs say why; start workers and run the same command again "
                f"(finished folds are kept)"
            )


class DaskExecutor:
    name = "dask"

    def __init__(self, scheduler: str | None = None, *, n_workers: int | None = None, retries: int = 2):
        self.wait_for_workers = wait_for_workers()  # a bad $MLFLOW_MNIST_DASK_WAIT: one line, nothing written
        given = scheduler or os.environ.get(SCHEDULER_ENV) or None
        # A malformed address fails here, at construction: before the caller has read data or written runs.
        self.scheduler = parse_scheduler_address(given) if given else None
        self.requested = n_workers
        if self.scheduler is None:
            # A local cluster's workers share this machine: one core each.
            self._n_workers = resolve_n_jobs(n_workers)
            self.threads_per_worker = max(1, usable_cores() // self._n_workers)
        else:
            self._n_workers = None  # the cluster's, known once it is reached
            self.threads_per_worker = None  # a real cluster's workers size TensorFlow from their own cores
        self.retries = retries
        self.client = None
        self.cluster = None
        self._watch = _Watch(self)

    @property
    def n_workers(self) -> int:
        """Folds run at once: a local cluster's processes; on a running cluster its worker threads when it was
        reached (``n_workers`` as given in joblib's convention counts them; workers that join later are used by
        Dask but not counted). Asking reaches the cluster (:meth:`start`)."""
        if self._n_workers is None:
            self.start()
            self._n_workers = resolve_n_jobs(self.requested, cores=max(1, self._threads()))
        return self._n_workers

    @property
    def address(self) -> str:
        return self.scheduler or "a local cluster"

    @property
    def remote(self) -> bool:
        """A cluster reached at a scheduler address: its workers' CPUs are not this machine's."""
        return self.scheduler is not None

    def run_on_each_worker(self, fn: Callable[[T], R], task: T) -> dict[str, R]:
        """``fn(task)`` once for every worker the scheduler has now, each asked of that worker (one that left
        meanwhile: another runs its call), by the address of the worker that ran it: ``--precision auto`` asks
        every worker of a remote cluster what CPU it has so."""
        client = self.start().client
        try:
            addresses = list(client.nthreads())
        except (OSError, CancelledError, asyncio.CancelledError) as error:
            raise self._lost(error) from None
        handles = [self._submit_to([address], fn, task) for address in addresses]
        return dict(self._ran_where(handle) for handle in handles)

    def run_on(self, workers: Sequence[str], fn: Callable[[T], R], task: T) -> tuple[str, R]:
        """``fn(task)`` on one of ``workers`` (another if they all left meanwhile), waited for: the address of the
        worker that ran it and its result (``--precision auto`` probes one worker of each kind of CPU so)."""
        return self._ran_where(self._submit_to(list(workers), fn, task))

    def _submit_to(self, workers: list[str], fn: Callable[[T], R], task: T):
        client = self.start().client
        try:
            # No key: each call is its own task (two kinds' probes of the same request are two measurements).
            return client.submit(fn, task, workers=workers, allow_other_workers=True, pure=False)
        except (OSError, CancelledError, asyncio.CancelledError) as error:
            raise self._lost(error) from None

    def _ran_where(self, handle) -> tuple[str, R]:
        """A task's result, waited for, with the worker that holds it: the one that ran it (it has no inputs)."""
        result = self.result(self.wait_first([handle])[0])
        try:
            holders = self.client.who_has([handle])[handle.key]
        except (OSError, CancelledError, asyncio.CancelledError) as error:
            raise self._lost(error) from None
        return (holders[0] if holders else ""), result

    def start(self, warm_up: Callable[[], object] | None = None) -> DaskExecutor:
        """Reach the cluster and wait for a worker that can import this project; :class:`ExecutorError` if not.

        Call it before writing anything: every failure of the cluster's set-up surfaces here, as one line.
        Starting twice is harmless; :meth:`submit` and :attr:`n_workers` start a cluster nobody started.
        ``warm_up`` is not run: which workers will join is not known here, and each loads TensorFlow and the data
        with its first fold (a remote cluster's workers keep them between searches).
        """
        if self.client is not None:
            return self
        import distributed  # noqa: F401 - its loggers must exist to be silenced

        # The client logs reconnection attempts with tracebacks; what went wrong reaches the user as one line.
        for name in ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if self.scheduler:
            self._connect_to_scheduler()
        else:
            self._start_local_cluster()
        try:
            self._check_scheduler_imports(PROJECT_MODULE)
            self.client.wait_for_workers(1, timeout=self.wait_for_workers)
            self._check_workers_import(PROJECT_MODULE)
        except TimeoutError:
            self.close()
            raise ExecutorError(
                f"no Dask worker joined the scheduler at {self.address} within {self.wait_for_workers:.0f} s: start "
                f"workers (`dask worker {self.scheduler or 'ADDRESS'}`) and run the same command again"
            ) from None
        except (OSError, CancelledError, asyncio.CancelledError) as error:
            self.close()
            raise self._lost(error) from None
        except ExecutorError:
            self.close()
            raise
        return self

    def _connect_to_scheduler(self) -> None:
        import ssl

        from distributed import Client
        from distributed.comm.core import CommClosedError, FatalCommClosedError

        address, scheme = self.scheduler, self.scheduler.split("://")[0]
        security = self._security(scheme)
        try:
            self.client = Client(address, timeout=f"{CONNECT_TIMEOUT}s", security=security)
        except (FatalCommClosedError, ssl.SSLError) as error:
            raise self._tls_failed(error) from None
        except CommClosedError as error:
            if scheme == "tls" or "SSL" in str(error):
                raise self._tls_failed(error) from None
            raise ExecutorError(
                f"the Dask scheduler at {address} closed the connection ({_reason(error)}): if it requires TLS, "
                f"use its tls:// address and set {TLS_SETTINGS}"
            ) from None
        except (OSError, TimeoutError) as error:
            raise ExecutorError(
                f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT} s ({_reason(error)}): "
                f"start it (`dask scheduler`) or fix --scheduler / ${SCHEDULER_ENV}"
            ) from None

    def _security(self, scheme: str):
        """Dask's TLS settings from its configuration, checked before any connection is tried."""
        from distributed.security import Security

        security = Security()  # DASK_DISTRIBUTED__COMM__* environment variables and Dask's YAML files
        if scheme == "tcp" and security.require_encryption:
            raise ExecutorError(
                f"Dask's configuration requires encryption (distributed.comm.require-encryption) but the scheduler "
                f"address {self.scheduler} is plain tcp://: use the scheduler's tls:// address"
            )
        if scheme != "tls":
            return security
        settings = {
            "distributed.comm.tls.ca-file": security.tls_ca_file,
            "distributed.comm.tls.client.cert": security.tls_client_cert,
            "distributed.comm.tls.client.key": security.tls_client_key,
        }
        missing = [key for key, value in list(settings.items())[:2] if not value]
        if missing:
            raise ExecutorError(
                f"the scheduler at {self.scheduler} speaks TLS but Dask's configuration lacks {', '.join(missing)}: "
                f"set {TLS_SETTINGS} to the cluster's CA certificate and this driver's certificate and key"
            )
        for key, value in settings.items():
            # A value with a newline is the PEM text itself (as Security.temporary makes): nothing to open.
            if value and "\n" not in value and not os.access(value, os.R_OK):
                raise ExecutorError(
                    f"cannot read {value} ({key} in Dask's configuration): fix the path or the file's permissions"
                )
        try:
            security.get_connection_args("client")  # loads the certificate and key: a mismatch fails here
        except (OSError, ValueError) as error:
            raise ExecutorError(
                f"Dask's TLS settings cannot be loaded ({_reason(error)}): {TLS_SETTINGS} must name a PEM CA "
                f"certificate and this driver's matching certificate and key"
            ) from None
        return security

    def _tls_failed(self, error: BaseException) -> ExecutorError:
        return ExecutorError(
            f"TLS handshake with the Dask scheduler at {self.scheduler} failed ({_reason(error)}): the scheduler, "
            f"its workers and this driver need certificates from the same CA; check {TLS_SETTINGS}"
        )

    def _start_local_cluster(self) -> None:
        import dask
        from distributed import Client, LocalCluster
        from distributed.security import Security

        from mlflow_mnist.worker.process import TRIM_ENV

        # Dask's nanny would start each worker with MALLOC_TRIM_THRESHOLD_=65536, which makes TensorFlow on
        # CPU about 1.3x slower per epoch (worker.process.restore_malloc_fast_path): our workers keep glibc's defaults.
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM_ENV}": None}):
            self.cluster = LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # Loopback is reachable by every user of this machine, and Dask runs the pickles it is sent:
                # TLS with a certificate that exists only in this process and its workers keeps them out.
                security=Security.temporary(),
                silence_logs=logging.CRITICAL,  # worker shutdown chatter would bury our one-line messages
                # The scheduler lives in this process: if a kill -9 takes it, the workers close themselves.
                death_timeout=DEATH_TIMEOUT,
            )
        self.client = Client(self.cluster)

    def _check_scheduler_imports(self, module: str) -> None:
        """The scheduler unpickles every task graph it is sent: it needs the project as much as the workers."""
        try:
            self.client.run_on_scheduler(importlib.import_module, module)
        except ImportError as error:
            raise self._scheduler_lacks_project(error) from None

    def _scheduler_lacks_project(self, error: BaseException) -> ExecutorError:
        return ExecutorError(
            f"the Dask scheduler at {self.address} cannot import {PROJECT_MODULE} ({_reason(error)}): install this "
            f"project (the driver's version, with its dependencies) in the scheduler's environment, then restart it"
        )

    def _check_workers_import(self, module: str) -> None:
        """Every worker the scheduler has now must import ``module``; one that cannot would die on each task."""
        answers = self.client.run(importlib.import_module, module, on_error="return")
        failed = {worker: answer for worker, answer in answers.items() if isinstance(answer, BaseException)}
        if failed:
            worker, error = next(iter(failed.items()))
            others = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
            raise ExecutorError(
                f"Dask worker {worker}{others} cannot import {module} ({_reason(error)}): install this project "
                f"(the driver's version, with its dependencies) in every worker's environment, then restart them"
            )

    def _lost(self, error: BaseException | None = None) -> ExecutorError:
        # Cancelled futures say nothing more than "lost"; a closed comm names what closed.
        cancelled = isinstance(error, (CancelledError, asyncio.CancelledError))
        why = f" ({_reason(error)})" if error is not None and not cancelled else ""
        return ExecutorError(
            f"lost the Dask scheduler at {self.address}{why}: finished folds are kept; once it is back, run the "
            f"same command again to resume"
        )

    def submit(self, fn: Callable[[T], R], task: T):
        """One task on the cluster, keyed by its fold key (a fold resubmitted is the same Dask task); a handle."""
        client = self.start().client
        try:
            return client.submit(fn, task, key=_task_key(fn, task), retries=self.retries, pure=False)
        except (OSError, CancelledError, asyncio.CancelledError) as error:
            raise self._lost(error) from None

    def wait_first(self, handles: list, timeout: float | None = None) -> list:
        """The done ones among ``handles`` (in their order), once there is one or ``timeout`` seconds have passed
        (then maybe none). A scheduler gone for ``LOST_AFTER`` seconds, or no worker for ``WAIT_FOR_WORKERS``,
        is an :class:`ExecutorError` instead: tasks would wait for them forever. Those clocks run across calls."""
        from distributed import wait

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            tick = 2.0 if deadline is None else max(0.0, min(2.0, deadline - time.monotonic()))
            try:
                done, _ = wait(handles, timeout=tick, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            except (OSError, CancelledError, asyncio.CancelledError) as error:
                raise self._lost(error) from None
            if done:
                return [handle for handle in handles if handle in done]
            self._watch.check()
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def result(self, handle):
        """A done task's result; what the cluster did to it (not what the fold raised) as one line."""
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        try:
            return handle.result()
        except KilledWorker as error:
            last = getattr(error.last_worker, "address", error.last_worker)
            raise ExecutorError(
                f"task {error.task} killed every Dask worker that ran it ({error.allowed_failures + 1}, the last "
                f"{last}): most likely it ran out of memory (give workers more: `dask worker --memory-limit`, "
                f"fewer threads) or the worker crashed; that worker's log says which. Finished folds are kept: "
                f"rerun the same command to resume"
            ) from None
        except ImportError as error:
            raise ExecutorError(
                f"a Dask worker cannot import {error.name or 'a module'} ({_reason(error)}): install this project "
                f"(the driver's version, with its dependencies) in every worker's environment, then restart them"
            ) from None
        except RuntimeError as error:
            if "deserialization of the task graph" in str(error):  # Dask's words for a scheduler without our code
                raise self._scheduler_lacks_project(error) from None
            raise
        except (CommClosedError, CancelledError, asyncio.CancelledError) as error:
            # A lost scheduler shows up as closed comms or as futures cancelled "scheduler-connection-lost".
            raise self._lost(error) from None

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """``fn(task)`` for each task on the cluster, results in completion order.

        At most ``AHEAD_PER_THREAD`` tasks per worker are submitted beyond the results the caller has taken: a
        caller that stops pulling (its logging queue full) soon stops the workers too, and a finished result
        waits on the worker that made it, never in the driver. A result handed over is released on the cluster.
        """
        waiting = list(tasks)[::-1]  # pop() takes them in the given order
        pending: list = []
        try:
            while waiting or pending:
                while waiting and len(pending) < AHEAD_PER_THREAD * self.n_workers:
                    pending.append(self.submit(fn, waiting.pop()))
                done = self.wait_first(pending)
                pending = [handle for handle in pending if handle not in done]
                while done:  # popped: once the caller holds a result, no reference keeps it on the cluster
                    yield self.result(done.pop(0))
        finally:
            if pending and self.client is not None and self.client.status == "running":
                self.client.cancel(pending)

    def _threads(self) -> int:
        """The worker threads the scheduler has now (1 when it cannot say: the status check judges that)."""
        try:
            return sum(self.client.nthreads().values())
        except (OSError, CancelledError, asyncio.CancelledError):
            return 1

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
