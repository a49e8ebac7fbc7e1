"""``--precision auto``: bfloat16 only on a CPU where it measures faster.

bfloat16 pays on CPUs with native bfloat16 matrix units (Intel's AMX; AVX512-BF16 helps less) and costs
elsewhere, so the choice is measured, not assumed: on a CPU that reports native bfloat16, a short probe trains
the task's starting model a few epochs' worth of batches in each precision (interleaved, twice, medians) and
picks ``mixed_bfloat16`` when it is at least :data:`MIN_SPEEDUP` faster. The verdict is kept per CPU model and
task in ``~/.cache/mlflow-mnist/precision.json`` so later commands do not probe again. The probe times speed
only: whether bfloat16 is as accurate is the task's question, answered by comparing finals (README, Performance).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from mlflow_mnist.tasks.base import Dataset, Task

MIN_SPEEDUP = 1.1
PROBE_EXAMPLES = 2048
CACHE = Path(os.environ.get("MLFLOW_MNIST_CACHE", Path.home() / ".cache" / "mlflow-mnist")) / "precision.json"
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


def seconds_per_epoch(task: Task, data: Dataset, precision: str, *, seed: int = 0) -> float:
    """Wall time of one epoch over the probe's examples, after a first epoch that traces the graph."""
    import keras

    from mlflow_mnist.worker.process import forget_models
    from mlflow_mnist.worker.training import STEPS_PER_EXECUTION

    x, y = data.x_train[:PROBE_EXAMPLES], data.y_train[:PROBE_EXAMPLES]
    params = task.validate(dict(task.start, epochs=2))
    keras.utils.set_random_seed(seed)
    model = task.build_model(
        params,
        n_classes=data.n_classes,
        seed=seed,
        precision=precision,
        n_train=len(x),
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    onehot = np.eye(data.n_classes, dtype="float32")[y]
    model.fit(x, onehot, batch_size=int(params["batch_size"]), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, onehot, batch_size=int(params["batch_size"]), epochs=1, verbose=0)
    elapsed = time.perf_counter() - start
    forget_models()
    return elapsed


def choose_precision(task: Task, data: Dataset, requested: str) -> tuple[str, str]:
    """The precision to train in, and why: ``requested`` unless it is ``auto``."""
    if requested != "auto":
        return requested, "as asked"
    model, flags = cpu_identity()
    native = sorted(flags & set(NATIVE_BF16))
    if not native:
        return "float32", f"auto: {model} has no native bfloat16 ({', '.join(NATIVE_BF16)} absent)"
    key = hashlib.sha256(json.dumps([model, sorted(flags), task.name]).encode()).hexdigest()[:16]
    cache = _read_cache()
    if key not in cache:
        times = {"float32": [], "mixed_bfloat16": []}
        for _ in range(2):  # interleaved: one core can slow down for minutes
            for precision in times:
                times[precision].append(seconds_per_epoch(task, data, precision))
        speedup = statistics.median(times["float32"]) / statistics.median(times["mixed_bfloat16"])
        cache[key] = {"model": model, "task": task.name, "native": native, "speedup": round(speedup, 3)}
        _write_cache(cache)
    speedup = cache[key]["speedup"]
    chosen = "mixed_bfloat16" if speedup >= MIN_SPEEDUP else "float32"
    return chosen, f"auto: bfloat16 measured {speedup:.2f}x float32's speed on {model} ({', '.join(native)})"


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
