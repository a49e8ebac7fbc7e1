"""final -> promote -> load by alias -> serve over HTTP, on the shipped sample."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mlflow_mnist.executors import JoblibExecutor
from mlflow_mnist.final import run_final
from mlflow_mnist.registry import CHAMPION, PromotionRejected, promote, promotion_decision


@pytest.mark.parametrize(
    "accuracy, minimum, champion, force, accepted, reason",
    [
        (0.9970, 0.9966, None, False, True, "passes"),
        (0.9966, 0.9966, None, False, True, "passes"),
        (0.9951, 0.9966, None, False, False, "below --min-accuracy"),
        (0.9970, 0.9966, 0.9980, False, False, "below the current champion's"),
        (0.9970, 0.9966, 0.9980, True, True, "passes"),
        (0.9951, 0.9966, 0.9900, True, False, "below --min-accuracy"),  # force never lowers the bar
        (float("nan"), 0.5, None, True, False, "below --min-accuracy"),
        (0.9970, 0.9966, float("nan"), False, False, "no valid test accuracy"),  # a champion whose tag is lost
        (0.9970, 0.9966, float("nan"), True, True, "passes"),
    ],
)
def test_promotion_gate(accuracy, minimum, champion, force, accepted, reason):
    ok, why = promotion_decision(accuracy, minimum, champion, force, n_test=2060)
    assert ok is accepted and reason in why
    assert "+/-0.1" in why or "nan" in why  # the standard error on 2,060 images, about 0.13 points


@pytest.mark.slow
def test_the_gate_cannot_be_fooled(store, sample, tmp_path):
    """A final on another test set never replaces the champion (not even with --force); a champion without an
    accuracy is not replaced without --force; --run-id must name a finished final run."""
    from mlflow import MlflowClient

    from mlflow_mnist.campaign import Campaign

    client = MlflowClient(store)
    options = dict(folds=2, seed=0, epochs=1, experiment="mnist")
    first = Campaign.open("sample", "2,7", **options)
    final = run_final(first, repeats=1, executor=JoblibExecutor(1), progress=False)
    done = promote(client, first.experiment_id, min_accuracy=0.5)
    assert "+/-" in done["reason"] and "200 test images" in done["reason"] and not done["warning"]
    version = client.get_model_version_by_alias(done["name"], CHAMPION)
    assert version.tags["test_size"] == "200" and version.tags["test_set_uses"] == "1"

    # Another test set (ten test images fewer): a different measurement, refused even when forced.
    smaller = tmp_path / "smaller.npz"
    np.savez(
        smaller, x_train=sample.x_train, y_train=sample.y_train, x_test=sample.x_test[10:], y_test=sample.y_test[10:]
    )
    other = Campaign.open(str(smaller), "2,7", **options)
    run_final(other, repeats=1, executor=JoblibExecutor(1), progress=False)
    for force in (False, True):
        with pytest.raises(PromotionRejected, match="different test sets cannot be compared, even with --force"):
            promote(client, first.experiment_id, min_accuracy=0.5, force=force)
    assert client.get_model_version_by_alias(done["name"], CHAMPION).version == version.version

    # A champion whose accuracy tag is gone: kept unless forced.
    client.delete_model_version_tag(done["name"], version.version, "test_accuracy")
    with pytest.raises(PromotionRejected, match="no valid test accuracy"):
        promote(client, first.experiment_id, min_accuracy=0.5, run_id=final["run_id"])
    forced = promote(client, first.experiment_id, min_accuracy=0.5, run_id=final["run_id"], force=True)
    assert "test set has scored 2 finals" not in forced["warning"]  # the other final used another test set
    assert forced["warning"] == ""

    # --run-id must be a finished final run.
    fold_like = client.create_run(first.experiment_id, tags={"mlflow_mnist.level": "fold"}).info.run_id
    with pytest.raises(PromotionRejected, match="not a FINISHED final run"):
        promote(client, first.experiment_id, min_accuracy=0.5, run_id=fold_like)
    with pytest.raises(PromotionRejected, match="not a run in this tracking store"):
        promote(client, first.experiment_id, min_accuracy=0.5, run_id="0" * 32)

    # A second final on the same test set: promoting now warns of test-set reuse.
    run_final(first, repeats=1, executor=JoblibExecutor(1), progress=False)
    again = promote(client, first.experiment_id, min_accuracy=0.5, force=True)
    assert "test set has scored 2 finals" in again["warning"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_final_promote_load_and_serve(store, sample):
    import mlflow
    from mlflow import MlflowClient

    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.data import select_digits

    campaign = Campaign.open("sample", "2,7", folds=2, seed=0, epochs=2, overrides="", experiment="mnist")
    best_kernel = campaign.tune("kernel_size", n_jobs=1, with_model=False, progress=False)[0].best["params"]
    summary = run_final(campaign, repeats=1, executor=JoblibExecutor(1), progress=False)
    assert summary["params"]["kernel_size"] == tuple(best_kernel["kernel_size"])  # carried forward from the store
    client = MlflowClient(store)
    final = client.get_run(summary["run_id"])
    assert final.data.params["kernel_size"] == "({}, {})".format(*best_kernel["kernel_size"])
    artifacts = {f.path for f in client.list_artifacts(final.info.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.json", "misclassified.png"} <= artifacts
    # MLflow 3 keeps a run's models as LoggedModels beside its artifacts; `runs:/<id>/model` still reaches them.
    model_files = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=f"runs:/{final.info.run_id}/model")}
    assert "model/MLmodel" in model_files
    matrix = json.loads(Path(client.download_artifacts(final.info.run_id, "confusion_matrix.json")).read_text())
    task = select_digits(sample, (2, 7))
    assert np.sum(matrix["matrix"]) == len(task.y_test) and matrix["labels"] == [2, 7]
    accuracy = final.data.metrics["test_accuracy"]
    assert accuracy == pytest.approx(np.trace(matrix["matrix"]) / len(task.y_test))
    contexts = {i.tags[0].value for i in final.inputs.dataset_inputs}
    assert contexts == {"train", "test"}

    done = promote(client, campaign.experiment_id, min_accuracy=0.5)
    name = done["name"]
    assert name == "mnist-2v7-convnet" and str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    with pytest.raises(PromotionRejected, match="below --min-accuracy"):
        promote(client, campaign.experiment_id, min_accuracy=0.99999)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"

    # A clearly worse model (tiny learning rate) passes a low bar but not the champion, unless forced.
    worse = Campaign.open("sample", "2,7", folds=2, seed=0, epochs=1, overrides="learn_rate=0.0001", experiment="mnist")
    run_final(worse, repeats=3, executor=JoblibExecutor(1), progress=False)
    with pytest.raises(PromotionRejected, match="current champion"):
        promote(client, campaign.experiment_id, min_accuracy=0.3)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    forced = promote(client, campaign.experiment_id, min_accuracy=0.3, force=True)
    version = client.get_model_version_by_alias(name, CHAMPION)
    assert str(forced["version"]) == str(version.version) == "2"
    assert float(version.tags["test_accuracy"]) <= accuracy and version.tags["repeats"] == "3"
    promote(client, campaign.experiment_id, min_accuracy=0.3, run_id=final.info.run_id, force=True)

    # The champion loads by alias and predicts digits from raw pixels.
    model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    assert model.metadata.saved_input_example_info is not None  # served models carry their examples
    predicted = np.asarray(model.predict(task.x_test)).argmax(axis=1)
    assert np.mean(predicted == task.y_test) == pytest.approx(accuracy)

    # ... and answers HTTP on loopback.
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{name}@{CHAMPION}",
            "--env-manager",
            "local",
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                time.sleep(1)
        body = json.dumps({"inputs": task.x_test[:10].tolist()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        served = np.asarray(answer["predictions"]).argmax(axis=1)
        assert np.array_equal(served, predicted[:10])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn workers it started
        server.wait(timeout=30)
