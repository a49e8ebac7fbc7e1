"""Breast-cancer diagnosis from 30 measurements of a cell nucleus (scikit-learn's Wisconsin data, 569 cases)."""

from optuna.distributions import FloatDistribution, IntDistribution
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from mlflow_mnist.spaces import Dimension, Space
from mlflow_mnist.stages import grid_step
from mlflow_mnist.tasks import Dataset, Task, array_digest

X, Y = load_breast_cancer(return_X_y=True)
SPLIT = train_test_split(X.astype("float32"), Y.astype("uint8"), test_size=0.25, stratify=Y, random_state=0)
MEAN, VARIANCE = SPLIT[0].mean(axis=0), SPLIT[0].var(axis=0)  # of the training split: scaling inside the model


class CancerTask(Task):
    name = "cancer"
    about = "malignant or benign, from 30 measurements of a cell nucleus (569 cases)"
    min_accuracy = 0.95
    model_key = "cancer-mlp-2"
    start = {"units": 16, "dropout": 0.1, "learn_rate": 0.003, "epochs": 30, "batch_size": 32}
    steps = (grid_step("units", (4, 16, 64)), grid_step("learn_rate", (0.001, 0.003, 0.01)))
    stages = {"units": ("units",), "learn_rate": ("learn_rate",), "all": ("units", "learn_rate")}
    spaces = {"small": Space("small", (
        Dimension("units", IntDistribution(4, 128, log=True), "hidden width"),
        Dimension("dropout", FloatDistribution(0.0, 0.5), "regularisation"),
        Dimension("learn_rate", FloatDistribution(1e-4, 3e-2, log=True), "Adam's step"),
    ), base=start, max_epochs=27)}

    def load(self, source, *, classes=""):
        x_tr, x_te, y_tr, y_te = SPLIT
        return Dataset(x_tr, y_tr, x_te, y_te, ("malignant", "benign"), "all", "sklearn",
                       array_digest(x_tr, y_tr), array_digest(x_te, y_te))

    def build_model(self, hyperparameters, *, n_classes, seed=None, precision="float32", n_train=None,
                    steps_per_execution=1, total_epochs=None):
        import keras
        from keras import layers

        p = self.validate(hyperparameters)
        model = keras.Sequential([
            keras.Input(shape=(30,)),
            layers.Normalization(mean=MEAN, variance=VARIANCE, dtype=precision),  # raw measurements in
            layers.Dense(p["units"], "relu", kernel_initializer=keras.initializers.HeNormal(seed), dtype=precision),
            layers.Dropout(p["dropout"], seed=seed, dtype=precision),
            layers.Dense(n_classes, "softmax", kernel_initializer=keras.initializers.GlorotUniform(seed)),  # float32
        ])
        model.compile(keras.optimizers.Adam(p["learn_rate"]), "categorical_crossentropy", metrics=["accuracy"],
                      steps_per_execution=steps_per_execution)
        return model
