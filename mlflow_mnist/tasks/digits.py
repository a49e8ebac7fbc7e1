"""The built-in task ``digits``: scikit-learn's 1,797 handwritten digits (8x8 images, 17 grey levels, 10 classes),
which ship with scikit-learn and need no download, learned by a small multilayer perceptron.

It shares no data or model code with the MNIST task: it is the proof that the tool tunes whatever a task gives
it, and a fast one (a fold trains in about a second).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mlflow_mnist.params import HyperparameterError, Params, check_choice, check_number
from mlflow_mnist.spaces import Dimension, Space
from mlflow_mnist.stages import Step, grid_step
from mlflow_mnist.tasks.base import (
    DataError,
    Dataset,
    Task,
    array_digest,
    parse_classes,
    select_classes,
    variant_name,
)

CLASSES = tuple(str(d) for d in range(10))
ACTIVATIONS = ("relu", "tanh", "elu")
OPTIMIZERS = ("Adam", "SGD")
TEST_FRACTION = 0.25  # a fixed, stratified split: the same test set on every machine
SOURCE = "sklearn"

START: Params = {
    "hidden_units": 32,
    "activation": "relu",
    "dropout_rate": 0.0,
    "optimizer": "Adam",
    "learn_rate": 0.003,
    "epochs": 20,
    "batch_size": 32,
}

STEPS: tuple[Step, ...] = (
    grid_step("hidden_units", (8, 16, 32, 64, 128)),
    grid_step("activation", ACTIVATIONS),
    grid_step("dropout_rate", (0.0, 0.1, 0.2, 0.4)),
    grid_step("learn_rate", (0.0003, 0.001, 0.003, 0.01, 0.03)),
    grid_step("batch_size", (16, 32, 64)),
)
STAGES = {
    "width": ("hidden_units",),
    "activation": ("activation",),
    "dropout": ("dropout_rate",),
    "learn_rate": ("learn_rate",),
    "batch_size": ("batch_size",),
    "all": tuple(step.name for step in STEPS),
}
SMALL = Space(
    name="small",
    about="the perceptron's width, activation, dropout, optimizer and learning rate, searched jointly",
    base=dict(START),
    max_epochs=27,
    dimensions=(
        Dimension("hidden_units", IntDistribution(8, 256, log=True), "width of the hidden layer"),
        Dimension("activation", CategoricalDistribution(list(ACTIVATIONS)), "its non-linearity"),
        Dimension("dropout_rate", FloatDistribution(0.0, 0.5), "regularisation: 1,347 training images"),
        Dimension("optimizer", CategoricalDistribution(list(OPTIMIZERS)), "Adam, or SGD with momentum 0.9"),
        Dimension("learn_rate", FloatDistribution(1e-4, 0.1, log=True), "the step size, on a log scale"),
        Dimension("batch_size", IntDistribution(16, 128, log=True), "examples per step"),
    ),
)


class DigitsTask(Task):
    name = "digits"
    about = "scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) with a one-hidden-layer perceptron"
    min_accuracy = 0.95
    model_key = "digits-mlp-1"
    default_classes = "all"
    start = START
    steps = STEPS
    stages = STAGES
    spaces = {SMALL.name: SMALL}
    data_help = "nothing (scikit-learn ships it) or 'sklearn'"
    named_sources = (SOURCE,)

    def load(self, source: str, *, classes: str = "") -> Dataset:
        if source not in ("", SOURCE):
            raise DataError(f"the digits task reads scikit-learn's own copy: give --data {SOURCE} or no --data")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = bunch.images.astype(np.uint8)  # grey levels 0..16 as the raw input the model serves
        labels = bunch.target.astype(np.uint8)
        x_train, x_test, y_train, y_test = train_test_split(
            images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=0
        )
        chosen = parse_classes(classes or self.default_classes, CLASSES)
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        kept = select_classes(arrays, chosen, source=SOURCE, names=CLASSES)
        return Dataset(
            **kept,
            class_names=tuple(CLASSES[c] for c in chosen),
            variant=variant_name(chosen, CLASSES),
            source=SOURCE,
            train_digest=array_digest(kept["x_train"], kept["y_train"], np.asarray(chosen)),
            test_digest=array_digest(kept["x_test"], kept["y_test"], np.asarray(chosen)),
        )

    def validate(self, params: Params) -> Params:
        clean = super().validate(params)
        clean["hidden_units"] = check_number("hidden_units", clean["hidden_units"], int, 1, 4096)
        check_choice("activation", clean["activation"], ACTIVATIONS)
        clean["dropout_rate"] = check_number("dropout_rate", clean["dropout_rate"], float, 0.0, 1.0, high_open=True)
        check_choice("optimizer", clean["optimizer"], OPTIMIZERS)
        clean["learn_rate"] = check_number("learn_rate", clean["learn_rate"], float, 1e-8, 10.0)
        clean["epochs"] = check_number("epochs", clean["epochs"], int, 1, None)
        clean["batch_size"] = check_number("batch_size", clean["batch_size"], int, 1, None)
        if clean["batch_size"] > 100_000:
            raise HyperparameterError(f"batch_size={clean['batch_size']} is larger than the data set")
        return clean

    def build_model(
        self,
        hyperparameters: Params,
        *,
        n_classes: int,
        seed: int | None = None,
        precision: str = "float32",
        n_train: int | None = None,
        steps_per_execution: int = 1,
        total_epochs: int | None = None,
    ) -> Any:
        import keras
        from keras import layers

        p = self.validate(hyperparameters)
        seeds = iter(range(seed, seed + 10)) if seed is not None else iter([None] * 10)
        model = keras.Sequential(
            [
                keras.Input(shape=(8, 8), dtype="uint8", name="pixels"),
                layers.Rescaling(1.0 / 16, dtype=precision),
                layers.Flatten(dtype=precision),
                layers.Dense(
                    p["hidden_units"],
                    activation=p["activation"],
                    kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
                    dtype=precision,
                ),
                layers.Dropout(p["dropout_rate"], seed=next(seeds), dtype=precision),
                layers.Dense(
                    n_classes,
                    activation="softmax",
                    kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
                    dtype="float32",
                ),
            ]
        )
        if p["optimizer"] == "SGD":
            optimizer = keras.optimizers.SGD(learning_rate=p["learn_rate"], momentum=0.9)
        else:
            optimizer = keras.optimizers.Adam(learning_rate=p["learn_rate"])
        model.compile(
            optimizer=optimizer,
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
        )
        return model

    def registered_model_name(self, variant: str) -> str:
        return f"digits-{variant}-mlp"
