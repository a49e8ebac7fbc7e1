"""mlflow-mnist: run, track and understand hyperparameter searches of Keras models with MLflow.

The Python API (:mod:`mlflow_mnist.api`): ``tune``, ``final``, ``promote`` and ``analyze``, keyword-only.
"""

from mlflow_mnist.api import analyze, final, promote, tune

__all__ = ["analyze", "final", "promote", "tune"]
