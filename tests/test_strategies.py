"""Successive halving and Optuna on the real engine, run tree and store, with a fold worker that scores a known
function of the hyperparameters instead of training (so the strategies' decisions can be checked exactly)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from mlflow_mnist import schema, tracking
from mlflow_mnist.executors import SerialExecutor
from mlflow_mnist.params import StageError
from mlflow_mnist.strategies import StagedGrid, SuccessiveHalving
from mlflow_mnist.strategies.halving import rung_budgets
from mlflow_mnist.strategies.optuna import OptunaSearch, rungs
from mlflow_mnist.tasks import get_task
from mlflow_mnist.tasks.mnist.steps import SEED
from mlflow_mnist.testing import fold_result, open_campaign, run, tiny_dataset

MNIST = get_task("mnist")
DATA = tiny_dataset()


def score(params) -> float:
    """A smooth, known objective: bigger kernels and more epochs help, a learning rate near 0.05 is best."""
    kernel = params["kernel_size"][0]
    epochs_gain = 0.02 * (1 - math.exp(-params["epochs"] / 3))
    return 0.95 + 0.004 * kernel + epochs_gain - 0.01 * abs(math.log10(params["learn_rate"] / 0.05))


class Worker:
    """Scores folds by :func:`score` plus a small per-fold wobble; counts what it was asked to train."""

    def __init__(self, stop_after: int | None = None):
        self.trained: Counter = Counter()
        self.stop_after = stop_after

    def __call__(self, task):
        if self.stop_after is not None and sum(self.trained.values()) >= self.stop_after:
            raise KeyboardInterrupt  # the driver stopped mid-search
        self.trained[task.key] += 1
        return fold_result(task, min(0.9999, score(task.params) + 0.0005 * (task.fold - 1)))


def campaign(uri):
    return open_campaign(uri, dataset=DATA, experiment="mnist", folds=3, epochs=6, task="mnist")


def search(uri, strategy, worker):
    return run(campaign(uri), strategy, worker=worker, with_model=False)


def halving(uri, stage="kernel_size"):
    request = campaign(uri).request(stage=stage, steps=tuple(MNIST.steps_of(stage)), overrides={"learn_rate": 0.05})
    return SuccessiveHalving.from_request(request)


def runs(uri):
    client = tracking.connect(uri)
    return tracking.search_all(client, [client.get_experiment_by_name("mnist").experiment_id])


def test_each_strategy_names_the_tune_options_it_reads_and_tune_refuses_the_others():
    """The registry is the one list: every option a strategy declares is `tune`'s, `strategies` prints them, and
    an option no strategy of the call reads, given a value of its own, is refused before anything runs."""
    import inspect

    from conftest import cli

    from mlflow_mnist import api
    from mlflow_mnist.strategies import STRATEGIES, check_options

    tune_arguments = inspect.signature(api.tune).parameters
    defaults = {name: parameter.default for name, parameter in tune_arguments.items()}
    printed = cli("strategies").stdout.splitlines()
    for name, strategy in STRATEGIES.items():
        assert strategy.options <= set(tune_arguments), name
        line = next(line for line in printed if line.startswith(f"{name}: "))
        assert all("--" + option.replace("_", "-") in line for option in strategy.options), line
        others = set().union(*(s.options for s in STRATEGIES.values())) - strategy.options
        check_options(name, {option: defaults[option] for option in others}, defaults)  # defaults: fine
        for option in others:
            changed = not defaults[option] if isinstance(defaults[option], bool) else "changed"
            with pytest.raises(StageError, match=f"--strategy {name} does not use it"):
                check_options(name, {option: changed}, defaults)


def test_what_each_strategy_searches_is_read_from_the_registry(store, tmp_path):
    """Each strategy declares its form (a stage's grid, a space's trials); `strategies`, the README's rows, the API's
    refusals and its epochs note read it there. A contributor's walk-through found them guessing: `--strategy random
    --stage width --trials 4` was told random "halves the stage's grid", and random's note said "rung by rung"."""
    import re
    from pathlib import Path

    from conftest import cli

    import mlflow_mnist
    from mlflow_mnist.api import _joint_budget_note
    from mlflow_mnist.strategies import SPACE_FORM, STAGE_FORM, STRATEGIES, searching

    printed = cli("strategies").stdout.splitlines()
    readme = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    strategy_row = next(line for line in readme if line.startswith("| `--strategy`"))
    trials_row = next(line for line in readme if line.startswith("| `--trials`"))
    for name, strategy in STRATEGIES.items():
        assert strategy.searches and strategy.searches <= {STAGE_FORM, SPACE_FORM}, name
        line = next(line for line in printed if line.startswith(f"{name}: "))
        forms = re.search(r"\[searches (.+?);", line).group(1)
        assert forms.split(" or ") == [f"--{form}" for form in (STAGE_FORM, SPACE_FORM) if form in strategy.searches]
        assert f"`{name}`" in strategy_row
        assert (re.search(rf"\b{name}\b", trials_row) is not None) == (SPACE_FORM in strategy.searches), name
    assert searching(STAGE_FORM) == ("staged", "halving")
    with pytest.raises(StageError) as both:
        mlflow_mnist.tune(task="digits", stage="width", space="small")
    assert f"({', '.join(searching(STAGE_FORM))})" in str(both.value)
    assert f"({', '.join(searching(SPACE_FORM))})" in str(both.value)
    for name in searching(SPACE_FORM):
        if STAGE_FORM not in STRATEGIES[name].searches:  # --trials is its own: --stage is what it refuses
            with pytest.raises(StageError, match=f"--strategy {name} searches a space, not a stage: leave out --stage"):
                mlflow_mnist.tune(task="digits", strategy=name, stage="width", trials=4)
    assert list(tmp_path.iterdir()) == []  # refused before the store was made
    digits = get_task("digits")
    space = digits.get_space("small")
    for name in searching(SPACE_FORM):
        note = _joint_budget_note(digits, space, 1, "", by_rungs=STRATEGIES[name].by_rungs)
        said = "rung by rung" if name in ("halving", "optuna", "asha") else "every trial at that budget"
        assert note.endswith(said), (name, note)


def test_rung_budgets():
    assert rung_budgets(4, 6, 3) == [2, 6] and rung_budgets(10, 6, 3) == [1, 2, 6] and rung_budgets(2, 6, 3) == [6]
    assert rungs(18, 3) == [2, 6, 18] and rungs(6, 3) == [2, 6] and rungs(20, 3) == [20]


def test_halving_a_staged_step_trains_less_and_keeps_the_winner(store):
    worker = Worker()
    outcome = search(store, halving(store), worker)
    assert [(o.step, o.counts) for o in outcome.groups] == [("kernel_size", False), ("kernel_size", True)]
    rung1, final = outcome.groups
    assert len(rung1.rows) == 3  # the carried-in (3, 3) skips the low rung, and meets the survivors in the last
    assert final.best["candidate"] == "kernel_size=(7, 7)"  # the known winner
    epochs = sum(int(key_epochs) for key_epochs in _epochs_trained(store))
    assert epochs < 4 * 3 * 6  # less than the full grid's fold-epochs
    groups = [r for r in runs(store) if r.data.tags.get(schema.LEVEL) == "step"]
    assert sorted(r.info.run_name for r in groups) == [
        "kernel_size rung 1/2: 2 epochs",
        "kernel_size rung 2/2: 6 epochs",
    ]
    # Rerunning replays both rungs from the store: nothing is trained again.
    again = Worker()
    search(store, halving(store), again)
    assert not again.trained
    # Only the last rung decides: the store's step best is the 6-epoch winner, whatever the 2-epoch rung said.
    state = tracking.read_store_state(tracking.connect(store), campaign(store).experiment_id, DATA.digest())
    assert state.step_bests["kernel_size"].params == {"kernel_size": (7, 7)}


@pytest.mark.slow
def test_a_halved_steps_line_counts_the_folds_of_every_rung(store):
    """The step's closing line said "trained 4 folds" after 10 (its low rung's 6 were left out)."""
    from conftest import cli

    args = ["tune", "--strategy", "halving", "--stage", "kernel_size", "--data", "sample", "--folds", "2"]
    proc = cli(*args, "--epochs", "3", "--n-jobs", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernel_size rung 1/2: 1 epochs: 3 candidates x 2 folds" in proc.stdout
    assert "kernel_size rung 2/2: 3 epochs: 2 candidates x 2 folds" in proc.stdout
    assert "; trained 10 folds, reused 0" in proc.stdout, proc.stdout


class TimedWorker(Worker):
    """As :class:`Worker`, each fold 'training' for one second of a clock of its own, one after the other."""

    clock = 1_900_000_000_000

    def __call__(self, task):
        result = super().__call__(task)
        result.started_ms, result.ended_ms = TimedWorker.clock, TimedWorker.clock + 1000
        TimedWorker.clock += 1000
        return result


def test_a_candidate_run_lasts_from_its_first_fold_to_its_last_and_a_reused_one_takes_no_time(store):
    """From a walk-through of the MLflow UI: every candidate showed the whole step's duration (made at the step's
    start, ended at its close). A candidate's run now starts with its first fold and ends with its last; one
    whose folds were all reused from an earlier step trains nothing here and lasts 0 s."""
    for stage in ("kernel_size", "pool_size"):
        request = campaign(store).request(stage=stage, steps=tuple(MNIST.steps_of(stage)))
        search(store, StagedGrid.from_request(request), TimedWorker())
    everything = runs(store)
    children: dict[str, list] = {}
    for r in everything:
        children.setdefault(r.data.tags.get(schema.PARENT), []).append(r)
    candidates = [r for r in everything if r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL]
    reused = [c for c in candidates if schema.REUSED in c.data.tags]
    assert len(candidates) == 4 + 1 + 4 + 1 and len(reused) == 1  # pool_size's (2, 2) is kernel_size's best
    # Each step's reference is named by what it holds (two runs named just "reference" read as one row twice).
    references = sorted(c.info.run_name for c in candidates if c.data.tags[schema.ROLE] == "reference")
    assert references == ["reference: kernel_size=(3, 3)", "reference: pool_size=(2, 2)"]
    assert {c.data.tags[schema.CANDIDATE] for c in candidates if c.data.tags[schema.ROLE] == "reference"} == {
        "reference"
    }
    for c in candidates:
        folds = children.get(c.info.run_id, [])
        if c in reused:
            assert not folds and c.info.end_time == c.info.start_time
            # Its description says where its folds are (the UI showed an empty candidate whose best-fold link
            # opened another step's fold), linking each.
            note = c.data.tags[schema.NOTE]
            assert "best fold (trained earlier)" in note and "3 of its 3 folds were trained earlier" in note
            assert all(f"/runs/{fold})" in note for fold in c.data.tags[schema.REUSED].split(","))
            continue
        assert "trained earlier" not in c.data.tags[schema.NOTE]
        assert len(folds) == 3
        assert c.info.start_time == min(f.info.start_time for f in folds)
        assert c.info.end_time == max(f.info.end_time for f in folds) == c.info.start_time + 3000


def _epochs_trained(uri):
    return [r.data.metrics["epochs_run"] for r in runs(uri) if r.data.tags.get(schema.LEVEL) == "fold"]


def _optuna(uri, n_trials, key="k1"):
    return OptunaSearch(SEED, n_trials=n_trials, batch=2, seed=0, search_key=key)


def test_optuna_prunes_and_names_its_best_trial(store):
    worker = Worker()
    search(store, _optuna(store, 8), worker)
    trials = [r for r in runs(store) if r.data.tags.get(schema.TRIAL) is not None]
    numbers = {r.data.tags[schema.TRIAL] for r in trials}
    assert len(numbers) == 8
    budgets = Counter(r.data.tags[schema.BUDGET] for r in trials)
    assert budgets["2"] == 8 and 0 < budgets["6"] < 8  # some trials were pruned after 2 epochs
    # The first batch (trials 0 and 1) is judged together: only the better of the two goes on.
    first = {r.data.tags[schema.TRIAL]: r for r in trials if r.data.tags[schema.BUDGET] == "2"}
    better = max(("0", "1"), key=lambda n: first[n].data.metrics["mean_heldout_accuracy"])
    promoted = {r.data.tags[schema.TRIAL] for r in trials if r.data.tags[schema.BUDGET] == "6"}
    assert better in promoted and ({"0", "1"} - {better}).isdisjoint(promoted)
    (root,) = [r for r in runs(store) if r.data.tags.get(schema.LEVEL) == "stage"]
    best = {r.info.run_id: r for r in trials}[root.data.tags["mlflow_mnist.best_child_run_id"]]
    assert best.data.tags[schema.BUDGET] == "6"
    full = [r for r in trials if r.data.tags[schema.BUDGET] == "6"]
    assert best.data.metrics["mean_heldout_accuracy"] == max(r.data.metrics["mean_heldout_accuracy"] for r in full)
    assert root.data.tags[schema.BEST_CONFIG].startswith("{")
    assert all(r.data.tags[schema.PARENT] == root.info.run_id for r in trials)  # trial runs under the search
    assert set(worker.trained.values()) == {1}


def _named_numbers(label: str) -> list[int]:
    """The numbers a progress label such as ``trials 0-2, 5 rung 2: 6 epochs`` names, ranges written out."""
    numbers: list[int] = []
    for part in label.split(" rung ")[0].split(" ", 1)[1].split(", "):
        low, _, high = part.partition("-")
        numbers += range(int(low), int(high or low) + 1)
    return numbers


def test_numbered_writes_a_range_only_where_every_number_is_there():
    from mlflow_mnist.strategies.base import numbered

    assert numbered("trial", [1]) == "trial 1"
    assert numbered("trial", [3, 0]) == "trials 0, 3"
    assert numbered("trial", range(4)) == "trials 0-3"
    assert numbered("trial", [5, 0, 1, 2]) == "trials 0-2, 5"
    assert numbered("sample", [4]) == "sample 4"


def test_optuna_names_each_rung_by_the_trials_it_trains(store):
    """From rung 2 on a batch holds its survivors only: the progress line names them, not the batch's first
    numbers (trials 5 and 6 of the batch 4-7 go on here, which once read "trials 4-5")."""
    outcome = search(store, OptunaSearch(SEED, n_trials=8, batch=4, seed=0, search_key="k1"), Worker())
    names = [group.group.name for group in outcome.groups]
    assert names[0] == "trials 0-3 rung 1: 2 epochs" and "trials 5-6 rung 2: 6 epochs" in names
    for group in outcome.groups:
        trained = [int(row["candidate"].split()[1]) for row in group.rows]
        assert _named_numbers(group.group.name) == trained, group.group.name


def test_a_killed_optuna_search_resumes_from_the_store_and_trains_nothing_twice(store):
    first = Worker(stop_after=20)
    with pytest.raises(KeyboardInterrupt):
        search(store, _optuna(store, 8), first)
    second = Worker()
    search(store, _optuna(store, 8), second)
    assert not set(first.trained) & set(second.trained)  # no fold trained twice
    assert_each_configuration_is_one_trial(store, 8)
    state = tracking.read_store_state(tracking.connect(store), campaign(store).experiment_id, DATA.digest())
    told = _optuna(store, 8).past_trials(state)
    assert len({str(sorted(r.tags.sampled.items())) for r in told if r.tags.rung.budget == 6}) >= 1
    # Asking for more trials continues the same search: the finished ones are told, not trained again.
    third = Worker()
    search(store, _optuna(store, 10), third)
    assert not set(third.trained) & (set(first.trained) | set(second.trained))
    assert len(set(third.trained)) <= 2 * 3 * 2  # at most two new trials, three folds, two rungs
    assert_each_configuration_is_one_trial(store, 10)  # two new ones, not the first session's first two again


def test_joint_search_analysis_finds_what_the_objective_depends_on(store, tmp_path):
    """The known objective depends on kernel_size and learn_rate only (and epochs, the resource): fANOVA must rank
    the learning rate first, and the anytime curve must never go down."""
    from analysis import anytime, fanova
    from analysis.report import build_report
    from analysis.searches import search_table, trial_table, trials_for_importance
    from analysis.store import read_runs

    search(store, _optuna(store, 30), Worker())
    client = tracking.connect(store)
    runs = read_runs(client, ["mnist"])
    every_rung = trial_table(runs)
    trials = every_rung[every_rung["complete"]]
    assert len(trials) >= 4 and set(trials["search"]) == {"optuna:seed"}
    # Pruned trials stay in the table at the rung they reached; importance falls back to a rung enough reached.
    assert set(every_rung["budget"]) == {2, 6} and (~every_rung["complete"]).any()
    assert set(trials_for_importance(every_rung, len(trials) + 1)["budget"]) == {2}
    assert trials_for_importance(every_rung, 4)["trial"].is_unique
    importance = fanova.get_importance_info(trials, SEED.distributions)
    ranked = importance.sort_values("importance", ascending=False)["parameter"].tolist()
    # Among complete trials TPE has settled on the best kernel, so the learning rate is what still varies.
    assert ranked[0] == "learn_rate" and importance["importance"].sum() == pytest.approx(1.0)
    info = anytime.get_anytime_info(search_table(runs))
    assert info["best_so_far"].is_monotonic_increasing and info["fold_epochs"].is_monotonic_increasing
    assert info["best_so_far"].iloc[-1] == trials["mean"].max()
    report = build_report(client, ["mnist"], tmp_path / "out")
    assert {"anytime", "importance optuna:seed", "interaction optuna:seed"} <= set(report.figures)


class ContinuingWorker(Worker):
    """Like :class:`Worker`, for resumable folds: returns a stand-in model and checks that a continued fold was
    handed the model its previous rung saved. Folds of ``diverging`` (a run label) diverge, leaving no model."""

    def __init__(self, stop_after: int | None = None, diverging: str = "", guessing=lambda task: False):
        super().__init__(stop_after)
        self.epochs, self.diverging, self.guessing, self.order = 0, diverging, guessing, []

    def __call__(self, task):
        self.order.append(task.label)
        if task.resume_key:
            assert task.checkpoint["weights"] == task.resume_key.encode(), "continued without its rung's model"
        if task.label == self.diverging:
            self.trained[task.key] += 1
            return fold_result(task, 0.5, status="diverged")
        result = super().__call__(task)
        if self.guessing(task):  # trains "fine" but learns nothing: the majority class's rate (0.5 here), plus
            result.accuracy = result.chance + 0.001 * int(task.label.split()[1])  # a trial's number in thousandths
        self.epochs += task.params["epochs"] - task.initial_epoch
        # A stand-in MLflow model folder: the fold's key as its "weights".
        result.model_files = {"MLmodel": b"flavors: {}\n", "weights": task.key.encode()} if task.resumable else None
        result.first_epoch = task.initial_epoch
        return result


def _asha(n_trials, brackets=1, promotion="quota"):
    from mlflow_mnist.strategies.asha import AsyncHalving

    return AsyncHalving(
        SEED, n_trials=n_trials, factor=3, min_epochs=2, brackets=brackets, promotion=promotion, seed=0, search_key="a1"
    )


def test_the_seed20_space_is_the_seed_space_climbing_to_its_final_20_epochs():
    from mlflow_mnist.strategies.asha import rung_budgets
    from mlflow_mnist.tasks import get_task

    task = get_task("mnist")
    seed, seed20 = task.get_space("seed"), task.get_space("seed20")
    assert seed20.distributions == seed.distributions and seed20.base == seed.base
    assert (seed.max_epochs, seed20.max_epochs) == (6, task.steps_of("epochs")[0].grid["epochs"][0]) == (6, 20)
    assert rung_budgets(seed20.max_epochs, 3, 2) == [2, 6, 18, 20]
    assert seed20.config(seed20.encode(task.start))["epochs"] == 20


def test_asha_first_draws_are_the_seeded_sample():
    """ASHA's TPE draws its first ``STARTUP_TRIALS`` at random, whatever the trials score, and they are the
    configurations ``sample_configs`` gives halving and random search for the same seed: the peers benchmark's
    ``--same-draws`` hands them to plain Optuna on that ground. Once TPE models the scores, its draws are its own."""
    from mlflow_mnist.strategies.asha import STARTUP_TRIALS, AsyncHalving
    from mlflow_mnist.strategies.sampling import sample_configs

    space = get_task("mnist").get_space("wide")
    n = STARTUP_TRIALS + 2
    for seed in (0, 3):
        study = AsyncHalving(space, n_trials=n, seed=seed).make_study()
        asked = []
        for number in range(n):
            trial = study.ask(space.distributions)
            asked.append(trial.params)
            study.tell(trial, 0.9 + 0.001 * (number % 3))
        drawn = [spec.sampled for spec in sample_configs(space, n, seed=seed)]
        assert asked[:STARTUP_TRIALS] == drawn[:STARTUP_TRIALS]
        assert asked[STARTUP_TRIALS:] != drawn[STARTUP_TRIALS:]


def test_a_rung_promotes_the_best_third_of_what_it_has_seen_and_at_least_one_once_closed():
    """Li et al.'s rule: nothing goes on before a rung has seen ``factor`` trials; then those among its best
    ``n // factor`` not promoted yet (a trial passed over may go on later); a closed rung promotes its best."""
    from mlflow_mnist.strategies.asha import promotions, rung_budgets

    assert rung_budgets(18, 3, 2) == [2, 6, 18] and rung_budgets(6, 3, 2) == [2, 6] and rung_budgets(6, 3, 6) == [6]

    def promote(scores, promoted=None, *, closed=False, allowed=None):
        n = len(scores)
        return promotions(
            scores, allowed=allowed or [True] * n, promoted=promoted or [False] * n, factor=3, closed=closed
        )

    assert promote([0.99]) == [] and promote([0.99, 0.9]) == []  # the first to arrive wait
    assert promote([0.9, 0.8, 0.95]) == [2]
    # Trial 0, passed over while trial 2 went on, goes on once three more rank below it (the best 2 of 6).
    assert promote([0.9, 0.8, 0.95, 0.5, 0.6, 0.7], [False, False, True, False, False, False]) == [0]
    assert promote([0.9, 0.8, 0.95, 0.5, 0.6, 0.99], [False, False, True, False, False, False]) == [5]
    assert promote([0.9, 0.9, 0.8]) == [0]  # ties: the earlier first
    assert promote([0.8, 0.9], closed=True) == [1] and promote([0.8, 0.9], [False, True], closed=True) == []
    assert promote([0.9, 0.8, 0.95], allowed=[True, True, False]) == [0]  # ranked among those allowed to go on
    assert promote([0.9], allowed=[False], closed=True) == []


def test_an_eager_rung_also_promotes_its_best_while_it_has_seen_fewer_than_factor_trials():
    """Optuna's pruner's rule: the first trial to arrive goes on at once; a later one goes on if it beats every
    trial seen so far; from ``factor`` trials on, the quota rule alone (the best ``n // factor``)."""
    from mlflow_mnist.strategies.asha import promotions

    def promote(scores, promoted=None, *, allowed=None):
        n = len(scores)
        return promotions(
            scores, allowed=allowed or [True] * n, promoted=promoted or [False] * n, factor=3, closed=False, eager=True
        )

    assert promote([0.9]) == [0]
    assert promote([0.9, 0.8], [True, False]) == [] and promote([0.9, 0.95], [True, False]) == [1]
    assert promote([0.9, 0.95, 0.99], [True, True, False]) == [2]
    assert promote([0.9, 0.95, 0.8, 0.85, 0.7, 0.6], [True, True, False, False, False, False]) == []
    assert promote([0.9], allowed=[False]) == []  # a trial that may not go on (guessing, no model) still waits


def test_asha_with_eager_promotion_carries_its_first_trial_to_the_full_budget_at_once(store):
    """Each trial scores worse than the one before: under eager promotion trial 0 continues to 6 epochs as soon as
    its first rung ends (before trial 2 has trained anything), and no later trial goes on (none beats it, and
    four seen give a quota of one); under the quota rule (the test above) nothing goes on before three are seen."""
    worker = EarlierIsBetter()
    search(store, _asha(4, promotion="eager"), worker)
    assert _rungs_of_trials(store) == {"0": {1, 2}, "1": {1}, "2": {1}, "3": {1}}
    first_continued = worker.order.index("trial 0 (6 epochs)")
    assert first_continued < worker.order.index("trial 2 (2 epochs)")
    assert worker.epochs == 3 * (4 * 2 + 4)
    # The search run says how it searched (the UI shows the rule beside the campaign's settings).
    (search_run,) = [r for r in runs(store) if r.data.tags.get(schema.STRATEGY) == "asha"]
    options = {k: v for k, v in search_run.data.params.items() if k.startswith(schema.SEARCH_OPTION_PREFIX)}
    assert options == {
        "search.trials": "4",
        "search.halving_factor": "3",
        "search.rung_epochs": "2,6",
        "search.brackets": "1",
        "search.promotion": "eager",
        "search.top_rung_parts": "1",
        "search.warm_start": "0",
    }


@pytest.mark.parametrize("stop_after", [4, 9, 14])
def test_an_eager_search_killed_and_rerun_trains_nothing_twice(store, stop_after):
    """Killed while its first trial continues to 6 epochs (4: eager sends it on before any other trial trains),
    among the next trials (9) or later (14), then rerun: no fold is trained twice, no configuration is asked
    twice, and the first trial, promoted before the kill, still reaches the full budget."""
    first = ContinuingWorker(stop_after=stop_after)
    with pytest.raises(KeyboardInterrupt):
        search(store, _asha(6, promotion="eager"), first)
    assert first.order[3] == "trial 0 (6 epochs)"
    second = ContinuingWorker()
    search(store, _asha(6, promotion="eager"), second)
    assert second.trained and not set(first.trained) & set(second.trained)
    assert_each_configuration_is_one_trial(store, 6)
    assert _rungs_of_trials(store)["0"] == {1, 2}


def test_the_promotion_rule_names_its_search_and_the_default_keeps_the_keys_stored_before_it():
    """A rerun under another rule does not continue a search made under this one; the default rule's key is the
    key from before the option (an old store resumes as it was)."""
    from mlflow_mnist.strategies.asha import AsyncHalving
    from mlflow_mnist.strategies.base import SearchRequest

    def key(**options):
        request = SearchRequest(MNIST, 6, space=SEED, search_key=lambda *parts: json.dumps(parts), **options)
        return AsyncHalving.from_request(request).search_key

    assert key() == key(promotion="quota") == json.dumps(["asha", SEED.name, 3, 0, 0, 1])
    assert key(promotion="eager") != key()
    with pytest.raises(StageError, match="promotion rule 'sometimes'"):
        key(promotion="sometimes")


def test_asha_continues_promoted_trials_and_resumes_without_training_twice(store):
    worker = ContinuingWorker()
    outcome = search(store, _asha(8), worker)
    trials = [r for r in runs(store) if r.data.tags.get(schema.TRIAL) is not None]
    rungs_of, score_at_first_rung = {}, {}
    for trial_run in trials:
        trial, rung = trial_run.data.tags[schema.TRIAL], int(trial_run.data.tags[schema.RUNG])
        rungs_of.setdefault(trial, []).append(rung)
        if rung == 1:
            score_at_first_rung[trial] = trial_run.data.metrics["mean_heldout_accuracy"]
    assert len(rungs_of) == 8 and any(r == [1] for r in rungs_of.values())  # some stopped at the first rung
    # Every trial among the best 8 // 3 of the first rung went on (some others may have, before they were passed).
    best_two = sorted(score_at_first_rung, key=score_at_first_rung.get)[-2:]
    assert all(2 in rungs_of[trial] for trial in best_two)
    # Nothing went on before the first rung had seen 3 trials: no 6-epoch fold before trial 2's 2-epoch folds.
    first_continued = next(i for i, label in enumerate(worker.order) if label.endswith("(6 epochs)"))
    assert first_continued > max(i for i, label in enumerate(worker.order) if label == "trial 2 (2 epochs)")
    # Promoted trials continued: 2 epochs per fold at rung 1, 4 more at rung 2 (6 in all), never 2 + 6.
    promoted = sum(1 for r in rungs_of.values() if 2 in r)
    assert worker.epochs == 3 * (2 * len(rungs_of) + 4 * promoted)
    assert outcome.best is not None and outcome.best.counts
    # Killed part-way and rerun: nothing is trained twice, and the rerun finds what the first had done.
    other = store.replace("mlflow.db", "other.db")
    first = ContinuingWorker(stop_after=14)
    with pytest.raises(KeyboardInterrupt):
        search(other, _asha(8), first)
    second = ContinuingWorker()
    search(other, _asha(8), second)
    assert not set(first.trained) & set(second.trained)
    assert_each_configuration_is_one_trial(other, 8)


class EarlierIsBetter(ContinuingWorker):
    """Each trial scores a little worse than the one before it, at every rung."""

    def __call__(self, task):
        result = super().__call__(task)
        result.accuracy = 0.95 - 0.01 * int(task.label.split()[1])
        return result


def test_a_trial_waiting_in_the_store_is_promoted_by_the_rerun_from_its_saved_models(store, capfd):
    """Trials 0 and 1 finish their first rung and wait (two seen: nothing goes on), then the session dies. The
    rerun's third trial makes three: trial 0, the best, goes on, continuing the models its folds saved in the
    store (the worker checks each continued fold got its own), and Optuna is told it completed. Loading them draws
    no download bars through the progress lines, for API callers too (the CLI silences them for its process)."""
    with pytest.raises(KeyboardInterrupt):
        search(store, _asha(4), EarlierIsBetter(stop_after=6))
    # Trial 2 was cut short before any of its folds finished: a candidate's run is made with its first fold.
    assert _rungs_of_trials(store) == {"0": {1}, "1": {1}}
    strategy, worker = _asha(4), EarlierIsBetter()
    search(store, strategy, worker)
    assert _rungs_of_trials(store) == {"0": {1, 2}, "1": {1}, "2": {1}, "3": {1}}
    continued = [label for label in worker.order if label == "trial 0 (6 epochs)"]
    assert len(continued) == 3 and worker.epochs == 3 * (2 + 2 + 4)  # trials 2 and 3 at 2 epochs, trial 0 + 4
    complete = [t for t in strategy.study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 1 and complete[0].value == pytest.approx(0.95)
    assert "Downloading artifacts" not in capfd.readouterr().err


def assert_each_configuration_is_one_trial(store: str, n_trials: int) -> None:
    """Across a kill and a rerun: ``n_trials`` distinct configurations (the rerun's sampler asked none of the first
    session's again), each keeping one trial number in every run of it."""
    numbers: dict[str, set[str]] = {}
    for r in runs(store):
        if r.data.tags.get(schema.TRIAL) is not None:
            numbers.setdefault(r.data.tags[schema.SAMPLED], set()).add(r.data.tags[schema.TRIAL])
    assert len(numbers) == n_trials
    assert all(len(found) == 1 for found in numbers.values()), numbers
    assert len({n for found in numbers.values() for n in found}) == n_trials


class TwoWorkers(SerialExecutor):
    """Two workers whose folds finish one at a time, oldest first; records the busy ones each time the engine
    waits, with what ``asked`` says then."""

    n_workers = 2

    def __init__(self, asked):
        super().__init__()
        self.asked, self.waits = asked, []

    def wait_first(self, handles, timeout=None):
        self.waits.append((len(handles), self.asked()))
        return handles[:1]


def test_asha_gives_a_free_worker_a_new_trial_at_once(store):
    """No barrier: the last fold of a rung never trains beside an idle worker while trials are left to ask
    (seen on 2 cores before: one trial at a time, a worker idle 22% of the search)."""
    strategy = _asha(8)
    executor = TwoWorkers(lambda: strategy.asked)
    run(campaign(store), strategy, worker=ContinuingWorker(), with_model=False, executor=executor)
    assert strategy.asked == 8
    while_asking = [busy for busy, asked in executor.waits if asked < 8]
    assert while_asking and set(while_asking) == {2}


#: What make champion's trials scored (mean CV by epochs and trial number; 2-core AMD EPYC, this release).
CHAMPION_SCORES = {
    2: dict(enumerate([0.973, 0.9948, 0.9733, 0.67, 0.864, 0.9817, 0.9899, 0.992])),
    6: {1: 0.9958, 5: 0.9883, 6: 0.9935, 7: 0.9919},
    18: {1: 0.9967},
}


class Scripted(ContinuingWorker):
    """Scores each trial's folds what ``CHAMPION_SCORES`` says for its number and epochs."""

    def __call__(self, task):
        result = super().__call__(task)
        result.accuracy = CHAMPION_SCORES[task.params["epochs"]][int(task.label.split()[1])]
        return result


def a_promotion_waits(strategy) -> bool:
    """Whether a rung of ``strategy`` has a trial to promote (closing rungs aside)."""
    from mlflow_mnist.strategies.asha import eligible, promotions

    return any(
        promotions(
            [r.score for r in seen],
            allowed=eligible([r.guessing for r in seen], [r.usable for r in seen], strategy.factor),
            promoted=[r.promoted for r in seen],
            factor=strategy.factor,
            closed=False,
        )
        for seen in strategy.rungs.values()
    )


def test_asha_gives_a_free_worker_a_due_promotion_at_once_after_the_last_trial_is_asked(store):
    """make champion's search, replayed: when trial 7 arrives, trial 1 goes on to 18 epochs and trial 7 to 6. Both
    are due together; the top rung's folds are queued first, and trial 7's must reach the worker that frees up
    beside the top rung's last fold (it idled 2.3 min there, its promotion waiting for the top rung to end)."""
    from mlflow_mnist.strategies.asha import AsyncHalving

    strategy = AsyncHalving(MNIST.get_space("wide"), n_trials=8, factor=3, min_epochs=2, seed=0, search_key="w")
    executor = TwoWorkers(lambda: a_promotion_waits(strategy))
    run(campaign(store), strategy, worker=Scripted(), with_model=False, executor=executor)
    assert _rungs_of_trials(store) == {
        **{str(trial): {1} for trial in (0, 2, 3, 4)},
        **{"1": {1, 2, 3}, "5": {1, 2}, "6": {1, 2}, "7": {1, 2}},
    }
    assert any(waiting for _, waiting in executor.waits)
    assert not [busy for busy, waiting in executor.waits if waiting and busy < 2]


def test_asha_refuses_more_brackets_than_rungs_to_start_at():
    """Over ``seed`` (rungs at 2 and 6 epochs) a third bracket would have no rung to start at: refused, not cut
    to two, so the search the user asked for is never silently another one."""
    assert _asha(2, brackets=2).brackets == 2
    for brackets in (3, 0):
        with pytest.raises(StageError) as caught:
            _asha(2, brackets=brackets)
        assert str(caught.value) == (
            f"--brackets {brackets}: the space 'seed' has 2 rung(s) here (2, 6 epochs) for trials to start at; "
            "give 1 to 2"
        )


def test_asha_brackets_start_trials_at_different_rungs_and_warm_start_comes_first(store):
    worker = ContinuingWorker()
    strategy = _asha(6, brackets=2)
    strategy.warm_start, strategy.starts = 1, lambda state: [{**SEED.base, "learn_rate": 0.05, "kernel_size": (7, 7)}]
    search(store, strategy, worker)
    first_rungs = {}
    for trial_run in runs(store):
        if trial_run.data.tags.get(schema.TRIAL) is not None:
            trial, rung = trial_run.data.tags[schema.TRIAL], int(trial_run.data.tags[schema.RUNG])
            first_rungs[trial] = min(rung, first_rungs.get(trial, rung))
    assert set(first_rungs.values()) == {1, 2}  # bracket 0 starts at 2 epochs, bracket 1 at 6
    assert strategy.study.trials[0].params["learn_rate"] == 0.05
    assert strategy.study.trials[0].params["kernel_size"] == "7x7"


def test_a_trial_that_learned_nothing_goes_on_only_once_its_rung_saw_factor_such_and_no_other():
    from mlflow_mnist.results import near_chance
    from mlflow_mnist.strategies.asha import eligible

    assert near_chance(0.5, 0.5) and near_chance(0.6, 0.51) and not near_chance(0.7, 0.51)  # 2 classes
    assert near_chance(0.3, 0.11) and not near_chance(0.4, 0.11) and not near_chance(float("nan"), 0.5)
    assert eligible([False], [True], 3) == [True] and eligible([True], [True], 3) == [False]
    # Three trials in, none learned: the budget may be too short, any of them may go on.
    assert eligible([True, True], [True, True], 3) == [False, False]
    assert eligible([True, True, True], [True, True, True], 3) == [True, True, True]
    # One did learn: a guessing trial never goes on; one without a model (diverged, failed) never does.
    assert eligible([True, True, False, True], [True] * 4, 3) == [False, False, True, False]
    assert eligible([True, True, True], [True, False, True], 3) == [True, False, True]


def _rungs_of_trials(store) -> dict[str, set[int]]:
    rungs = {}
    for trial_run in runs(store):
        if trial_run.data.tags.get(schema.TRIAL) is not None:
            rungs.setdefault(trial_run.data.tags[schema.TRIAL], set()).add(int(trial_run.data.tags[schema.RUNG]))
    return rungs


def test_asha_does_not_carry_a_first_trial_that_learned_nothing_to_the_full_budget(store):
    """Trial 0 guesses at 2 epochs: it stops there, even when its rung closes; trials that learned go on."""
    search(store, _asha(4), ContinuingWorker(guessing=lambda task: task.label == "trial 0 (2 epochs)"))
    rungs = _rungs_of_trials(store)
    assert rungs["0"] == {1} and any(2 in r for r in rungs.values())


def test_asha_promotes_guessing_trials_once_factor_of_them_show_the_budget_is_too_short(store):
    """Every trial guesses at 2 epochs, each a little better than the one before: the first two wait, the third
    (three seen, none learned, the best of them) goes on and learns at 6, and so does the fourth. The session is
    stopped after the first two: what they scored, and against what chance, is read back from the store by the
    rerun that decides on the third (read without their chance, they would count as learners and trial 1 would go
    on instead)."""
    at_two_epochs = lambda task: task.params["epochs"] == 2  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        search(store, _asha(4), ContinuingWorker(stop_after=6, guessing=at_two_epochs))  # two trials' 3 folds
    assert set(map(frozenset, _rungs_of_trials(store).values())) == {frozenset({1})}  # trial 2 cut short
    search(store, _asha(4), ContinuingWorker(guessing=at_two_epochs))
    rungs = _rungs_of_trials(store)
    # Trial 3, the best of four, ranks first at its rung when it arrives: it goes on too.
    assert rungs["0"] == rungs["1"] == {1} and rungs["2"] == rungs["3"] == {1, 2}, rungs


def test_asha_never_promotes_a_trial_whose_rung_diverged(store):
    """A diverged trial has no model to continue from: it stops, even when its rung closes."""
    worker = ContinuingWorker(diverging="trial 0 (2 epochs)")
    search(store, _asha(4), worker)
    rungs = {}
    for trial_run in runs(store):
        if trial_run.data.tags.get(schema.TRIAL) is not None:
            rungs.setdefault(trial_run.data.tags[schema.TRIAL], set()).add(int(trial_run.data.tags[schema.RUNG]))
    assert rungs["0"] == {1} and any(2 in r for r in rungs.values())


def test_warm_starts_follow_the_ranking_rule_whatever_order_the_store_returns():
    """Earlier searches' trials warm-start a search best first by the one ranking rule: higher mean, then lower
    spread, then the trial's number, never the order the store happened to return the runs in (equal means are
    common: fold accuracies move by whole images)."""
    import random

    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.planning import CandidateRecord, StoreState
    from mlflow_mnist.schema import CandidateTags

    def trial(number, mean, std):
        tags = CandidateTags("space", f"trial {number}", number, f"h{number}", (), trial=number, sampled={"t": number})
        return CandidateRecord(tags, mean, "ok", True, std=std)

    records = [trial(3, 0.995, 0.002), trial(1, 0.995, 0.001), trial(2, 0.996, 0.004), trial(4, 0.995, 0.001)]
    for seed in range(5):
        random.Random(seed).shuffle(records)
        configs = Campaign.warm_configs(None, StoreState(candidates=list(records)))
        assert [c["t"] for c in configs] == [2, 1, 4, 3]
