"""The real thing on the shipped sample: `mlflow run`, carry-forward through the store, resume after kill -9."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import kill_harness
import numpy as np
import pytest
from conftest import ROOT, FoldWatcher, python

from mlflow_mnist import schema, tracking

pytestmark = pytest.mark.slow


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _runs(uri, experiment="mnist"):
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return tracking.search_all(client, [exp.experiment_id]) if exp else []


def _by_level(runs):
    levels = {}
    for run in runs:
        levels.setdefault(run.data.tags.get(schema.LEVEL), []).append(run)
    return levels


def test_each_stage_starts_from_the_stores_best(store):
    from mlflow_mnist import api

    def tune(stage: str):
        settings = {"folds": 2, "epochs": 1, "overrides": "neurons_2=4", "experiment": "mnist", "data": "sample"}
        result = api.tune(stage=stage, n_jobs=1, log_models=False, progress=False, **settings)
        return result.outcome.groups[0]

    first = tune("kernel_size")
    assert first.trained == 10  # four grid points and the reference, two folds each
    best_kernel = first.best["params"]["kernel_size"]
    second = tune("pool_size")
    # The previous best is pool (2, 2): its folds are reused; the reference (the same configuration) is trained
    # afresh, so the comparisons are against a reference fixed before this step's scores.
    assert second.reused == 2 and second.trained == 8
    runs = _by_level(_runs(store))
    pool_run = next(r for r in runs["step"] if r.info.run_name == "pool_size")
    assert pool_run.data.params["kernel_size"] == f"({best_kernel[0]}, {best_kernel[1]})"
    assert pool_run.data.params["neurons_2"] == "4"  # overrides win
    reused_tag = [r for r in runs["candidate"] if schema.REUSED in r.data.tags]
    assert len(reused_tag) == 1 and reused_tag[0].data.params["pool_size"] == "(2, 2)"
    # Re-running a finished stage trains nothing.
    again = tune("pool_size")
    assert again.trained == 0 and again.reused == 10


def _fold_runs_finished(uri) -> int:
    return sum(1 for r in _runs(uri) if r.data.tags.get(schema.LEVEL) == "fold" and r.info.status == "FINISHED")


def test_resume_after_kill_trains_only_what_is_missing(store):
    """A second driver on the experiment is refused while the first one lives, naming it; once the first is killed
    with kill -9, the rerun takes its lock over at once and trains exactly the missing folds."""
    args = kill_harness.stage_command(n_jobs=1)
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    folds = FoldWatcher(proc.stderr)
    assert folds.wait_for(1, timeout=300), "the first driver finished no fold"
    # Forked from the tests' CLI server (the libraries imported): refused in a second or two, while the first
    # driver has most of its ten folds still to train.
    second = python(*args[1:], timeout=120)
    assert second.returncode == 2 and proc.poll() is None, second.stderr[-2000:]
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("error: another driver is working on this experiment: mlflow-mnist tune")
    assert f"pid {proc.pid}" in line
    assert folds.wait_for(3, timeout=300), "fewer than 3 folds finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = _fold_runs_finished(store)
    assert 3 <= finished_before < 10
    assert any(r.info.status == "RUNNING" for r in _runs(store))

    started = time.monotonic()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert time.monotonic() - started < 300  # the killed driver's lock is taken over at once, not after its lease
    assert f"trained {10 - finished_before} folds, reused {finished_before}" in rerun.stdout
    runs = _runs(store)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished_folds = [r for r in runs if r.data.tags.get(schema.LEVEL) == "fold" and r.info.status == "FINISHED"]
    keys = Counter(r.data.tags[schema.FOLD_KEY] for r in finished_folds)
    assert len(keys) == 10 and set(keys.values()) == {1}
    # The finished tree is whole: every fold of the new stage run hangs under one of its grid points.
    new_stage = next(r for r in runs if r.data.tags.get(schema.LEVEL) == "step" and r.info.status == "FINISHED")
    candidates = {r.info.run_id for r in runs if r.data.tags.get(schema.PARENT) == new_stage.info.run_id}
    assert len(candidates) == 5
    assert all(r.data.tags[schema.PARENT] in candidates for r in finished_folds)


def test_mlflow_run_logs_the_run_tree_mlflow3_natively_in_the_default_experiment(store, sample, tmp_path):
    """`mlflow run` with no experiment name: the stage > grid point > fold tree in Default, with its params,
    cv_results, curves and dataset inputs; LoggedModels, true times, best children; fold models that predict from
    raw pixels; then `analyze` with no experiment finds it. As a user's shell runs it (no TF_CPP_MIN_LOG_LEVEL), the
    command and its two pool workers print none of TensorFlow's start-up chatter (test_redaction checks Dask's)."""
    import mlflow
    from test_redaction import NOISE

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local"]
    for param in ("stage=kernel_size", "data=sample", "epochs=1", "folds=2"):
        command += ["-P", param]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.replace("\r", "\n").splitlines() if any(n in line for n in NOISE)]
    assert not noise, noise[:5]  # (the store is created by `mlflow run` itself, which says so: not ours to quiet)
    levels = _by_level(_runs(store, "Default"))
    assert {k: len(v) for k, v in levels.items()} == {"step": 1, "candidate": 5, "fold": 10}
    assert all(r.info.status == "FINISHED" for rs in levels.values() for r in rs)
    stage = levels["step"][0]
    assert stage.info.run_name == "kernel_size" and stage.data.params["stage"] == "kernel_size"  # -P kept
    assert stage.data.params["pool_size"] == "(2, 2)" and "best_kernel_size" in stage.data.params
    assert 0.5 < stage.data.metrics["best_mean_accuracy"] <= 1
    candidate_ids = {r.info.run_id for r in levels["candidate"]}
    assert {r.data.tags[schema.PARENT] for r in levels["candidate"]} == {stage.info.run_id}
    assert Counter(r.data.tags[schema.PARENT] for r in levels["fold"]) == {c: 2 for c in candidate_ids}
    assert sorted(r.info.run_name for r in levels["candidate"]) == [
        "kernel_size=(1, 1)",
        "kernel_size=(3, 3)",
        "kernel_size=(5, 5)",
        "kernel_size=(7, 7)",
        "reference: kernel_size=(3, 3)",  # the carried-in configuration, trained afresh: the analysis' yardstick
    ]
    client = _client(store)
    table = list(csv.DictReader(Path(client.download_artifacts(stage.info.run_id, "cv_results.csv")).open()))
    assert len(table) == 5 and {"split0_test_score", "split1_test_score", "rank_test_score"} <= set(table[0])
    assert sorted(int(row["rank_test_score"]) for row in table) == [1, 2, 3, 4, 5]
    assert [row["role"] for row in table] == ["grid"] * 4 + ["reference"]

    fold = levels["fold"][0]
    assert fold.info.run_name in ("fold 1/2", "fold 2/2")
    assert {"neurons_1", "kernel_size", "pool_size", "fold", "split_seed"} <= set(fold.data.params)
    history = client.get_metric_history(fold.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1]
    assert fold.data.metrics["heldout_accuracy"] == pytest.approx(history[0].value)
    assert fold.inputs.dataset_inputs[0].dataset.digest == fold.data.tags[schema.DIGEST]

    # The fold's model takes raw uint8 pixels and predicts digits.
    from mlflow_mnist.tasks.mnist.data import select_digits

    task = select_digits(sample, (2, 7))
    model = mlflow.pyfunc.load_model(f"runs:/{fold.info.run_id}/model")
    probabilities = np.asarray(model.predict(task.x_test[:100]))
    assert probabilities.shape == (100, 2)
    assert (probabilities.argmax(axis=1) == task.y_test[:100]).mean() > 0.8

    # MLflow 3 natively: the Default experiment marked for model training, LoggedModels, true run times.
    assert client.get_experiment("0").tags[schema.EXPERIMENT_KIND] == schema.MODEL_TRAINING
    folds, candidates = levels["fold"], levels["candidate"]

    # One LoggedModel per fold run, its held-out accuracy on the model, rankable by it.
    models = mlflow.search_logged_models(
        experiment_ids=["0"],
        order_by=[{"field_name": "metrics.heldout_accuracy", "ascending": False}],
        output_format="list",
    )
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in folds)
    accuracies = [next(x.value for x in m.metrics if x.key == "heldout_accuracy") for m in models]
    assert accuracies == sorted(accuracies, reverse=True)
    by_run = {r.info.run_id: r for r in folds}
    assert all(
        by_run[m.source_run_id].data.metrics["heldout_accuracy"] == pytest.approx(a)
        for m, a in zip(models, accuracies, strict=True)
    )

    # A fold's model has its signature but no input example (it is evaluated, not served): fewer uploads.
    fold_model = mlflow.models.Model.load(f"models:/{models[0].model_id}")
    assert fold_model.signature is not None and fold_model.saved_input_example_info is None

    # Fold runs show their true training time, not the moment the driver logged them: each run spans at least the
    # fit its worker measured (a fixed floor in seconds failed on a CPU that trains the sample's epoch in under one).
    assert all(r.data.metrics["fit_seconds"] > 0.05 for r in folds)
    assert all(r.info.end_time - r.info.start_time >= 1000 * r.data.metrics["fit_seconds"] - 1 for r in folds)

    # Every stage and grid-point run names its best child, which is one of its children.
    for parent in [stage, *candidates]:
        children = {r.info.run_id for r in folds + candidates if r.data.tags.get(schema.PARENT) == parent.info.run_id}
        assert parent.data.tags["mlflow_mnist.best_child_run_id"] in children
        assert parent.data.tags["mlflow.note.content"].startswith("Best child: [")
    best = client.get_run(stage.data.tags["mlflow_mnist.best_child_run_id"])
    assert stage.data.metrics["mean_heldout_accuracy"] == best.data.metrics["mean_heldout_accuracy"]

    # analyze with no --experiment finds the campaign in Default and says so.
    report = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow-mnist"), "analyze", "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert "experiment 'Default': it holds the latest campaign runs" in report.stderr
    assert (tmp_path / "report" / "report.html").exists()
    analysis = client.search_runs(["0"], "tags.`mlflow_mnist.level` = 'analysis'")
    assert [r.data.tags[schema.NOTE].split("It read ")[1] for r in analysis] == [
        f"1 search run (1 staged step, {len(folds)} folds) in experiment 'Default'."
    ]
