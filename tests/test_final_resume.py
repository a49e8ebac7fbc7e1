"""A ``final`` killed with kill -9 after some of its seeds finished: the rerun takes those seeds (their runs, models
and test-set probabilities) and trains only the others, and ends with what an uninterrupted final measures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_final import check_ended_last

pytestmark = pytest.mark.slow

REPEATS = 4
# Long enough that a seed trains for a second or more (the kill lands between two seeds' ends, read from the store
# every 0.2 s), short enough for CI.
FINAL = ["final", "--task", "digits", "--folds", "2", "--epochs", "20", "--repeats", str(REPEATS)]
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


@dataclass(frozen=True)
class Uninterrupted:
    seconds: float
    seed_accuracies: dict[str, float]
    final_metrics: dict[str, float]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Uninterrupted:
    """The same final run to the end in a store of its own: what every resumed final must measure."""
    from mlflow import MlflowClient

    from mlflow_mnist import schema

    folder = tmp_path_factory.mktemp("uninterrupted")
    start = time.monotonic()
    proc = _final(folder, "uninterrupted")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    seconds = time.monotonic() - start
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    seeds = {
        run.data.tags[schema.SEED]: run.data.metrics["test_accuracy"] for run in _seed_runs(client, "uninterrupted")
    }
    return Uninterrupted(seconds, seeds, dict(_finished_final(client, "uninterrupted").data.metrics))


def _check_whole_and_equal(client, reference: Uninterrupted) -> tuple:
    """The killed experiment ended with one finished final holding one finished run per seed, nothing left
    RUNNING, and the uninterrupted final's measurements; returns (that final, its seed runs by seed)."""
    from mlflow_mnist import schema

    final = _finished_final(client, "killed")
    seeds = {run.data.tags[schema.SEED]: run for run in _seed_runs(client, "killed")}
    assert sorted(seeds) == [str(seed) for seed in range(REPEATS)]
    assert len(_seed_runs(client, "killed")) == REPEATS
    assert {run.data.tags[schema.PARENT] for run in seeds.values()} == {final.info.run_id}
    assert not [run for run in _runs(client, "killed") if run.info.status == "RUNNING"]
    assert {seed: run.data.metrics["test_accuracy"] for seed, run in seeds.items()} == reference.seed_accuracies
    for metric in ("median_test_accuracy", "ensemble_test_accuracy", "ensemble_test_errors"):
        assert final.data.metrics[metric] == reference.final_metrics[metric], metric
    check_ended_last(client, final)  # taken seeds included: their values and models came before the end
    return final, seeds


def test_a_killed_final_takes_its_finished_seeds_and_trains_only_the_others(store, tmp_path, uninterrupted):
    from mlflow import MlflowClient

    import mlflow_mnist
    from mlflow_mnist import schema

    client = MlflowClient(store)
    killed = _final(tmp_path, "killed")
    deadline = time.monotonic() + 240
    finished = lambda client: bool(_seed_runs(client, "killed"))  # noqa: E731
    while not _store_shows(tmp_path, client, finished) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)  # the driver and anything it started: while the next seed trains
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the final ended before a seed finished"
    assert [run.info.status for run in _final_runs(client, "killed")] == ["RUNNING"]
    taken_ids = {run.info.run_id for run in _seed_runs(client, "killed")}
    killed_finals = {run.data.tags[schema.PARENT] for run in _seed_runs(client, "killed")}
    assert 1 <= len(taken_ids) < REPEATS, "the kill should land after a seed finished and before the last"

    rerun = _final(tmp_path, "killed")
    said = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, said
    assert f"{len(taken_ids)} seed(s) taken from a killed final" in said

    # Every seed once, each a child of the final that finished, with what the uninterrupted final measured; the
    # taken runs are the killed final's, moved, and the final says where they came from.
    final, seeds = _check_whole_and_equal(client, uninterrupted)
    assert taken_ids < {run.info.run_id for run in seeds.values()}
    assert final.data.tags[schema.RESUMED_FROM] == ",".join(sorted(killed_finals))
    assert {client.get_run(final_id).info.status for final_id in killed_finals} == {"KILLED"}
    # The gate accepts it: its seeds are the final's children, each model its seed run's, the ensemble verified.
    done = mlflow_mnist.promote(experiment="killed", model="ensemble", min_accuracy=0.5)
    assert done["version"] == "1" and done["kind"] == schema.ENSEMBLE_KIND


def _store_shows(store_dir: Path, client, moment) -> bool:
    """``moment(client)`` holds in the final's store. Not before the final has placed it (whole, at once): a client
    that opened the file first would build the tables in place under the final's feet."""
    from mlflow.exceptions import MlflowException

    if not (store_dir / "mlflow.db").exists():
        return False
    try:
        return moment(client)
    except MlflowException:  # the final holds SQLite's write lock a moment too long: look again
        return False


def _final_runs(client, experiment: str) -> list:
    from mlflow_mnist import schema

    return [run for run in _runs(client, experiment) if run.data.tags.get(schema.LEVEL) == schema.FINAL_LEVEL]


def _starting_up(client) -> bool:
    """The final run is in the store and no seed has reached it yet."""
    from mlflow_mnist import schema

    return bool(_final_runs(client, "killed")) and not [
        run for run in _runs(client, "killed") if run.data.tags.get(schema.LEVEL) == schema.FINAL_SEED_LEVEL
    ]


def _being_logged(client) -> bool:
    """A seed run exists and is still being written (seed runs are created once their seed has trained)."""
    return bool(_seed_runs(client, "killed", status="RUNNING"))


@pytest.mark.parametrize("moment", [_starting_up, _being_logged], ids=lambda moment: moment.__name__)
def test_a_final_killed_at_any_moment_ends_whole_with_the_same_results(store, tmp_path, uninterrupted, moment):
    """Wherever the kill lands (starting up, a seed being logged; a seed training after another finished is the
    test above), the rerun ends with one run per seed and the uninterrupted final's numbers: a half-logged seed is
    trained again, never taken. The moment is read from the store, not from a clock: how long a final takes varies
    too much with what else the machine runs."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    killed = _final(tmp_path, "killed")
    deadline = time.monotonic() + 240
    while not _store_shows(tmp_path, client, moment) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the final ended before the moment to kill it came"
    assert [run.info.status for run in _final_runs(client, "killed")] == ["RUNNING"]
    rerun = _final(tmp_path, "killed")
    said = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, said
    _check_whole_and_equal(client, uninterrupted)
