"""The promotion gate: verification, McNemar's paired comparison, atomic promotion, final -> promote -> serve.

The statistics and the rule are tested on constructed predictions (no training); everything that needs real
models shares three tiny finals trained once per module (the shipped sample, 1 epoch) and gets a fresh copy of
their store per test.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import use_store
from services import free_port

import mlflow_mnist
from mlflow_mnist import candidate, model_files, registry
from mlflow_mnist.executors import JoblibExecutor
from mlflow_mnist.final_run import run_final
from mlflow_mnist.gate import (
    Champion,
    PromoteInputError,
    PromotionRejected,
    check_min_accuracy,
    compare_paired,
    decide,
    logged_errors,
    shared_examples,
)
from mlflow_mnist.registry import CHAMPION, VERSION_TAGS, promote
from mlflow_mnist.schema import (
    COPY_FOR,
    COPY_OF,
    COPY_RECORD,
    DATA_SOURCE,
    DIGEST,
    ENSEMBLE_MODEL,
    MEDIAN_MODEL,
    MEDIAN_RUN,
    TASK,
    TEST_DIGEST,
)

NAME = "mnist-2v7-convnet"


def _registered(client) -> list:
    """The store's registered models, without the campaign locks that training left (mlflow_mnist.lock)."""
    return [m for m in client.search_registered_models() if not m.name.startswith("mlflow-mnist-lock-")]


BAD_THRESHOLDS = [float("nan"), float("inf"), float("-inf"), 0, 0.0, 1.5, -0.1, "abc"]


# -- the statistics and the rule, on constructed predictions ------------------------------------------------------
def paired_predictions(n: int, *, candidate_only: int, champion_only: int, both_wrong: int = 0):
    """Binary labels (all 0) and two models' predictions with exactly the given disagreements."""
    labels = np.zeros(n, dtype=np.uint8)
    candidate, champion = labels.copy(), labels.copy()
    b_end, c_end = candidate_only, candidate_only + champion_only
    champion[:b_end] = 1  # the candidate right, the champion wrong
    candidate[b_end:c_end] = 1  # the reverse
    candidate[c_end : c_end + both_wrong] = champion[c_end : c_end + both_wrong] = 1
    return labels, candidate, champion


# Two-sided exact McNemar p = 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1, by hand:
#   b=8, c=1: n=9,  P(X<=1) = (1 + 9) / 512        -> p = 20/512 = 0.0390625
#   b=1, c=10: n=11, P(X<=1) = (1 + 11) / 2048     -> p = 24/2048 = 0.01171875
#   b=6, c=0: n=6,  P(X<=0) = 1/64                 -> p = 2/64 = 0.03125
#   b=5, c=0: n=5,  P(X<=0) = 1/32                 -> p = 2/32 = 0.0625
#   b=3, c=2: n=5,  P(X<=2) = (1 + 5 + 10) / 32    -> p = 1 (capped)
#   b=1, c=0: n=1,  P(X<=0) = 1/2                  -> p = 1
@pytest.mark.parametrize(
    "b, c, p, verdict",
    [
        (8, 1, 20 / 512, "better"),
        (1, 8, 20 / 512, "worse"),
        (1, 10, 24 / 2048, "worse"),
        (6, 0, 2 / 64, "better"),  # the fewest discordant images that can show a gain at 0.05
        (5, 0, 2 / 32, "noise"),
        (3, 2, 1.0, "noise"),
        (1, 0, 1.0, "noise"),
        (0, 0, 1.0, "noise"),
    ],
)
def test_mcnemar_counts_and_p_value_match_a_hand_computation(b, c, p, verdict):
    labels, candidate, champion = paired_predictions(100, candidate_only=b, champion_only=c, both_wrong=3)
    paired = compare_paired(labels, candidate, champion)
    assert (paired.candidate_only, paired.champion_only) == (b, c)
    assert (paired.candidate_right, paired.champion_right, paired.n) == (100 - c - 3, 100 - b - 3, 100)
    assert paired.p_value == pytest.approx(p, rel=1e-9)
    assert paired.verdict() == verdict
    swapped = compare_paired(labels, champion, candidate)  # the roles swapped: b and c swap, p stays
    assert (swapped.candidate_only, swapped.champion_only, swapped.p_value) == (c, b, paired.p_value)


def test_the_promote_line_names_both_counts_the_discordant_examples_and_p():
    labels, candidate, champion = paired_predictions(2060, candidate_only=3, champion_only=2, both_wrong=3)
    assert compare_paired(labels, candidate, champion).describe() == (
        "candidate 2,055/2,060 (99.76%), champion 2,054/2,060 (99.71%): candidate right where champion wrong on "
        "3 examples, the reverse on 2, McNemar exact p = 1.00: within the test set's noise"
    )


def test_a_one_image_gain_is_within_noise_and_keeps_the_champion():
    labels, candidate, champion = paired_predictions(2060, candidate_only=1, champion_only=0, both_wrong=6)
    kept = decide(labels, candidate, min_accuracy=0.9966, champion=Champion("3", predictions=champion))
    assert not kept.accepted
    assert kept.reason.startswith(
        "candidate 2,054/2,060 (99.71%), champion 2,053/2,060 (99.66%): candidate right where champion wrong on "
        "1 example, the reverse on 0, McNemar exact p = 1.00: within the test set's noise;"
    )
    assert "pass --force to replace version 3 anyway" in kept.reason
    forced = decide(labels, candidate, min_accuracy=0.9966, champion=Champion("3", predictions=champion), force=True)
    assert forced.accepted and forced.forced and "within the test set's noise" in forced.reason


def test_a_worse_candidate_is_refused_without_an_invitation_to_force_it():
    """A candidate worse beyond noise was refused with "pass --force to replace version 3 anyway": the line now
    says the champion stays, and suggests nothing (--force still works, for who means it)."""
    labels, candidate, champion = paired_predictions(2060, candidate_only=1, champion_only=12, both_wrong=3)
    kept = decide(labels, candidate, min_accuracy=0.99, champion=Champion("3", predictions=champion))
    assert not kept.accepted and kept.reason.endswith("worse beyond the test set's noise; version 3 stays the champion")
    assert "--force" not in kept.reason
    forced = decide(labels, candidate, min_accuracy=0.99, champion=Champion("3", predictions=champion), force=True)
    assert forced.accepted and forced.forced


@pytest.mark.parametrize(
    "b, c, wrong_elsewhere, minimum, champion_problem, force, accepted, says",
    [
        (0, 0, 5, 0.99, None, False, True, "no champion yet"),
        (0, 0, 5, 0.9999, None, True, False, "below --min-accuracy"),  # force never lowers the bar
        (8, 0, 5, 0.99, "", False, True, "better beyond the test set's noise"),
        (0, 8, 5, 0.99, "", False, False, "worse beyond the test set's noise"),
        (0, 8, 5, 0.99, "", True, True, "forced past version 2"),
        (0, 0, 5, 0.99, "its tags lack a valid test_accuracy", False, False, "pass --force to replace it anyway"),
        (0, 0, 5, 0.99, "its tags lack a valid test_accuracy", True, True, "forced"),
    ],
)
def test_the_replacement_rule(b, c, wrong_elsewhere, minimum, champion_problem, force, accepted, says):
    labels, candidate, champion = paired_predictions(
        2060, candidate_only=b, champion_only=c, both_wrong=wrong_elsewhere
    )
    current = None
    if champion_problem is not None:
        current = Champion("2", champion_problem, None if champion_problem else champion)
    decision = decide(labels, candidate, min_accuracy=minimum, champion=current, force=force)
    assert decision.accepted is accepted and says in decision.reason
    assert "+/-0.1" in decision.reason or decision.paired is not None  # the standard error, or the paired line


@pytest.mark.parametrize("value", BAD_THRESHOLDS)
def test_thresholds_that_are_not_a_share_are_refused(value):
    with pytest.raises(PromoteInputError, match="--min-accuracy .* give a number above 0 and at most 1"):
        check_min_accuracy(value)


@pytest.mark.parametrize("value, expected", [(1, 1.0), ("0.9966", 0.9966), (1e-9, 1e-9)])
def test_thresholds_in_range_pass(value, expected):
    assert check_min_accuracy(value) == expected


class Untouchable:
    """A tracking client that fails the test on any use."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the store was used ({name}) before the threshold was judged")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, 1.5])
def test_a_bad_threshold_refuses_before_touching_the_store(value):
    with pytest.raises(PromoteInputError, match="--min-accuracy"):
        promote(Untouchable(), "0", min_accuracy=value, run_id="0" * 32)


def test_promote_with_only_an_unfinished_final_says_which_and_what_to_do(store):
    """A final still training (or killed) is not "no final": the refusal names it and its status."""
    from mlflow import MlflowClient

    from mlflow_mnist import experiments, schema

    client = MlflowClient(store)
    experiment = experiments.experiment_id(client, "mnist")
    with pytest.raises(PromoteInputError, match="run `mlflow-mnist final` first"):  # a usage mistake: exit 2
        promote(client, experiment)
    running = client.create_run(experiment, tags={schema.LEVEL: schema.FINAL_LEVEL}).info.run_id
    with pytest.raises(PromoteInputError, match=f"the latest, {running}, is RUNNING; wait for it to finish"):
        promote(client, experiment)


def test_a_reader_refuses_a_deleted_experiment(store):
    """promote would register from it, analyze log a report into it: a deleted experiment is named as such."""
    from mlflow import MlflowClient

    import mlflow_mnist
    from mlflow_mnist import experiments
    from mlflow_mnist.tracking import TrackingError

    client = MlflowClient(store)
    client.delete_experiment(experiments.experiment_id(client, "gone"))
    with pytest.raises(TrackingError, match="experiment 'gone' is deleted in .*: restore it"):
        mlflow_mnist.promote(experiment="gone")


def test_shared_examples_are_found_by_content():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    assert shared_examples(train, test) == 0
    test[3], test[7], test[12] = train[10], train[0], train[10]  # a test image may be copied twice
    assert shared_examples(train, test) == 3
    test[12, 5, 5] ^= 1  # one pixel differs: another image
    assert shared_examples(train, test) == 2


def written_final(params: dict[str, str]):
    """A final run as the store returns it: its tags, the given params and one test dataset input."""
    from types import SimpleNamespace

    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from mlflow_mnist.schema import FinalTags, TaskRef

    tags = {**FinalTags(TaskRef("mnist", "2v7"), "feedc0de", 2060).tags(), DIGEST: "0123456789abcdef"}
    test_input = SimpleNamespace(
        dataset=SimpleNamespace(digest="feedc0de"), tags=[SimpleNamespace(key=MLFLOW_DATASET_CONTEXT, value="test")]
    )
    return SimpleNamespace(
        info=SimpleNamespace(run_id="f1"),
        data=SimpleNamespace(tags=tags, params={"data_digest": "0123456789abcdef", **params}),
        inputs=SimpleNamespace(dataset_inputs=[test_input]),
    )


def test_a_final_run_through_mlflow_run_is_read_by_the_values_its_command_used():
    """`mlflow run . -e final` logs its -P values first (classes '' for the default), so the final logs what it
    used beside them (effective_classes). The gate took the -P value: `make run` then `make promote` refused its
    own final as tampered."""
    candidate.check_written_once(written_final({"task": "mnist", "classes": "2v7"}))
    candidate.check_written_once(written_final({"task": "mnist", "classes": "''", "effective_classes": "2v7"}))
    with pytest.raises(PromotionRejected, match="tags say task mnist on 2v7, its params mnist on 3v5: tampered"):
        candidate.check_written_once(written_final({"task": "mnist", "classes": "''", "effective_classes": "3v5"}))
    with pytest.raises(PromotionRejected, match="its params mnist on '': tampered"):
        candidate.check_written_once(written_final({"task": "mnist", "classes": "''"}))


@pytest.mark.parametrize(
    "accuracy, n, errors",
    [(0.955, 200, 9), (1.0, 200, 0), (1 - 7 / 2060, 2060, 7), (0.9566, 200, None), (math.nan, 200, None)],
)
def test_a_logged_accuracy_is_read_as_an_error_count(accuracy, n, errors):
    assert logged_errors(accuracy, n) == errors


# -- real finals, trained once per module ---------------------------------------------------------------------
LEAKED = 7


@dataclass
class Finals:
    root: Path
    experiment_id: str
    good: str  # 1 seed, learning rate 0.1: about 95% on the sample's 200 test images
    poor: str  # 3 seeds, learning rate 1e-4: about 55%
    leaky: str  # trained on data whose training images include LEAKED test images


@pytest.fixture(scope="module")
def finals(tmp_path_factory, sample) -> Finals:

    from mlflow_mnist.campaign import Campaign

    root = tmp_path_factory.mktemp("finals")
    leaked = np.flatnonzero(np.isin(sample.y_test, (2, 7)))[:LEAKED]
    leaky_data = root / "leaky.npz"
    np.savez(
        leaky_data,
        x_train=np.concatenate([sample.x_train, sample.x_test[leaked]]),
        y_train=np.concatenate([sample.y_train, sample.y_test[leaked]]),
        x_test=sample.x_test,
        y_test=sample.y_test,
    )
    options = dict(folds=2, seed=0, epochs=1, experiment="mnist")
    with pytest.MonkeyPatch.context() as patch:
        use_store(patch, root)
        good = Campaign.open("sample", "2,7", **options)
        runs = [
            run_final(campaign, repeats=repeats, executor=JoblibExecutor(1), progress=False)["run_id"]
            for campaign, repeats in (
                (good, 1),
                (Campaign.open("sample", "2,7", overrides="learn_rate=0.0001", **options), 3),
                (Campaign.open(str(leaky_data), "2,7", **options), 1),
            )
        ]
    return Finals(root, good.experiment_id, *runs)


@dataclass
class Store:
    client: object
    uri: str
    finals: Finals

    @property
    def experiment_id(self) -> str:
        return self.finals.experiment_id

    def promote(self, run: str, **options):
        return promote(self.client, self.experiment_id, run_id=run, **options)

    def champion(self):
        return self.client.get_model_version_by_alias(NAME, CHAMPION)

    def model_folder(self, final: str) -> Path:
        model_id = self.client.get_run(final).data.tags[MEDIAN_MODEL]
        return local_folder(self.client.get_logged_model(model_id).artifact_location)

    def served_folder(self, version: str) -> Path:
        """Where the registry's files of ``version`` lie: what ``models:/<name>/<version>`` loads."""
        return local_folder(self.client.get_model_version_download_uri(NAME, version))


def local_folder(location: str) -> Path:
    return Path(urlparse(location).path if location.startswith("file:") else location)


@pytest.fixture
def fresh(finals, tmp_path, monkeypatch) -> Store:
    """A copy of the trained finals' store (models stay where they were logged), so each test starts clean."""
    from mlflow import MlflowClient

    shutil.copy(finals.root / "mlflow.db", tmp_path / "mlflow.db")
    uri = use_store(monkeypatch, tmp_path)  # the registry resolves models:/ URIs through the fluent client
    return Store(MlflowClient(uri), uri, finals)


def complete(version) -> bool:
    return set(VERSION_TAGS) <= set(version.tags) and bool(version.description)


@pytest.mark.slow
def test_promote_verifies_then_compares_paired(fresh):
    first = fresh.promote(fresh.finals.poor, min_accuracy=0.3)
    assert first["previous"] is None and "no champion yet" in first["reason"]
    better = fresh.promote(fresh.finals.good, min_accuracy=0.5)
    paired = better["paired"]
    assert (
        "better beyond the test set's noise" in better["reason"]
        and f"the reverse on {paired.champion_only}," in (better["reason"])
    )
    assert paired.candidate_right - paired.champion_right == paired.candidate_only - paired.champion_only > 0
    version = fresh.champion()
    assert str(version.version) == str(better["version"]) and complete(version)
    assert version.tags["previous_champion"] == str(first["version"]) and version.tags["decided_by"] == "gate"
    assert int(version.tags["test_errors"]) == 200 - paired.candidate_right
    assert int(version.tags["mcnemar_candidate_only"]) == paired.candidate_only
    assert json.loads(version.tags["class_names"]) == ["2", "7"]  # what the served answer's columns mean
    # The UI shows a model's versions from its logged model's tag (the champion's model page said "Not registered").
    linked = fresh.client.get_logged_model(version.source.removeprefix("models:/")).tags["mlflow.modelVersions"]
    assert json.loads(linked) == [{"name": NAME, "version": str(version.version)}]
    # A threshold below the task's own is said, and the version records the one applied.
    assert float(version.tags["min_accuracy"]) == 0.5
    assert "warning: --min-accuracy 50.0000% is below task 'mnist''s own threshold" in better["warning"]
    # The same model again: no image differs, p = 1: within noise, kept unless forced.
    with pytest.raises(PromotionRejected, match="on 0 examples, the reverse on 0, McNemar exact p = 1.00: within"):
        fresh.promote(fresh.finals.good, min_accuracy=0.5)
    assert fresh.champion().version == version.version
    forced = fresh.promote(fresh.finals.good, min_accuracy=0.5, force=True)
    assert fresh.champion().tags["decided_by"] == "--force" and str(fresh.champion().version) == str(forced["version"])
    # A worse model is refused beyond noise, even at a low bar.
    with pytest.raises(PromotionRejected, match="worse beyond the test set's noise"):
        fresh.promote(fresh.finals.poor, min_accuracy=0.3)


@pytest.mark.slow
def test_a_run_of_another_experiment_or_not_a_final_is_refused(fresh):
    client = fresh.client
    elsewhere = client.create_experiment("elsewhere")
    fake = client.create_run(elsewhere, tags={"mlflow_mnist.level": "final", "mlflow_mnist.task": "2v7"}).info.run_id
    client.log_metric(fake, "median_test_accuracy", 0.10)
    client.set_terminated(fake, "FINISHED")
    with pytest.raises(PromoteInputError, match=f"--run-id {fake} is a run of experiment 'elsewhere', not of 'mnist'"):
        fresh.promote(fake, min_accuracy=0.05)
    with pytest.raises(PromoteInputError, match="--min-accuracy nan"):  # the threshold is judged first
        fresh.promote(fake, min_accuracy=float("nan"))
    # In its own experiment it is still no final `final` made: it names no model.
    with pytest.raises(PromotionRejected, match="names no median seed model"):
        promote(client, elsewhere, run_id=fake, min_accuracy=0.05)
    running = client.create_run(fresh.experiment_id, tags={"mlflow_mnist.level": "final"}).info.run_id
    with pytest.raises(PromoteInputError, match="is a RUNNING final run, not a FINISHED final run"):
        fresh.promote(running, min_accuracy=0.5)
    with pytest.raises(PromoteInputError, match="not a run in this tracking store"):
        fresh.promote("0" * 32, min_accuracy=0.5)
    assert _registered(client) == []


@pytest.mark.slow
def test_an_accuracy_relogged_after_the_final_ended_is_not_believed(fresh):
    client, final = fresh.client, fresh.finals.poor
    run = client.get_run(final)
    seed = run.data.tags[MEDIAN_RUN]
    measured = run.data.metrics["median_test_accuracy"]
    for run_id, key in ((final, "median_test_accuracy"), (seed, "test_accuracy")):
        client.log_metric(run_id, key, 0.999)  # now: after the final ended; the latest value MLflow shows
    assert client.get_run(final).data.metrics["median_test_accuracy"] == 0.999
    done = fresh.promote(final, min_accuracy=0.3)
    assert done["accuracy"] == measured and float(fresh.champion().tags["test_accuracy"]) == measured
    # A value written with a forged timestamp inside the window is a second value logged while open: refused.
    client.log_metric(seed, "test_accuracy", 0.998, timestamp=run.info.end_time - 1)
    with pytest.raises(PromotionRejected, match="logged 2 different values of test_accuracy while its final was open"):
        fresh.promote(final, min_accuracy=0.3, force=True)


def forget_digest(store: Store, model_id: str) -> None:
    """Make ``model_id`` look logged before models carried their files' digest and runs named the model they
    logged (no API deletes a param)."""
    from mlflow_mnist.tracking import sqlite_file

    with contextlib.closing(sqlite3.connect(sqlite_file(store.uri))) as db, db:
        db.execute("DELETE FROM logged_model_params WHERE model_id = ? AND param_key = 'model_sha256'", (model_id,))
        db.execute("DELETE FROM params WHERE key = 'logged_model_id' AND value = ?", (model_id,))


@pytest.mark.slow
def test_a_swapped_model_file_is_refused(fresh):
    """Refused by the digest the final logged with the model; for a model logged before that digest existed, by
    its error count on the test set."""
    good, poor = fresh.model_folder(fresh.finals.good), fresh.model_folder(fresh.finals.poor)
    weights = next(good.rglob("*.keras"))
    backup = weights.read_bytes()
    try:
        shutil.copyfile(next(poor.rglob("*.keras")), weights)  # same architecture, other weights
        with pytest.raises(PromotionRejected, match=r"model m-\w+ are not the ones final run \w+ logged \(their "
                           r"sha256 is not the model's model_sha256 param\): changed since: tampered"):  # fmt: skip
            fresh.promote(fresh.finals.good, min_accuracy=0.5)
        forget_digest(fresh, fresh.client.get_run(fresh.finals.good).data.tags[MEDIAN_MODEL])
        with pytest.raises(PromotionRejected, match=r"\(\d+ errors in 200\) but its model .* makes \d+ errors"):
            fresh.promote(fresh.finals.good, min_accuracy=0.5)
    finally:
        weights.write_bytes(backup)
    assert _registered(fresh.client) == []


@pytest.mark.slow
def test_environment_files_changed_after_the_final_are_refused(fresh):
    """What `mlflow models serve` installs from (requirements.txt, python_env.yaml, conda.yaml) is no part of the
    test accuracy: an added package, passing every other check, is caught by the digest the final logged with its
    model (before it, the median and the ensemble were promoted with it). The honest files then pass."""
    client, finals = fresh.client, fresh.finals
    final = client.get_run(finals.poor)
    for kind, model_id in (("median", final.data.tags[MEDIAN_MODEL]), ("ensemble", final.data.tags[ENSEMBLE_MODEL])):
        folder = local_folder(client.get_logged_model(model_id).artifact_location)
        edits = [  # a package added: not final's pins (model_check); a pin moved: not final's files (the digest)
            ("requirements.txt", lambda text: text + b"an-attackers-package==6.6.6\n", "requirements.txt is not"),
            ("python_env.yaml", lambda text: re.sub(rb"pip==[^\n]+", b"pip==9.0.1", text), "are not the ones final"),
        ]
        for name, edit, says in edits:
            honest = (folder / name).read_bytes()
            (folder / name).write_bytes(edit(honest))
            try:
                with pytest.raises(PromotionRejected, match=says):
                    fresh.promote(finals.poor, model=kind, min_accuracy=0.3)
            finally:
                (folder / name).write_bytes(honest)
        assert _registered(client) == []
    assert fresh.promote(finals.poor, model="ensemble", min_accuracy=0.3)["version"]


@pytest.mark.slow
def test_a_model_made_while_the_final_ran_is_not_the_finals(fresh, tmp_path):
    """The third audit's way through: a model created while the final was open (a polling script needs only the
    final's or a seed's id; here back-dated into the window), naming that run as its source, later filled with the
    genuine files plus a package in requirements.txt and a digest of its maker's, and named by the final's tag.
    Before, the median and the ensemble were promoted with it. Each run records the model it logged (param
    logged_model_id, written once): a tag naming another model is refused. Readers that resume a final or
    continue a fold take the recorded model too, not the run's first model output."""
    from mlflow.entities import LoggedModelOutput

    from mlflow_mnist import final_resume, tracking

    client, finals = fresh.client, fresh.finals
    final = client.get_run(finals.poor)
    seed = final.data.tags[MEDIAN_RUN]
    for kind, tag, source in (("median", MEDIAN_MODEL, seed), ("ensemble", ENSEMBLE_MODEL, finals.poor)):
        genuine = final.data.tags[tag]
        planted = client.create_logged_model(experiment_id=fresh.experiment_id, source_run_id=source, name="planted")
        with contextlib.closing(sqlite3.connect(tracking.sqlite_file(fresh.uri))) as db, db:  # made in the window
            db.execute(
                "UPDATE logged_models SET creation_timestamp_ms = ? WHERE model_id = ?",
                (final.info.start_time + 1, planted.model_id),
            )
        folder = shutil.copytree(local_folder(client.get_logged_model(genuine).artifact_location), tmp_path / kind)
        requirements = folder / "requirements.txt"
        requirements.write_text(requirements.read_text() + "an-attackers-package==6.6.6\n")
        client.log_model_artifacts(planted.model_id, str(folder))
        client.log_model_params(planted.model_id, {"model_sha256": model_files.tree_sha256(folder)})
        client.finalize_logged_model(planted.model_id, "READY")
        client.log_outputs(source, [LoggedModelOutput(planted.model_id, step=0)])
        client.set_tag(finals.poor, tag, planted.model_id)
        with pytest.raises(
            PromotionRejected, match=f"tag names model {planted.model_id}, but run {source} logged model {genuine}"
        ):
            fresh.promote(finals.poor, model=kind, min_accuracy=0.3)
        client.set_tag(finals.poor, tag, genuine)
        assert tracking.run_model_id(client.get_run(source)) == genuine  # whatever order the outputs come in
    seed_run = client.get_run(seed)
    taken = final_resume._read_seed(client, seed_run, finals.poor, 0, 0, gate_data(final).y_test)
    assert taken is not None and taken.model_id == client.get_run(seed).data.params["logged_model_id"]
    assert _registered(client) == []
    assert fresh.promote(finals.poor, model="ensemble", min_accuracy=0.3)["version"]  # the genuine one passes


def gate_data(final) -> candidate.GateData:
    return candidate.load_gate_data(final, candidate.gate_task(final))


@pytest.mark.slow
def test_a_median_that_points_elsewhere_is_refused(fresh):
    client, finals = fresh.client, fresh.finals
    good_tags, poor_tags = client.get_run(finals.good).data.tags, client.get_run(finals.poor).data.tags
    client.set_tag(finals.good, MEDIAN_MODEL, poor_tags[MEDIAN_MODEL])
    with pytest.raises(PromotionRejected, match="was logged by run .* not by the median seed run .* tampered"):
        fresh.promote(finals.good, min_accuracy=0.5)
    client.set_tag(finals.good, MEDIAN_MODEL, good_tags[MEDIAN_MODEL])
    client.set_tag(finals.good, MEDIAN_RUN, poor_tags[MEDIAN_RUN])
    with pytest.raises(PromotionRejected, match="is not a seed of final run"):
        fresh.promote(finals.good, min_accuracy=0.5)
    # The poor final's luckiest seed named as its median (run and model consistent): not the lower middle.
    seeds = client.search_runs([fresh.experiment_id], f"tags.`mlflow.parentRunId` = '{finals.poor}'")
    best = max(seeds, key=lambda seed: seed.data.metrics["test_accuracy"])
    assert best.info.run_id != poor_tags[MEDIAN_RUN]
    best_model = client.search_logged_models([fresh.experiment_id], f"source_run_id = '{best.info.run_id}'")[0]
    client.set_tag(finals.poor, MEDIAN_RUN, best.info.run_id)
    client.set_tag(finals.poor, MEDIAN_MODEL, best_model.model_id)
    with pytest.raises(PromotionRejected, match="the lower middle of its 3 seeds is"):
        fresh.promote(finals.poor, min_accuracy=0.3)
    assert _registered(client) == []


@pytest.mark.slow
def test_a_run_reparented_in_place_of_a_seed_is_refused(fresh):
    """Seeds are found by their parent tag, which anyone can set: the good final (finished before the poor one
    ended, its test accuracy logged then) re-parented in place of the poor final's best seed keeps the count and
    the median. The poor final recorded its seed runs in a param when it ended; before, it was promoted."""
    client, finals = fresh.client, fresh.finals
    median = client.get_run(finals.poor).data.tags[MEDIAN_RUN]
    seeds = client.search_runs([fresh.experiment_id], f"tags.`mlflow.parentRunId` = '{finals.poor}'")
    best = max(seeds, key=lambda seed: seed.data.metrics["test_accuracy"])
    assert best.info.run_id != median
    client.set_tag(best.info.run_id, "mlflow.parentRunId", finals.good)
    client.set_tag(finals.good, "mlflow.parentRunId", finals.poor)
    client.set_tag(finals.good, "mlflow_mnist.level", "final_seed")
    with pytest.raises(PromotionRejected, match="are not the ones it recorded when it ended .seed_runs_sha256."):
        fresh.promote(finals.poor, min_accuracy=0.3)
    assert _registered(client) == []


@pytest.mark.slow
def test_data_tags_that_disagree_with_what_the_final_wrote_once_are_refused(fresh):
    """The leaky final's data tags pointed at clean data (its source and training digest), or the good final's
    test digest at another test set: the params and the test dataset input, written once, say otherwise. Before,
    two tags let a model trained on test images through the leak check."""
    client, finals = fresh.client, fresh.finals
    clean = client.get_run(finals.good).data.tags
    client.set_tag(finals.leaky, DATA_SOURCE, clean[DATA_SOURCE])
    client.set_tag(finals.leaky, DIGEST, clean[DIGEST])
    with pytest.raises(PromotionRejected, match="training-data digest tag differs from its data_digest param"):
        fresh.promote(finals.leaky, min_accuracy=0.5, force=True)
    client.set_tag(finals.good, TEST_DIGEST, "0123456789abcdef")
    with pytest.raises(PromotionRejected, match="test digest tag is not the digest of the one test dataset"):
        fresh.promote(finals.good, min_accuracy=0.5)
    assert _registered(client) == []


@pytest.mark.slow
def test_a_model_made_after_the_final_ended_is_refused(fresh):
    """Anyone can create a LoggedModel naming a seed run as its source; the store's own clock says it came after
    the final, so it is not the model the final measured."""
    client, finals = fresh.client, fresh.finals
    seed = client.get_run(finals.good).data.tags[MEDIAN_RUN]
    late = client.create_logged_model(experiment_id=fresh.experiment_id, source_run_id=seed, name="late")
    client.set_tag(finals.good, MEDIAN_MODEL, late.model_id)
    with pytest.raises(PromotionRejected, match="was created after final run .* ended"):
        fresh.promote(finals.good, min_accuracy=0.5)
    assert _registered(client) == []


@pytest.mark.slow
def test_an_end_time_moved_through_the_api_moves_no_window(fresh):
    """A finished run's end_time can be set again through the API (set_terminated works on a finished run). Moved a
    day on, a model created now naming the median seed (holding the same files) passed as made while the final was
    open; moved back to the model's creation, accuracies logged with that timestamp were the only ones in the window.
    The final logged its end as a write-once param, its last write, and the gate's windows end there."""
    client, finals = fresh.client, fresh.finals
    tags = client.get_run(finals.good).data.tags
    honest = tags[MEDIAN_MODEL]
    late = client.create_logged_model(experiment_id=fresh.experiment_id, source_run_id=tags[MEDIAN_RUN], name="late")
    client.log_model_artifacts(late.model_id, str(fresh.model_folder(finals.good)))
    client.finalize_logged_model(late.model_id, "READY")
    client.set_tag(finals.good, MEDIAN_MODEL, late.model_id)
    client.set_terminated(finals.good, "FINISHED", end_time=int(time.time() * 1000) + 86_400_000)
    with pytest.raises(PromotionRejected, match="was created after final run .* ended"):
        fresh.promote(finals.good, min_accuracy=0.5)
    client.set_tag(finals.good, MEDIAN_MODEL, honest)
    created = client.get_logged_model(honest).creation_timestamp
    for key in ("test_accuracy", "median_test_accuracy"):  # one seed: the final is its own seed run
        client.log_metric(finals.good, key, 0.999, timestamp=created)
    client.set_terminated(finals.good, "FINISHED", end_time=created)
    with pytest.raises(PromotionRejected, match="logged 2 different values of test_accuracy while its final was open"):
        fresh.promote(finals.good, min_accuracy=0.5)
    assert _registered(client) == []


@pytest.mark.slow
def test_a_final_that_never_ended_is_refused_even_when_marked_finished(fresh):
    """A final killed before its last write has no ended_ms; marked FINISHED through the API, its windows would
    end at an end_time anyone can set (any model created since, any value back-dated). A final made by a version
    that writes ended_ms (it also wrote data_sha256, as it started) is refused without it; an older final, which
    has neither, is judged by its end_time as before."""
    import sqlite3

    from mlflow_mnist.tracking import sqlite_file

    client, finals = fresh.client, fresh.finals
    with contextlib.closing(sqlite3.connect(sqlite_file(fresh.uri))) as db, db:  # as if killed before its last write
        db.execute("DELETE FROM params WHERE run_uuid = ? AND key = 'ended_ms'", (finals.good,))
    client.set_terminated(finals.good, "FINISHED", end_time=int(time.time() * 1000) + 86_400_000)
    with pytest.raises(PromotionRejected, match=f"final run {finals.good} has no ended_ms param, .* did not end"):
        fresh.promote(finals.good, min_accuracy=0.5)
    assert _registered(client) == []
    with contextlib.closing(sqlite3.connect(sqlite_file(fresh.uri))) as db, db:  # a final of before both params
        db.execute("DELETE FROM params WHERE run_uuid = ? AND key = 'data_sha256'", (finals.good,))
    assert fresh.promote(finals.good, min_accuracy=0.5)["version"]


@pytest.mark.slow
def test_a_task_tag_naming_a_module_is_not_imported(fresh, tmp_path, monkeypatch):
    """The gate loads the final's task by the name its run recorded. Before, a tag set to ``package.module:attr``
    made promote import that module: a file planted in the artifact store under the working directory (which
    ``python -m``, as MLproject runs promote, puts on sys.path) ran inside promote. A recorded name is never a
    module now: refused as tampered, nothing imported."""
    import uuid

    module, marker = f"planted_{uuid.uuid4().hex}", tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh.client.set_tag(fresh.finals.good, TASK, f"{module}:Task")
    with pytest.raises(PromotionRejected, match=rf"task tag '{module}:Task' is not a task's name: tampered"):
        fresh.promote(fresh.finals.good, min_accuracy=0.5)
    assert not marker.exists() and _registered(fresh.client) == []


@pytest.mark.slow
def test_an_ensemble_whose_code_or_members_were_edited_is_refused_before_its_code_runs(fresh):
    """The ensemble is a pyfunc whose code is an artifact: promote would run it to measure it. Code edited in the
    artifact store (here: to stop the process), or a member model swapped for another final's, is refused before
    anything is loaded; the honest ensemble then passes."""
    client, finals = fresh.client, fresh.finals
    model_id = client.get_run(finals.poor).data.tags[ENSEMBLE_MODEL]
    location = client.get_logged_model(model_id).artifact_location
    folder = Path(urlparse(location).path if location.startswith("file:") else location)
    code, member = folder / "ensemble_model.py", next(folder.glob("artifacts/seed_*/data/model.keras"))
    honest_code, honest_member = code.read_bytes(), member.read_bytes()
    try:
        code.write_bytes(honest_code + b"\nraise SystemExit('the artifact code ran inside promote')\n")
        with pytest.raises(PromotionRejected, match="does not load this version's ensemble_model.py"):
            fresh.promote(finals.poor, model="ensemble", min_accuracy=0.3)
        code.write_bytes(honest_code)
        member.write_bytes(next(fresh.model_folder(finals.good).rglob("*.keras")).read_bytes())
        with pytest.raises(PromotionRejected, match="members are not the 3 models of final run"):
            fresh.promote(finals.poor, model="ensemble", min_accuracy=0.3)
    finally:
        code.write_bytes(honest_code)
        member.write_bytes(honest_member)
    assert _registered(client) == []
    assert fresh.promote(finals.poor, model="ensemble", min_accuracy=0.3)["version"]


def plant_code(folder: Path, ran: Path) -> str:
    """An attacker's loader in a seed's model ``folder`` (``code/``), named by its MLmodel: it records that it ran
    in ``ran``, then loads the genuine Keras model (a model that can be right on the test set and wrong elsewhere).
    Returns the MLmodel's honest bytes."""
    import uuid

    module = f"evil_{uuid.uuid4().hex}"
    (folder / "code").mkdir()
    (folder / "code" / f"{module}.py").write_text(
        f"import pathlib\n\ndef _load_pyfunc(path):\n    pathlib.Path({str(ran)!r}).write_text('ran')\n"
        "    import mlflow.keras.load\n\n    return mlflow.keras.load._load_pyfunc(path)\n"
    )
    honest = (folder / "MLmodel").read_bytes()
    set_in_mlmodel(folder / "MLmodel", "python_function", loader_module=module, code="code")
    return honest


def set_in_mlmodel(mlmodel: Path, flavor: str, **values) -> None:
    import yaml

    content = yaml.safe_load(mlmodel.read_text())
    content["flavors"][flavor].update(values)
    mlmodel.write_text(yaml.safe_dump(content))


@pytest.mark.slow
def test_a_median_whose_mlmodel_names_code_in_its_folder_is_refused_before_the_code_runs(fresh, tmp_path):
    """The median seed's MLmodel edited in the artifact store to load an attacker's module shipped in the folder:
    promote would run it (to measure the model), and so would every load of the champion. Refused before anything
    is loaded; a champion registered that way (by a gate before this check) cannot be compared, and
    load_champion refuses it, without running it either. Before, the code ran and the model was promoted."""
    client, finals = fresh.client, fresh.finals
    folder, ran = fresh.model_folder(finals.good), tmp_path / "ran"
    honest = plant_code(folder, ran)
    try:
        with pytest.raises(PromotionRejected, match=r"median seed model m-\w+'s files: MLmodel's python_function "
                           "flavour has options final does not write: code: tampered"):  # fmt: skip
            fresh.promote(finals.good, min_accuracy=0.5)
        assert not ran.exists() and _registered(client) == []
        forget_digest(fresh, client.get_run(finals.good).data.tags[MEDIAN_MODEL])  # as a model of before it
        with pytest.MonkeyPatch.context() as patch:  # a gate without the check registers it (and runs the code)
            patch.setattr(candidate, "check_model_folder", lambda *args, **kwargs: None)
            version = str(fresh.promote(finals.good, min_accuracy=0.5)["version"])
        assert ran.exists() and (fresh.served_folder(version) / "code").is_dir()
        ran.unlink()
    finally:
        (folder / "MLmodel").write_bytes(honest)
        shutil.rmtree(folder / "code")
    with pytest.raises(PromotionRejected, match="cannot be compared with: its files are not a model final writes"):
        fresh.promote(finals.good, min_accuracy=0.5)
    with pytest.raises(registry.ChampionUnverified, match=rf"version {version} \(@champion\) are not a model final"):
        mlflow_mnist.load_champion(name=NAME)
    assert not ran.exists() and str(fresh.champion().version) == version


@pytest.mark.slow
def test_mlmodel_paths_outside_the_model_folder_are_refused(fresh):
    """MLflow joins an MLmodel's paths to the folder (os.path.join): an absolute path, or one through '..', loads
    files the gate's digest does not cover, still writable in the artifact store (here the candidate's own live
    folder, and another model's). The median's keras data, the ensemble's artifacts paths and a member's keras
    data: each refused. Before, each was promoted, and load_champion served whatever those files became."""
    import yaml

    client, finals = fresh.client, fresh.finals
    median = fresh.model_folder(finals.good)
    ensemble = local_folder(
        client.get_logged_model(client.get_run(finals.poor).data.tags[ENSEMBLE_MODEL]).artifact_location
    )
    member = sorted(ensemble.glob("artifacts/seed_*"))[0]
    outside = os.path.relpath(fresh.model_folder(finals.leaky) / "data", median)  # ../../<other model>/artifacts/data
    cases = [
        (median / "MLmodel", {"keras": {"data": str(median / "data")}}, "good", "median", "MLmodel's keras.data '/"),
        (median / "MLmodel", {"keras": {"data": outside}}, "good", "median", "MLmodel's keras.data '../"),
        (ensemble / "MLmodel", "artifacts", "poor", "ensemble", r"MLmodel's python_function.artifacts.seed_\d.path '/"),
        (member / "MLmodel", {"keras": {"data": str(member / "data")}}, "poor", "ensemble",
         f"artifacts/{member.name}/MLmodel's keras.data '/"),
    ]  # fmt: skip
    for mlmodel, change, final, model, says in cases:
        honest = mlmodel.read_bytes()
        try:
            if change == "artifacts":
                content = yaml.safe_load(honest)
                for name, info in content["flavors"]["python_function"]["artifacts"].items():
                    info["path"] = str(ensemble / "artifacts" / name)
                mlmodel.write_text(yaml.safe_dump(content))
            else:
                for flavor, values in change.items():
                    set_in_mlmodel(mlmodel, flavor, **values)
            with pytest.raises(PromotionRejected, match=f"files: {says}.* is not a relative path inside the model "
                               "folder: tampered, or not the measured model; @champion unchanged"):  # fmt: skip
                fresh.promote(getattr(finals, final), model=model, min_accuracy=0.3)
        finally:
            mlmodel.write_bytes(honest)
    assert _registered(client) == []


@pytest.mark.slow
def test_a_symlink_out_of_the_candidates_folder_is_a_one_line_tampered_refusal(fresh, tmp_path):
    """A symbolic link in the candidate's folder to a file outside the artifact store: MLflow refuses to download
    it, and promote said the tracking store had failed ("check that it is up"). It is the model's folder that is
    wrong: one line, tampered, naming the model; @champion stays."""
    client, finals = fresh.client, fresh.finals
    before = str(fresh.promote(finals.poor, min_accuracy=0.3)["version"])
    (tmp_path / "secret.txt").write_text("not a model file")
    link = fresh.model_folder(finals.good) / "secret.txt"
    os.symlink(tmp_path / "secret.txt", link)
    model_id = client.get_run(finals.good).data.tags[MEDIAN_MODEL]
    try:
        with pytest.raises(PromotionRejected) as refused:
            fresh.promote(finals.good, min_accuracy=0.5)
    finally:
        link.unlink()
    said = str(refused.value)
    assert "\n" not in said and said.startswith(f"not promoted: the files of model {model_id} cannot be downloaded (")
    assert said.endswith("): tampered, or not the measured model; @champion unchanged") and "outside" in said
    assert str(fresh.champion().version) == before


@pytest.mark.slow
def test_files_swapped_right_after_verification_are_not_what_champion_serves(fresh):
    """The audit's race: the candidate's weights replaced by the poor final's as soon as the gate has measured it
    (before the lock, the champion and the registration). The version serves the copy the gate verified, tagged
    with its digest and the measured model's id; the candidate's own folder no longer matters."""
    client, finals = fresh.client, fresh.finals
    good_id = client.get_run(finals.good).data.tags[MEDIAN_MODEL]
    weights = next(fresh.model_folder(finals.good).rglob("*.keras"))
    honest, honest_sha256 = weights.read_bytes(), model_files.tree_sha256(fresh.model_folder(finals.good))
    good = client.get_run(finals.good)
    data = registry.load_gate_data(good, registry.gate_task(good))
    measured: list[np.ndarray] = []

    def predict(uri: str, examples):
        labels = registry.predicted_labels(uri, examples)
        if not measured:  # the candidate's verification: now its files in the artifact store change
            measured.append(labels)
            shutil.copyfile(next(fresh.model_folder(finals.poor).rglob("*.keras")), weights)
        return labels

    try:
        done = fresh.promote(finals.good, min_accuracy=0.5, predict=predict)
        served = registry.predicted_labels(f"models:/{NAME}@{CHAMPION}", data.x_test)
        assert np.array_equal(served, measured[0]), f"@champion serves {np.mean(served == data.y_test):.1%}"
        version = fresh.champion()
        assert str(version.version) == str(done["version"]) and complete(version)
        assert (
            version.tags["model_sha256"]
            == honest_sha256
            == model_files.tree_sha256(fresh.served_folder(done["version"]))
        )
        assert version.tags["verified_model"] == good_id
        copy = client.get_logged_model(version.source.removeprefix("models:/"))
        assert copy.model_id != good_id and copy.tags[COPY_OF] == good_id
        assert copy.params == {key: version.tags[key] for key in COPY_RECORD}  # what it verified, written once
        assert copy.source_run_id == client.get_run(finals.good).data.tags[MEDIAN_RUN] == version.run_id
        # Loaded by its alias just above, MLflow wrote registered_model_meta into the served folder: not counted.
        loaded = mlflow_mnist.load_champion(name=NAME)
        assert np.array_equal(np.asarray(loaded.predict(data.x_test)).argmax(axis=1), measured[0])
    finally:
        weights.write_bytes(honest)


@pytest.mark.slow
def test_files_changed_while_registered_are_refused_before_the_alias_moves(fresh, monkeypatch):
    """The registered copy's files are read back and hashed before the alias moves: a copy changed on its way
    (here, right after its upload) leaves @champion where it was."""
    finals = fresh.finals
    before = str(fresh.promote(finals.poor, min_accuracy=0.3)["version"])
    upload = registry.register_copy

    def upload_then_change(client, name, candidate, verified, **record):
        copy_id = upload(client, name, candidate, verified, **record)
        folder = local_folder(client.get_logged_model(copy_id).artifact_location)
        (folder / "MLmodel").write_bytes((folder / "MLmodel").read_bytes() + b"\n")
        return copy_id

    monkeypatch.setattr(registry, "register_copy", upload_then_change)
    with pytest.raises(PromotionRejected, match=r"the files of version 2, read back from the registry, are not the"):
        fresh.promote(finals.good, min_accuracy=0.5)
    assert str(fresh.champion().version) == before


class Killed(BaseException):
    """A kill at a chosen point: nothing after it runs, no ``except Exception`` catches it."""


@pytest.mark.slow
def test_a_copy_left_by_a_promote_killed_after_its_upload_is_deleted_by_the_next(fresh, monkeypatch):
    """A promote killed between its copy's upload and its version leaves a copy no version uses; the next promote
    of that name deletes it (under the same lock) and leaves every copy a version stands on."""
    finals, client = fresh.finals, fresh.client
    fresh.promote(finals.poor, min_accuracy=0.3)
    upload = registry.register_copy

    def upload_then_die(*args, **options):
        upload(*args, **options)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(registry, "register_copy", upload_then_die)
        with pytest.raises(Killed):
            fresh.promote(finals.good, min_accuracy=0.5)

    def copies() -> set[str]:
        found = client.search_logged_models([fresh.experiment_id], filter_string="name = 'registered-" + NAME + "'")
        return {model.model_id for model in found}

    def used() -> set[str]:
        return {registry.source_model_id(version) for version in client.search_model_versions(f"name = '{NAME}'")}

    assert len(copies()) == 2 and len(copies() - used()) == 1  # the one left unused
    # A copy of the same LoggedModel name made for another registered model ("a.b" and "a-b" share one): not ours.
    other = client.create_logged_model(
        fresh.experiment_id, name="registered-" + NAME, tags={COPY_OF: "m-1", COPY_FOR: NAME.replace("-", ".")}
    ).model_id
    fresh.promote(finals.good, min_accuracy=0.5)
    assert copies() - {other} == used() and len(used()) == 2 and other in copies()


@pytest.mark.slow
def test_champion_files_changed_after_promotion_make_it_incomparable(fresh):
    """The champion's weights replaced in the artifact store after its promotion: the next promote finds its
    files' digest is not the one its version recorded, and says so; only --force replaces it."""
    finals = fresh.finals
    version = str(fresh.promote(finals.good, min_accuracy=0.5)["version"])
    weights = next(fresh.served_folder(version).rglob("*.keras"))
    honest = weights.read_bytes()
    try:
        shutil.copyfile(next(fresh.model_folder(finals.poor).rglob("*.keras")), weights)
        changed = "its files are not the ones the gate verified (their sha256 is not its copy's model_sha256 param"
        with pytest.raises(
            PromotionRejected, match=rf"version {version}\) cannot be compared with: {re.escape(changed)}"
        ):
            fresh.promote(finals.good, min_accuracy=0.5)
        assert str(fresh.champion().version) == version
        with pytest.raises(registry.ChampionUnverified, match=rf"version {version} \(@champion\) are not the ones"):
            mlflow_mnist.load_champion(name=NAME)
        forced = fresh.promote(finals.good, min_accuracy=0.5, force=True)
        assert changed in forced["reason"] and fresh.champion().tags["decided_by"] == "--force"
    finally:
        weights.write_bytes(honest)


@pytest.mark.slow
def test_export_champion_writes_only_the_verified_files(fresh, tmp_path):
    """`export-champion` (what to serve instead of models:/...@champion, which reads the live artifact store)
    writes @champion's files into a new folder only when their digest is the one its copy recorded, read back
    from that folder; a folder that holds anything, or changed files, refuse in one line and write nothing."""
    from conftest import cli

    finals = fresh.finals
    version = str(fresh.promote(finals.good, min_accuracy=0.5)["version"])
    out = tmp_path / "served" / "champion"
    meta = fresh.served_folder(version) / "registered_model_meta"  # outside the digest: anyone can write it
    meta.write_text("planted: by anyone who can write the artifact store\n")
    done = cli("export-champion", "--name", NAME, "--out", str(out))
    assert not (out / "registered_model_meta").exists()
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = registry.gate_record(fresh.client, fresh.champion()).values["model_sha256"]
    assert model_files.tree_sha256(out) == recorded
    assert f"{NAME} version {version} (@champion) to {out}: the files the gate verified (sha256 {recorded})" in (
        done.stdout
    )
    assert sorted(path.name for path in out.parent.iterdir()) == ["champion"]  # no staging folder left
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")  # would land elsewhere than --out says
    for taken in (out, tmp_path / "link"):
        again = cli("export-champion", "--name", NAME, "--out", str(taken))
        assert again.returncode == 2 and again.stderr.strip().splitlines() == [
            f"error: --out {taken} already exists and is not an empty folder: name a new folder"
        ]
    assert not (tmp_path / "nowhere").exists()
    weights = next(fresh.served_folder(version).rglob("*.keras"))
    honest = weights.read_bytes()
    try:
        shutil.copyfile(next(fresh.model_folder(finals.poor).rglob("*.keras")), weights)
        refused = cli("export-champion", "--name", NAME, "--out", str(tmp_path / "second"))
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-2000:]
        assert f"version {version} (@champion) are not the ones the gate verified" in refused.stderr
        assert not (tmp_path / "second").exists() and "Traceback" not in refused.stderr
    finally:
        weights.write_bytes(honest)
    nobody = cli("export-champion", "--name", "no-such-model", "--out", str(tmp_path / "third"))
    assert nobody.returncode == 2 and nobody.stderr.startswith("error: 'no-such-model' has no @champion")
    assert not (tmp_path / "third").exists()


@pytest.mark.slow
def test_champion_files_changed_with_tags_to_match_are_still_incomparable(fresh):
    """The audit's t4: the registered copy's weights swapped for the poor final's, and the version's model_sha256,
    test_accuracy and test_errors tags set to match them (or the digest tag deleted): version tags are anyone's to
    set. Before, the next promote compared with the swapped champion and load_champion loaded it. What the gate
    verified is written once on the copy (its params): the champion cannot be compared, load_champion refuses."""
    client, finals = fresh.client, fresh.finals
    version = str(fresh.promote(finals.good, min_accuracy=0.5)["version"])
    folder = fresh.served_folder(version)
    weights = next(folder.rglob("*.keras"))
    honest = weights.read_bytes()
    try:
        shutil.copyfile(next(fresh.model_folder(finals.poor).rglob("*.keras")), weights)
        scored = client.get_run(finals.poor).data.metrics["median_test_accuracy"]
        forged = {"model_sha256": model_files.tree_sha256(folder), "test_accuracy": repr(scored)}
        forged["test_errors"] = str(logged_errors(scored, 200))
        for key, value in forged.items():
            client.set_model_version_tag(NAME, version, key, value)
        changed = "its files are not the ones the gate verified (their sha256 is not its copy's model_sha256 param"
        with pytest.raises(
            PromotionRejected, match=rf"version {version}\) cannot be compared with: {re.escape(changed)}"
        ):
            fresh.promote(finals.good, min_accuracy=0.5)
        unverified = rf"version {version} \(@champion\) are not the ones the gate verified"
        with pytest.raises(registry.ChampionUnverified, match=unverified):
            mlflow_mnist.load_champion(name=NAME)
        client.delete_model_version_tag(NAME, version, "model_sha256")  # no digest tag: still the copy's param
        with pytest.raises(registry.ChampionUnverified, match=unverified):
            mlflow_mnist.load_champion(name=NAME)
        with pytest.raises(PromotionRejected, match=re.escape(changed)):  # not read as a version before hashing
            fresh.promote(finals.good, min_accuracy=0.5)
        assert str(fresh.champion().version) == version
    finally:
        weights.write_bytes(honest)
    client.delete_logged_model(fresh.champion().source.removeprefix("models:/"))  # the record goes with its copy
    with pytest.raises(PromotionRejected, match=r"compared with: its source model models:/\S+ cannot be read"):
        fresh.promote(finals.good, min_accuracy=0.5)
    with pytest.raises(registry.ChampionUnverified, match="cannot be read .RESOURCE_DOES_NOT_EXIST."):
        mlflow_mnist.load_champion(name=NAME)


@pytest.mark.slow
def test_training_data_that_contains_test_images_is_refused(fresh):
    with pytest.raises(PromotionRejected, match=f"{LEAKED} of the 200 test examples .* are also among its training"):
        fresh.promote(fresh.finals.leaky, min_accuracy=0.5, force=True)
    assert _registered(fresh.client) == []


@pytest.mark.slow
def test_data_whose_short_digests_collide_is_not_the_data_the_final_trained_on(fresh, monkeypatch, sample, tmp_path):
    """The task's digests are 64 bits: a dataset made to collide with the leaky final's (here its training images
    without the leaked test images, reported under the leaky digests) passed the digest check and then the leak
    check, since the data the gate loads holds no test image. The full sha256 the final logged tells them apart."""
    import dataclasses

    tags = fresh.client.get_run(fresh.finals.leaky).data.tags
    real_get_task = candidate.get_task

    class CollidingTask:
        def __init__(self, name):
            self.task = real_get_task(name)

        def __getattr__(self, name):
            return getattr(self.task, name)

        def load(self, source, **options):
            clean = self.task.load(str(tmp_path / "clean.npz"), **options)
            return dataclasses.replace(clean, train_digest=tags[DIGEST], test_digest=tags[TEST_DIGEST])

    np.savez(tmp_path / "clean.npz", **{k: getattr(sample, k) for k in ("x_train", "y_train", "x_test", "y_test")})
    monkeypatch.setattr(candidate, "get_task", CollidingTask)
    with pytest.raises(PromotionRejected, match="is no longer what final run .* was trained and tested on"):
        fresh.promote(fresh.finals.leaky, min_accuracy=0.5, force=True)
    assert _registered(fresh.client) == []


@pytest.mark.slow
def test_a_champion_without_valid_tags_is_replaced_only_with_force(fresh):
    client = fresh.client
    fresh.promote(fresh.finals.poor, min_accuracy=0.3)
    # Someone registers a version by hand and moves the alias to it: no gate tags at all.
    model_id = client.get_run(fresh.finals.poor).data.tags[MEDIAN_MODEL]
    by_hand = client.create_model_version(NAME, f"models:/{model_id}", model_id=model_id)
    client.set_registered_model_alias(NAME, CHAMPION, by_hand.version)
    with pytest.raises(PromotionRejected, match="cannot be compared with: its tags lack a valid test_accuracy, "):
        fresh.promote(fresh.finals.good, min_accuracy=0.5)
    assert fresh.champion().version == by_hand.version
    forced = fresh.promote(fresh.finals.good, min_accuracy=0.5, force=True)
    assert fresh.champion().tags["previous_champion"] == str(by_hand.version) == str(forced["previous"])
    # A version without the gate's record on a copy (as promote registered before it kept one: on the measured model
    # itself, with its tags) is judged by its tags. An accuracy tag that no longer describes its model: --force only.
    tags, good_model = fresh.champion().tags, client.get_run(fresh.finals.good).data.tags[MEDIAN_MODEL]
    older = client.create_model_version(
        NAME, f"models:/{good_model}", tags={**tags, "test_accuracy": "0.999"}, model_id=good_model
    )
    client.set_registered_model_alias(NAME, CHAMPION, older.version)
    with pytest.raises(PromotionRejected, match="its test_accuracy tag 99.9000% is not what its model scores"):
        fresh.promote(fresh.finals.good, min_accuracy=0.5)
    # Valid tags on another test set: incomparable, even with --force (a new test set is a new model name).
    client.set_model_version_tag(NAME, older.version, "test_accuracy", tags["test_accuracy"])
    client.set_model_version_tag(NAME, older.version, "test_digest", "0123456789abcdef")
    with pytest.raises(PromotionRejected, match="different test sets cannot be compared, even with --force"):
        fresh.promote(fresh.finals.good, min_accuracy=0.5, force=True)


@pytest.mark.slow
def test_a_champion_tag_naming_another_test_set_or_task_does_not_lock_it_in(fresh):
    """The audit's t8 a: the champion's test_digest tag pointed at another test set made it irreplaceable, even
    with --force, and so did its task_variant tag naming other classes. The gate reads both from what its copy
    recorded, written once; the tags are ignored."""
    client, finals = fresh.client, fresh.finals
    first = str(fresh.promote(finals.poor, min_accuracy=0.3)["version"])
    client.set_model_version_tag(NAME, first, "test_digest", "0123456789abcdef")
    better = fresh.promote(finals.good, min_accuracy=0.5)
    assert "better beyond the test set's noise" in better["reason"] and better["previous"] == first
    client.set_model_version_tag(NAME, str(better["version"]), "task_variant", "3v5")
    forced = fresh.promote(finals.good, min_accuracy=0.5, force=True)
    assert forced["previous"] == str(better["version"]) and fresh.champion().tags["decided_by"] == "--force"


@pytest.mark.slow
def test_test_set_uses_counts_finals_across_the_store(fresh):
    client = fresh.client
    digest = client.get_run(fresh.finals.good).data.tags[TEST_DIGEST]
    assert registry.count_test_set_uses(client, digest) == 3  # good, poor, leaky: same test images
    elsewhere = client.create_experiment("elsewhere")
    for tags, status in (
        ({TEST_DIGEST: digest}, "FINISHED"),
        ({TEST_DIGEST: digest}, "FINISHED"),
        ({TEST_DIGEST: digest}, "KILLED"),  # not a finished look at the test set
        ({TEST_DIGEST: "0123456789abcdef"}, "FINISHED"),  # another test set
    ):
        run = client.create_run(elsewhere, tags={"mlflow_mnist.level": "final", **tags}).info.run_id
        client.set_terminated(run, status)
    assert registry.count_test_set_uses(client, digest) == 5
    client.delete_experiment(elsewhere)  # deleting the experiment does not undo the looks
    assert registry.count_test_set_uses(client, digest) == 5
    done = fresh.promote(fresh.finals.good, min_accuracy=0.5)
    assert done["test_set_uses"] == 5 and fresh.champion().tags["test_set_uses"] == "5"
    assert "scored 5 finals in this tracking store" in done["warning"]


@pytest.mark.slow
def test_two_promotes_at_once_move_the_alias_once(fresh):
    """Two promotes held together inside the critical section (each waits for the other while reading the
    champion): without a lock both would register and move the alias; with it one refuses in one line."""
    from mlflow import MlflowClient

    fresh.promote(fresh.finals.poor, min_accuracy=0.3)
    meeting, serial = threading.Barrier(2), threading.Lock()

    def predict(uri: str, examples):
        if "mlflow-mnist-champion-" in uri:  # the champion's local copy, read inside the critical section
            try:
                meeting.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass  # the other promote is not in here with us
        with serial:  # Keras model loading is not meant to run in two threads at once
            return registry.predicted_labels(uri, examples)

    outcomes: list[tuple[str, str]] = []

    def one() -> None:
        try:
            done = promote(MlflowClient(fresh.uri), fresh.experiment_id, run_id=fresh.finals.good, min_accuracy=0.5,
                           predict=predict)  # fmt: skip
            outcomes.append(("promoted", str(done["version"])))
        except PromotionRejected as error:
            outcomes.append(("refused", str(error)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(kind for kind, _ in outcomes) == ["promoted", "refused"], outcomes
    refusal = next(text for kind, text in outcomes if kind == "refused")
    assert "\n" not in refusal and refusal.startswith("not promoted")
    promoted = next(text for kind, text in outcomes if kind == "promoted")
    assert str(fresh.champion().version) == promoted
    assert len(fresh.client.search_model_versions(f"name = '{NAME}'")) == 2


def promote_command(store: Store) -> list[str]:
    return [sys.executable, "-m", "mlflow_mnist", "promote", "--experiment", "mnist", "--run-id",
            store.finals.good, "--min-accuracy", "0.5"]  # fmt: skip


def child_env(store: Store) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.mark.slow
def test_a_promote_process_refuses_in_one_line_while_another_holds_the_lock(fresh):
    from mlflow_mnist.lock import RegistryLock

    before = fresh.promote(fresh.finals.poor, min_accuracy=0.3)["version"]
    with RegistryLock(fresh.client, NAME, command="another promote"):
        refused = subprocess.run(promote_command(fresh), env=child_env(fresh), capture_output=True, text=True)
    said = [line for line in refused.stderr.splitlines() if line.startswith(("not promoted", "error"))]
    assert refused.returncode != 0 and not refused.stdout and "Traceback" not in refused.stderr
    assert len(said) == 1 and f"another promotion is working on registered model '{NAME}'" in said[0], said
    assert "another promote (pid" in said[0] and str(fresh.champion().version) == before
    # Once it is free, the same command promotes: test_sigkill_during_promote_... runs it to the end.


@pytest.mark.slow
def test_sigkill_during_promote_leaves_the_alias_on_a_complete_version(fresh):
    """Kill promote at a random moment, and right after its version appears: the alias stays on the previous
    champion or moves to a version with every tag and its description; no version is ever incomplete."""
    client = fresh.client
    before = str(fresh.promote(fresh.finals.poor, min_accuracy=0.3)["version"])
    database = fresh.uri.removeprefix("sqlite:///")

    def newest_version() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute("select max(version) from model_versions where name = ?", (NAME,)).fetchone()[0] or 0

    def check_and_reset() -> str:
        versions = client.search_model_versions(f"name = '{NAME}'")
        assert all(complete(version) for version in versions), [v.version for v in versions if not complete(v)]
        champion = fresh.champion()
        outcome = "unchanged" if str(champion.version) == before else "moved"
        assert outcome == "unchanged" or complete(champion)
        client.set_registered_model_alias(NAME, CHAMPION, before)
        return outcome

    started = time.monotonic()
    done = subprocess.run(promote_command(fresh), env=child_env(fresh), capture_output=True, text=True, timeout=300)
    whole = time.monotonic() - started
    assert done.returncode == 0 and done.stdout.startswith("promoted:"), done.stderr
    assert check_and_reset() == "moved"
    outcomes = []
    rng = random.Random(18)
    for delay in [rng.uniform(0.4, 1.0) * whole]:  # one: the aimed kills below are the ones that can find a gap
        child = subprocess.Popen(promote_command(fresh), env=child_env(fresh), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        outcomes.append(check_and_reset())
    for _ in range(2):  # aimed at the moment between the version's creation and the alias move
        known = newest_version()
        child = subprocess.Popen(promote_command(fresh), env=child_env(fresh), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        while child.poll() is None and newest_version() == known:
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        child.wait()
        outcomes.append(check_and_reset())
    print(f"kills: {outcomes}")  # shown with -s: how many landed before the alias moved


# -- the whole path: final -> promote -> load by alias -> serve ----------------------------------------------
@pytest.mark.slow
def test_final_promote_load_and_serve(store):
    import mlflow
    from mlflow import MlflowClient

    from mlflow_mnist import api
    from mlflow_mnist.campaign import Campaign

    campaign = Campaign.open("sample", "2,7", folds=2, seed=0, epochs=1, overrides="", experiment="mnist")
    tuned = api.tune(stage="kernel_size", data="sample", folds=2, epochs=1, experiment="mnist", n_jobs=1,
                     log_models=False, progress=False)  # fmt: skip
    best_kernel = tuned.outcome.groups[0].best["params"]
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
    task = campaign.data  # the sample's 2s and 7s, relabelled 0 and 1
    assert np.sum(matrix["matrix"]) == len(task.y_test) and matrix["labels"] == ["2", "7"]
    accuracy = final.data.metrics["test_accuracy"]
    assert accuracy == pytest.approx(np.trace(matrix["matrix"]) / len(task.y_test))
    contexts = {i.tags[0].value for i in final.inputs.dataset_inputs}
    assert contexts == {"train", "test"}

    done = promote(client, campaign.experiment_id, min_accuracy=0.5)
    name = done["name"]
    assert name == NAME and str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert "+/-" in done["reason"] and "200 test examples" in done["reason"]
    with pytest.raises(PromotionRejected, match="below --min-accuracy"):
        promote(client, campaign.experiment_id, min_accuracy=0.99999)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"

    # A clearly worse model (tiny learning rate) passes a low bar but not the champion, unless forced.
    worse = Campaign.open("sample", "2,7", folds=2, seed=0, epochs=1, overrides="learn_rate=0.0001", experiment="mnist")
    run_final(worse, repeats=3, executor=JoblibExecutor(1), progress=False)
    with pytest.raises(PromotionRejected, match="worse beyond the test set's noise"):
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

    # ... and, exported as the README says (the files the gate verified, in a folder of ours), answers HTTP on loopback.
    exported = Path("served-champion").resolve()
    champion = client.get_model_version_by_alias(name, CHAMPION)
    expected = (str(champion.version), champion.tags["model_sha256"])
    assert mlflow_mnist.export_champion(name=name, out=exported) == expected
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            "mlflow",
            "models",
            "serve",
            "-m",
            str(exported),
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


def test_a_paged_search_is_read_to_its_last_page():
    """MLflow answers at most 1,000 runs (100 registered models) a page: the one paging loop every search of the
    store uses (runs, lock generations, copies, versions, test-set uses) follows the tokens to the end, from none."""
    from mlflow_mnist.paging import all_pages

    class Page(list):
        def __init__(self, items, token):
            super().__init__(items)
            self.token = token

    pages = {None: Page([1, 2], "b"), "b": Page([], "c"), "c": Page([3], "")}
    asked = []

    def search(token):
        asked.append(token)
        return pages[token]

    assert all_pages(search) == [1, 2, 3] and asked == [None, "b", "c"]


def test_promote_without_a_final_names_the_experiment_it_looked_in_and_where_one_is(store):
    """A user who tuned into a new experiment after their final ran promote and read "no finished final run in
    this experiment", without the experiment's name (the line saying which was chosen is held back for mistakes):
    the line names it, and the experiment that has the newest finished final."""
    from mlflow_mnist import tracking
    from mlflow_mnist.candidate import PromoteInputError, final_run
    from mlflow_mnist.schema import FINAL_LEVEL, LEVEL

    client = tracking.connect(store)
    with_final = client.create_experiment("digits")
    run = client.create_run(with_final, tags={LEVEL: FINAL_LEVEL})
    client.set_terminated(run.info.run_id, "FINISHED")
    tuned_only = client.create_experiment("tunedonly")
    with pytest.raises(PromoteInputError) as refused:
        final_run(client, tuned_only, None)
    assert str(refused.value) == (
        "no finished final run in experiment 'tunedonly': pass --experiment 'digits' (it has one), or run "
        "`mlflow-mnist final` first"
    )
    client.delete_run(run.info.run_id)
    with pytest.raises(PromoteInputError, match=r"^no finished final run in experiment 'tunedonly': run `mlflow"):
        final_run(client, tuned_only, None)
