"""Tasks as plug-ins: the registry, the engine's ignorance of MNIST, the built-in digits task, and a third-party
task package installed the way a team would install its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli

from mlflow_mnist.gate import PromoteInputError
from mlflow_mnist.params import HyperparameterError, StageError
from mlflow_mnist.schema import TaskRef
from mlflow_mnist.tasks import DataError, Task, available_tasks, get_task

# Where MNIST may be named: its own task, the other built-in task (scikit-learn's digits), and the registry's
# default. Everything else (engine, run tree, registry, analysis) must work for any task.
MNIST_WORDS = re.compile(r"mnist|\b28\b|2v7|0\.9966|convnet|image_side|idx3|idx1", re.IGNORECASE)
ALLOWED = {("mlflow_mnist/tasks/__init__.py", "mnist")}  # DEFAULT_TASK: the built-in default


def _words(line: str) -> set[str]:
    """The MNIST-specific words in ``line``, the tool's own name (mlflow_mnist, mlflow-mnist) aside."""
    for name in ("mlflow_mnist", "mlflow-mnist", "MLFLOW_MNIST"):
        line = line.replace(name, "")
    return {match.lower() for match in MNIST_WORDS.findall(line)}


def test_no_mnist_name_shape_or_constant_outside_the_mnist_task():
    sources = [*ROOT.joinpath("mlflow_mnist").rglob("*.py"), *ROOT.joinpath("analysis").rglob("*.py")]
    found = []
    for path in sources:
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("mlflow_mnist/tasks/mnist/") or relative == "mlflow_mnist/tasks/digits.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = {word for word in _words(line) if (relative, word) not in ALLOWED}
            if words:
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_scan_finds_what_it_looks_for():
    assert _words("x = load_mnist()") == {"mnist"} and _words("side = 28  # MNIST") == {"28", "mnist"}
    assert not _words("import mlflow_mnist.tasks; os.environ['MLFLOW_MNIST_DATA']; mlflow-mnist tune")


def test_registered_tasks_and_tasks_named_by_module():
    assert {"mnist", "digits"} <= set(available_tasks())
    assert get_task("mnist").name == "mnist" and get_task("digits").name == "digits"
    assert get_task("mlflow_mnist.tasks.digits:DigitsTask").name == "digits"
    with pytest.raises(StageError, match="unknown task 'mnst': choose one of .*digits.*mnist"):
        get_task("mnst")
    with pytest.raises(StageError, match="cannot import it"):
        get_task("no.such.module:Task")
    with pytest.raises(StageError, match="not a mlflow_mnist.tasks.Task"):
        get_task("mlflow_mnist.tasks:available_tasks")


def test_the_digits_task_loads_offline_and_validates():
    task = get_task("digits")
    data = task.load("", classes="")
    assert data.n_classes == 10 and data.x_train.shape[1:] == (8, 8) and data.x_train.dtype == np.uint8
    assert len(data.y_train) + len(data.y_test) == 1797 and data.variant == "all"
    assert data.digest() == task.load("sklearn").digest() and data.digest() != data.digest("test")
    pair = task.load("", classes="3,5")
    assert pair.variant == "3v5" and set(np.unique(pair.y_train)) == {0, 1} and pair.class_names == ("3", "5")
    with pytest.raises(DataError, match="scikit-learn's own copy"):
        task.load("/some/file.npz")
    with pytest.raises(DataError, match="'11' is not a class"):
        task.load("", classes="3,11")
    with pytest.raises(HyperparameterError, match="activation='swish' is not one of relu, tanh, elu"):
        task.validate({**task.start, "activation": "swish"})
    with pytest.raises(HyperparameterError, match="unknown hyperparameter 'neurons_1'"):
        task.validate({**task.start, "neurons_1": 4})
    assert task.registered_model_name("3v5") == "digits-3v5-mlp"
    assert task.steps_of("all")[0].name == "hidden_units" and task.get_space().name == "small"


@pytest.mark.slow
def test_the_digits_task_model_takes_raw_images():
    task = get_task("digits")
    data = task.load("")
    model = task.build_model(task.start, n_classes=10, seed=1)
    probabilities = model.predict(data.x_test[:5], verbose=0)
    assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


EXAMPLE = ROOT / "examples" / "cancer_task"


def test_the_example_task_is_a_task_of_about_thirty_lines():
    source = (EXAMPLE / "cancer_task.py").read_text()
    assert len(source.splitlines()) <= 50
    spec = __import__("tomllib").loads((EXAMPLE / "pyproject.toml").read_text())
    assert spec["project"]["entry-points"]["mlflow_mnist.tasks"] == {"cancer": "cancer_task:CancerTask"}
    sys.path.insert(0, str(EXAMPLE))
    try:
        task = get_task("cancer_task:CancerTask")
    finally:
        sys.path.remove(str(EXAMPLE))
    assert isinstance(task, Task)
    data = task.load("")
    assert data.x_train.shape[1] == 30 and data.class_names == ("malignant", "benign")


@pytest.fixture
def installed_example():
    """The example package pip-installed into this environment, as a team would install its own; removed after."""
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(EXAMPLE)], check=True, timeout=300)
    yield "cancer"
    subprocess.run([*pip, "uninstall", "--yes", "cancer-task"], check=True, timeout=120)


@pytest.mark.slow
def test_a_third_party_task_runs_through_mlflow_run(store, installed_example):
    from mlflow import MlflowClient

    listed = cli("tasks")
    assert listed.returncode == 0 and "cancer (cancer_task:CancerTask)" in listed.stdout
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "cancer"]
    for parameter in ("task=cancer", "stage=units", "folds=2", "epochs=5", "n_jobs=1", "log_models=false"):
        command += ["-P", parameter]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("cancer")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    levels = [r.data.tags.get("mlflow_mnist.level") for r in runs]
    assert levels.count("step") == 1 and levels.count("candidate") == 4 and levels.count("fold") == 8
    (stage,) = [r for r in runs if r.data.tags.get("mlflow_mnist.level") == "step"]
    assert stage.data.params["task"] == "cancer" and 0.8 < stage.data.metrics["best_mean_accuracy"] <= 1
    # The final and the gate as `make run` then `make promote` run them: the final's run holds the -P values
    # (classes '' for the default) beside what it used; the gate read the -P value and refused it as tampered.
    entries = {"final": ("task=cancer", "folds=2", "epochs=5", "n_jobs=1"), "promote": ("min_accuracy=0.5",)}
    for entry, parameters in entries.items():
        command = ["mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local", "--experiment-name", "cancer"]
        for parameter in parameters:
            command += ["-P", parameter]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is @champion" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_task_named_by_module_is_promoted_when_promote_is_given_it(store, monkeypatch):
    """README's "without installing" form (``--task cancer_task:CancerTask``) runs tune and final; the final
    records the task's name, which is registered nowhere, so promote, which had no --task, could never load it.
    Now: without --task, one line saying to give it; with another task, one line; with the same, promoted."""
    import mlflow_mnist

    monkeypatch.syspath_prepend(str(EXAMPLE))
    spec = "cancer_task:CancerTask"
    done = mlflow_mnist.final(task=spec, folds=2, epochs=5, n_jobs=1, experiment="cancer", progress=False)
    refused = cli("promote", "--experiment", "cancer", "--min-accuracy", "0.5")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: final run {done['run_id']} ran task 'cancer', which is not registered here: give it as --task "
        f"package.module:attr, as tune and final were given it, or install its package"
    ]
    with pytest.raises(PromoteInputError, match="--task digits is task 'digits' but final run .* ran task 'cancer'"):
        mlflow_mnist.promote(experiment="cancer", min_accuracy=0.5, task="digits")
    promoted = mlflow_mnist.promote(experiment="cancer", min_accuracy=0.5, task=spec)
    assert promoted["version"] == "1" and promoted["name"].startswith("cancer")


@pytest.mark.slow
def test_the_digits_task_runs_every_strategy_then_final_promote_and_analyze(store, tmp_path):
    """A task that is not MNIST through the whole tool: every registered strategy, a 3-seed final, the gate and
    the report, all on the same experiment."""
    import mlflow_mnist
    from mlflow_mnist.strategies import STAGE_FORM, STRATEGIES

    common = {"task": "digits", "folds": 2, "epochs": 3, "progress": False, "experiment": "digits", "log_models": False}
    # Every registered strategy, in the form it takes: the two that take a stage over the task's two stages (the
    # report's verdicts below), the others over the task's default space; a strategy added later runs here too.
    forms = {"staged": {"stage": "width"}, "halving": {"stage": "learn_rate"}, "asha": {"trials": 3, "min_epochs": 3}}
    runs = {}
    for strategy, chosen in STRATEGIES.items():
        form = forms.get(strategy) or ({"stage": "width"} if STAGE_FORM in chosen.searches else {"trials": 3})
        runs[strategy] = mlflow_mnist.tune(strategy=strategy, **form, **common)
    for strategy, result in runs.items():
        table = result.cv_results
        assert result.run_id and result.trained > 0 and len(table) >= 3, strategy
        assert (table["status"] == "ok").all() and result.best["mean_test_score"] > 0.5, strategy
    again = mlflow_mnist.tune(strategy="asha", trials=3, min_epochs=3, **common)
    assert again.trained == 0  # the store is the memory: a rerun trains nothing
    from mlflow_mnist.params import StageError

    with pytest.raises(StageError, match="is a staged step, not a joint search: leave out --search"):
        mlflow_mnist.final(task="digits", folds=2, epochs=3, search=runs["staged"].run_id, experiment="digits")
    summary = mlflow_mnist.final(task="digits", folds=2, epochs=3, repeats=3, progress=False, experiment="digits")
    assert summary["n_repeats"] == 3 and 0.5 < summary["median_test_accuracy"] <= 1
    done = mlflow_mnist.promote(experiment="digits", min_accuracy=0.5)
    assert done["name"] == "digits-all-mlp" and done["version"] == "1"
    report = mlflow_mnist.analyze(experiments=["digits"], out=tmp_path / "report", log=False)
    assert set(report.verdicts["step"]) == {"hidden_units", "learn_rate"} and report.html_path.exists()
    # Each joint search has Optuna's history, drawn, or named as not drawn for want of complete trials.
    for name in (f"{strategy}:small" for strategy, chosen in STRATEGIES.items() if STAGE_FORM not in chosen.searches):
        figure = f"optuna history {name}"
        assert figure in report.figures or "complete trials" in report.not_drawn[figure], name
    assert {"sensitivity hidden_units", "sensitivity learn_rate"} <= set(report.figures)
    from mlflow import MlflowClient

    client = MlflowClient(store)
    fold = client.search_runs(
        [client.get_experiment_by_name("digits").experiment_id], "tags.`mlflow_mnist.level` = 'fold'"
    )
    with pytest.raises(ValueError, match="is a fold run, not a search run"):  # checked before a figure is drawn
        mlflow_mnist.analyze(experiments=["digits"], stage_run=fold[0].info.run_id, out=tmp_path / "no", log=False)
    assert not (tmp_path / "no").exists()
    # Optuna's own tools open our studies: exported from the store, loaded by optuna.load_study.
    import optuna

    storage = f"sqlite:///{tmp_path}/study.db"
    exported = cli("export-study", "--experiment", "digits", "--search", runs["asha"].run_id, "--storage", storage)
    assert exported.returncode == 0, exported.stderr
    study = optuna.load_study(study_name="asha:small", storage=storage)
    stopped = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(stopped) == 3 and study.best_value == max(t.value for t in study.trials if t.value is not None)
    # A storage that already holds the study, or does not open: one line naming the fix, no traceback.
    search = ["export-study", "--experiment", "digits", "--search", runs["asha"].run_id, "--storage"]
    for bad_storage, said in (
        (storage, "already holds a study named 'asha:small': pass --name"),
        (f"sqlite:///{tmp_path}/no/such/folder/study.db", "does not open as an Optuna storage"),
        ("postgresql://alice:s3cr3t@127.0.0.1:1/studies", "does not open as an Optuna storage"),
    ):
        refused = cli(*search, bad_storage)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode != 0 and len(lines) == 1 and said in lines[0], refused.stderr
        assert "Traceback" not in refused.stderr and "s3cr3t" not in refused.stderr + refused.stdout


def test_a_store_made_before_tasks_resumes_with_nothing_retrained(tmp_path, monkeypatch):
    """tests/data/legacy_store.db.gz was made by the code before tasks, the schema module and retrained references
    (commit b4bdd44, tests/data/legacy_store.sh: two stages, an Optuna search, a halving step and a final on the
    sample). Rerun the same commands now: every fold is found, none is trained."""
    import gzip
    import shutil
    import sqlite3

    import mlflow_mnist
    from mlflow_mnist import candidate, tracking

    db = tmp_path / "mlflow.db"
    with gzip.open(ROOT / "tests" / "data" / "legacy_store.db.gz") as packed, db.open("wb") as out:
        shutil.copyfileobj(packed, out)
    with sqlite3.connect(db) as connection:  # the store moved: its new runs' artifacts go beside it
        for (experiment_id,) in connection.execute("select experiment_id from experiments").fetchall():
            location = str(tmp_path / "mlruns" / str(experiment_id))
            connection.execute(
                "update experiments set artifact_location = ? where experiment_id = ?", (location, experiment_id)
            )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    common = {"data": "sample", "folds": 2, "n_jobs": 1, "progress": False, "log_models": False}
    for stage in ("kernel_size", "pool_size"):
        again = mlflow_mnist.tune(stage=stage, epochs=1, experiment="legacy", **common)
        assert again.trained == 0 and again.reused == 8, stage
    halving = mlflow_mnist.tune(
        strategy="halving", stage="dropout_rate_1", epochs=3, experiment="legacy-halving", **common
    )
    assert halving.trained == 0 and halving.reused == 28
    optuna = mlflow_mnist.tune(strategy="optuna", space="seed", trials=3, experiment="legacy-optuna", **common)
    assert optuna.trained == 0
    # The old final's task tag ("2v7") reads as the mnist task with classes 2 and 7.
    client = tracking.connect()
    final = tracking.latest_final_run(client, client.get_experiment_by_name("legacy").experiment_id)
    assert candidate.final_task(final) == TaskRef("mnist", "2v7")


def test_help_names_the_variable_that_sets_the_task():
    """With $MLFLOW_MNIST_TASK set, --task's default is the variable's value: --help says the variable exists
    (before, it showed "[default: mnist]" alone)."""
    from click.testing import CliRunner

    from mlflow_mnist.cli import main

    for command in ("spaces", "tune", "final", "promote"):
        shown = CliRunner().invoke(main, [command, "--help"], env={"MLFLOW_MNIST_TASK": "digits"}).output
        assert "env var: MLFLOW_MNIST_TASK" in " ".join(shown.split()), command


@pytest.mark.slow
def test_tune_and_final_say_what_to_run_next(store):
    """A new user's walk-through: no command said what comes next, nor that a final's median was below the
    threshold promote applies. tune names final (with --search latest after a joint search); final names promote,
    or says promote will refuse it."""
    from conftest import cli

    # What comes next does not depend on the scores: the task's smallest grid (3 candidates), one epoch a fold.
    common = ["--task", "digits", "--folds", "2", "--epochs", "1", "--n-jobs", "1"]
    staged = cli("tune", "--stage", "activation", *common)
    assert staged.returncode == 0, staged.stderr
    assert staged.stdout.splitlines()[-1].startswith(
        "next: more stages (`mlflow-mnist stages`), or `mlflow-mnist final"
    )
    joint = cli("tune", "--strategy", "random", "--stage", "", "--trials", "2", *common)
    assert joint.returncode == 0, joint.stderr
    assert joint.stdout.splitlines()[-1].startswith("next: `mlflow-mnist final --search latest --repeats 5`")
    weak = cli("final", "--repeats", "1", *common, "--overrides", "learn_rate=0.00001")
    assert weak.returncode == 0, weak.stderr
    assert weak.stdout.splitlines()[-1].startswith(
        "note: the median is below the task's promotion threshold 95.0000%: `mlflow-mnist promote` will refuse it"
    ), weak.stdout
