"""The one training routine, for folds and final models: a task's model fitted through scikeras'
``KerasClassifier`` (what scikit-learn tools drive), seeded, guarded against divergence; records out."""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np

from mlflow_mnist.params import Params
from mlflow_mnist.planning import FoldTask, fold_indices
from mlflow_mnist.redaction import ANSI_ESCAPE
from mlflow_mnist.results import FoldResult
from mlflow_mnist.schema import EPOCHS
from mlflow_mnist.tasks.base import Dataset, Task, check_precision
from mlflow_mnist.worker.model_files import model_files
from mlflow_mnist.worker.process import configure_threads, forget_models

BLOW_UP_FACTOR = 5.0
VALIDATION_BATCH = 512  # scoring needs no small batches; big ones run the held-out pass several times faster
STEPS_PER_EXECUTION = 32  # several batches per graph call: about 2x faster at batch 20 on CPU
# A fit of at most this many batches in all runs one batch per graph call: tracing Keras' several-batch loop
# costs more than it saves there. 400 images at batch 20 (the sample's folds), median of 3 interleaved, 2-core
# AMD EPYC: 1 epoch 0.73 s against 0.95, 3 epochs 1.29 against 1.65, but 6 epochs (120 batches) 2.15 against 1.93.
SHORT_FIT_BATCHES = 64


def now_ms() -> int:
    return int(time.time() * 1000)


def blown_up(loss: float, n_classes: int) -> bool:
    """Diverged: a loss that is not finite, or five times worse than always guessing uniformly (ln k)."""
    return not math.isfinite(loss) or loss > BLOW_UP_FACTOR * math.log(n_classes)


def training_diverged(losses: list[float], n_classes: int) -> bool:
    """The verdict on a finished fit: no epoch at all, or a last epoch loss that is NaN/inf or blown up.

    The last epoch is enough: :func:`divergence_guard` stops training in the epoch where the loss broke.
    """
    return not losses or blown_up(losses[-1], n_classes)


def execution_steps(n_train: int, params: Params) -> int:
    """Batches per graph call for fitting ``n_train`` examples with ``params`` (its ``epochs`` and ``batch_size``):
    :data:`STEPS_PER_EXECUTION`, or 1 for a fit of at most :data:`SHORT_FIT_BATCHES` batches. The choice changes
    the time only: the same batches meet the same weights in the same order."""
    batches = math.ceil(n_train / int(params["batch_size"])) * int(params[EPOCHS])
    return 1 if batches <= SHORT_FIT_BATCHES else STEPS_PER_EXECUTION


def divergence_guard(n_classes: int):
    """A callback that stops training once the loss is NaN/inf or blown up.

    NaN/inf is checked after every execution step, which is the fit's steps per execution (Keras calls batch
    callbacks once per execution); the blow-up rule once per epoch. Keras' own TerminateOnNaN does the
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


def build_for_scikeras(
    hyperparameters: Params,
    *,
    task: Task,
    n_classes: int,
    steps_per_execution: int,
    precision: str,
    seed: int | None,
    n_train: int | None,
):
    """The task's model, for scikeras: it wants a plain function and routes ``model__*`` arguments by name."""
    return task.build_model(
        hyperparameters,
        n_classes=n_classes,
        steps_per_execution=steps_per_execution,
        precision=precision,
        seed=seed,
        n_train=n_train,
    )


def make_classifier(
    task: Task,
    params: Params,
    *,
    n_classes: int,
    steps_per_execution: int = 1,
    random_state: int | None = None,
    precision: str = "float32",
    seed: int | None = None,
    n_train: int | None = None,
):
    """The task's model inside scikeras' ``KerasClassifier``: what scikit-learn tools (and the seed's way) drive.

    ``seed`` seeds the model's initializers and dropout explicitly; ``n_train`` sizes learning-rate schedules."""
    from scikeras.wrappers import KerasClassifier

    clean = task.validate(params)
    return KerasClassifier(
        model=build_for_scikeras,
        model__task=task,
        model__hyperparameters=clean,
        model__n_classes=n_classes,
        model__steps_per_execution=steps_per_execution,
        model__precision=check_precision(precision),
        model__seed=seed,
        model__n_train=n_train,
        loss="categorical_crossentropy",
        epochs=clean[EPOCHS],
        batch_size=clean["batch_size"],
        random_state=random_state,
        verbose=0,
    )


@dataclass
class Fit:
    """A trained model with what its training looked like."""

    model: object
    history: dict[str, list[float]]
    fit_seconds: float
    started_ms: int
    diverged: bool


def fit(
    task: Task,
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    precision: str = "float32",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    steps_per_execution: int | None = None,
) -> Fit:
    """The one training routine: seeded, guarded against divergence, integer labels in, history out.
    ``steps_per_execution``: by default :func:`execution_steps`."""
    import keras

    onehot = np.eye(n_classes, dtype="float32")
    started_ms, start = now_ms(), time.perf_counter()
    keras.utils.set_random_seed(seed)
    classifier = make_classifier(
        task,
        params,
        n_classes=n_classes,
        steps_per_execution=steps_per_execution or execution_steps(len(x), task.validate(params)),
        precision=precision,
        seed=seed,
        n_train=len(x),
    )
    classifier.set_params(callbacks=[divergence_guard(n_classes)])
    extra = {}
    if validation is not None:
        extra = {"validation_data": (validation[0], onehot[validation[1]]), "validation_batch_size": VALIDATION_BATCH}
    classifier.fit(x, onehot[y], **extra)
    history = {name: [float(v) for v in values] for name, values in classifier.history_.items()}
    diverged = training_diverged(history.get("loss", []), n_classes)
    return Fit(classifier.model_, history, time.perf_counter() - start, started_ms, diverged)


def reseed_random_layers(model, seed: int, epoch: int) -> None:
    """Give every random layer (dropout, augmentation) a generator state of its own for (seed, epoch, layer).

    Keras saves a model's weights and optimizer but not its layers' random-number state, so a model continued
    from a checkpoint would draw other dropout masks than one trained straight through; setting the state at
    every epoch makes both draw the same. Each state is a fresh stream, not a counter: Keras advances a
    generator's counter by one per draw, so a counter set to the epoch would replay the last epoch's draws one
    batch later, and generators set alike would draw alike."""
    import keras

    generators = [
        value
        for layer in model._flatten_layers(include_self=False, recursive=True)
        for value in vars(layer).values()
        if isinstance(value, keras.random.SeedGenerator)
    ]
    for index, generator in enumerate(generators):
        stream = np.random.default_rng([seed, epoch, index]).integers(2**31)
        dtype = keras.backend.standardize_dtype(generator.state.dtype)
        generator.state.assign(np.array([stream, 0], dtype=dtype))


def load_checkpoint(files: dict[str, bytes]):
    """A model saved as an MLflow model folder (what a fold returns), compiled, with its optimizer's state."""
    import tempfile
    from pathlib import Path

    import mlflow.keras

    with tempfile.TemporaryDirectory() as tmp:
        for relative, content in files.items():
            path = Path(tmp, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return mlflow.keras.load_model(tmp)


def fit_resumable(
    task: Task,
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    horizon: int,
    precision: str = "float32",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    checkpoint: dict[str, bytes] | None = None,
    initial_epoch: int = 0,
) -> Fit:
    """Training that can stop after any epoch and go on later exactly as if it had not stopped.

    The model, its optimizer and learning-rate schedule (spanning ``horizon`` epochs) come from ``checkpoint``
    or are built afresh; each epoch draws its own seeded permutation of the examples and its own random-layer
    state, so epochs 0..k then k..n equal epochs 0..n. Successive halving continues a promoted trial's folds
    this way instead of retraining them.
    """
    import keras

    onehot = np.eye(n_classes, dtype="float32")
    started_ms, start = now_ms(), time.perf_counter()
    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
    else:
        keras.utils.set_random_seed(seed)
        model = task.build_model(
            task.validate(params),
            n_classes=n_classes,
            seed=seed,
            precision=check_precision(precision),
            n_train=len(x),
            steps_per_execution=STEPS_PER_EXECUTION,
            total_epochs=horizon,
        )
    extra = {}
    if validation is not None:
        extra = {"validation_data": (validation[0], onehot[validation[1]]), "validation_batch_size": VALIDATION_BATCH}
    history: dict[str, list[float]] = {}
    guard = divergence_guard(n_classes)
    for epoch in range(initial_epoch, int(params[EPOCHS])):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        reseed_random_layers(model, seed, epoch)
        step = model.fit(
            x[order],
            onehot[y[order]],
            batch_size=int(params["batch_size"]),
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=0,
            callbacks=[guard],
            **extra,
        )
        for name, values in step.history.items():
            history.setdefault(name, []).extend(float(v) for v in values)
        if training_diverged(history.get("loss", []), n_classes):
            break
    diverged = training_diverged(history.get("loss", []), n_classes)
    return Fit(model, history, time.perf_counter() - start, started_ms, diverged)


def train_fold(
    model_task: Task,
    task: FoldTask,
    x: np.ndarray,
    y: np.ndarray,
    *,
    threads: int | None = 1,
    with_model: bool = True,
    checkpoint: dict[str, bytes] | None = None,
) -> FoldResult:
    """Train and score one fold; never raises for a bad candidate (the record says what happened).

    A resumable fold (successive halving's rungs) continues from ``checkpoint`` (by default the one the engine
    attached to the task), the saved model of the fold it names; a resumable fold always returns its model, the
    next rung's checkpoint."""
    checkpoint = checkpoint if checkpoint is not None else task.checkpoint
    configure_threads(threads)

    train, held_out = fold_indices(
        y, n_folds=task.n_folds, split_seed=task.split_seed, fold=task.fold, repeat=task.repeat
    )
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
        if task.resumable:
            if task.resume_key and checkpoint is None:
                raise ValueError(f"fold {task.key} continues fold {task.resume_key}, whose model was not given")
            trained = fit_resumable(
                model_task,
                task.params,
                x[train],
                y[train],
                n_classes=task.n_classes,
                seed=task.seed,
                horizon=task.horizon,
                precision=task.precision,
                validation=(x[held_out], y[held_out]),
                checkpoint=checkpoint,
                initial_epoch=task.initial_epoch,
            )
        else:
            trained = fit(
                model_task,
                task.params,
                x[train],
                y[train],
                n_classes=task.n_classes,
                seed=task.seed,
                precision=task.precision,
                validation=(x[held_out], y[held_out]),
            )
        if "val_accuracy" not in trained.history:  # scored as NaN otherwise, and ranked as if it were a result
            raise ValueError(
                f"the task's model reports no 'accuracy' metric (it reported {', '.join(trained.history)}): compile "
                f"it with metrics=['accuracy']"
            )
    except Exception as error:  # noqa: BLE001 - a failing candidate must not stop the stage
        forget_models()
        return FoldResult(
            **record,
            accuracy=math.nan,
            loss=math.nan,
            fit_seconds=time.perf_counter() - start,
            epochs_run=0,
            status="failed",
            error=ANSI_ESCAPE.sub("", f"{type(error).__name__}: {error}"),  # Keras marks its messages up for a terminal
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
    keep_model = (with_model or task.resumable) and not diverged
    files = model_files(trained.model, x[held_out][:2], with_example=False) if keep_model else None
    forget_models()
    return FoldResult(
        **record,
        accuracy=float(accuracy),
        loss=float(loss),
        fit_seconds=trained.fit_seconds,
        epochs_run=len(history.get("loss", [])),
        status="diverged" if diverged else "ok",
        history=history,
        first_epoch=task.initial_epoch if task.resumable else 0,
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
    probabilities: np.ndarray | None = None  # on the test set: what the seeds' ensemble averages
    model_files: dict[str, bytes] | None = None
    started_ms: int | None = None
    ended_ms: int | None = None
    config_index: int = 0  # which of the final's configurations (best first) this seed trained


def train_final(
    task: Task,
    params: Params,
    data: Dataset,
    seed: int,
    *,
    precision: str = "float32",
    threads: int | None = 1,
) -> FinalResult:
    """Fit on the whole training set, then score the test set once (no test data during training)."""
    configure_threads(threads)
    import keras

    trained = fit(task, params, data.x_train, data.y_train, n_classes=data.n_classes, seed=seed, precision=precision)
    probabilities = predict(trained.model, data.x_test)
    onehot = np.eye(data.n_classes, dtype="float32")[data.y_test]
    loss = float(keras.losses.categorical_crossentropy(onehot, probabilities).numpy().mean())
    predictions = probabilities.argmax(axis=1)
    files = None if trained.diverged else model_files(trained.model, data.x_test[:2])
    forget_models()
    errors = int(np.sum(predictions != data.y_test))
    return FinalResult(
        seed,
        1 - errors / len(data.y_test),
        loss,
        trained.fit_seconds,
        "diverged" if trained.diverged else "ok",
        errors,
        trained.history,
        predictions,
        probabilities.astype(np.float32),
        files,
        started_ms=trained.started_ms,
        ended_ms=now_ms(),
    )
