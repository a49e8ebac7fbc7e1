"""A model folder's digest (mlflow_mnist.model_files): every file's path and bytes count, and it is what GNU
sha256sum gives, so a user can check a downloaded model by hand."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mlflow_mnist.model_files import tree_sha256


def model_folder(root):
    (root / "data").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "data" / "model.keras").write_bytes(bytes(range(256)) * 40)
    (root / "a b").write_bytes(b"a name with a space")
    return root


def test_every_path_and_byte_counts_and_nothing_else(tmp_path):
    folder = model_folder(tmp_path / "model")
    before = tree_sha256(folder)
    assert tree_sha256(shutil.copytree(folder, tmp_path / "elsewhere")) == before  # where it lies does not count
    (folder / "empty").mkdir()
    assert tree_sha256(folder) == before  # nor empty folders
    (folder / "registered_model_meta").write_text("model_name: m\nmodel_version: '3'\n")
    assert tree_sha256(folder) == before  # nor what MLflow writes there when the version is loaded
    weights = folder / "data" / "model.keras"
    honest = weights.read_bytes()
    weights.write_bytes(honest[:-1] + b"\x00")
    assert tree_sha256(folder) != before
    weights.write_bytes(honest)
    (folder / "data" / "model.keras").rename(folder / "data" / "model2.keras")
    assert tree_sha256(folder) != before
    (folder / "data" / "model2.keras").rename(folder / "data" / "model.keras")
    (folder / "extra").write_bytes(b"")
    assert tree_sha256(folder) != before


def test_a_name_with_a_line_break_cannot_pass_for_two_files(tmp_path):
    """Two files x and y, against one file whose name holds the line the second file would print."""
    from hashlib import sha256

    two = tmp_path / "two"
    two.mkdir()
    (two / "x").write_bytes(b"1")
    (two / "y").write_bytes(b"2")
    one = tmp_path / "one"
    one.mkdir()
    (one / f"x\n{sha256(b'2').hexdigest()}  y").write_bytes(b"1")
    assert tree_sha256(one) != tree_sha256(two)


@pytest.mark.skipif(shutil.which("sha256sum") is None or shutil.which("find") is None, reason="GNU tools")
def test_the_digest_is_what_sha256sum_gives(tmp_path):
    folder = model_folder(tmp_path / "model")
    (folder / "back\\slash").write_bytes(b"escaped by sha256sum")
    (folder / "registered_model_meta").write_text("model_name: m\nmodel_version: '3'\n")
    shell = (
        "find . -type f ! -path ./registered_model_meta -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | "
        "sha256sum"
    )  # as mlflow_mnist/model_files.py's docstring says
    done = subprocess.run(["sh", "-c", shell], cwd=folder, capture_output=True, text=True, check=True)
    assert done.stdout.split()[0] == tree_sha256(folder)


def test_a_logged_model_carries_its_files_digest_and_a_reader_refuses_changed_files(tmp_path, monkeypatch):
    """RunWriter.log_model logs the folder's digest as the model's ``model_sha256`` param (written once: MLflow
    refuses a second value); tracking.logged_model_files, which continued folds, resumed finals and the gate's
    ensemble check read models through, refuses files that no longer have it. A model without the param (logged
    before it existed) is read as it is."""
    from urllib.parse import urlparse

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from mlflow_mnist import tracking
    from mlflow_mnist.runs import RunWriter
    from mlflow_mnist.schema import MODEL_SHA256

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("digests")
    writer = RunWriter(client, experiment)
    run = writer.start("fold", "fold")
    source = model_folder(tmp_path / "saved")
    Model().save(str(source / "MLmodel"))
    files = {path.relative_to(source).as_posix(): path.read_bytes() for path in source.rglob("*") if path.is_file()}
    model_id = writer.log_model(run, files)
    model = client.get_logged_model(model_id)
    folder = Path(urlparse(model.artifact_location).path)
    assert model.params[MODEL_SHA256] == tree_sha256(folder) and str(model.status) == "READY"
    read = tracking.logged_model_files(client, model_id)
    assert read["data/model.keras"] == files["data/model.keras"] and set(read) == set(files)
    with pytest.raises(MlflowException):
        client.log_model_params(model_id, {MODEL_SHA256: "0" * 64})
    extra = folder / "requirements.txt"
    extra.write_text("mlflow\nsomething-else==1.0\n")
    with pytest.raises(tracking.ModelFilesChanged, match=f"files of model {model_id} were changed after it was"):
        tracking.logged_model_files(client, model_id)
    extra.unlink()
    assert tracking.logged_model_files(client, model_id) == read
    older = client.create_logged_model(experiment, source_run_id=run)  # as logged before the digest existed
    client.log_model_artifacts(older.model_id, str(source))
    assert tracking.logged_model_files(client, older.model_id)["data/model.keras"] == files["data/model.keras"]
