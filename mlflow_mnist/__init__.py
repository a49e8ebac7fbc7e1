"""mlflow-mnist: run, track and understand hyperparameter searches of Keras models with MLflow.

The Python API (:mod:`mlflow_mnist.api`): ``tune``, ``final``, ``promote``, ``load_champion``,
``export_champion``, ``seal_runs`` and ``analyze``, keyword-only.
"""

from mlflow_mnist.redaction import quiet_tensorflow_startup

# First thing in every process that imports this package (the CLI, pool and cluster workers unpickling a task,
# the API's users): TensorFlow prints start-up lines while it loads, before it reads TF_CPP_MIN_LOG_LEVEL.
quiet_tensorflow_startup()

from mlflow_mnist.api import (  # noqa: E402
    analyze,
    export_champion,
    final,
    load_champion,
    promote,
    seal_runs,
    tune,
)

__all__ = ["analyze", "export_champion", "final", "load_champion", "promote", "seal_runs", "tune"]
