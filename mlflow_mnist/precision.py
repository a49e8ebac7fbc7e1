"""``--precision auto``: bfloat16 only on a CPU where it measures faster.

bfloat16 pays on CPUs with native bfloat16 instructions (Intel's AMX; AVX512-BF16, as on AMD's EPYC: this probe
read 1.17-1.24x on a 2-core AMX Xeon, 1.20x on a 2-core EPYC) and costs elsewhere, so the choice is measured, not
assumed: on a CPU that reports native bfloat16, a short probe trains a model typical of the task
(``Task.probe_params`` over its start) an epoch of :data:`PROBE_EXAMPLES` images in each precision (interleaved,
three times, each precision's fastest epoch) and picks ``mixed_bfloat16`` when it is at least :data:`MIN_SPEEDUP`
faster. The verdict is kept per CPU model, task and probe in
``~/.cache/mlflow-mnist/precision.json`` so later commands do not probe again. The probe times speed
only: whether bfloat16 is as accurate is the task's question, answered by comparing finals (README, Performance).

Where the folds train decides which CPU is probed: this machine for the joblib, serial and local Dask executors;
for a Dask cluster reached at a scheduler address, its workers (their CPUs, cores, Python), through the executor
like folds: every worker says what it is (:func:`worker_cpu`), one worker of each kind runs the probe
(:func:`probe_task`), each verdict is kept here under that kind's CPU, and bfloat16 is chosen only where every
kind measured it faster.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlflow_mnist.empty_store import cache_folder
from mlflow_mnist.executors.base import ExecutorError, usable_cores
from mlflow_mnist.schema import EPOCHS
from mlflow_mnist.tasks.base import Dataset, Task

MIN_SPEEDUP = 1.1
PROBE_EXAMPLES = 4096  # 2,048 measured per-step overhead more than arithmetic on the seed's best model
PROBE_ROUNDS = 3
# Each precision's fastest round, not its median: on a 2-core AMX Xeon 9 of 96 probe epochs took 1.30 s (+-0.01)
# whichever the precision, against 0.82-1.10 s, and two such epochs among one precision's three read 0.76x where
# the others read 1.15-1.28x. A stall only adds time, so the fastest round is the one that measures the arithmetic.
PROBE_ESTIMATE = "fastest"
PROBE_TIMEOUT = 600  # seconds: a probe that hangs gives float32, it does not hold the command up
CACHE = cache_folder() / "precision.json"
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")


def cpu_identity() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", set()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return model or "unknown", set(flags)


def seconds_per_epoch(
    task: Task, x: np.ndarray, y: np.ndarray, n_classes: int, precision: str, *, seed: int = 0
) -> float:
    """Wall time of one epoch over ``x``, after a first epoch that traces the graph."""
    import keras

    from mlflow_mnist.worker.process import forget_models
    from mlflow_mnist.worker.training import STEPS_PER_EXECUTION

    params = task.validate({**task.start, **task.probe_params, EPOCHS: 2})
    keras.utils.set_random_seed(seed)
    model = task.build_model(
        params,
        n_classes=n_classes,
        seed=seed,
        precision=precision,
        n_train=len(x),
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    onehot = np.eye(n_classes, dtype="float32")[y]
    model.fit(x, onehot, batch_size=int(params["batch_size"]), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, onehot, batch_size=int(params["batch_size"]), epochs=1, verbose=0)
    elapsed = time.perf_counter() - start
    forget_models()
    return elapsed


@dataclass(frozen=True)
class ProbeRequest:
    """What the probe needs wherever it runs: the task's name, its examples, the TensorFlow threads."""

    task_spec: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int
    threads: int

    @classmethod
    def of(cls, task_spec: str, data: Dataset, threads: int) -> ProbeRequest:
        """The probe's share of ``data``: its first :data:`PROBE_EXAMPLES` training examples."""
        n = PROBE_EXAMPLES
        return cls(task_spec, data.x_train[:n], data.y_train[:n], data.n_classes, threads)


def measure(task_spec: str, data: Dataset, *, threads: int) -> dict[str, list[float]]:
    """Seconds per probe epoch in each precision, interleaved, :data:`PROBE_ROUNDS` times (the fastest counts).

    Timed in a fresh process set up as a worker, with ``threads`` TensorFlow threads: bfloat16's gain depends on
    them (on a 2-core AMX Xeon, 2.77x on one thread and 2.27x on two for the same model), TensorFlow takes a
    thread count only before its first operation, and this process may have run one already.
    """
    return probe_task(ProbeRequest.of(task_spec, data, threads))


def probe_task(request: ProbeRequest) -> dict[str, list[float]]:
    """:func:`measure` on the machine that runs it (a Dask worker's task): the probe's fresh process there."""
    with tempfile.TemporaryDirectory(prefix="precision-probe-") as folder:
        examples = Path(folder) / "examples.npz"
        np.savez(examples, x=request.x, y=request.y, n_classes=request.n_classes)
        # A constant program; the task, the file and the count travel as arguments (no shell sees them).
        program = "import sys; from mlflow_mnist.precision import probe_process; probe_process(*sys.argv[1:])"
        command = [sys.executable, "-c", program, request.task_spec, str(examples), str(request.threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError(f"the probe process exited with {done.returncode} and {len(lines)} lines of output")
    return json.loads(lines[-1])


def worker_cpu(_: object = None) -> tuple[str, list[str], int]:
    """The CPU model and flags of the machine that runs it (a Dask worker's task), and the TensorFlow threads a
    fold takes there (its cores split between the worker's threads)."""
    from mlflow_mnist.worker.process import fold_threads

    model, flags = cpu_identity()
    return model, sorted(flags), fold_threads()


class ClusterWorkers(Protocol):
    """A remote cluster's workers as ``--precision auto`` reaches them (the Dask executor); a lost cluster raises
    :class:`ExecutorError`."""

    def run_on_each_worker(self, fn: Callable[[Any], Any], task: Any) -> dict[str, Any]:
        """``fn(task)`` on every worker, by the address of the worker that ran it."""
        ...

    def run_on(self, workers: Sequence[str], fn: Callable[[Any], Any], task: Any) -> tuple[str, Any]:
        """``fn(task)`` on one of ``workers`` (another if they all left): the address that ran it, its result."""
        ...


class _KindLeft(Exception):
    """Every worker of one CPU kind left the cluster before its probe ran (another kind's worker ran it)."""


def choose_precision(
    task: Task,
    data: Dataset,
    requested: str,
    *,
    task_spec: str = "",
    threads: int | None = None,
    workers: ClusterWorkers | None = None,
) -> tuple[str, str]:
    """The precision to train in, and why: ``requested`` unless it is ``auto``.

    ``task_spec`` names the task for the probe's process (default: its name); ``threads`` is each worker's
    TensorFlow thread count (default: every usable core, one worker; on a remote worker, the share a fold takes
    there); ``workers``: probe where the folds train instead of here, a remote Dask cluster's workers. Their CPUs
    may differ: each kind of CPU among them (model, flags, a fold's threads) is judged on one of its workers, and
    bfloat16 is chosen only where every kind measures it faster (the precision is one for all folds: it is in the
    fold key), so no worker trains slower for it. Workers that join later are not asked.
    """
    if requested != "auto":
        return requested, "as asked"
    spec = task_spec or task.name
    if workers is None:
        model, flags = cpu_identity()
        return _verdict(task, model, flags, threads or usable_cores(), "", lambda n: measure(spec, data, threads=n))
    kinds: dict[tuple, list[str]] = {}
    for address, (model, flags, cores) in workers.run_on_each_worker(worker_cpu, None).items():
        kinds.setdefault((model, tuple(sorted(flags)), cores), []).append(address)
    total = sum(map(len, kinds.values()))
    verdicts = []
    for (model, flags, cores), addresses in kinds.items():

        def probe(n: int, addresses: list[str] = addresses) -> dict[str, list[float]]:
            ran_on, times = workers.run_on(addresses, probe_task, ProbeRequest.of(spec, data, n))
            if ran_on not in addresses:
                raise _KindLeft
            return times

        where = " (a Dask worker's)" if len(kinds) == 1 else f" ({len(addresses)} of the cluster's {total} workers)"
        try:
            verdicts.append(_verdict(task, model, set(flags), threads or cores, where, probe))
        except _KindLeft:
            continue  # that kind trains nothing now: the others decide
    if len(verdicts) == 1:
        return verdicts[0]
    if not verdicts:
        return "float32", "auto: float32, every worker left the cluster before the bfloat16 probe ran"
    chosen = "mixed_bfloat16" if all(choice == "mixed_bfloat16" for choice, _ in verdicts) else "float32"
    return chosen, (
        f"auto: {chosen} on a cluster of {len(verdicts)} kinds of CPU (bfloat16 only where every kind measures it "
        "faster): " + "; ".join(because.removeprefix("auto: ") for _, because in verdicts)
    )


def _verdict(
    task: Task, model: str, flags: set[str], threads: int, where: str, probe: Callable[[int], dict[str, list[float]]]
) -> tuple[str, str]:
    """One CPU kind's precision and why: float32 without native bfloat16; else the kept verdict for this CPU, task
    and probe, or ``probe(threads)``'s seconds per epoch in each precision, kept."""
    native = sorted(flags & set(NATIVE_BF16))
    if not native:
        return "float32", f"auto: {model}{where} has no native bfloat16 ({', '.join(NATIVE_BF16)} absent)"
    # The probe's model, size and threads are in the key: a verdict measured otherwise is not this probe's.
    probe_key = [sorted(task.probe_params.items()), PROBE_EXAMPLES, PROBE_ROUNDS, PROBE_ESTIMATE, threads]
    identity = json.dumps([model, sorted(flags), task.name, probe_key], default=str)
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    cache = _read_cache()
    if key not in cache:
        try:
            times = probe(threads)
        except ExecutorError:
            raise  # the cluster is lost: its one line, not a quiet float32 (a kind gone passes through to the caller)
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
            return "float32", f"auto: float32, the bfloat16 probe failed on {model}{where} ({type(error).__name__})"
        speedup = min(times["float32"]) / min(times["mixed_bfloat16"])
        cache[key] = {
            "model": model,
            "task": task.name,
            "native": native,
            "threads": threads,
            "speedup": round(speedup, 3),
            # Kept to read a surprising verdict by (the median's low readings were found so).
            "seconds": {name: [round(t, 3) for t in runs] for name, runs in times.items()},
        }
        _write_cache(cache)
    speedup = cache[key]["speedup"]
    chosen = "mixed_bfloat16" if speedup >= MIN_SPEEDUP else "float32"
    return chosen, (
        f"auto: bfloat16 measured {speedup:.2f}x float32's speed on {model}{where} ({', '.join(native)}), "
        f"{threads} thread(s) per worker"
    )


def _read_cache() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home: the next command probes again


def probe_process(task_spec: str, examples: str, threads: str) -> None:
    """The probe's own process: set up as a worker, time both precisions, print their seconds as JSON."""
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.worker.process import configure_threads

    configure_threads(int(threads))
    task = get_task(task_spec)
    with np.load(examples) as arrays:
        x, y, n_classes = arrays["x"], arrays["y"], int(arrays["n_classes"])
    times: dict[str, list[float]] = {"float32": [], "mixed_bfloat16": []}
    for _ in range(PROBE_ROUNDS):
        for precision in times:
            times[precision].append(seconds_per_epoch(task, x, y, n_classes, precision))
    print(json.dumps(times))
