"""The model code of a final's seed ensemble, logged as MLflow "models from code": MLflow stores this file with the
model and runs it when the model is loaded, so serving needs Keras and MLflow, not this project. Keep it
self-contained. (:mod:`mlflow_mnist.ensemble` builds the model folder.)"""

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model

SEED_PREFIX = "seed_"


class SeedEnsemble(mlflow.pyfunc.PythonModel):
    """``predict`` averages the seed models' class probabilities (a diverged seed's NaN counts as 0)."""

    def load_context(self, context) -> None:
        import mlflow.keras

        names = sorted(name for name in context.artifacts if name.startswith(SEED_PREFIX))
        self.models = [mlflow.keras.load_model(context.artifacts[name]) for name in names]

    # An ndarray hint: MLflow infers no schema from it and validates nothing (the model's signature does that), and
    # it stops MLflow's "add type hints" warning, which every final printed.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = np.asarray(model_input)
        outputs = [np.nan_to_num(model.predict(x, verbose=0, batch_size=512), nan=0.0) for model in self.models]
        return np.mean(outputs, axis=0)


set_model(SeedEnsemble())
