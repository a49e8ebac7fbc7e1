"""Worker-side code: one fit routine for folds and final models, run in whatever process an executor chose.

Workers compute and return plain records (metrics, curves, the saved model folder as bytes, their own start
and end times); they never talk to the tracking store. Data reaches them by reference (:class:`DataRef`) and
is loaded once per process, so no task pickles the pixels.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mlflow_mnist.data import DataRef, Task, load_ref
from mlflow_mnist.model import Params, make_classifier
from mlflow_mnist.planning import FoldTask, fold_indices
from mlflow_mnist.results import FoldResult

BLOW_UP_FACTOR = 5.0
VALIDATION_BATCH = 512  # scoring needs no small batches; big ones run the held-out pass several times faster
STEPS_PER_EXECUTION = 32  # several batches per graph call: about 2x faster at batch 20 on CPU

_THREADS_SET = False
_WATCHING_DRIVER = False


def exit_with_driver(driver_pid: int | None) -> None:
    """In a pool process the driver started itself, exit as soon as the driver is gone.

    A driver killed with SIGKILL (an OOM kill, ``kill -9``) runs no cleanup: its pool processes, each holding
    TensorFlow and a copy of the data, would live on as orphans. A daemon thread notices that the process was
    re-parented and ends it. Processes not started by the driver (a cluster's workers) are left alone.
    """
    global _WATCHING_DRIVER
    if _WATCHING_DRIVER or driver_pid is None or os.getpid() == driver_pid or os.getppid() != driver_pid:
        return
    _WATCHING_DRIVER = True

    def watch() -> None:
        while os.getppid() == driver_pid:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


# glibc's mallopt() parameters (malloc.h), the largest mmap threshold it accepts on 64-bit Linux, and a trim
# threshold well above it, so freed activation buffers stay in the heap for the next step.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20
TRIM_THRESHOLD = 128 << 20
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"


def restore_malloc_fast_path() -> bool:
    """Undo what ``MALLOC_TRIM_THRESHOLD_`` does to a training process; True when thresholds were raised.

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (to give freed memory back to the
    OS). Setting any malloc threshold also freezes glibc's *mmap* threshold at 128 KiB, so each batch's
    activation and gradient tensors (200-800 KB each at batch 20 in the seed's model) become a fresh ``mmap``
    with page faults on every step: one fold measured 1.29x slower per epoch, 1.06x once this has run (medians of 3,
    benchmarks/profile_fold.py, "Dask worker's malloc setting"). Raising both thresholds gives back heap reuse;
    a process without the variable keeps glibc's own adaptive defaults, which are as fast.
    """
    if TRIM_ENV not in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        raised = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        return bool(raised)
    except (OSError, AttributeError):
        return False  # not glibc (macOS, musl): nothing to undo


def configure_threads(threads: int | None) -> None:
    """Set a worker up once: its share of the cores (TensorFlow only accepts this before its first op), quiet
    logs (a worker process does not inherit the driver's logging settings) and malloc's fast path."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    _THREADS_SET = True
    restore_malloc_fast_path()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    # A new model per fold is a new tf.function by design; its "retracing" warnings would flood the progress bar.
    tf.get_logger().setLevel(logging.ERROR)
    if not threads:  # no share given: this process's cores, split between the tasks it runs at once
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // _concurrent_tasks())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        pass  # TensorFlow already started in this process (in-process runs): keep its settings


def _concurrent_tasks() -> int:
    """How many tasks this process runs at once: a Dask worker's thread count, else one."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def now_ms() -> int:
    return int(time.time() * 1000)


def model_requirements() -> list[str]:
    """Pinned keras and its TensorFlow backend (mlflow's Keras default names keras alone)."""
    from importlib.metadata import version

    import keras
    import tensorflow as tf

    return [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}", f"mlflow=={version('mlflow')}"]


def model_files(model, x_example: np.ndarray, *, with_example: bool = True) -> dict[str, bytes]:
    """The MLflow model folder as bytes, made on the worker so the driver only uploads.

    Every model carries its signature; only models meant to be served (the final ones) carry the input and
    serving examples too: a fold's model is evaluated, not served, and two more files are two more uploads per
    fold for a driver logging for many workers (benchmarks/bench_driver.py).
    """
    import mlflow.keras
    from mlflow.models import infer_signature

    signature = infer_signature(x_example, model.predict(x_example, verbose=0))
    with tempfile.TemporaryDirectory() as tmp:
        # Pre-created folder: mlflow's Keras flavour writes the input example before making it (mlflow#16183).
        path = Path(tmp, "model")
        path.mkdir()
        mlflow.keras.save_model(
            model,
            str(path),
            signature=signature,
            input_example=x_example if with_example else None,
            pip_requirements=model_requirements(),
        )
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def blown_up(loss: float, n_classes: int) -> bool:
    """Diverged: a loss that is not finite, or five times worse than always guessing uniformly (ln k)."""
    return not math.isfinite(loss) or loss > BLOW_UP_FACTOR * math.log(n_classes)


def training_diverged(losses: list[float], n_classes: int) -> bool:
    """The verdict on a finished fit: no epoch at all, or a last epoch loss that is NaN/inf or blown up.

    The last epoch is enough: :func:`divergence_guard` stops training in the epoch where the loss broke.
    """
    return not losses or blown_up(losses[-1], n_classes)


def divergence_guard(n_classes: int):
    """A callback that stops training once the loss is NaN/inf or blown up.

    NaN/inf is checked after every execution step, which is :data:`STEPS_PER_EXECUTION` batches (Keras calls
    batch callbacks once per execution); the blow-up rule once per epoch. Keras' own TerminateOnNaN does the
    first half but prints into the middle of the progress bar.
    """
    import keras

    class DivergenceGuard(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not math.isfinite(float((logs or {}).get("loss", 0.0))):
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if blown_up(float((logs or {}).get("loss", 0.0)), n_classes):
                self.model.stop_training = True

    return DivergenceGuard()


@dataclass
class Fit:
    """A trained model with what its training looked like."""

    model: object
    history: dict[str, list[float]]
    fit_seconds: float
    started_ms: int
    diverged: bool


def fit(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    precision: str = "float32",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    steps_per_execution: int = STEPS_PER_EXECUTION,
) -> Fit:
    """The one training routine: seeded, guarded against divergence, integer labels in, history out."""
    import keras

    onehot = np.eye(n_classes, dtype="float32")
    started_ms, start = now_ms(), time.perf_counter()
    keras.utils.set_random_seed(seed)
    classifier = make_classifier(params, n_classes, steps_per_execution, precision=precision, seed=seed, n_train=len(x))
    classifier.set_params(callbacks=[divergence_guard(n_classes)])
    extra = {}
    if validation is not None:
        extra = {"validation_data": (validation[0], onehot[validation[1]]), "validation_batch_size": VALIDATION_BATCH}
    classifier.fit(x, onehot[y], **extra)
    history = {name: [float(v) for v in values] for name, values in classifier.history_.items()}
    diverged = training_diverged(history.get("loss", []), n_classes)
    return Fit(classifier.model_, history, time.perf_counter() - start, started_ms, diverged)


def train_fold(
    task: FoldTask,
    x: np.ndarray,
    y: np.ndarray,
    *,
    threads: int | None = 1,
    with_model: bool = True,
) -> FoldResult:
    """Train and score one fold; never raises for a bad candidate (the record says what happened)."""
    configure_threads(threads)
    import keras

    train, held_out = fold_indices(y, task.n_folds, task.split_seed, task.fold, task.repeat)
    started_ms, start = now_ms(), time.perf_counter()
    record = {
        "key": task.key,
        "step": task.step,
        "candidate_index": task.candidate_index,
        "fold": task.fold,
        "chance": float(np.bincount(y[held_out]).max() / len(held_out)),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    try:
        trained = fit(
            task.params,
            x[train],
            y[train],
            n_classes=task.n_classes,
            seed=task.seed,
            precision=task.precision,
            validation=(x[held_out], y[held_out]),
        )
    except Exception as error:  # noqa: BLE001 - a failing candidate must not stop the stage
        keras.backend.clear_session()
        return FoldResult(
            **record,
            accuracy=math.nan,
            loss=math.nan,
            fit_seconds=time.perf_counter() - start,
            epochs_run=0,
            status="failed",
            error=f"{type(error).__name__}: {error}",
            started_ms=started_ms,
            ended_ms=now_ms(),
        )
    history = trained.history
    # The last epoch's validation pass already scored the final weights on the held-out fold.
    loss = history.get("val_loss", [math.nan])[-1]
    accuracy = history.get("val_accuracy", [math.nan])[-1]
    diverged = trained.diverged or not math.isfinite(loss)
    if diverged:
        # NaN outputs argmax to class 0: report what the broken model really scores, as the seed did.
        predictions = predict(trained.model, x[held_out])
        accuracy = float(np.mean(predictions.argmax(axis=1) == y[held_out]))
    files = model_files(trained.model, x[held_out][:2], with_example=False) if with_model and not diverged else None
    keras.backend.clear_session()
    return FoldResult(
        **record,
        accuracy=float(accuracy),
        loss=float(loss),
        fit_seconds=trained.fit_seconds,
        epochs_run=len(history.get("loss", [])),
        status="diverged" if diverged else "ok",
        history=history,
        model_files=files,
        started_ms=trained.started_ms,
        ended_ms=now_ms(),
    )


def predict(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities; NaN (a diverged model) counts as 0 so argmax still names a class."""
    return np.nan_to_num(model.predict(x, verbose=0, batch_size=VALIDATION_BATCH), nan=0.0)


@dataclass
class FinalResult:
    seed: int
    test_accuracy: float
    test_loss: float
    fit_seconds: float
    status: str
    errors: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    predictions: np.ndarray | None = None
    model_files: dict[str, bytes] | None = None
    started_ms: int | None = None
    ended_ms: int | None = None


def train_final(
    params: Params,
    task: Task,
    seed: int,
    *,
    precision: str = "float32",
    threads: int | None = 1,
) -> FinalResult:
    """Fit on the whole training set, then score the test set once (no test data during training)."""
    configure_threads(threads)
    import keras

    trained = fit(params, task.x_train, task.y_train, n_classes=task.n_classes, seed=seed, precision=precision)
    probabilities = predict(trained.model, task.x_test)
    onehot = np.eye(task.n_classes, dtype="float32")[task.y_test]
    loss = float(keras.losses.categorical_crossentropy(onehot, probabilities).numpy().mean())
    predictions = probabilities.argmax(axis=1)
    files = None if trained.diverged else model_files(trained.model, task.x_test[:2])
    keras.backend.clear_session()
    errors = int(np.sum(predictions != task.y_test))
    return FinalResult(
        seed,
        1 - errors / len(task.y_test),
        loss,
        trained.fit_seconds,
        "diverged" if trained.diverged else "ok",
        errors,
        trained.history,
        predictions,
        files,
        started_ms=trained.started_ms,
        ended_ms=now_ms(),
    )


@lru_cache(maxsize=2)
def _task(ref: DataRef) -> Task:
    return load_ref(ref)


@dataclass(frozen=True)
class FoldWorker:
    """The picklable per-fold function an executor runs: loads the data once per process, then trains."""

    data: DataRef
    threads: int | None = 1
    with_model: bool = True
    driver_pid: int | None = None

    def __call__(self, task: FoldTask) -> FoldResult:
        exit_with_driver(self.driver_pid)
        data = _task(self.data)
        return train_fold(task, data.x_train, data.y_train, threads=self.threads, with_model=self.with_model)


@dataclass(frozen=True)
class FinalWorker:
    """The picklable per-seed function of ``final``: the same data loading, the whole training set, one test."""

    data: DataRef
    params: Params
    precision: str = "float32"
    threads: int | None = 1
    driver_pid: int | None = None

    def __call__(self, seed: int) -> FinalResult:
        exit_with_driver(self.driver_pid)
        return train_final(self.params, _task(self.data), seed, precision=self.precision, threads=self.threads)
