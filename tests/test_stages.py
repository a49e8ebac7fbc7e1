from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_mnist.params import HyperparameterError, StageError
from mlflow_mnist.tasks import get_task
from mlflow_mnist.tasks.mnist.steps import STAGES, STEPS

MNIST = get_task("mnist")
steps_of = MNIST.steps_of
parse_overrides = MNIST.parse_overrides


def test_the_seeds_eighteen_steps_in_order():
    names = [step.name for step in STEPS]
    assert len(names) == 18 and names[0] == "batch_size" and names[-1] == "epochs"
    assert names.index("kernel_size") + 1 == names.index("pool_size")
    assert STAGES["all"] == tuple(names)
    # stages.md counts "roughly 130 candidates"; its grids add up to 123.
    assert [len(step.candidates()) for step in STEPS] == [6, 7, 6, 5, 8, 8, 8, 8, 8, 8, 10, 10, 7, 7, 6, 4, 4, 3]


def test_stage_names_users_type():
    assert [s.name for s in steps_of("neurons")] == ["neurons_1", "neurons_2", "neurons_3"]
    assert [s.name for s in steps_of("init_mode")] == ["init_mode_1", "init_mode_2"]
    assert [s.name for s in steps_of("neurons_2")] == ["neurons_2"]
    with pytest.raises(StageError, match="unknown stage 'neuron': choose one of batch_size"):
        steps_of("neuron")


def test_the_unknown_stage_hint_gives_a_step_that_is_not_a_stage(monkeypatch):
    """The hint's example step is one the list of stages does not already show (mnist's last step, epochs, is
    also a stage); a task whose steps are all stages gets no example."""
    with pytest.raises(StageError) as caught:
        steps_of("nosuch")
    assert str(caught.value).endswith("epochs, all (or a step such as neurons_3)")
    with pytest.raises(StageError, match=r"\(or a step such as dropout_rate\)$"):
        get_task("digits").steps_of("nosuch")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples" / "cancer_task"))
    with pytest.raises(StageError) as caught:
        get_task("cancer_task:CancerTask").steps_of("nosuch")
    assert str(caught.value) == "unknown stage 'nosuch': choose one of units, learn_rate, all"


def test_candidates_keep_the_seeds_order():
    epochs = steps_of("epochs")[0].candidates()
    assert epochs == [{"epochs": 20, "batch_size": b} for b in (20, 40, 60)]
    assert [list(point) for point in epochs] == [["epochs", "batch_size"]] * 3  # the seed's key order, not sorted
    assert [c["kernel_size"] for c in steps_of("kernel_size")[0].candidates()] == [(1, 1), (3, 3), (5, 5), (7, 7)]


def test_parse_overrides():
    assert parse_overrides("neurons_3=10,epochs=8") == {"neurons_3": 10, "epochs": 8}
    assert parse_overrides("kernel_size=(5,5), learn_rate=0.05, activation_1=tanh") == {
        "kernel_size": (5, 5),
        "learn_rate": 0.05,
        "activation_1": "tanh",
    }
    assert parse_overrides("pool_size=2x2") == {"pool_size": (2, 2)}
    assert parse_overrides("") == {}


@pytest.mark.parametrize("text", ["5", "5x5", "5 x 5", "5,5", "(5, 5)", "(5,5)", "[5, 5]"])
def test_every_pair_form_the_docs_show_is_read_as_the_pair(text):
    overrides = parse_overrides(f"neurons_3=10,kernel_size={text}")
    assert MNIST.validate({**MNIST.start, **overrides})["kernel_size"] == (5, 5)


@pytest.mark.parametrize("text", ["(5,5)x", "5x5x", "(((5,5", "x5x5", "5,,5", "(5x5", "5x5junk", "(5,5) junk 7"])
def test_a_pair_with_stray_characters_is_refused_not_read_past(text):
    overrides = parse_overrides(f"kernel_size={text}")
    with pytest.raises(HyperparameterError, match=r"must be a pair of positive integers such as \(3, 3\)") as caught:
        MNIST.validate({**MNIST.start, **overrides})
    assert f"kernel_size={text!r}" in str(caught.value)


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("neurons_3", StageError, "is not KEY=VALUE"),
        ("neurons_3=", StageError, "is not KEY=VALUE"),
        ("colour=red", HyperparameterError, "unknown hyperparameter 'colour'"),
    ],
)
def test_parse_overrides_rejects(text, error, message):
    with pytest.raises(error, match=message):
        parse_overrides(text)
