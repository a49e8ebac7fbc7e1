"""Analysis table builders on synthetic stores written through the real logging path (no training)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from analysis import comparisons, curves, importance, interaction, progression, sensitivity
from analysis.report import build_report
from analysis.stats import EFFECT, EQUIVALENT, NO_EFFECT, REFERENCE, WORSE, candidate_summary, step_verdicts
from analysis.store import epoch_table, fold_table, read_runs
from mlflow_mnist import tracking
from mlflow_mnist.executors import SerialExecutor
from mlflow_mnist.planning import SearchSettings
from mlflow_mnist.results import FoldResult
from mlflow_mnist.runs import RunWriter, log_report
from mlflow_mnist.search import run_search
from mlflow_mnist.search_tree import SearchTree
from mlflow_mnist.stages import steps_of
from mlflow_mnist.strategies import StagedGrid

DIGEST = "synthetic"


def scripted(score, diverged=()):
    """A fold worker that 'trains' by looking up score(label, fold)."""

    def worker(t):
        accuracy = score(t.label, t.fold)
        return FoldResult(
            t.key,
            t.step,
            t.candidate_index,
            t.fold,
            accuracy,
            0.1,
            0.5,
            2,
            "diverged" if t.label in diverged else "ok",
            history={"val_accuracy": [accuracy - 0.01, accuracy], "loss": [0.3, 0.2]},
        )

    return worker


def log_stage(uri, stage, score, folds=3, diverged=()):
    client = tracking.connect(uri)
    experiment = tracking.experiment_id(client, "mnist")
    writer = RunWriter(client, experiment, common_tags={tracking.DIGEST: DIGEST})
    settings = SearchSettings(folds, 0, 2, DIGEST, 2)
    strategy = StagedGrid(steps_of(stage), overrides={}, epochs=2)
    tree = SearchTree(
        writer, name=stage, strategy=strategy.name, single_group=strategy.single_group, settings_params={}
    )
    return run_search(
        strategy,
        settings=settings,
        executor=SerialExecutor(),
        worker=scripted(score, diverged),
        read_state=lambda: tracking.read_store_state(client, experiment, DIGEST),
        listeners=[tree],
    )


NOISE = [0.991, 0.986, 0.993]  # fold-to-fold noise shared by identical models


@pytest.fixture
def campaign(store):
    """Four steps: identical models, a numeric effect with a diverged candidate, a categorical one, a reuse."""
    log_stage(store, "optimizer", lambda label, fold: NOISE[fold])  # every optimizer "the same model"
    log_stage(
        store,
        "momentum",
        lambda label, fold: 0.49 if label == "momentum=0.9" else NOISE[fold] - 0.004 * float(label.split("=")[1]) ** 2,
        diverged={"momentum=0.9"},
    )
    log_stage(
        store,
        "activation_1",
        lambda label, fold: NOISE[fold] - (0.02 if label.endswith(("softmax", "sigmoid")) else 0.0),
    )
    log_stage(store, "kernel_size", lambda label, fold: NOISE[fold] + (0.003 if "(5, 5)" in label else 0.0))
    log_stage(store, "pool_size", lambda label, fold: NOISE[fold] + (0.001 if "(1, 1)" in label else 0.0))
    client = tracking.connect(store)
    return client, fold_table(read_runs(client, ["mnist"]))


def test_fold_table_has_every_fold_of_every_candidate(campaign):
    _, folds = campaign
    counts = folds.groupby("step")["fold_run_id"].count().to_dict()
    assert counts == {"optimizer": 21, "momentum": 18, "activation_1": 24, "kernel_size": 12, "pool_size": 12}
    # pool_size's (2, 2) point is kernel_size's best: its folds are read from there, flagged reused.
    reused = folds[(folds["step"] == "pool_size") & folds["reused"]]
    assert set(reused["value"]) == {"(2, 2)"} and len(reused) == 3
    assert folds[folds["value"] == "0.9"]["diverged"].all()


def test_identical_models_show_no_practical_effect(campaign):
    _, folds = campaign
    verdicts = step_verdicts(candidate_summary(folds)).set_index("step")
    assert verdicts.loc["optimizer", "verdict"] == NO_EFFECT
    assert verdicts.loc["optimizer", "n_equivalent"] == 6
    assert verdicts.loc["activation_1", "verdict"] == EFFECT
    assert verdicts.loc["momentum", "n_diverged"] == 1


def test_significance_uses_paired_folds(campaign):
    _, folds = campaign
    summary = candidate_summary(folds).set_index(["step", "candidate"])
    # softmax is 2 points worse on every fold than the carried-in relu: beyond the ROPE on every split.
    assert summary.loc[("activation_1", "activation_1=softmax"), "verdict"] == WORSE
    assert summary.loc[("activation_1", "activation_1=relu"), "verdict"] == REFERENCE
    assert summary.loc[("activation_1", "activation_1=tanh"), "verdict"] == EQUIVALENT
    assert summary.loc[("momentum", "momentum=0.9"), "verdict"] == "diverged"  # diverged is never tied
    assert summary.loc[("kernel_size", "kernel_size=(5, 5)"), "is_best"]


def test_sensitivity_axes_numeric_categorical_and_diverged(campaign, tmp_path):
    _, folds = campaign
    summary = candidate_summary(folds)
    momentum = sensitivity.get_sensitivity_info(folds, summary, "momentum")
    assert momentum.numeric and not momentum.log_x and momentum.points["diverged"].sum() == 3
    assert momentum.means.loc[momentum.means["is_best"], "x"].item() == 0.0
    activation = sensitivity.get_sensitivity_info(folds, summary, "activation_1")
    assert not activation.numeric and list(activation.means["x"])[:2] == ["softmax", "softplus"]
    kernel = sensitivity.get_sensitivity_info(folds, summary, "kernel_size")
    assert not kernel.numeric  # pairs are categories, in grid order
    for info in (momentum, activation, kernel):
        path = sensitivity.render_sensitivity(info, tmp_path / f"{info.step}.png")
        assert path.stat().st_size > 5000


def test_progression_importance_noise_and_curves(campaign, tmp_path):
    client, folds = campaign
    summary = candidate_summary(folds)
    verdicts = step_verdicts(summary)
    prog = progression.get_progression_info(summary, verdicts)
    assert list(prog["step"]) == ["optimizer", "momentum", "activation_1", "kernel_size", "pool_size"]
    assert prog.set_index("step").loc["optimizer", "verdict"] == NO_EFFECT
    imp = importance.get_importance_info(summary, verdicts, folds).set_index("step")
    assert imp.loc["optimizer", "spread"] == 0 and imp.loc["activation_1", "ratio"] > 2
    info = comparisons.get_comparisons_info(summary)
    assert {"reference", "practically equivalent", "worse", "diverged"} <= set(info["verdict"])
    epochs = epoch_table(client, folds[folds["step"] == "kernel_size"])
    curve = curves.get_curves_info(epochs, "kernel_size")
    assert len(curve) == 4 * 2 and set(curve["epoch"]) == {1, 2}
    assert curve[curve["epoch"] == 2]["value"].max() == pytest.approx(sum(NOISE) / 3 + 0.003)
    for path in (
        progression.render_progression(prog, tmp_path / "p.png"),
        importance.render_importance(importance.get_importance_info(summary, verdicts, folds), tmp_path / "i.png"),
        comparisons.render_comparisons(info, tmp_path / "n.png", rope=0.001),
        curves.render_curves(curve, "kernel_size", tmp_path / "c.png"),
    ):
        assert path.stat().st_size > 5000


def test_interaction_of_the_epochs_grid(store, tmp_path):
    log_stage(store, "epochs", lambda label, fold: NOISE[fold] - 0.001 * int(label.split("=")[-1]) / 20)
    folds = fold_table(read_runs(tracking.connect(store), ["mnist"]))
    summary = candidate_summary(folds)
    assert interaction.steps_with_two_parameters(summary) == ["epochs"]
    table = interaction.get_interaction_info(summary, "epochs")
    assert table.shape == (1, 3) and list(table.columns) == ["20", "40", "60"]
    assert table.loc["20", "20"] > table.loc["20", "60"]
    assert interaction.render_interaction(table, "epochs", tmp_path / "x.png").stat().st_size > 5000


def test_report_links_every_figure_and_is_logged(campaign, tmp_path):
    client, _ = campaign
    report = build_report(client, ["mnist"], tmp_path / "out")
    text = report.html_path.read_text()
    assert len(report.figures) == 4 + 2 * 5  # progression, comparisons, importance, anytime; per step two
    assert "anytime" in report.figures
    for name in report.figures:
        anchor = name.replace(" ", "-")
        assert f'href="#{anchor}"' in text and f'id="{anchor}"' in text
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == len(report.figures)
    assert "no practical effect" in text
    run_id = log_report(client, "mnist", tmp_path / "out")
    logged = {f.path for f in client.list_artifacts(run_id, "analysis")}
    assert {"analysis/report.html", "analysis/comparisons.png", "analysis/verdicts.csv"} <= logged


def test_empty_store_warns_and_still_renders(tmp_path):
    empty = pd.DataFrame(columns=["step", "candidate", "mean", "ci_low", "ci_high", "is_best", "step_order"])
    with pytest.warns(UserWarning, match="no finished steps"):
        path = progression.render_progression(progression.get_progression_info(empty), tmp_path / "e.png")
    assert path.stat().st_size > 0


@pytest.mark.slow
def test_more_than_a_thousand_runs_are_read_whole(store):
    log_stage(store, "dropout_rate_1", lambda label, fold: 0.99 - fold * 1e-5, folds=100)
    runs = read_runs(tracking.connect(store), ["mnist"])
    assert len(runs) == 1 + 10 + 1000
    folds = fold_table(runs)
    assert len(folds) == 1000 and folds["fold"].nunique() == 100


def test_runs_are_read_from_the_clients_store_whatever_the_process_wide_store_is(store, tmp_path):
    import mlflow

    log_stage(store, "optimizer", lambda label, fold: NOISE[fold])
    client = tracking.connect(store)
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    tracking.connect(elsewhere)  # an empty store, now the process-wide one
    runs = read_runs(client, ["mnist"])
    assert (runs[f"tags.{tracking.LEVEL}"] == "fold").sum() == 7 * 3
    assert len(read_runs(client, None)) == len(runs)  # None: every experiment of the store
    assert mlflow.get_tracking_uri() == elsewhere


def test_the_reported_kernel_size_case_comes_out_unstable_and_importance_agrees(store, tmp_path):
    """The issue's `make run` store, through the real logging path: kernel_size from the seed's start on real
    2-vs-7, (1, 1) at 0.51, 0.51 and 0.99, the others at 0.99 (two digits, as reported). The old report said
    "no detectable effect", drew (1, 1) as tied with an interval up to 1.36, and its importance said 235x noise."""
    reported = {"(1, 1)": [0.51, 0.51, 0.99]}
    log_stage(store, "kernel_size", lambda label, fold: reported.get(label.split("=")[1], [0.99] * 3)[fold])
    client = tracking.connect(store)
    report = build_report(client, ["mnist"], tmp_path / "out")
    row = report.summary.set_index("value").loc["(1, 1)"]
    assert row["verdict"] in ("unstable", "worse") and row["collapsed_folds"] == 2
    assert ((report.summary["ci_low"] >= 0) & (report.summary["ci_high"] <= 1)).all()
    verdict = report.verdicts.set_index("step").loc["kernel_size"]
    assert verdict["verdict"] == EFFECT
    assert verdict["sentence"].startswith("(1, 1) collapses to chance on 2 of 3 folds")
    spread = importance.get_importance_info(report.summary, report.verdicts, report.folds).iloc[0]
    assert spread["verdict"] == EFFECT and spread["ratio"] > 1
    written = pd.read_csv(report.csv_path)
    assert list(written.columns) == ["step", "candidate", "mean", "ci_low", "ci_high", "verdict", "p_adjusted"]
    assert written.set_index("candidate").loc["kernel_size=(1, 1)", "verdict"] == "unstable"
