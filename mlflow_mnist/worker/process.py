"""How a worker process sets itself up: exit with the driver that started it, take its share of the cores,
keep TensorFlow quiet and glibc's malloc on its fast path. Nothing here trains."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time

_THREADS_SET = False
_WATCHING_DRIVER = False
_IMPORTS_FROZEN = False


def exit_with_driver(driver_pid: int | None) -> None:
    """In a pool process the driver started itself, exit as soon as the driver is gone.

    A driver killed with SIGKILL (an OOM kill, ``kill -9``) runs no cleanup: its pool processes, each holding
    TensorFlow and a copy of the data, would live on as orphans. A daemon thread notices that the process was
    re-parented and ends it. A process whose driver died before its first task (killed while the pool was still
    starting) exits at once: multiprocessing remembers which process started it even after the re-parenting.
    Processes not started by the driver (a cluster's workers) are left alone.
    """
    global _WATCHING_DRIVER
    if _WATCHING_DRIVER or driver_pid is None or os.getpid() == driver_pid:
        return
    if os.getppid() != driver_pid:
        if _started_by(driver_pid):
            os._exit(70)
        return
    _WATCHING_DRIVER = True

    def watch() -> None:
        while os.getppid() == driver_pid:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


def forget_models() -> None:
    """Drop the models Keras keeps (``keras.backend.clear_session()``, which also runs a full garbage
    collection to free them at once), and keep later collections off what this process imported.

    A full collection walks every object the process tracks: about 480,000 once TensorFlow, Keras and MLflow are
    imported, 0.25 s in a pool process and 0.5 s in a driver that trains in-process, paid after every fold (22% of
    a 1-epoch fold's CPU on the shipped sample, measured on the 2-core AMD EPYC). What survives the first
    collection (modules, TensorFlow's registries, the loaded data) lives as long as the process, so it moves to
    the collector's permanent generation (``gc.freeze``) and later collections walk only what came after.
    Where folds train in the caller's own interpreter (``n_jobs=1``, the Python API), what it held then is frozen
    too: reference cycles among those objects are no longer collected (``gc.unfreeze()`` undoes the freeze).
    """
    global _IMPORTS_FROZEN
    import keras

    keras.backend.clear_session()
    if not _IMPORTS_FROZEN:
        gc.freeze()
        _IMPORTS_FROZEN = True


def _started_by(pid: int) -> bool:
    """Whether ``pid`` started this process through multiprocessing (loky's pool processes included), whether
    or not it is still alive."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent is not None and parent.pid == pid


#: How much a warmed pool process may grow before loky takes it for a leak: a fold's working set (TensorFlow's
#: runtime, a model, its optimizer and batches, the heap kept by :func:`restore_malloc_fast_path`) measured about
#: +390 MB on a 1-epoch pool_size step of 2-vs-7 (520 MB once warmed, 910 MB training), above loky's 300 MB.
WARM_GROWTH_ALLOWED = 2 << 30


def allow_a_folds_working_set() -> None:
    """Keep loky from restarting a warmed pool process after its first fold.

    loky takes a pool process's memory as its reference right after the process's first call and restarts the
    process once it has grown by 300 MB more (its protection against leaking tasks, with no public setting). When
    that first call is the warm-up, which trains nothing, every process grew past it during its first fold and was
    replaced: a fresh one importing TensorFlow and loading the data again, the very cost the warm-up saves, seen
    in a `make champion` run. The allowance, set in this process only, is raised to a fold's working set and more.
    """
    try:
        from joblib.externals.loky import process_executor
    except ImportError:  # not a loky pool process's world: nothing to raise
        return
    process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE, WARM_GROWTH_ALLOWED)


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


_CALLER_PID: int | None = None  # the process a search or final was called in (the driver)


def mark_caller() -> None:
    """This process called the tool (a command, or a notebook's `tune`/`final`): a fold it trains itself (one
    worker) leaves it as it was. The set-up below replaced a notebook's sys.stdout for good, and TensorFlow's
    log level and threads with it."""
    global _CALLER_PID
    _CALLER_PID = os.getpid()


def configure_threads(threads: int | None) -> None:
    """Set a worker up once: its share of the cores (TensorFlow only accepts this before its first op), quiet
    logs (a worker process does not inherit the driver's logging settings) and malloc's fast path. The caller's
    own process (:func:`mark_caller`) is not a worker, and is left alone."""
    global _THREADS_SET
    if _THREADS_SET or os.getpid() == _CALLER_PID:
        return
    _THREADS_SET = True
    restore_malloc_fast_path()
    from mlflow_mnist import redaction

    # A pool or cluster worker writes its own warnings and tracebacks straight to the terminal (or its log); its
    # TensorFlow start-up lines are already filtered by the package's __init__ (quiet_tensorflow_startup).
    redaction.install()
    import tensorflow as tf

    # A new model per fold is a new tf.function by design; its "retracing" warnings would flood the progress bar.
    tf.get_logger().setLevel(logging.ERROR)
    if not threads:  # no share given: this process's cores, split between the tasks it runs at once
        threads = fold_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        pass  # TensorFlow already started in this process (in-process runs): keep its settings


def fold_threads() -> int:
    """The TensorFlow threads a fold takes in this process when no share is given: its cores, split between the
    tasks it runs at once (a Dask worker's threads)."""
    from mlflow_mnist.executors.base import usable_cores

    return max(1, usable_cores() // _concurrent_tasks())


def _concurrent_tasks() -> int:
    """How many tasks this process runs at once: a Dask worker's thread count, else one."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1
