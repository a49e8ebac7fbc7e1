"""benchmarks/fold_models_on_test.py: the fold models it finds are the search's, scored as the search scored them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import fold_models_on_test  # noqa: E402


def test_nearest_distances_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    queries, pool = rng.normal(size=(37, 5, 3)), rng.normal(size=(53, 5, 3))
    expected = np.linalg.norm(queries.reshape(37, 1, -1) - pool.reshape(1, 53, -1), axis=2).min(axis=1)
    got = fold_models_on_test.nearest_distances(queries, pool, block=8)  # several blocks, the last one short
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert fold_models_on_test.nearest_distances(pool[:4], pool).max() < 1e-2  # a pool row is its own nearest


@pytest.mark.slow
def test_every_fold_model_of_a_joint_search_is_found_and_scored_as_the_search_scored_it(store, tmp_path):
    from mlflow import MlflowClient

    import mlflow_mnist
    from mlflow_mnist import schema

    # digits' space trains 27 epochs at most: rungs of 1, 3, 9 and 27 epochs from a first rung of 1.
    mlflow_mnist.tune(task="digits", strategy="asha", trials=3, min_epochs=1, folds=2, progress=False)
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    trials = {r.info.run_id: r for r in runs if r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL}
    folds = [
        (
            trials[r.data.tags[schema.PARENT]].data.tags[schema.TRIAL],
            int(r.data.params["epochs"]),
            int(r.data.params["fold"]),
        )
        for r in runs
        if r.data.tags.get(schema.LEVEL) == schema.FOLD_LEVEL and r.data.tags.get(schema.PARENT) in trials
    ]
    wanted = sorted(fold for fold in folds if fold[1] >= 3)
    assert wanted and len(wanted) < len(folds)  # some fold models to find, some below the threshold to leave out
    data = fold_models_on_test.load_data("digits", "", "")
    report = fold_models_on_test.measure({"digits": store}, data, min_epochs=3)
    rows = report["stores"]["digits"]["folds"]
    assert sorted((row["trial"], row["epochs"], row["fold"]) for row in rows) == wanted
    one_image = 1.01 / (len(data.y_train) // 2)  # the held-out share of one image, 2 folds
    for row in rows:
        # The held-out images recomputed from the fold's params are the ones the search scored (one image of
        # slack: another batch size may round a borderline probability the other way).
        assert abs(row["heldout_error"] - row["logged_heldout_error"]) <= one_image
        assert row["test_error"] == row["test_errors"] / len(data.y_test) and row["test_errors"] >= 0
    # One fold model's test errors again, through the model's own pyfunc (another loader, another path).
    import mlflow

    first = rows[0]
    run = next(
        r
        for r in runs
        if r.data.tags.get(schema.PARENT) in trials
        and trials[r.data.tags[schema.PARENT]].data.tags[schema.TRIAL] == first["trial"]
        and r.data.params.get("epochs") == str(first["epochs"])
        and r.data.params.get("fold") == str(first["fold"])
    )
    (model,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    probabilities = np.asarray(mlflow.pyfunc.load_model(f"models:/{model.model_id}").predict(data.x_test))
    assert first["test_errors"] == int((probabilities.argmax(axis=1) != data.y_test).sum())
    fold_models_on_test.write(report, tmp_path / "out")
    assert "| digits |" in (tmp_path / "out.md").read_text()
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["seed0", "--data", "sample"], "'seed0' is not LABEL=STORE"),
        (["a=/no/such/store", "--data", "sample"], "/no/such/store: no mlflow.db there"),
        (["a=sqlite:///x.db", "a=sqlite:///y.db", "--data", "sample"], "label 'a' given twice"),
        (["a=sqlite:///x.db", "--data", "/no/such/mnist"], "data path '/no/such/mnist' does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fold_models_on_test.py"), *args, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no report, and no SQLite file created for a store named by URI
