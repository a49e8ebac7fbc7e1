"""Run seals (mlflow_mnist/seal.py): with $MLFLOW_MNIST_SEAL_KEY_FILE set, resume, reuse and the gate take only runs
this installation sealed; runs written through the API by anyone without the key are trained again or refused.
Without the variable, everything is read as before."""

from __future__ import annotations

import os
import shutil
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import cli, use_store

from mlflow_mnist import schema, tracking
from mlflow_mnist.executors import JoblibExecutor
from mlflow_mnist.final_resume import PROBABILITIES
from mlflow_mnist.final_run import run_final
from mlflow_mnist.registry import CHAMPION, PromotionRejected, promote
from mlflow_mnist.seal import SEAL_KEY_ENV, RunSeal, SealKeyError, active_seal
from mlflow_mnist.strategies.staged import StagedGrid
from mlflow_mnist.tasks import get_task
from mlflow_mnist.testing import fold_result, open_campaign, run, tiny_dataset

KEY = b"k" * 40
DATA = tiny_dataset()


def fake_run(*, params=None, metrics=None, tags=None, run_id="r1", experiment_id="1"):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, experiment_id=experiment_id),
        data=SimpleNamespace(params=dict(params or {}), metrics=dict(metrics or {}), tags=dict(tags or {})),
    )


def sealed(run, key: bytes = KEY):
    run.data.tags[schema.SEAL] = RunSeal(key).sign(run)
    return run


def a_fold_run(**changes):
    values = dict(
        params={"epochs": "6", schema.LOGGED_MODEL_ID: "m-1"},
        metrics={"heldout_accuracy": 0.97},
        tags={schema.LEVEL: schema.FOLD_LEVEL, schema.FOLD_KEY: "abc", schema.STATUS: "ok", schema.PARENT: "p1"},
    )
    values.update(changes)
    return sealed(fake_run(**values))


def test_a_seal_covers_what_readers_act_on_and_not_what_may_change_after_the_run_ends():
    seal = RunSeal(KEY)
    assert seal.verifies(a_fold_run())
    for tamper in (
        lambda run: run.data.params.update({"epochs": "7"}),
        lambda run: run.data.params.update({"added": "1"}),  # params are write-once, but new ones can be added
        lambda run: run.data.metrics.update({"heldout_accuracy": 0.99}),
        lambda run: run.data.tags.update({schema.FOLD_KEY: "other"}),
        lambda run: run.data.tags.update({schema.STATUS: "diverged"}),
        lambda run: setattr(run.info, "run_id", "r2"),  # a copy of a sealed run's records is not sealed
        lambda run: setattr(run.info, "experiment_id", "2"),
        lambda run: run.data.tags.pop(schema.SEAL),
    ):
        run = a_fold_run()
        tamper(run)
        assert not seal.verifies(run)
    # A fold re-parented (taken over by a later run), named a best child, described in the UI: still sealed.
    run = a_fold_run()
    run.data.tags.update({schema.PARENT: "p2", schema.NOTE: "hello", schema.REUSED: "x", schema.BEST_CHILD: "y"})
    assert seal.verifies(run)
    # A trial moved under another search is not: only folds and seeds are taken over (their readers re-check them).
    trial = sealed(fake_run(tags={schema.LEVEL: schema.CANDIDATE_LEVEL, schema.TRIAL: "3", schema.PARENT: "search-a"}))
    assert seal.verifies(trial)
    trial.data.tags[schema.PARENT] = "search-b"
    assert not seal.verifies(trial)
    # A seal tag anyone wrote: not a digest, it is no seal, and never an error (non-ASCII broke compare_digest).
    for forged in ("é" * 64, "x", "0" * 10_000, "A" * 64, ""):
        run = a_fold_run()
        run.data.tags[schema.SEAL] = forged
        assert not seal.verifies(run)
    assert not RunSeal(b"o" * 40).verifies(a_fold_run())  # another key's seal
    assert "k" * 8 not in repr(seal)


def _key_file(folder: Path, content: bytes = KEY, mode: int = 0o600) -> Path:
    path = folder / "seal.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _owned_by_another(path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    os.chown(path, 65534, -1)  # nobody
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda folder: folder / "missing.key", "names no file that exists"),
        (lambda folder: folder, "not a regular file"),
        (lambda folder: _key_file(folder, mode=0o644), "chmod 600"),
        (lambda folder: _key_file(folder, mode=0o620), "chmod 600"),
        (lambda folder: _key_file(folder, content=b"short-secret-value\n"), "fewer than 32"),
        (lambda folder: _owned_by_another(_key_file(folder)), "belongs to another user"),
    ],
)
def test_an_unusable_key_file_is_refused_in_one_line_that_never_shows_the_key(tmp_path, monkeypatch, make, says):
    monkeypatch.setenv(SEAL_KEY_ENV, str(make(tmp_path)))
    with pytest.raises(SealKeyError) as refused:
        active_seal()
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert "short-secret" not in str(refused.value) and "kkkk" not in str(refused.value)


def test_a_key_given_as_the_variables_value_is_not_printed(monkeypatch):
    """From an audit: the variable set to the key itself, not its file's path, was echoed in the refusal, with
    advice to write a new key into a file named after the old one."""
    key = "SealKeyZZ0123456789abcdefghijklmnopqrstuvwxyz+/="
    monkeypatch.setenv(SEAL_KEY_ENV, key)
    with pytest.raises(SealKeyError) as refused:
        active_seal()
    assert "names no file that exists" in str(refused.value) and "SealKeyZZ" not in str(refused.value)


def test_no_variable_means_no_seal_an_empty_one_is_refused_and_a_good_file_gives_one(tmp_path, monkeypatch):
    monkeypatch.delenv(SEAL_KEY_ENV, raising=False)
    assert active_seal() is None
    for empty in ("", " "):  # set to nothing: a script's mistake, not a wish to turn the checks off
        monkeypatch.setenv(SEAL_KEY_ENV, empty)
        with pytest.raises(SealKeyError, match="is set but empty"):
            active_seal()
    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    assert active_seal().verifies(a_fold_run())


def test_a_run_someone_else_wrote_into_while_it_was_open_is_left_unsealed(store, tmp_path, monkeypatch, caplog):
    """The seal vouches for what the driver wrote, not for what the store holds when the run ends: an attacker who
    logs a metric at a later step, a tag or a param into an open run gets nothing sealed."""
    from mlflow_mnist.campaign import NoLock

    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    campaign = open_campaign(store, dataset=DATA, experiment="mnist", folds=3, epochs=2, task="mnist")
    writer, client = campaign.writer(NoLock()), campaign.client

    def fold_run(meddle) -> str:
        run_id = writer.start("fold 1/3", schema.FOLD_LEVEL, tags={schema.FOLD_KEY: "k", schema.STATUS: "ok"})
        writer.log_results(run_id, params={"epochs": 2}, history={"val_accuracy": [0.8, 0.9]},
                           scores={schema.HELDOUT_ACCURACY: 0.9})  # fmt: skip
        meddle(run_id)
        writer.finish(run_id)
        return run_id

    honest = fold_run(lambda run_id: None)
    assert active_seal().verifies(client.get_run(honest))
    for meddle in (
        lambda run_id: client.log_metric(run_id, schema.HELDOUT_ACCURACY, 0.999, step=10**12),
        lambda run_id: client.set_tag(run_id, schema.STATUS, "ok "),
        lambda run_id: client.log_param(run_id, schema.LOGGED_MODEL_ID, "m-forged"),
    ):
        run_id = fold_run(meddle)
        assert schema.SEAL not in client.get_run(run_id).data.tags
        assert f"run {run_id} was written by someone else while it was open" in caplog.text
    # A value logged at an earlier step changes no latest value, which is all the seal and its readers use.
    early = fold_run(lambda run_id: client.log_metric(run_id, schema.HELDOUT_ACCURACY, 0.999, step=-1))
    assert active_seal().verifies(client.get_run(early))


def test_tune_refuses_an_unusable_key_file_before_anything_is_written(tmp_path):
    key = _key_file(tmp_path, mode=0o644)
    done = cli(
        "tune", "--stage", "neurons", "--data", "sample", "--epochs", "1",
        env={SEAL_KEY_ENV: str(key), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: ${SEAL_KEY_ENV} ({key}) can be read or written by others: `chmod 600 {key}` (it signs your runs)"
    ]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


class Worker:
    def __init__(self):
        self.trained: Counter = Counter()

    def __call__(self, task):
        self.trained[task.key] += 1
        return fold_result(task, 0.9 + 0.001 * task.fold)


def _search(uri: str) -> Worker:
    campaign = open_campaign(uri, dataset=DATA, experiment="mnist", folds=3, epochs=2, task="mnist")
    steps = tuple(get_task("mnist").steps_of("kernel_size"))
    strategy = StagedGrid.from_request(campaign.request(stage="kernel_size", steps=steps))
    worker = Worker()
    run(campaign, strategy, worker=worker, with_model=False)
    return worker


def runs_of(uri: str) -> list:
    client = tracking.connect(uri)
    return tracking.search_all(client, [client.get_experiment_by_name("mnist").experiment_id])


def _fold_runs(uri: str) -> list:
    return [r for r in runs_of(uri) if r.data.tags.get(schema.LEVEL) == schema.FOLD_LEVEL]


def test_with_a_key_a_search_reuses_only_the_folds_it_sealed(store, tmp_path, monkeypatch):
    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    first = _search(store)
    assert first.trained and max(first.trained.values()) == 1
    assert all(schema.SEAL in r.data.tags for r in _fold_runs(store))
    assert not _search(store).trained  # all sealed: all reused
    # What a forger with API access does to steer the next search: raise a finished fold's score.
    client = tracking.connect(store)
    target = _fold_runs(store)[0]
    client.log_metric(target.info.run_id, schema.HELDOUT_ACCURACY, 0.9999, step=99)
    again = _search(store)
    assert again.trained == Counter({target.data.tags[schema.FOLD_KEY]: 1})  # that fold alone, trained again


def test_a_command_without_the_key_on_a_sealed_campaign_says_nothing_is_checked(store, tmp_path, monkeypatch):
    from mlflow_mnist.api import open_campaign as api_open_campaign

    settings = dict(dataset=DATA, experiment="mnist", folds=3, epochs=2, task="mnist")
    said: list[str] = []
    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    _search(store)
    api_open_campaign(notify=said.append, **settings)[1]()
    assert not [line for line in said if "warning" in line]
    monkeypatch.delenv(SEAL_KEY_ENV)
    api_open_campaign(notify=said.append, **settings)[1]()
    assert f"warning: this campaign's runs are sealed, but ${SEAL_KEY_ENV} is not set" in said[-1]


def test_without_a_key_nothing_is_sealed_and_an_unsealed_store_resumes_as_before(store, tmp_path, monkeypatch):
    monkeypatch.delenv(SEAL_KEY_ENV, raising=False)
    first = _search(store)
    assert not any(schema.SEAL in r.data.tags for r in _fold_runs(store))
    assert not _search(store).trained
    # The same store once a key is set: runs nobody sealed are not trusted, so every fold trains again.
    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    assert set(_search(store).trained) == set(first.trained)


def test_with_a_key_a_fold_continues_only_from_a_model_its_sealed_run_logged(store, tmp_path, monkeypatch):
    from mlflow_mnist.campaign import NoLock

    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    campaign = open_campaign(store, dataset=DATA, experiment="mnist", folds=3, epochs=2, task="mnist")
    writer = campaign.writer(NoLock())
    files = {"MLmodel": b"flavors: {}\n", "model.keras": b"weights"}

    def fold_run(key: str) -> str:
        run_id = writer.start("fold 1/3", schema.FOLD_LEVEL, tags={schema.FOLD_KEY: key, schema.STATUS: "ok"})
        writer.log_model(run_id, files)
        return run_id

    sealed_run = fold_run("k1")
    writer.finish(sealed_run)
    assert campaign.load_checkpoint("k1")["model.keras"] == b"weights"
    campaign.client.log_metric(sealed_run, schema.HELDOUT_ACCURACY, 0.5)  # changed after it ended
    assert campaign.load_checkpoint("k1") is None
    # A run written as ours but without the key (forged, or before the key was set): not continued from.
    forged = fold_run("k2")
    campaign.client.set_terminated(forged, "FINISHED")
    assert campaign.load_checkpoint("k2") is None
    # A sealed fold that logged no model, given one as an output afterwards (anyone can add outputs): none read.
    from mlflow.entities import LoggedModelOutput

    modelless = writer.start("fold 2/3", schema.FOLD_LEVEL, tags={schema.FOLD_KEY: "k3", schema.STATUS: "ok"})
    writer.finish(modelless)
    campaign.client.log_outputs(modelless, [LoggedModelOutput(tracking.run_model_id(campaign.client.get_run(
        forged)), step=0)])  # fmt: skip
    assert campaign.load_checkpoint("k3") is None


def test_with_a_key_only_sealed_steps_carry_forward_and_final_trains_only_a_sealed_searchs_pick(
    store, tmp_path, monkeypatch
):
    from mlflow_mnist.final_run import search_config
    from mlflow_mnist.params import StageError
    from mlflow_mnist.strategies.random import RandomSearch
    from mlflow_mnist.tasks.mnist.steps import SEED

    def campaign():
        return open_campaign(store, dataset=DATA, experiment="mnist", folds=3, epochs=2, task="mnist")

    monkeypatch.delenv(SEAL_KEY_ENV, raising=False)  # runs anyone could have written
    _search(store)
    random_search = RandomSearch(SEED, n_trials=2, batch=2, seed=0, overrides={}, search_key="r1")
    run(campaign(), random_search, worker=Worker(), with_model=False)
    assert campaign().read_state().step_bests
    _, search_id = search_config(campaign(), "latest")
    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    assert not campaign().read_state().step_bests  # nothing carried forward from them
    with pytest.raises(StageError, match="no finished joint search"):
        search_config(campaign(), "latest")
    with pytest.raises(StageError, match=f"--search {search_id} has no valid seal of the key"):
        search_config(campaign(), search_id)


def test_with_a_key_final_configs_skip_a_trial_run_added_under_a_sealed_search(store, tmp_path, monkeypatch):
    from mlflow_mnist.final_run import search_configs
    from mlflow_mnist.strategies.random import RandomSearch
    from mlflow_mnist.tasks.mnist.steps import SEED

    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    campaign = open_campaign(store, dataset=DATA, experiment="mnist", folds=3, epochs=2, task="mnist")
    run(campaign, RandomSearch(SEED, n_trials=3, batch=3, seed=0, overrides={}, search_key="r1"), worker=Worker(),
        with_model=False)  # fmt: skip
    client = campaign.client
    trials = [r for r in runs_of(store) if r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL]
    genuine = trials[0]
    # A forger's trial under the user's search: the best score of all, and a configuration of its choosing.
    forged = client.create_run(campaign.experiment_id, tags={**genuine.data.tags, schema.TRIAL: "7"}).info.run_id
    for key, value in {**genuine.data.params, "neurons_1": "99"}.items():
        client.log_param(forged, key, value)
    client.log_metric(forged, "mean_heldout_accuracy", 0.99999)
    client.set_terminated(forged, "FINISHED")
    configs, _ = search_configs(campaign, "latest", 3)
    assert len(configs) == 3 and 99 not in [config["neurons_1"] for config in configs]


def test_with_a_key_a_trial_run_added_under_a_search_never_reaches_its_sampler_or_a_warm_start(
    store, tmp_path, monkeypatch
):
    """A forger's finished trial under the user's search, with the best score of all: with the key it reads as cut
    short (its configuration is trained and measured when the search goes on, its score never told); without the
    key it is taken as finished, as before."""
    import json

    from mlflow_mnist.strategies.optuna import OptunaSearch
    from mlflow_mnist.tasks.mnist.steps import SEED

    def campaign():
        return open_campaign(store, dataset=DATA, experiment="mnist", folds=2, epochs=6, task="mnist")

    def search(trials: int) -> OptunaSearch:
        strategy = OptunaSearch(SEED, n_trials=trials, batch=2, seed=0, search_key="s1")
        run(campaign(), strategy, worker=Worker(), with_model=False)
        return strategy

    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    search(2)
    state = campaign().read_state()
    assert state.candidates and all(record.finished for record in state.candidates)  # the driver's: all sealed
    client = tracking.connect(store)
    top = max(
        (r for r in runs_of(store) if r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL),
        key=lambda r: int(r.data.tags[schema.RUNG]),
    )
    forged_values = {**json.loads(top.data.tags[schema.SAMPLED]), "neurons_1": 99}
    forged = client.create_run(
        top.info.experiment_id,
        tags={**top.data.tags, schema.TRIAL: "7", schema.SAMPLED: json.dumps(forged_values), schema.SEAL: "0" * 64},
    ).info.run_id
    client.log_metric(forged, schema.MEAN_HELDOUT_ACCURACY, 0.99999)
    client.set_terminated(forged, "FINISHED")

    def forged_record(state):
        return next(record for record in state.candidates if record.tags.trial == 7)

    state = campaign().read_state()
    assert not forged_record(state).finished
    assert forged_values not in campaign().warm_configs(state)
    told = search(3).study.trials
    assert max(trial.value or 0.0 for trial in told) < 0.99  # trained again, and told what it scored
    assert forged_values in [trial.params for trial in told]
    monkeypatch.delenv(SEAL_KEY_ENV)  # without the key: anyone's trial is taken as it is
    assert forged_record(campaign().read_state()).finished


def test_seal_runs_adopts_a_campaign_begun_without_the_key(store, tmp_path, monkeypatch):
    monkeypatch.delenv(SEAL_KEY_ENV, raising=False)
    first = _search(store)
    refused = cli("seal-runs", "--experiment", "mnist", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: ${SEAL_KEY_ENV} is not set: set it to the key file the campaign's runs are sealed with"
    ]
    key = {SEAL_KEY_ENV: str(_key_file(tmp_path))}
    done = cli("seal-runs", "--experiment", "mnist", env=key, cwd=tmp_path)
    finished = [r for r in runs_of(store) if r.info.status == "FINISHED"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sealed {len(finished)} finished run(s); 0 were sealed already"
    assert len(finished) > len(first.trained)  # the folds and the runs above them
    monkeypatch.setenv(SEAL_KEY_ENV, key[SEAL_KEY_ENV])
    assert not _search(store).trained  # trusted now: nothing trained again
    assert all(active_seal().verifies(run) for run in finished)
    again = cli("seal-runs", "--experiment", "mnist", env=key, cwd=tmp_path)  # the rerun's runs, sealed as written
    now = len([r for r in runs_of(store) if r.info.status == "FINISHED"])
    assert again.stdout.strip() == f"sealed 0 finished run(s); {now} were sealed already"


def test_seal_runs_records_the_model_an_older_run_logged_before_it_seals_it(store, tmp_path, monkeypatch):
    from mlflow.entities import LoggedModelOutput

    from mlflow_mnist.api import seal_runs
    from mlflow_mnist.campaign import NoLock

    monkeypatch.delenv(SEAL_KEY_ENV, raising=False)
    campaign = open_campaign(store, dataset=DATA, experiment="mnist", folds=3, epochs=2, task="mnist")
    writer, client = campaign.writer(NoLock()), campaign.client
    maker = writer.start("fold 1/3", schema.FOLD_LEVEL, tags={schema.FOLD_KEY: "k1", schema.STATUS: "ok"})
    model_id = writer.log_model(maker, {"MLmodel": b"flavors: {}\n", "model.keras": b"weights"})
    writer.finish(maker)
    # A run from before runs recorded their model as a param: its model is its first output.
    older = writer.start("fold 2/3", schema.FOLD_LEVEL, tags={schema.FOLD_KEY: "k2", schema.STATUS: "ok"})
    client.log_outputs(older, [LoggedModelOutput(model_id, step=0)])
    writer.finish(older)
    monkeypatch.setenv(SEAL_KEY_ENV, str(_key_file(tmp_path)))
    assert seal_runs(experiment="mnist") == (2, 0)
    run = client.get_run(older)
    assert run.data.params[schema.LOGGED_MODEL_ID] == model_id and active_seal().verifies(run)
    assert tracking.run_model_id(run) == model_id


@dataclass
class SealedFinals:
    root: Path
    key: Path
    sealed: str  # 3 seeds, written with the key
    unsealed: str  # 1 seed, written without it


@pytest.fixture(scope="module")
def sealed_finals(tmp_path_factory) -> SealedFinals:

    from mlflow_mnist.campaign import Campaign

    root = tmp_path_factory.mktemp("sealed_finals")
    key = _key_file(root)
    options = dict(folds=2, seed=0, epochs=1, experiment="mnist")
    with pytest.MonkeyPatch.context() as patch:
        use_store(patch, root)
        patch.delenv(SEAL_KEY_ENV, raising=False)
        unsealed = run_final(Campaign.open("sample", "2,7", **options), executor=JoblibExecutor(1), progress=False)
        patch.setenv(SEAL_KEY_ENV, str(key))
        sealed = run_final(
            Campaign.open("sample", "2,7", **options), repeats=3, executor=JoblibExecutor(1), progress=False
        )
    return SealedFinals(root, key, sealed["run_id"], unsealed["run_id"])


@pytest.fixture
def sealed_store(sealed_finals, tmp_path, monkeypatch):
    """A copy of the finals' store (their models stay where they were logged), the key set."""

    shutil.copy(sealed_finals.root / "mlflow.db", tmp_path / "mlflow.db")
    uri = use_store(monkeypatch, tmp_path)
    monkeypatch.setenv(SEAL_KEY_ENV, str(sealed_finals.key))
    client = tracking.connect(uri)
    return client, client.get_experiment_by_name("mnist").experiment_id


def _seeds(client, experiment_id: str, final_id: str) -> list:
    children = tracking.search_all(client, [experiment_id], f"tags.`{schema.PARENT}` = '{final_id}'")
    return [run for run in children if run.data.tags.get(schema.LEVEL) == schema.FINAL_SEED_LEVEL]


@pytest.mark.slow
def test_the_gate_with_a_key_promotes_a_sealed_final_and_refuses_unsealed_or_changed_ones(sealed_finals, sealed_store):
    client, experiment_id = sealed_store
    seal = active_seal()

    def promote_run(run_id: str, **options):
        return promote(client, experiment_id, run_id=run_id, min_accuracy=0.5, model="ensemble", **options)

    # Written before the key was set (or forged whole, through the API): refused with the key, judged without it.
    with pytest.raises(PromotionRejected, match=f"final run {sealed_finals.unsealed} has no valid seal of the key in"):
        promote(client, experiment_id, run_id=sealed_finals.unsealed, min_accuracy=0.5, seal=seal)
    assert promote(client, experiment_id, run_id=sealed_finals.unsealed, min_accuracy=0.5)["version"] == "1"
    # Sealed, and promoted twice (promote writes nothing to the runs it judges: their seals still hold).
    assert promote_run(sealed_finals.sealed, seal=seal, force=True)["version"] == "2"
    assert promote_run(sealed_finals.sealed, seal=seal, force=True)["version"] == "3"
    # From a shell without the variable: judged as before, with a warning that its seal went unchecked.
    unchecked = promote_run(sealed_finals.sealed, force=True)
    assert f"final run {sealed_finals.sealed} is sealed, but ${SEAL_KEY_ENV} is not set" in unchecked["warning"]
    assert unchecked["version"] == "4"
    # A seed changed after the final ended (its seed tag rewritten): the whole final is refused.
    seed = _seeds(client, experiment_id, sealed_finals.sealed)[1]
    client.set_tag(seed.info.run_id, schema.SEED, "0")
    with pytest.raises(PromotionRejected, match=f"run {seed.info.run_id}, a seed of final run {sealed_finals.sealed}"):
        promote_run(sealed_finals.sealed, seal=seal, force=True)
    assert client.get_model_version_by_alias("mnist-2v7-convnet", CHAMPION).version == 4


@pytest.mark.slow
def test_a_rerun_final_takes_only_the_sealed_seeds_of_a_killed_final(sealed_finals, sealed_store):
    from mlflow_mnist.campaign import Campaign

    client, experiment_id = sealed_store

    def rerun() -> dict:
        campaign = Campaign.open("sample", "2,7", folds=2, seed=0, epochs=1, experiment="mnist")
        return run_final(campaign, repeats=3, executor=JoblibExecutor(1), progress=False)

    seeds = _seeds(client, experiment_id, sealed_finals.sealed)
    # A finished final marked KILLED through the API: it is sealed, so it finished; its seeds are not taken.
    client.set_terminated(sealed_finals.sealed, "KILLED")
    assert rerun()["seeds_taken"] == 0
    for seed in seeds:  # back under it, as they were
        client.set_tag(seed.info.run_id, schema.PARENT, sealed_finals.sealed)
    # As a final killed after its seeds finished leaves it: never sealed. Its sealed, unchanged seeds are taken.
    client.delete_tag(sealed_finals.sealed, schema.SEAL)
    client.log_metric(seeds[0].info.run_id, schema.SEED_ACCURACY, 1.0, step=1)  # one seed changed since
    probabilities = Path(urlparse(client.get_run(seeds[1].info.run_id).info.artifact_uri).path) / PROBABILITIES
    saved = np.load(probabilities)
    np.save(probabilities, saved * 0.999 + 0.0005)  # another seed's probabilities: the same predictions
    assert (np.load(probabilities).argmax(1) == saved.argmax(1)).all()
    summary = rerun()
    assert summary["seeds_taken"] == 1  # the changed seed and the one with other probabilities trained again
    taken = {run.info.run_id for run in _seeds(client, experiment_id, summary["run_id"])}
    assert seeds[2].info.run_id in taken and not {seeds[0].info.run_id, seeds[1].info.run_id} & taken


def test_the_key_file_is_read_by_its_owner_only_in_the_docs_recipe(tmp_path):
    """docs' recipe (`umask 077; head -c 32 /dev/urandom | base64 > FILE`) makes a file active_seal accepts."""
    import subprocess

    path = tmp_path / "seal.key"
    subprocess.run(["bash", "-c", 'umask 077; head -c 32 /dev/urandom | base64 > "$1"', "_", str(path)], check=True)
    assert not stat.S_IMODE(os.stat(path).st_mode) & 0o077
    assert len(path.read_bytes().strip()) >= 32
