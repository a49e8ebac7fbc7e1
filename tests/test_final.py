"""``final`` on a task that trains in seconds: seeds, their median, and the seeds as one ensemble model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_the_seeds_ensemble_is_one_model_that_predicts_what_final_measured(store):
    import mlflow
    from mlflow import MlflowClient

    import mlflow_mnist
    from mlflow_mnist import schema
    from mlflow_mnist.tasks import get_task

    summary = mlflow_mnist.final(task="digits", folds=2, epochs=3, repeats=3, n_jobs=2, progress=False)
    run = MlflowClient(store).get_run(summary["run_id"])
    data = get_task("digits").load("")
    ensemble = mlflow.pyfunc.load_model(f"models:/{run.data.tags[schema.ENSEMBLE_MODEL]}")
    probabilities = np.asarray(ensemble.predict(data.x_test))
    assert probabilities.shape == (len(data.y_test), 10)
    errors = int(np.sum(probabilities.argmax(axis=1) != data.y_test))
    assert errors == run.data.metrics["ensemble_test_errors"] == summary["ensemble_test_errors"]
    assert run.data.metrics["ensemble_test_accuracy"] == pytest.approx(1 - errors / len(data.y_test))
    # It pins the keras and TensorFlow it was made with (read from the installed distributions, not imported).
    import keras
    import tensorflow as tf

    uri = f"models:/{run.data.tags[schema.ENSEMBLE_MODEL]}"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    assert {f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"} <= set(requirements)
    # Each seed is a model of its own, and the median seed is the final's best child.
    seeds = [r for r in MlflowClient(store).search_runs([run.info.experiment_id]) if r.data.tags.get(schema.SEED)]
    assert len(seeds) == 3 and run.data.tags[schema.MEDIAN_RUN] in {r.info.run_id for r in seeds}
    model = mlflow.get_logged_model(run.data.tags[schema.ENSEMBLE_MODEL])
    assert model.source_run_id == run.info.run_id and model.model_type == "pyfunc-seed-ensemble"
    # The gate verifies the ensemble as it verifies a seed, and the version says which one it serves.
    done = mlflow_mnist.promote(model="ensemble", min_accuracy=0.5)
    version = MlflowClient(store).get_model_version_by_alias(done["name"], "champion")
    assert done["name"] == "digits-all-mlp" and version.tags["model_kind"] == "seed ensemble"
    assert version.tags["task"] == "digits" and version.tags["task_variant"] == "all"
    assert float(version.tags["test_accuracy"]) == pytest.approx(run.data.metrics["ensemble_test_accuracy"])
