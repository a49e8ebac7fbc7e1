"""The run-tree schema reads what every version of the tool wrote: typed records in, the same records out, and
the older spellings (rungs as "true"/"false", "@" in low rungs' step names, a final's task tag holding its
classes) read as what they meant."""

from __future__ import annotations

import pytest

from mlflow_mnist import schema
from mlflow_mnist.schema import CandidateTags, FinalTags, FoldTags, GroupResult, GroupTags, Rung, TaskRef


def test_records_round_trip_through_their_tags():
    rung = Rung(2, 3, 6)
    group = GroupTags("kernel_size", ("kernel_size",), {"kernel_size": (3, 3)}, "abc", rung, schema.FRESH)
    assert GroupTags.parse(group.tags()) == group
    result = GroupResult({"kernel_size": (5, 5)}, 0.99, "kernel_size=(5, 5)")
    assert GroupResult.parse(result.tags()) == result
    candidate = CandidateTags("s", "trial 3", 1, "h", ("a",), schema.TRIAL_ROLE, rung, 3, {"a": "5x5"}, "k")
    assert CandidateTags.parse(candidate.tags()) == candidate
    fold = FoldTags("s", "key", "label", "h", 1, 2, "diverged", "host:1", "error text")
    assert FoldTags.parse(fold.tags()) == fold
    final = FinalTags(TaskRef("digits", "3v5"), "d", 450, {"search": "run"})
    assert FinalTags.parse(final.tags(), legacy_task="mnist") == final


@pytest.mark.parametrize(
    "tags, counts, rung",
    [
        ({}, True, None),  # a staged step: no rung, it decides
        ({schema.RUNG: "1", schema.RUNGS: "3", schema.BUDGET: "2"}, False, Rung(1, 3, 2)),
        ({schema.RUNG: "3", schema.RUNGS: "3", schema.BUDGET: "18"}, True, Rung(3, 3, 18)),
        # Written before rungs carried their count: only whether it was the last.
        ({schema.RUNG: "1", schema.BUDGET: "2", schema.LEGACY_FINAL_RUNG: "false"}, False, Rung(1, 2, 2)),
        ({schema.RUNG: "2", schema.BUDGET: "6", schema.LEGACY_FINAL_RUNG: "true"}, True, Rung(2, 2, 6)),
    ],
)
def test_a_rung_decides_only_at_the_top_whoever_wrote_it(tags, counts, rung):
    assert schema.counts(tags) is counts and Rung.parse(tags) == rung


def test_older_low_rungs_named_their_step_with_an_at_sign():
    assert schema.step_name({schema.STEP: "kernel_size@rung1"}) == "kernel_size"
    assert schema.step_name({schema.STEP: "optuna:wide@6"}) == "optuna:wide"
    assert schema.step_name({schema.STEP: "kernel_size"}) == "kernel_size"


def test_a_final_or_version_from_before_tasks_reads_as_the_default_task_with_its_classes():
    old_final = {schema.TASK: "2v7"}
    assert TaskRef.parse(old_final, legacy_task="mnist") == TaskRef("mnist", "2v7")
    assert TaskRef.parse({schema.TASK: "digits", schema.TASK_VARIANT: "all"}, legacy_task="mnist") == TaskRef(
        "digits", "all"
    )
    old_version = {schema.VERSION_TASK: "2v7"}
    assert TaskRef.parse_version(old_version, legacy_task="mnist") == TaskRef("mnist", "2v7")
    new_version = TaskRef("mnist", "2v7").version_tags()
    assert TaskRef.parse_version(new_version, legacy_task="mnist") == TaskRef.parse_version(
        old_version, legacy_task="mnist"
    )
    assert TaskRef.parse_version({}, legacy_task="mnist") is None  # an untagged version: not comparable


def test_a_space_travels_as_a_tag_and_comes_back_equal():
    from mlflow_mnist.tasks import get_task

    space = get_task("mnist").get_space("wide")
    name, distributions = schema.parse_space(schema.space_tag(space.name, space.distributions))
    assert name == "wide" and distributions == space.distributions
    assert schema.parse_space({}) is None
