"""The statistics, tested with data that can make them fail: a reference implementation, known effects with
noise, a Monte Carlo false-positive rate on real cross-validation, and the real kernel_size case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.calibration import simulate
from analysis.stats import (
    BETTER,
    EFFECT,
    EQUIVALENT,
    NO_EFFECT,
    REFERENCE,
    STEP_UNDECIDED,
    UNDECIDED,
    WORSE,
    candidate_summary,
    compare,
    holm,
    step_verdicts,
)


@pytest.mark.parametrize("runs, n_folds", [(1, 3), (3, 3), (2, 5)])
def test_corrected_t_test_matches_baycomp(runs, n_folds):
    """Our corrected test is baycomp's correlated t-test read as p-values: p_better = 1 - P(right of ROPE)."""
    baycomp = pytest.importorskip("baycomp")
    rng = np.random.default_rng(runs * 10 + n_folds)
    for _ in range(5):
        reference = 0.99 + rng.normal(0, 0.002, runs * n_folds)
        candidate = reference + rng.normal(0.001, 0.0015, runs * n_folds)
        ours = compare(candidate, reference, n_folds=n_folds, rope=0.001)
        left, _, right = baycomp.two_on_single(reference, candidate, rope=0.001, runs=runs)
        assert ours.p_better == pytest.approx(1 - right, abs=1e-9)
        assert ours.p_worse == pytest.approx(1 - left, abs=1e-9)


def test_the_correction_widens_the_plain_standard_error():
    differences = np.array([0.004, -0.001, 0.002])
    plain = differences.std(ddof=1) / math.sqrt(3)
    corrected = compare(differences, np.zeros(3), n_folds=3).se
    assert corrected == pytest.approx(plain * math.sqrt((1 / 3 + 1 / 2) / (1 / 3)))


def test_holm_is_step_down_and_monotone():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]


def test_size_not_consistency_decides():
    """One image better on every fold is not an effect; 15, 2 and 13 images better is not "tied" either."""
    one_image = compare(np.full(3, 0.99 + 1 / 4000), np.full(3, 0.99), n_folds=3, rope=0.001)
    assert one_image.verdict(one_image.p_value) == EQUIVALENT
    uneven = compare(0.99 + np.array([15, 2, 13]) / 4000, np.full(3, 0.99), n_folds=3, rope=0.001)
    assert uneven.verdict(uneven.p_value) == UNDECIDED


def _folds(scores: dict[str, np.ndarray], *, incumbent: str, step: str = "kernel_size", n_folds: int = 3):
    """A fold table as analysis.store builds it, from candidate -> per-split scores."""
    rows = []
    for index, (value, per_split) in enumerate(scores.items()):
        for split, accuracy in enumerate(per_split):
            rows.append(
                {
                    "step": step,
                    "step_order": 15,
                    "candidate": f"{step}={value}",
                    "candidate_index": index,
                    "varied": step,
                    "value": value,
                    "is_incumbent": value == incumbent,
                    "split": split,
                    "n_folds": n_folds,
                    "n_splits": len(per_split),
                    "accuracy": accuracy,
                    "chance": 0.51,
                    "status": "ok",
                    "diverged": False,
                }
            )
    return pd.DataFrame(rows)


def _noisy(rng, n, mean, shared, sd=0.0008):
    return mean + shared + rng.normal(0, sd, n)


def test_known_effects_with_noise_come_out_right():
    """Repeated 3-fold CV, fold-to-fold noise shared by all candidates plus each candidate's own."""
    rng = np.random.default_rng(7)
    n = 9  # 3 repeats x 3 folds
    shared = rng.normal(0, 0.003, n)  # some splits are harder for every model
    folds = _folds(
        {
            "(3, 3)": _noisy(rng, n, 0.990, shared),
            "(5, 5)": _noisy(rng, n, 0.995, shared),  # +0.5 points: beyond the ROPE
            "(7, 7)": _noisy(rng, n, 0.990, shared, sd=0.0002),  # the same model, nearly
            "(9, 9)": _noisy(rng, n, 0.984, shared),  # -0.6 points
            "(1, 1)": np.where(np.arange(n) % 3 == 0, 0.51, 0.99),  # collapses on a third of the splits
        },
        incumbent="(3, 3)",
    )
    summary = candidate_summary(folds, rope=0.001).set_index("value")
    assert summary.loc["(3, 3)", "verdict"] == REFERENCE
    assert summary.loc["(5, 5)", "verdict"] == BETTER
    assert summary.loc["(7, 7)", "verdict"] == EQUIVALENT
    assert summary.loc["(9, 9)", "verdict"] == WORSE
    assert summary.loc["(1, 1)", "verdict"] == "unstable" and summary.loc["(1, 1)", "collapsed_folds"] == 3
    assert summary.loc["(5, 5)", "is_best"]
    assert ((summary["ci_low"] >= 0) & (summary["ci_high"] <= 1)).all()
    verdicts = step_verdicts(summary.reset_index())
    assert verdicts.loc[0, "verdict"] == EFFECT
    assert "(1, 1) collapses to chance on 3 of 9 folds" in verdicts.loc[0, "sentence"]


def test_a_step_of_noise_is_undecided_with_an_estimate_or_no_practical_effect():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.003, 3)
    noise_only = {v: _noisy(rng, 3, 0.994, shared, sd=0.0012) for v in ("(1, 1)", "(2, 2)", "(3, 3)")}
    verdicts = step_verdicts(candidate_summary(_folds(noise_only, incumbent="(2, 2)", step="pool_size")))
    assert verdicts.loc[0, "verdict"] == STEP_UNDECIDED
    identical = {v: 0.994 + shared for v in ("(1, 1)", "(2, 2)", "(3, 3)")}
    verdicts = step_verdicts(candidate_summary(_folds(identical, incumbent="(2, 2)", step="pool_size")))
    assert verdicts.loc[0, "verdict"] == NO_EFFECT


def test_false_positives_stay_within_alpha_on_real_cross_validation():
    """No effect, 3 x 3 repeated CV: the corrected rule calls 'better/worse' at most alpha (+3 standard errors,
    0.083 for 400 replicates) of the time; the plain paired t-test on the same splits does not: the simulation
    can catch an anti-conservative test."""
    result = simulate(replicates=400, n_folds=3, cv_repeats=3, gap=0.0, seed=1)
    assert result.rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    assert result.naive_rate > 0.15


def test_a_known_effect_is_found_with_the_reported_power():
    """README: an 8-point gap at 300 images, 3 x 3 CV, is found about 60% of the time (2,000 replicates)."""
    result = simulate(replicates=200, n_folds=3, cv_repeats=3, gap=0.08, seed=2)
    assert result.rate >= 0.45
