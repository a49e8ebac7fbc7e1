"""``final`` on a task that trains in seconds: seeds, their median, and the seeds as one ensemble model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def check_ended_last(client, final) -> None:
    """The final's ``ended_ms`` param is its end time, after everything it and its seeds logged: every metric value,
    every model, every seed run's end (the gate's "while the final was open" windows end there)."""
    from mlflow_mnist import schema, tracking

    ended, experiment = int(final.data.params[schema.ENDED_MS]), final.info.experiment_id
    assert ended == final.info.end_time
    seeds = tracking.search_all(client, [experiment], f"tags.`{schema.PARENT}` = '{final.info.run_id}'")
    runs = [final, *seeds]
    values = [m for run in runs for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
    models = [
        model
        for run in runs
        for model in client.search_logged_models([experiment], f"source_run_id = '{run.info.run_id}'")
    ]
    assert values and models and all(run.info.end_time <= ended for run in seeds)
    assert max(m.timestamp for m in values) <= ended and max(m.creation_timestamp for m in models) <= ended


def test_the_seeds_ensemble_is_one_model_that_predicts_what_final_measured(store, capfd):
    import warnings

    import matplotlib.pyplot as plt
    import mlflow
    from mlflow import MlflowClient

    import mlflow_mnist
    from mlflow_mnist import schema
    from mlflow_mnist.tasks import get_task

    open_figures = set(plt.get_fignums())
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        summary = mlflow_mnist.final(task="digits", folds=2, epochs=3, repeats=3, n_jobs=2, progress=False)
    # Nothing for users to wade through, nothing left open: each seed's figures are closed once logged.
    assert not [w for w in warned if "Add type hints" in str(w.message)]
    assert "INFO mlflow" not in capfd.readouterr().err  # "Validating input example against model signature"
    assert set(plt.get_fignums()) <= open_figures
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
    # Its page in the UI says what it is (it had no description but its best child's link).
    median_errors = round((1 - run.data.metrics[schema.MEDIAN_ACCURACY]) * len(data.y_test))
    note = run.data.tags[schema.NOTE]
    assert note.startswith("Best child: [median seed (") and f"on all {len(data.y_train):,} training" in note
    assert f"with 3 seed(s), each tested once on the {len(data.y_test):,} test examples" in note
    assert f"({median_errors} errors), the seeds' ensemble" in note and f"({errors} errors)." in note
    assert "from the task start" in note and "`mlflow-mnist promote`" in note
    model = mlflow.get_logged_model(run.data.tags[schema.ENSEMBLE_MODEL])
    assert model.source_run_id == run.info.run_id and model.model_type == "pyfunc-seed-ensemble"
    check_ended_last(MlflowClient(store), run)
    # The gate verifies the ensemble as it verifies a seed, and the version says which one it serves.
    done = mlflow_mnist.promote(model="ensemble", min_accuracy=0.5)
    version = MlflowClient(store).get_model_version_by_alias(done["name"], "champion")
    assert done["name"] == "digits-all-mlp" and version.tags["model_kind"] == "seed ensemble"
    assert version.tags["task"] == "digits" and version.tags["task_variant"] == "all"
    assert json.loads(version.tags["class_names"]) == [str(digit) for digit in range(10)]
    assert float(version.tags["test_accuracy"]) == pytest.approx(run.data.metrics["ensemble_test_accuracy"])


def test_a_final_over_a_searchs_best_configurations_spreads_its_seeds_and_ensembles_them(store):
    """``--configs 2``: seeds alternate between the search's best configuration and its runner-up (the trial that
    went furthest, then scored best, among the others); each seed run says which it trained; the ensemble averages
    all of them and is what the gate promotes."""
    import mlflow
    from mlflow import MlflowClient

    import mlflow_mnist
    from mlflow_mnist import schema
    from mlflow_mnist.params import parse_value
    from mlflow_mnist.tasks import get_task

    common = {"task": "digits", "folds": 2, "epochs": 3, "progress": False, "log_models": False}
    search = mlflow_mnist.tune(strategy="asha", trials=4, min_epochs=1, **common)
    client = MlflowClient(store)
    search_run = client.get_run(search.run_id)
    trials = [
        r
        for r in client.search_runs([search_run.info.experiment_id], max_results=500)
        if r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL
    ]
    best_trial = client.get_run(search_run.data.tags[schema.BEST_CHILD]).data.tags[schema.TRIAL]
    # The runner-up by hand: the other trials' furthest runs, most epochs first, then the higher mean CV.
    furthest = {}
    for run in trials:
        trial, epochs = run.data.tags[schema.TRIAL], int(run.data.params["epochs"])
        if trial != best_trial and epochs >= furthest.get(trial, (0,))[0]:
            furthest[trial] = (epochs, run.data.metrics["mean_heldout_accuracy"], run)
    runner_up = max(furthest.values(), key=lambda entry: entry[:2])[2]

    summary = mlflow_mnist.final(task="digits", folds=2, epochs=3, repeats=3, search="latest", configs=2, n_jobs=2)
    final = client.get_run(summary["run_id"])
    seeds = {
        r.data.tags[schema.SEED]: r
        for r in client.search_runs([final.info.experiment_id], f"tags.`mlflow.parentRunId` = '{final.info.run_id}'")
    }
    assert {seed: run.data.tags[schema.CONFIG_RANK] for seed, run in seeds.items()} == {"0": "1", "1": "2", "2": "1"}
    assert final.data.params["configs"] == "2" and summary["config_ranks"] == {"0": 1, "1": 2, "2": 1}
    best = schema.best_config(search_run.data.tags)
    full_budget = best["epochs"]
    for seed, expected in (("0", best), ("1", {**runner_up.data.params, "epochs": full_budget})):
        params = seeds[seed].data.params.items()  # the configuration, which model the seed logged, its probabilities
        recorded = (schema.LOGGED_MODEL_ID, schema.PROBABILITIES_SHA256)
        logged = {key: parse_value(value) for key, value in params if key not in recorded}
        task = get_task("digits")
        assert logged == task.validate({key: parse_value(str(v)) for key, v in expected.items()})
    assert seeds["1"].data.params != seeds["0"].data.params
    # The ensemble holds the three seeds and predicts what final measured for it.
    data = get_task("digits").load("")
    ensemble = mlflow.pyfunc.load_model(f"models:/{final.data.tags[schema.ENSEMBLE_MODEL]}")
    errors = int(np.sum(np.asarray(ensemble.predict(data.x_test)).argmax(axis=1) != data.y_test))
    assert errors == final.data.metrics["ensemble_test_errors"]
    done = mlflow_mnist.promote(model="ensemble", min_accuracy=0.5)
    version = client.get_model_version_by_alias(done["name"], "champion")
    assert version.tags["model_kind"] == "seed ensemble" and version.tags["final_run"] == final.info.run_id


@pytest.mark.slow
def test_a_final_with_nothing_to_carry_forward_says_so(store):
    """A final that finds no finished staged step under its settings trains the task's starting configuration.
    Before, silently: README's own pair (tune with --folds 2, then final with the default 3) did so. Now one notice
    says so, and whether steps finished here under other settings; a final with the same settings says nothing."""
    import mlflow_mnist

    options = dict(task="digits", epochs=2, n_jobs=1, progress=False, experiment="carry")
    said: list[str] = []
    mlflow_mnist.final(folds=2, notify=said.append, **options)
    assert [line for line in said if "nothing to carry forward" in line] == [
        "final: nothing to carry forward in experiment 'carry' under these settings; no staged step finished here "
        "(tune a stage first, or pass --search for a joint search's best); training the task's starting configuration"
    ]
    mlflow_mnist.tune(stage="activation", folds=2, **options)
    said.clear()
    done = mlflow_mnist.final(folds=3, notify=said.append, **options)
    assert any("staged steps finished here under other settings: give final the same" in line for line in said)
    said.clear()
    carried = mlflow_mnist.final(folds=2, notify=said.append, **options)
    assert not [line for line in said if "nothing to carry forward" in line]
    from mlflow import MlflowClient

    from mlflow_mnist.schema import SOURCE_RUNS

    client = MlflowClient(store)
    sources = {run: client.get_run(run).data.tags[SOURCE_RUNS] for run in (done["run_id"], carried["run_id"])}
    assert sources[done["run_id"]] == "{}" and "activation" in sources[carried["run_id"]]


NOTEBOOK = """
import json, logging, sys

import matplotlib

matplotlib.use("svg")  # the user's own back end (a notebook's is its inline one)
matplotlib.rcParams["axes.grid"] = False

import mlflow_mnist


def state():
    import matplotlib

    return {
        "stdout": type(sys.stdout).__name__,
        "stderr": type(sys.stderr).__name__,
        "tensorflow log level": logging.getLogger("tensorflow").level,
        "root handlers": [type(h).__name__ for h in logging.getLogger().handlers],
        "back end": matplotlib.get_backend(),
        "rc": {key: str(value) for key, value in matplotlib.rcParams.items()},
    }


before = state()
common = dict(data="sample", epochs=1, folds=2, n_jobs=1)
mlflow_mnist.tune(stage="kernel_size", **common)
mlflow_mnist.final(**common)
mlflow_mnist.analyze(out="report")
after = state()
changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
if "rc" in changed:
    changed["rc"] = sorted(k for k in before["rc"] if before["rc"][k] != after["rc"].get(k))
print(json.dumps(changed))
"""


@pytest.mark.slow
def test_a_notebook_keeps_its_own_process_after_tune_final_and_analyze(store, tmp_path):
    """From an audit of the Python API: with one worker a fold trains in the caller's process, whose set-up replaced
    the notebook's sys.stdout for good (no `.buffer`), and set TensorFlow's log level; the final's and the report's
    figures switched matplotlib to Agg (a notebook's figures stopped showing) and seaborn's theme changed 34 rc
    parameters. The caller's process is now as it was."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", NOTEBOOK], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}, proc.stdout[-2000:]
    assert (tmp_path / "report" / "report.html").exists()
