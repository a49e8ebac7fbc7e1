"""A ``final`` killed with kill -9 after some of its seeds finished: the rerun takes those seeds (their runs, models
and test-set probabilities) and trains only the others, and ends with what an uninterrupted final measures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPEATS = 4
# Long enough that a seed takes a few seconds (so the kill lands between two seeds' ends), short enough for CI.
FINAL = ["final", "--task", "digits", "--folds", "2", "--epochs", "40", "--repeats", str(REPEATS)]
FINAL += ["--executor", "serial"]


def _final(store_dir: Path, experiment: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store_dir}/mlflow.db", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "mlflow_mnist", *FINAL, "--experiment", experiment]
    return subprocess.Popen(
        command,
        env=env,
        cwd=store_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _runs(client, experiment: str) -> list:
    from mlflow_mnist import tracking

    found = client.get_experiment_by_name(experiment)
    return tracking.search_all(client, [found.experiment_id]) if found else []


def _seed_runs(client, experiment: str, status: str = "FINISHED") -> list:
    from mlflow_mnist import schema

    return [
        run
        for run in _runs(client, experiment)
        if run.data.tags.get(schema.LEVEL) == schema.FINAL_SEED_LEVEL and run.info.status == status
    ]


def _finished_final(client, experiment: str):
    from mlflow_mnist import schema

    finals = [
        run
        for run in _runs(client, experiment)
        if run.data.tags.get(schema.LEVEL) == schema.FINAL_LEVEL and run.info.status == "FINISHED"
    ]
    assert len(finals) == 1
    return finals[0]


def test_a_killed_final_takes_its_finished_seeds_and_trains_only_the_others(store, tmp_path):
    from mlflow import MlflowClient

    import mlflow_mnist
    from mlflow_mnist import schema

    client = MlflowClient(store)
    reference_dir = tmp_path / "reference"  # its own store: two writers on one SQLite file would wait on each other
    reference_dir.mkdir()
    reference = _final(reference_dir, "uninterrupted")
    killed = _final(tmp_path, "killed")
    deadline = time.monotonic() + 240
    while not _seed_runs(client, "killed") and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)  # the driver and anything it started
    killed.wait()
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    taken_ids = {run.info.run_id for run in _seed_runs(client, "killed")}
    killed_finals = {run.data.tags[schema.PARENT] for run in _seed_runs(client, "killed")}
    assert 1 <= len(taken_ids) < REPEATS, "the kill should land after a seed finished and before the last"

    rerun = _final(tmp_path, "killed")
    said = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, said
    assert f"{len(taken_ids)} seed(s) taken from a killed final" in said

    reference_client = MlflowClient(f"sqlite:///{reference_dir}/mlflow.db")
    final, uninterrupted = _finished_final(client, "killed"), _finished_final(reference_client, "uninterrupted")
    seeds = {run.data.tags[schema.SEED]: run for run in _seed_runs(client, "killed")}
    # Every seed once, each a child of the final that finished; the taken runs are the killed final's, moved.
    assert sorted(seeds) == [str(seed) for seed in range(REPEATS)]
    assert {run.data.tags[schema.PARENT] for run in seeds.values()} == {final.info.run_id}
    assert taken_ids < {run.info.run_id for run in seeds.values()}
    assert final.data.tags[schema.RESUMED_FROM] == ",".join(sorted(killed_finals))
    assert {client.get_run(final_id).info.status for final_id in killed_finals} == {"KILLED"}
    assert not [run for run in _runs(client, "killed") if run.info.status == "RUNNING"]
    # What it measured is what the uninterrupted final measured: each seed, the median, the ensemble.
    expected = {run.data.tags[schema.SEED]: run for run in _seed_runs(reference_client, "uninterrupted")}
    for seed, run in seeds.items():
        assert run.data.metrics["test_accuracy"] == expected[seed].data.metrics["test_accuracy"], seed
    for metric in ("median_test_accuracy", "ensemble_test_accuracy", "ensemble_test_errors"):
        assert final.data.metrics[metric] == uninterrupted.data.metrics[metric], metric
    # The gate accepts it: its seeds are the final's children, each model its seed run's, the ensemble verified.
    done = mlflow_mnist.promote(experiment="killed", model="ensemble", min_accuracy=0.5)
    assert done["version"] == "1" and done["kind"] == schema.ENSEMBLE_KIND
