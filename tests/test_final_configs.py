"""Which configurations ``final --configs N`` trains: read from a search's trial runs alone (no training here)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mlflow_mnist import schema
from mlflow_mnist.final_run import check_final_options, search_configs
from mlflow_mnist.params import StageError, json_value
from mlflow_mnist.tasks import get_task

DIGEST = "d1g3st"


def _search_store(uri: str):
    """A search run whose best is trial 0 at 18 epochs, and other trials stopped at various rungs."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment("search")
    task = get_task("mnist")
    base = task.validate({**task.start, "epochs": 18})
    search = client.create_run(experiment, tags={schema.LEVEL: schema.STAGE_LEVEL, schema.DIGEST: DIGEST}).info
    trials = {
        # trial: [(rung, epochs, mean CV, status, learn rate)], one run per rung it reached
        0: [(1, 2, 0.990, "ok", 0.001), (2, 6, 0.994, "ok", 0.001), (3, 18, 0.995, "ok", 0.001)],
        1: [(1, 2, 0.991, "ok", 0.002), (2, 6, 0.990, "ok", 0.002)],
        2: [(1, 2, 0.999, "ok", 0.003)],  # the best score of all, but at the first rung only
        3: [(1, 2, 0.992, "ok", 0.004), (2, 6, 0.992, "ok", 0.004)],  # rung 2's best after trial 0
        4: [(1, 2, 0.993, "ok", 0.005), (2, 6, 0.998, "failed", 0.005)],  # failed where it went furthest
    }
    best_run = None
    for trial, rungs in trials.items():
        for rung, epochs, score, status, learn_rate in rungs:
            params = {**base, "learn_rate": learn_rate, "epochs": epochs}
            tags = {
                schema.LEVEL: schema.CANDIDATE_LEVEL,
                schema.TRIAL: str(trial),
                schema.STATUS: status,
                "mlflow.parentRunId": search.run_id,
                **schema.Rung(rung, 3, epochs).tags(),
            }
            run = client.create_run(experiment, tags=tags).info
            for key, value in params.items():
                client.log_param(run.run_id, key, str(value))
            client.log_metric(run.run_id, "mean_heldout_accuracy", score)
            client.set_terminated(run.run_id)
            if (trial, rung) == (0, 3):
                best_run = run.run_id
    client.set_tag(search.run_id, schema.BEST_CHILD, best_run)
    best = {**base, "learn_rate": 0.001}
    client.set_tag(search.run_id, schema.BEST_CONFIG, json.dumps({k: json_value(v) for k, v in best.items()}))
    client.set_terminated(search.run_id)
    campaign = SimpleNamespace(
        client=client,
        experiment_id=experiment,
        task=task,
        overrides={},
        settings=SimpleNamespace(data_digest=DIGEST),
        seal=None,  # runs written here by hand, as a campaign without $MLFLOW_MNIST_SEAL_KEY_FILE reads them
    )
    return campaign, search.run_id


def test_the_runners_up_are_the_trials_that_went_furthest_then_scored_best(tmp_path):
    campaign, search_id = _search_store(f"sqlite:///{tmp_path}/mlflow.db")
    configs, source = search_configs(campaign, "latest", 4)
    assert source == search_id
    # trial 0 (the search's best), then rung 2's trial 3 before trial 1, then trial 2 (first rung only);
    # trial 4 failed at its furthest rung and is left out. Every one at the best's 18 epochs.
    assert [c["learn_rate"] for c in configs] == [0.001, 0.004, 0.002, 0.003]
    assert {c["epochs"] for c in configs} == {18}
    assert search_configs(campaign, search_id, 1)[0] == configs[:1]
    with pytest.raises(StageError, match="has 4 configuration"):
        search_configs(campaign, search_id, 5)


@pytest.mark.parametrize(
    "repeats, search, configs, message",
    [
        (4, None, 2, "pass --search latest"),
        (2, "latest", 3, "pass --repeats 3 or more"),
        (0, None, 1, "at least one seed"),
    ],
)
def test_options_that_cannot_go_together_are_refused(repeats, search, configs, message):
    with pytest.raises(StageError, match=message):
        check_final_options(repeats=repeats, search=search, configs=configs)
