"""Planning and carry-forward as pure functions over a store snapshot; one real fold for divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlflow_mnist.params import HyperparameterError
from mlflow_mnist.planning import (
    FINAL,
    FoldRecord,
    SearchSettings,
    StepBest,
    carry_forward,
    final_seed_key,
    fold_indices,
    fold_key,
    resolve_fixed_params,
)
from mlflow_mnist.results import FoldResult, best_row, cv_results
from mlflow_mnist.strategies.staged import plan_step
from mlflow_mnist.tasks import get_task
from mlflow_mnist.tasks.mnist.model import SEED_START
from mlflow_mnist.worker import train_fold

MNIST = get_task("mnist")
get_step = MNIST.get_step
SETTINGS = SearchSettings(MNIST, n_folds=3, split_seed=0, epochs=6, data_digest="abc", n_classes=2)


def test_fixed_params_carry_forward_from_earlier_steps_only():
    bests = {
        "momentum": StepBest("momentum", {"momentum": 0.4}, 0.99),
        "kernel_size": StepBest("kernel_size", {"kernel_size": (5, 5)}, 0.995),
        "pool_size": StepBest("pool_size", {"pool_size": (1, 1)}, 0.995),
    }
    fixed = resolve_fixed_params(MNIST, "pool_size", bests, overrides={}, epochs=6)
    assert fixed["momentum"] == 0.4 and fixed["kernel_size"] == (5, 5)
    assert fixed["pool_size"] == SEED_START["pool_size"]  # pool_size's own result is not "earlier"
    assert (
        resolve_fixed_params(MNIST, "batch_size", bests, overrides={}, epochs=6)["momentum"] == SEED_START["momentum"]
    )
    assert resolve_fixed_params(MNIST, FINAL, bests, overrides={}, epochs=6)["pool_size"] == (1, 1)


def test_a_step_says_what_it_carried_in_and_which_later_steps_it_does_not_see():
    """A user who ran pool_size, then momentum, then kernel_size (out of the task's order) saw three steps in a row
    and could not tell that kernel_size stood on momentum's choice but not pool_size's: each step now says which
    values it carried from which step, and which finished steps come later in the order (their choices are not
    in it). Overrides and the step's own parameters are not "carried"."""
    bests = {
        "momentum": StepBest("momentum", {"momentum": 0.4}, 0.99),
        "batch_size": StepBest("batch_size", {"batch_size": 40}, 0.99),
        "pool_size": StepBest("pool_size", {"pool_size": (1, 1)}, 0.995),
    }
    carry = carry_forward(MNIST, "kernel_size", bests, overrides={"batch_size": 60}, varied=("kernel_size",))
    assert carry.carried == (("momentum", 0.4, "momentum"),) and carry.later == ("pool_size",)
    assert carry.describe() == (
        "carried in: momentum=0.4 (momentum); not carried from pool_size: later in the task's order"
    )
    first = carry_forward(MNIST, "batch_size", bests, overrides={}, varied=("batch_size",))
    assert first.carried == () and first.describe().startswith("carried in: nothing (the task's start values)")
    fixed = resolve_fixed_params(MNIST, "kernel_size", bests, overrides={"batch_size": 60}, epochs=6)
    assert all(fixed[key] == value for key, value, _ in carry.carried)  # says what planning did


def test_overrides_win_over_store_and_epochs_over_seed():
    bests = {"neurons_3": StepBest("neurons_3", {"neurons_3": 5}, 0.99)}
    fixed = resolve_fixed_params(MNIST, "kernel_size", bests, overrides={"neurons_3": 10}, epochs=8)
    assert fixed["neurons_3"] == 10 and fixed["epochs"] == 8
    epochs_best = {"epochs": StepBest("epochs", {"epochs": 20, "batch_size": 60}, 0.99)}
    assert resolve_fixed_params(MNIST, FINAL, epochs_best, overrides={}, epochs=6)["batch_size"] == 60


def test_invalid_override_is_caught_while_planning():
    with pytest.raises(HyperparameterError, match="dropout_rate_1=1.5"):
        resolve_fixed_params(MNIST, "kernel_size", {}, overrides={"dropout_rate_1": 1.5}, epochs=6)


def test_plan_trains_every_fold_of_a_fresh_step():
    fixed = resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6)
    plan = plan_step(get_step("kernel_size"), fixed, SETTINGS, done={})
    assert len(plan.candidates) == 4 and len(plan.to_train) == 12 and not plan.reused
    assert [t.label for t in plan.to_train[:3]] == ["kernel_size=(1, 1)"] * 3
    assert len({t.key for t in plan.to_train}) == 12
    assert plan.candidates[1].params["kernel_size"] == (3, 3)


def test_plan_reuses_finished_folds_and_the_previous_best():
    """The best of kernel_size is also a grid point of pool_size: its folds are not trained again."""
    step_k = get_step("kernel_size")
    plan_k = plan_step(step_k, resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6), SETTINGS, {})
    done = {t.key: FoldRecord(t.key, 0.99, 1.0, "ok") for t in plan_k.to_train}
    best = StepBest("kernel_size", {"kernel_size": (3, 3)}, 0.99)
    fixed = resolve_fixed_params(MNIST, "pool_size", {"kernel_size": best}, overrides={}, epochs=6)
    plan_p = plan_step(get_step("pool_size"), fixed, SETTINGS, done)
    # pool (2, 2) with kernel (3, 3) is exactly kernel_size's (3, 3) candidate.
    assert len(plan_p.reused) == 3 and len(plan_p.to_train) == 9
    assert {t.params["pool_size"] for t in plan_p.to_train} == {(1, 1), (3, 3), (5, 5)}
    # A partial store (an interrupted run) trains only what is missing.
    some = dict(list(done.items())[:5])
    assert len(plan_step(step_k, plan_k.fixed, SETTINGS, some).to_train) == 7


def test_fold_key_depends_on_everything_that_changes_the_result():
    params = resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6)
    key = fold_key(params, 0, SETTINGS)
    assert key == fold_key(dict(params), 0, SETTINGS)
    others = [
        fold_key(params, 1, SETTINGS),
        fold_key({**params, "epochs": 7}, 0, SETTINGS),
        fold_key(params, 0, SearchSettings(MNIST, 3, 1, 6, "abc", 2)),
        fold_key(params, 0, SearchSettings(MNIST, 3, 0, 6, "other data", 2)),
        fold_key(params, 0, SearchSettings(MNIST, 5, 0, 6, "abc", 2)),
    ]
    assert key not in others and len(set(others)) == len(others)


def test_a_final_seeds_key_depends_on_everything_that_changes_its_result():
    """What a killed final's seed is taken by: the configuration, the seed, the data, the test set, the precision;
    not the fold split (a final trains on all training images)."""
    params = resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6)
    key = final_seed_key(params, 0, SETTINGS, test_digest="t")
    assert key == final_seed_key(dict(params), 0, SearchSettings(MNIST, 5, 3, 6, "abc", 2), test_digest="t")
    others = [
        final_seed_key(params, 1, SETTINGS, test_digest="t"),
        final_seed_key({**params, "epochs": 7}, 0, SETTINGS, test_digest="t"),
        final_seed_key(params, 0, SETTINGS, test_digest="another test set"),
        final_seed_key(params, 0, SearchSettings(MNIST, 3, 0, 6, "other data", 2), test_digest="t"),
        final_seed_key(params, 0, SearchSettings(MNIST, 3, 0, 6, "abc", 2, "mixed_bfloat16"), test_digest="t"),
        fold_key(params, 0, SETTINGS),
    ]
    assert key not in others and len(set(others)) == len(others)


def _results(plan, scores):
    return {
        key: FoldRecord(key, s, 1.0, status)
        for c, (per_fold, status) in zip(plan.candidates, scores, strict=True)
        for key, s in zip(c.fold_keys, per_fold, strict=True)
    }


def test_cv_results_rank_and_tie_break():
    plan = plan_step(
        get_step("kernel_size"), resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6), SETTINGS, {}
    )
    rows = cv_results(
        plan,
        _results(
            plan,
            [
                ([0.99, 0.99, 0.99], "ok"),  # mean .99, std 0
                ([0.98, 0.99, 1.00], "ok"),  # same mean, larger std
                ([0.999, 0.999, 0.999], "diverged"),  # highest mean, but diverged: never the best
                ([0.99, 0.99, 0.99], "ok"),  # exact tie with the first: grid order decides
            ],
        ),
    )
    assert [r["rank_test_score"] for r in rows] == [1, 3, 4, 2]
    assert best_row(rows)["candidate"] == "kernel_size=(1, 1)"
    assert rows[1]["split2_test_score"] == 1.0 and rows[1]["mean_test_score"] == pytest.approx(0.99)
    assert rows[2]["status"] == "diverged"
    assert set(rows[0]) >= {"params", "param_kernel_size", "std_test_score", "min_test_score", "mean_fit_time"}


def test_folds_are_stratified_and_disjoint():
    y = np.array([0] * 30 + [1] * 60)
    held = [fold_indices(y, n_folds=3, split_seed=0, fold=k)[1] for k in range(3)]
    assert sorted(np.concatenate(held).tolist()) == list(range(90))
    assert all(np.bincount(y[h]).tolist() == [10, 20] for h in held)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        {"learn_rate": 50.0, "activation_3": "linear"},  # loss becomes NaN within the first epoch
        {"learn_rate": 1e6, "activation_4": "linear"},
    ],  # loss stays finite but far above chance
)
def test_a_diverging_candidate_is_recorded_not_raised(sample, extra):
    from mlflow_mnist.tasks.mnist.data import select_digits

    task = select_digits(sample, (2, 7))
    params = {**SEED_START, "epochs": 3, **extra}
    plan = plan_step(get_step("momentum"), params, SearchSettings(MNIST, 2, 0, 3, "x", 2), {})
    task0 = next(t for t in plan.to_train if t.params["momentum"] == 0.9)
    result = train_fold(MNIST, task0, task.x_train, task.y_train, with_model=True)
    assert isinstance(result, FoldResult)
    assert result.status == "diverged" and result.model_files is None
    assert 0.0 <= result.accuracy <= 1.0 and not math.isnan(result.accuracy)
    assert result.epochs_run < 3  # stopped early


@pytest.mark.slow
def test_a_healthy_fold_returns_curves_and_a_model(sample):
    from mlflow_mnist.tasks.mnist.data import select_digits

    task = select_digits(sample, (2, 7))
    plan = plan_step(get_step("kernel_size"), {**SEED_START, "epochs": 2}, SearchSettings(MNIST, 2, 0, 2, "x", 2), {})
    result = train_fold(MNIST, plan.to_train[2], task.x_train, task.y_train, with_model=True)
    assert result.status == "ok" and result.epochs_run == 2
    assert set(result.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.history["val_accuracy"][-1] == pytest.approx(result.accuracy, abs=1e-6)
    assert result.accuracy > 0.8 and "MLmodel" in result.model_files


def test_precision_is_part_of_the_fold_key_but_float32_keys_are_unchanged():
    params = resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6)
    bf16 = SearchSettings(MNIST, 3, 0, 6, "abc", 2, "mixed_bfloat16")
    assert fold_key(params, 0, bf16) != fold_key(params, 0, SETTINGS)
    assert fold_key(params, 0, SETTINGS) == fold_key(params, 0, SearchSettings(MNIST, 3, 0, 6, "abc", 2, "float32"))
    plan = plan_step(get_step("kernel_size"), params, bf16, {})
    assert {t.precision for t in plan.to_train} == {"mixed_bfloat16"}


def test_keys_and_digests_are_those_older_versions_made():
    """Pinned values computed by the code before MNIST became a task plug-in: a store it made must resume with
    nothing retrained, so keys, settings keys, hashes and data digests may never drift."""
    from mlflow_mnist.planning import config_hash

    params = resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6)
    assert fold_key(params, 0, SearchSettings(MNIST, 3, 0, 6, "abc", 2)) == "269dfaf46e424479"
    extra = {**params, "augment_shift": 0.1, "lr_schedule": "cosine"}
    bf16 = SearchSettings(MNIST, 3, 1, 6, "abc", 2, "mixed_bfloat16", 3)
    assert fold_key(extra, 2, bf16, repeat=2) == "c951e5b1baa129e5"
    assert SearchSettings(MNIST, 3, 0, 6, "abc", 2).key() == "4c24702a5853"
    assert config_hash(params, MNIST.neutral) == "36e768c4aa62"
    two = MNIST.load("sample", classes="2,7")
    assert (two.digest(), two.digest("test"), two.variant) == ("354443cf91039304", "eb8b0f1268b7a63b", "2v7")
    assert MNIST.load("sample", classes="all").digest() == "9c8bbab2fa4a17f4"


def test_splits_and_continued_keys_are_those_older_versions_made():
    """A fold's split is named by (n_folds, split_seed, fold, repeat) and its key by everything it continues: pinned,
    so a store made before resumes with nothing retrained and benchmarks compare peers on the same splits."""
    y = np.array([0] * 6 + [1] * 9)
    held_out = {
        (3, 0, 1, 0): [1, 3, 6, 12, 14],
        (3, 7, 2, 1): [3, 4, 7, 9, 12],
        (3, 1, 0, 2): [0, 2, 6, 10, 12],
    }
    for (n_folds, split_seed, fold, repeat), expected in held_out.items():
        train, held = fold_indices(y, n_folds=n_folds, split_seed=split_seed, fold=fold, repeat=repeat)
        assert held.tolist() == expected and sorted([*train.tolist(), *expected]) == list(range(len(y)))
    params = resolve_fixed_params(MNIST, "kernel_size", {}, overrides={}, epochs=6)
    assert fold_key(params, 1, SETTINGS, repeat=0, replicate="reference") == "f89f9840f3ff6502"
    resume = "0123456789abcdef"
    continued = fold_key(params, 1, SETTINGS, repeat=1, replicate="reference", horizon=12, resume_key=resume)
    assert continued == "639fab16f6b87dc3"


def test_a_step_retrains_its_reference_with_keys_of_its_own():
    """The reference (the carried-in configuration) is one more candidate whose folds are trained afresh in each
    step: not the grid point's keys, and not the previous step's reference's either."""
    fixed = resolve_fixed_params(MNIST, "pool_size", {}, overrides={}, epochs=6)
    pool = plan_step(get_step("pool_size"), fixed, SETTINGS, {}, reference=True)
    kernel = plan_step(get_step("kernel_size"), fixed, SETTINGS, {}, reference=True)
    reference = pool.candidates[-1]
    assert reference.role == "reference" and reference.label == "reference" and len(pool.candidates) == 5
    twin = next(c for c in pool.candidates[:-1] if c.params == reference.params)  # pool (2, 2) is the carried-in
    assert not set(reference.fold_keys) & set(twin.fold_keys)
    assert not set(reference.fold_keys) & set(kernel.candidates[-1].fold_keys)
    assert len(pool.to_train) == 15 and pool.group.reference_rule == "fresh"


@pytest.mark.slow
def test_a_short_fit_runs_one_batch_per_graph_call_and_trains_the_same_model(sample):
    """Few batches in all: one per graph call (tracing Keras' several-batch loop would cost more than it saves);
    a long fit keeps several. Either way the same batches meet the same weights: the same model comes out."""
    from mlflow_mnist.tasks.mnist.data import select_digits
    from mlflow_mnist.worker.training import STEPS_PER_EXECUTION, execution_steps, fit

    data = select_digits(sample, (2, 7))
    params = MNIST.validate({**SEED_START, "epochs": 2, "batch_size": 20})
    x, y = data.x_train[:400], data.y_train[:400]
    assert execution_steps(len(x), params) == 1  # 2 epochs of 20 batches
    assert execution_steps(8000, params) == STEPS_PER_EXECUTION
    fits = [fit(MNIST, params, x, y, n_classes=2, seed=3, steps_per_execution=n) for n in (None, STEPS_PER_EXECUTION)]
    assert [f.model.steps_per_execution for f in fits] == [1, STEPS_PER_EXECUTION]
    assert fits[0].history.keys() == fits[1].history.keys() == {"loss", "accuracy"}
    for name, values in fits[1].history.items():
        assert fits[0].history[name] == pytest.approx(values, rel=1e-5)
    for short, long in zip(fits[0].model.get_weights(), fits[1].model.get_weights(), strict=True):
        np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-6)


def test_tune_prints_what_each_step_carried_in(store, capsys):
    """The progress output names, under each step's first line, the values it took from earlier steps and the
    finished steps later in the task's order that it does not see (here momentum, run before batch_size); a step
    searched by successive halving says it once, at its first rung."""
    from mlflow_mnist.executors import SerialExecutor
    from mlflow_mnist.strategies import StagedGrid
    from mlflow_mnist.strategies.halving import SuccessiveHalving
    from mlflow_mnist.testing import fold_result, open_campaign, tiny_dataset

    campaign = open_campaign(store, dataset=tiny_dataset(), experiment="mnist", folds=2, epochs=6, task="mnist")

    def score(task):  # one clear winner per step
        p = task.params
        return fold_result(task, 0.9 + 0.01 * (p["batch_size"] == 20) + 0.01 * (p["momentum"] == 0.2))

    for stage, strategy in (("momentum", StagedGrid), ("batch_size", StagedGrid), ("learn_rate", SuccessiveHalving)):
        request = campaign.request(stage=stage, steps=tuple(MNIST.steps_of(stage)))
        with SerialExecutor() as executor:
            campaign.search(
                strategy.from_request(request),
                executor=executor,
                with_model=False,
                progress=True,
                lock=False,
                worker=score,
            )
    lines = [*capsys.readouterr().out.splitlines(), ""]
    starts = [i for i, line in enumerate(lines) if " candidates x " in line]
    carried = {lines[i].split(":")[0]: lines[i + 1].strip() for i in starts if lines[i + 1].startswith("  carried")}
    assert carried == {
        "momentum": "carried in: nothing (the task's start values)",
        "batch_size": (
            "carried in: nothing (the task's start values); not carried from momentum: later in the task's order"
        ),
        "learn_rate rung 1/2": "carried in: batch_size=20 (batch_size), momentum=0.2 (momentum)",
    }, lines
    assert any(lines[i].startswith("learn_rate rung 2/2") for i in starts)  # a later rung: no second saying


def test_a_notebook_progress_bar_counts_to_the_folds_of_every_group(monkeypatch):
    """From an audit of the Python API: the bar was made with a total of 0 and grown per group; tqdm.notebook's
    widget keeps the maximum it is made with, so a notebook's bar sat full, in its 'info' style, from the start.
    (ipywidgets is not a dependency: the widget here is the part of tqdm.notebook's that holds the maximum.)"""
    from types import SimpleNamespace

    import tqdm.auto
    from tqdm.std import tqdm as terminal_bar

    from mlflow_mnist.progress import Progress

    class NotebookBar(terminal_bar):  # as tqdm.notebook.tqdm: (label, bar, text), the bar's max fixed at creation
        def __init__(self, *args, total=None, **kwargs):
            super().__init__(*args, total=total, **kwargs)
            self.container = SimpleNamespace(children=(None, SimpleNamespace(max=total or 1), None))

    monkeypatch.setattr(tqdm.auto, "tqdm", NotebookBar)

    def plan(name: str, folds: int):
        group = SimpleNamespace(name=name, carry=None)
        return SimpleNamespace(group=group, candidates=[], to_train=[object()] * folds, reused=[])

    progress = Progress(enabled=True)
    progress.group_started(plan("step 1", 6))
    assert progress.bar.container.children[1].max == progress.bar.total == 6
    progress.group_started(plan("step 2", 4))
    assert progress.bar.container.children[1].max == progress.bar.total == 10
    progress.close()
