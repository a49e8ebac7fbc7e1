"""A team's own task, written with the mistakes a first plug-in makes: each gets one line that names it and the fix,
a non-zero exit, no traceback; one broken plug-in does not hide the others. (From a walk-through of docs/tasks.md
by someone writing their first task: before, a model without the accuracy metric "won" its stage at NaN, exit 0.)"""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest
from click.testing import CliRunner
from conftest import cli

import mlflow_mnist.tasks
from mlflow_mnist.cli import main
from mlflow_mnist.params import StageError
from mlflow_mnist.strategies.base import SearchRequest
from mlflow_mnist.tasks import GROUP, get_task
from mlflow_mnist.tasks.digits import DigitsTask

BROKEN_TASKS = textwrap.dedent(
    """
    import keras

    from optuna.distributions import IntDistribution

    from mlflow_mnist.spaces import Dimension, Space
    from mlflow_mnist.stages import grid_step
    from mlflow_mnist.tasks.digits import DigitsTask


    class NoAccuracy(DigitsTask):
        name = "no-accuracy"  # compiles its model without metrics=["accuracy"]

        def build_model(self, params, **options):
            model = keras.Sequential([keras.Input(shape=(8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])
            model.compile(optimizer="adam", loss="categorical_crossentropy")
            return model


    class WrongInput(DigitsTask):
        name = "wrong-input"  # a model whose input is not what load returns

        def build_model(self, params, **options):
            model = keras.Sequential([keras.Input(shape=(10,)), keras.layers.Dense(10, activation="softmax")])
            model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
            return model


    class BadGrid(DigitsTask):
        name = "bad-grid"
        steps = (grid_step("hidden_units", (8, 0)),)
        stages = {"width": ("hidden_units",)}


    class NoBase(DigitsTask):
        name = "no-base"
        spaces = {"narrow": Space("narrow", (Dimension("hidden_units", IntDistribution(8, 64), "width"),))}


    class Nothing(DigitsTask):
        name = "nothing"
        steps = ()
        stages = {}
        spaces = {}
    """
)


@pytest.fixture
def broken_tasks(tmp_path, monkeypatch):
    (tmp_path / "broken_tasks.py").write_text(BROKEN_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.slow  # each starts a fresh interpreter that builds and fits (fails fitting) a Keras model
@pytest.mark.parametrize(
    "task, says",
    [
        (
            "NoAccuracy",
            "ValueError: the task's model reports no 'accuracy' metric (it reported loss, val_loss): "
            "compile it with metrics=['accuracy']",
        ),  # fmt: skip
        ("WrongInput", "Expected shape (None, 10), but input has incompatible shape (None, 8, 8)"),
    ],
)
def test_a_task_whose_every_fold_fails_stops_the_search_in_one_line(store, broken_tasks, task, says):
    proc = cli(
        "tune", "--task", f"broken_tasks:{task}", "--stage", "width", "--epochs", "1", "--folds", "2",
        "--executor", "serial", "--experiment", "broken", env={"PYTHONPATH": str(broken_tasks)}, cwd=broken_tasks,
        fresh=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: every fold failed, the first (hidden_units, fold 1) with ") and says in line
    assert line.endswith(
        "breaks the task contract (docs/tasks.md, build_model); fix the task and run the command again"
    )
    assert "Traceback" not in proc.stderr and "\x1b[" not in proc.stderr


def test_a_search_with_any_scored_fold_is_not_stopped_by_the_folds_that_failed(store):
    """Failing folds among scored ones are one configuration's problem: the search ranks them last and goes on."""
    from mlflow_mnist.strategies.staged import StagedGrid
    from mlflow_mnist.testing import fold_result, open_campaign, run, tiny_dataset

    campaign = open_campaign(store, dataset=tiny_dataset(), experiment="mnist", folds=2, epochs=1, task="mnist")
    steps = tuple(get_task("mnist").steps_of("kernel_size"))
    strategy = StagedGrid.from_request(campaign.request(stage="kernel_size", steps=steps))

    def worker(task):
        return fold_result(task, 0.9, status="failed" if task.candidate_index else "ok")

    outcome = run(campaign, strategy, worker=worker, with_model=False)
    assert outcome.best is not None and outcome.groups[0].best["status"] == "ok"


def _entry_points(**values: str):
    points = [importlib.metadata.EntryPoint(name, value, GROUP) for name, value in values.items()]
    return lambda group: [point for point in points if point.group == group]


def test_a_broken_plugin_is_named_after_every_other_task_is_listed(monkeypatch):
    monkeypatch.setattr(
        mlflow_mnist.tasks,
        "entry_points",
        _entry_points(broken="no_such_module:Task", digits="mlflow_mnist.tasks.digits:DigitsTask"),
    )
    result = CliRunner().invoke(main, ["tasks"])
    assert result.exit_code == 2
    assert result.stdout.startswith("digits (mlflow_mnist.tasks.digits:DigitsTask): ")
    assert result.stderr.strip().splitlines() == [
        "error: task 'broken' is registered but cannot be loaded (ModuleNotFoundError: No module named "
        "'no_such_module'): reinstall its package"
    ]


def test_an_entry_point_named_otherwise_than_its_task_is_refused(monkeypatch):
    """Runs record the task's own name and promote looks that name up: an entry point of another name trained,
    then promote said the task was not installed."""
    monkeypatch.setattr(
        mlflow_mnist.tasks, "entry_points", _entry_points(renamed="mlflow_mnist.tasks.digits:DigitsTask")
    )
    with pytest.raises(StageError) as refused:
        get_task.__wrapped__("renamed")
    assert str(refused.value) == (
        "task 'renamed' is registered by an entry point whose task is named 'digits': name the entry point 'digits' "
        "(the name runs record and promote looks up), then reinstall its package"
    )


def test_a_task_without_stages_or_spaces_says_what_it_has_not(broken_tasks):
    nothing = get_task("broken_tasks:Nothing")
    with pytest.raises(StageError, match=r"^task nothing has no staged steps: leave out --stage and search one of"):
        nothing.steps_of("width")
    request = SearchRequest(task=nothing, epochs=1)
    with pytest.raises(StageError, match=r"^--strategy staged runs a stage, and task nothing has none: search one"):
        request.need_steps("staged")
    # A task with stages names one of its own, not MNIST's.
    with pytest.raises(StageError, match=r"e\.g\. --stage width \(see `stages`\)$"):
        SearchRequest(task=DigitsTask(), epochs=1).need_steps("staged")
    shown = CliRunner().invoke(main, ["spaces", "--task", "broken_tasks:Nothing"])
    assert shown.exit_code == 0
    assert shown.stdout == "task nothing has no search spaces: its searches are staged (see `mlflow-mnist stages`)\n"


def test_epochs_given_to_a_joint_search_is_said_to_be_the_campaigns_not_the_searchs():
    """`--epochs 1` with a joint search was dropped without a word (its epochs are its space's budget)."""
    from mlflow_mnist.api import _joint_budget_note

    task = DigitsTask()
    space = task.get_space("small")
    expected = (
        "note: epochs 1 is the campaign's setting for staged steps; a joint search trains up to its space's budget "
        "(27 epochs in space small), rung by rung"
    )
    assert _joint_budget_note(task, space, 1, "") == expected
    assert _joint_budget_note(task, space, None, "epochs=1") == expected
    assert _joint_budget_note(task, space, None, "") == _joint_budget_note(task, space, 27, "") == ""
    assert _joint_budget_note(task, None, 1, "") == ""  # a staged search: --epochs is its own


def test_a_bad_grid_value_names_its_step(store, broken_tasks):
    import mlflow_mnist
    from mlflow_mnist.params import HyperparameterError

    with pytest.raises(HyperparameterError) as refused:
        mlflow_mnist.tune(task="broken_tasks:BadGrid", stage="width", epochs=1, folds=2, progress=False)
    assert str(refused.value) == "hidden_units: hidden_units=0 must be at least 1 and at most 4096"
    assert not (broken_tasks / "mlflow.db").exists() and not (broken_tasks / "mlruns").exists()  # nothing written


def test_without_experiment_a_task_works_in_its_own_campaign_not_the_latest_of_another(store):
    """Before: the experiment holding the newest campaign runs, whatever their task (a team's new task went into
    the MNIST campaign's experiment, and analyze read one verdict of both)."""
    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.strategies.staged import StagedGrid
    from mlflow_mnist.testing import fold_result, run

    digits = Campaign.open(task="digits", experiment="digits-campaign", folds=2, epochs=1)
    steps = tuple(digits.task.steps_of("width"))
    run(digits, StagedGrid.from_request(digits.request(stage="width", steps=steps)), with_model=False,
        worker=lambda task: fold_result(task, 0.9))  # fmt: skip
    mnist = Campaign.open("sample", task="mnist", folds=2, epochs=1)
    assert mnist.experiment.name == "mnist" and not mnist.experiment.chosen_because  # its task's name: a new one
    again = Campaign.open(task="digits", folds=2, epochs=1)
    assert again.experiment.name == "digits-campaign"
    assert again.experiment.chosen_because == (
        "experiment 'digits-campaign': it holds the latest campaign runs of task digits (choose another with "
        "--experiment)"
    )


def test_a_space_that_leaves_a_hyperparameter_unset_is_named_before_the_store_is_reached(store, broken_tasks):
    import mlflow_mnist

    with pytest.raises(StageError) as refused:
        mlflow_mnist.tune(task="broken_tasks:NoBase", strategy="random", trials=2, folds=2, progress=False)
    assert str(refused.value) == (
        "space narrow of task no-base leaves activation, dropout_rate, optimizer, learn_rate, batch_size unset: give "
        "the Space a base with every value it does not search (usually base=start)"
    )
    assert not (broken_tasks / "mlflow.db").exists()


@pytest.mark.slow  # builds and fits (fails fitting) a Keras model
def test_a_final_whose_seed_fails_says_so_in_one_line(store, broken_tasks):
    """`final` on a task whose model breaks the contract ended in a worker's traceback; now one line, exit 2."""
    import mlflow_mnist
    from mlflow_mnist.worker import FinalSeedFailed

    with pytest.raises(FinalSeedFailed) as failed:
        mlflow_mnist.final(task="broken_tasks:WrongInput", epochs=1, folds=2, executor="serial", progress=False)
    line = str(failed.value)
    assert line.startswith("seed 0 of the final failed with ValueError: ") and "\n" not in line
    assert "Expected shape (None, 10), but input has incompatible shape (None, 8, 8)" in line and "\x1b[" not in line
    assert line.endswith("(docs/tasks.md, build_model), fix the task; then run final again")
    from mlflow_mnist.cli import _user_errors

    assert FinalSeedFailed in _user_errors()  # the CLI says it as one line, exit 2
