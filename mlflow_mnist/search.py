"""Plan a step, train its folds through an executor, aggregate them like scikit-learn's ``cv_results_``.

Planning is pure: a snapshot of the tracking store (:class:`StoreState`) goes in, the fold tasks still to train
come out. A fold is identified by a hash of its hyperparameters, fold index, split seed and data digest, so
anything already finished anywhere in the experiment (an interrupted attempt, the best candidate of the
previous step) is reused rather than trained again. Workers only compute and return; the driver logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_mnist.model import SEED_START, HyperparameterError, Params, make_classifier, validate_params
from mlflow_mnist.stages import STEP_ORDER, Step

FINAL = "final"  # pseudo-step after every real step: what ``final`` carries forward


@dataclass(frozen=True)
class SearchSettings:
    """What, besides hyperparameters, decides a fold's result."""

    n_folds: int = 3
    split_seed: int = 0
    epochs: int = 6
    data_digest: str = ""
    n_classes: int = 2
    precision: str = "float32"


@dataclass(frozen=True)
class StepBest:
    """The winning grid point of a completed step, as the store remembers it."""

    step: str
    params: Params
    mean_accuracy: float
    run_id: str = ""


@dataclass(frozen=True)
class FoldRecord:
    """A finished fold run found in the store."""

    key: str
    accuracy: float
    fit_seconds: float
    status: str
    run_id: str = ""
    parent_run_id: str = ""
    parent_finished: bool = True


@dataclass
class StoreState:
    """What planning needs to know about the tracking store, and nothing else."""

    step_bests: dict[str, StepBest] = field(default_factory=dict)
    folds: dict[str, FoldRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class FoldTask:
    """One fold of one candidate: everything a worker needs besides the pixels."""

    step: str
    candidate_index: int
    label: str
    params: Params
    fold: int
    n_folds: int
    split_seed: int
    n_classes: int
    key: str
    precision: str = "float32"

    @property
    def seed(self) -> int:
        return int(self.key[:8], 16) % (2**31 - 1)


@dataclass(frozen=True)
class Candidate:
    index: int
    label: str
    varied: Params
    params: Params
    config_hash: str
    fold_keys: tuple[str, ...]


@dataclass(frozen=True)
class StepPlan:
    step: Step
    fixed: Params
    candidates: tuple[Candidate, ...]
    to_train: tuple[FoldTask, ...]
    reused: dict[str, FoldRecord]
    plan_hash: str


@dataclass
class FoldResult:
    """What a worker returns for one fold (scikit-learn's ``_fit_and_score`` record, plus curves and model)."""

    key: str
    step: str
    candidate_index: int
    fold: int
    accuracy: float
    loss: float
    fit_seconds: float
    epochs_run: int
    status: str  # "ok", "diverged" or "failed"
    history: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""
    model_files: dict[str, bytes] | None = None


def canonical(params: Params) -> str:
    """Stable text for hashing: sorted keys, tuples as lists, floats by repr."""
    return json.dumps({key: list(v) if isinstance(v, tuple) else v for key, v in sorted(params.items())})


def config_hash(params: Params) -> str:
    return hashlib.sha256(canonical(params).encode()).hexdigest()[:12]


def fold_key(params: Params, fold: int, settings: SearchSettings) -> str:
    """Identity of a fold result: same hyperparameters, fold, split and data give the same key anywhere."""
    identity = [canonical(params), fold, settings.n_folds, settings.split_seed, settings.data_digest]
    if settings.precision != "float32":  # float32 keys stay as they were before precision existed
        identity.append(settings.precision)
    text = json.dumps(identity)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def format_value(value: Any) -> str:
    return f"({value[0]}, {value[1]})" if isinstance(value, tuple) else str(value)


def candidate_label(varied: Params) -> str:
    """Readable run name of a grid point: ``neurons_1=15`` or ``epochs=20,batch_size=40``."""
    return ",".join(f"{key}={format_value(value)}" for key, value in varied.items())


def resolve_fixed_params(step_name: str, step_bests: Mapping[str, StepBest], overrides: Params, epochs: int) -> Params:
    """The values a step holds fixed: seed start < ``--epochs`` < best of each earlier step < overrides.

    Earlier means earlier in the seed's order, and only steps completed in this experiment on the same data
    count. ``step_name`` may be :data:`FINAL`, which sees every step.
    """
    limit = len(STEP_ORDER) if step_name == FINAL else STEP_ORDER[step_name]
    fixed = dict(SEED_START, epochs=epochs)
    for name in sorted(step_bests, key=STEP_ORDER.__getitem__):
        if STEP_ORDER[name] < limit:
            fixed.update(step_bests[name].params)
    fixed.update(overrides)
    return validate_params(fixed)


def plan_step(step: Step, fixed: Params, settings: SearchSettings, done: Mapping[str, FoldRecord]) -> StepPlan:
    """Every candidate of ``step`` on top of ``fixed``; fold tasks only for what ``done`` lacks. Pure."""
    candidates, to_train, reused = [], [], {}
    for index, varied in enumerate(step.candidates()):
        params = validate_params({**fixed, **varied})
        label = candidate_label(varied)
        keys = tuple(fold_key(params, fold, settings) for fold in range(settings.n_folds))
        candidates.append(Candidate(index, label, varied, params, config_hash(params), keys))
        for fold, key in enumerate(keys):
            if key in done:
                reused[key] = done[key]
            else:
                to_train.append(
                    FoldTask(
                        step.name,
                        index,
                        label,
                        params,
                        fold,
                        settings.n_folds,
                        settings.split_seed,
                        settings.n_classes,
                        key,
                        settings.precision,
                    )
                )
    plan_text = json.dumps(
        [
            step.name,
            canonical(fixed),
            [c.config_hash for c in candidates],
            settings.n_folds,
            settings.split_seed,
            settings.data_digest,
        ]
    )
    return StepPlan(
        step, fixed, tuple(candidates), tuple(to_train), reused, hashlib.sha256(plan_text.encode()).hexdigest()[:12]
    )


def check_folds(y: np.ndarray, n_folds: int, digits: tuple[int, ...]) -> None:
    """Stratified k-fold needs at least k images of every class; say so before any run exists."""
    if n_folds < 2:
        raise HyperparameterError(f"folds={n_folds}: cross-validation needs at least 2 folds")
    counts = np.bincount(y, minlength=len(digits))
    smallest = int(counts.argmin())
    if n_folds > counts[smallest]:
        raise HyperparameterError(
            f"folds={n_folds} is more than the {counts[smallest]} training images of digit {digits[smallest]}: "
            f"use fewer folds or more data"
        )


def fold_indices(y: np.ndarray, n_folds: int, split_seed: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=split_seed)
    return list(splitter.split(np.zeros(len(y)), y))[fold]


# --- worker side -------------------------------------------------------------------------------------------

_THREADS_SET = False


def configure_threads(threads: int) -> None:
    """Set a worker up once: its share of the cores (TensorFlow only accepts this before its first op), and
    quiet logs, since a worker process does not inherit the driver's logging settings."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    _THREADS_SET = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    # A new model per fold is a new tf.function by design; its "retracing" warnings would flood the progress bar.
    tf.get_logger().setLevel(logging.ERROR)

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        pass  # TensorFlow already started in this process (in-process runs): keep its settings


def model_requirements() -> list[str]:
    """Pinned keras and its TensorFlow backend (mlflow's Keras default names keras alone)."""
    from importlib.metadata import version

    import keras
    import tensorflow as tf

    return [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}", f"mlflow=={version('mlflow')}"]


def model_files(model, x_example: np.ndarray) -> dict[str, bytes]:
    """The MLflow model folder as bytes, made on the worker so the driver only uploads."""
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
            input_example=x_example,
            pip_requirements=model_requirements(),
        )
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


BLOW_UP_FACTOR = 5.0
VALIDATION_BATCH = 512  # scoring needs no small batches; big ones run the held-out pass several times faster


def blown_up(loss: float, n_classes: int) -> bool:
    """Diverged: a loss that is not finite, or five times worse than always guessing uniformly (ln k)."""
    return not math.isfinite(loss) or loss > BLOW_UP_FACTOR * math.log(n_classes)


def training_diverged(losses: list[float], n_classes: int) -> bool:
    """The verdict on a finished fit: no epoch at all, or a last epoch loss that is NaN/inf or blown up.

    The last epoch is enough: :func:`divergence_guard` stops training in the epoch where the loss broke.
    """
    return not losses or blown_up(losses[-1], n_classes)


def divergence_guard(n_classes: int):
    """A callback that stops training once the loss is NaN/inf (checked per batch) or blown up (per epoch).

    Keras' own TerminateOnNaN does the first half but prints into the middle of the progress bar.
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


def train_fold(
    task: FoldTask,
    x: np.ndarray,
    y: np.ndarray,
    threads: int = 1,
    steps_per_execution: int = 32,
    with_model: bool = True,
) -> FoldResult:
    """Train and score one fold; never raises for a bad candidate (the record says what happened)."""
    configure_threads(threads)
    import keras

    train, held_out = fold_indices(y, task.n_folds, task.split_seed, task.fold)
    onehot = np.eye(task.n_classes, dtype="float32")
    start = time.perf_counter()
    try:
        keras.utils.set_random_seed(task.seed)
        classifier = make_classifier(task.params, task.n_classes, steps_per_execution, precision=task.precision)
        classifier.set_params(callbacks=[divergence_guard(task.n_classes)])
        classifier.fit(
            x[train],
            onehot[y[train]],
            validation_data=(x[held_out], onehot[y[held_out]]),
            validation_batch_size=VALIDATION_BATCH,
        )
        model = classifier.model_
        history = {name: [float(v) for v in values] for name, values in classifier.history_.items()}
        # The last epoch's validation pass already scored the final weights on the held-out fold.
        loss = history.get("val_loss", [math.nan])[-1]
        accuracy = history.get("val_accuracy", [math.nan])[-1]
        fit_seconds = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - a failing candidate must not stop the stage
        keras.backend.clear_session()
        return FoldResult(
            task.key,
            task.step,
            task.candidate_index,
            task.fold,
            math.nan,
            math.nan,
            time.perf_counter() - start,
            0,
            "failed",
            error=f"{type(error).__name__}: {error}",
        )
    diverged = not math.isfinite(loss) or training_diverged(history.get("loss", []), task.n_classes)
    if diverged:
        # NaN outputs argmax to class 0: report what the broken model really scores, as the seed did.
        predictions = np.nan_to_num(model.predict(x[held_out], verbose=0, batch_size=VALIDATION_BATCH), nan=0.0)
        accuracy = float(np.mean(predictions.argmax(axis=1) == y[held_out]))
    files = model_files(model, x[held_out][:2]) if with_model and not diverged else None
    keras.backend.clear_session()
    return FoldResult(
        task.key,
        task.step,
        task.candidate_index,
        task.fold,
        float(accuracy),
        float(loss),
        fit_seconds,
        len(history.get("loss", [])),
        "diverged" if diverged else "ok",
        history,
        model_files=files,
    )


def execute(function, calls: list[tuple], n_jobs: int = -1) -> Iterator[Any]:
    """``function(*call, threads=...)`` for each call, in parallel processes; results in completion order.

    Each worker gets an equal share of the cores for TensorFlow, so n workers never oversubscribe the machine.
    """
    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs in (None, 0, -1) else max(1, min(n_jobs, cores))
    n_jobs = min(n_jobs, max(1, len(calls)))
    threads = max(1, cores // n_jobs)
    if n_jobs == 1:
        for call in calls:
            yield function(*call, threads=threads)
        return
    from joblib import Parallel, delayed

    # joblib memory-maps large arrays once for all workers instead of pickling them per task.
    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    yield from parallel(delayed(function)(*call, threads=threads) for call in calls)


def run_tasks(
    tasks: Iterable[FoldTask],
    x: np.ndarray,
    y: np.ndarray,
    n_jobs: int = -1,
    with_model: bool = True,
    steps_per_execution: int = 32,
) -> Iterator[FoldResult]:
    """Train fold tasks, yielding each result as soon as it is done (in completion order)."""
    calls = [(task, x, y, steps_per_execution, with_model) for task in tasks]
    yield from execute(_train_fold_call, calls, n_jobs)


def _train_fold_call(task, x, y, steps_per_execution, with_model, threads):
    return train_fold(task, x, y, threads, steps_per_execution, with_model)


# --- aggregation -------------------------------------------------------------------------------------------


def cv_results(plan: StepPlan, results: Mapping[str, FoldResult | FoldRecord]) -> list[dict[str, Any]]:
    """One row per candidate, scikit-learn style: params, split<k>_test_score, mean/std/min, rank, status."""
    rows = []
    for candidate in plan.candidates:
        folds = [results[key] for key in candidate.fold_keys]
        scores = np.array([f.accuracy for f in folds], dtype=float)
        statuses = {f.status for f in folds}
        row: dict[str, Any] = {"candidate": candidate.label, "params": json.loads(canonical(candidate.varied))}
        row.update({f"param_{key}": format_value(value) for key, value in candidate.varied.items()})
        row.update({f"split{i}_test_score": score for i, score in enumerate(scores)})
        row.update(
            mean_test_score=float(np.mean(scores)),
            std_test_score=float(np.std(scores)),
            min_test_score=float(np.min(scores)),
            mean_fit_time=float(np.mean([f.fit_seconds for f in folds])),
            status="failed" if "failed" in statuses else "diverged" if "diverged" in statuses else "ok",
            config_hash=candidate.config_hash,
        )
        rows.append(row)
    for rank, index in enumerate(sorted(range(len(rows)), key=lambda i: _rank_key(rows[i], i)), start=1):
        rows[index]["rank_test_score"] = rank
    return rows


def _rank_key(row: dict[str, Any], index: int) -> tuple:
    """Tie-break: usable before diverged/failed, then higher mean, then lower std, then grid order."""
    mean = row["mean_test_score"]
    return (row["status"] != "ok", -mean if math.isfinite(mean) else math.inf, row["std_test_score"], index)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda row: row["rank_test_score"])


# --- the driver loop ---------------------------------------------------------------------------------------


@dataclass
class StepOutcome:
    step: str
    run_id: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    trained: int
    reused: int


def run_stage(
    stage: str,
    steps: list[Step],
    x: np.ndarray,
    y: np.ndarray,
    settings: SearchSettings,
    overrides: Params,
    logger,
    read_state,
    n_jobs: int = -1,
    adopt_run_id: str | None = None,
    progress: bool = True,
    stage_params: dict[str, Any] | None = None,
    with_model: bool = True,
    executor=None,
) -> list[StepOutcome]:
    """Run the steps of a stage in order, each starting from the store's bests; the driver alone logs.

    ``logger`` is a :class:`mlflow_mnist.tracking.RunLogger`; ``read_state`` returns a fresh
    :class:`StoreState`; ``executor`` (default :func:`run_tasks`) turns fold tasks into
    results. The first step is planned (and so every value validated) before any run is created.
    """
    from tqdm.auto import tqdm

    single = len(steps) == 1
    state = read_state()
    fixed = resolve_fixed_params(steps[0].name, state.step_bests, overrides, settings.epochs)
    plan = plan_step(steps[0], fixed, settings, state.folds)
    stage_params = dict(stage_params or {})
    stage_run = logger.start_stage(stage, steps[0].name if single else None, stage_params, adopt_run_id)
    outcomes = []
    for number, step in enumerate(steps):
        if number:
            state = read_state()
            fixed = resolve_fixed_params(step.name, state.step_bests, overrides, settings.epochs)
            plan = plan_step(step, fixed, settings, state.folds)
        step_run = logger.start_step(plan, stage, None if single else stage_run, stage_run if single else None)
        candidate_runs = {c.index: logger.start_candidate(c, plan, stage, step_run) for c in plan.candidates}
        results: dict[str, FoldResult | FoldRecord] = dict(plan.reused)
        tasks = {task.key: task for task in plan.to_train}
        bar = tqdm(total=len(tasks), desc=step.name, unit="fold", disable=not progress or not tasks, dynamic_ncols=True)
        bar.write(
            f"{step.name}: {len(plan.candidates)} candidates x {settings.n_folds} folds, "
            f"{len(tasks)} to train, {len(plan.reused)} reused from the store"
        )
        with bar:
            for result in (executor or run_tasks)(tasks.values(), x, y, n_jobs, with_model):
                task = tasks[result.key]
                logger.log_fold(task, result, stage, candidate_runs[task.candidate_index], stage_params)
                results[result.key] = result
                bar.set_postfix_str(
                    f"{task.label} fold {task.fold + 1}/{task.n_folds}: {result.status} {result.accuracy:.4f}"
                )
                bar.update()
        rows = cv_results(plan, results)
        for candidate in plan.candidates:
            logger.finish_candidate(candidate_runs[candidate.index], rows[candidate.index])
        best = best_row(rows)
        logger.finish_step(step_run, plan, rows, best, close=not single)
        outcomes.append(StepOutcome(step.name, step_run, rows, best, len(tasks), len(plan.reused)))
    logger.finish(stage_run)
    return outcomes
