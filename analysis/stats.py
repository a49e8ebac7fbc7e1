"""Verdicts from fold scores alone, with a test that knows cross-validation folds are not independent.

**The reference** of a step is fixed before any of its scores is seen: the configuration the step started from
(carried in from earlier steps), trained afresh in the step as a candidate of its own, with its own training
seeds (fold-table column ``is_reference``). Stores made before that rule have no such candidate; there the
carried-in grid point is the reference, and when its folds were reused from the previous step (where they won,
so they were selected for being high) the step's verdicts say so (``reference_reused``): "worse" is then claimed
too often (:mod:`analysis.calibration`). A step whose carried-in value is not one of its candidates has **no
reference** and no candidate verdicts: choosing the step's best instead, after the scores, would inflate false
"worse" claims with the number of candidates. An unhealthy reference leaves the step undecided, and says so.

**The test.** Over the ``r x k`` splits of repeated k-fold cross-validation, each candidate's paired differences
from the reference are tested with the **corrected repeated k-fold t-test** (Nadeau & Bengio 2003; Bouckaert &
Frank 2004): variance ``var(d) * (1/(r k) + n_test/n_train)``, ``r k - 1`` degrees of freedom. The extra
``n_test/n_train`` term accounts for folds sharing most of their training data.

**The verdict** uses a region of practical equivalence (ROPE, default +/-0.1 accuracy points): a candidate is
*better* (or *worse*) when the difference is shown to lie beyond the ROPE, *practically equivalent* when shown to
lie inside it (two one-sided tests), *undecided* otherwise. The step's family (its candidates' comparisons, and
the breakdown test below when two or more folds broke down) is Holm-adjusted at alpha = 0.05. Each candidate's
interval is drawn at the level of its Holm step (:func:`holm_levels`), so it clears the ROPE exactly when its
verdict is decided.

**Health** (:func:`mlflow_mnist.results.candidate_health`, the search's rule too): *unstable* (a fold collapsed:
near chance and far below the candidate's other folds), *diverged*, *failed*, *incomplete* (folds missing). Such
candidates are not compared. Incomplete and failed are never an effect. Collapses and divergences are an effect
only when an exact test says they depend on the parameter (:func:`breakdown_test`); otherwise they are the step's
health row. A step shows an **effect** when a candidate is better or worse, or breakdowns depend on the
parameter; **no practical effect** when every other candidate is practically equivalent to a healthy reference;
**undecided** otherwise, with an estimate of how many repeats would decide it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from mlflow_mnist.results import candidate_health, rank_key

ALPHA = 0.05
DEFAULT_ROPE = 0.001  # 0.1 accuracy points: 2 of 2,060 test images, well below what a seed changes
BETTER, WORSE, EQUIVALENT, UNDECIDED, REFERENCE = "better", "worse", "practically equivalent", "undecided", "reference"
#: Verdicts of healthy candidates that were not compared: the step has no reference, or an unhealthy one.
NO_REFERENCE, REFERENCE_UNHEALTHY = "no reference", "reference unhealthy"
# The grid point whose configuration is the fresh reference's (the carried-in value; its folds usually won the step
# before, so they are high by selection): a configuration compared with itself says nothing about the parameter,
# and it was called "better" too often (calibration's "twin reused"), so it stays out of the step's family.
SAME_AS_REFERENCE = "the reference's configuration"
EFFECT, NO_EFFECT, STEP_UNDECIDED = "effect", "no practical effect", "undecided"
UNHEALTHY = ("unstable", "incomplete", "diverged", "failed")
#: What the step's reference is: trained afresh in the step, reused from the previous step, or missing.
FRESH, REUSED, MISSING = "fresh", "reused", "none"
MAX_REPEATS = 50  # beyond this, an estimate of "repeats needed" is not worth giving
#: Differences closer than this are the same: Keras reports accuracies in float32, where two differences of the
#: same count of images can part by ~2 ulp (1.2e-7); one image of a fold is 2.5e-7 only at four million images.
SAME_DIFFERENCE = 2.5e-7
MEAN_LEVEL = 0.95  # the interval of a candidate's mean accuracy: a description, no verdict is drawn from it


@dataclass(frozen=True)
class Comparison:
    """Candidate minus reference over the same splits: mean, corrected standard error, and three p-values."""

    mean: float
    se: float
    df: int
    p_better: float  # H0: difference <= +rope
    p_worse: float  # H0: difference >= -rope
    p_equivalent: float  # H0: |difference| >= rope (two one-sided tests)

    @property
    def p_value(self) -> float:
        """The smallest p-value of the three regions; a direction chosen after seeing the data costs a factor 2
        (a two-sided test), so "better or worse" under no difference stays within alpha."""
        return min(1.0, 2 * self.p_better, 2 * self.p_worse, self.p_equivalent)

    @property
    def effect_p(self) -> float:
        """The p-value of "it differs beyond the ROPE, in the direction the data show" (two-sided)."""
        return min(1.0, 2 * self.p_better, 2 * self.p_worse)

    @property
    def direction(self) -> str:
        """The region the data point to most strongly."""
        if 2 * self.p_better <= min(2 * self.p_worse, self.p_equivalent):
            return BETTER
        return WORSE if 2 * self.p_worse <= self.p_equivalent else EQUIVALENT

    def verdict(self, p_adjusted: float, alpha: float = ALPHA) -> str:
        """better / worse / practically equivalent when the (Holm-adjusted) p-value is below alpha."""
        return self.direction if p_adjusted < alpha else UNDECIDED

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """A plain two-sided interval of the difference at ``level`` (infinite when the variance is unknown)."""
        half = float(_t_quantile(0.5 + level / 2, self.df)) * self.se if self.df > 0 else math.inf
        return self.mean - half, self.mean + half

    def decision_interval(self, alpha_level: float) -> tuple[float, float, float]:
        """The interval a decision at ``alpha_level`` reads, as (low, high, confidence level): two-sided
        ``1 - alpha_level`` for better/worse (it lies beyond the ROPE exactly when ``2 p < alpha_level``), and
        ``1 - 2 alpha_level`` for equivalence (inside the ROPE exactly when the two one-sided tests pass).
        NaN bounds when the variance is unknown (fewer than two splits); bounded to [-1, 1], where a
        difference of two accuracies lies."""
        equivalence = self.direction == EQUIVALENT
        tail = alpha_level if equivalence else alpha_level / 2
        level = 1 - 2 * tail
        if self.df < 1 or not math.isfinite(self.se):
            return math.nan, math.nan, level
        half = float(_t_quantile(1 - tail, self.df)) * self.se
        return max(-1.0, self.mean - half), min(1.0, self.mean + half), level

    def threshold(self, alpha_level: float, rope: float) -> float:
        """The absolute difference a better/worse decision at ``alpha_level`` needs: the ROPE plus the half-width
        of the two-sided ``1 - alpha_level`` interval (infinite when the variance is unknown)."""
        if self.df < 1 or not math.isfinite(self.se):
            return math.inf
        return rope + float(_t_quantile(1 - alpha_level / 2, self.df)) * self.se


def corrected_se(differences: np.ndarray, n_folds: int) -> float:
    """Standard error of the mean difference over r x k splits, corrected for overlapping training sets."""
    n = len(differences)
    if n < 2:
        return math.inf
    ratio = 1.0 / (n_folds - 1)  # n_test / n_train for k-fold
    return math.sqrt((1.0 / n + ratio) * float(np.var(differences, ddof=1)))


def _t_cdf(value: float, df: int) -> float:
    if math.isnan(value):
        return 0.5  # a difference that is not a number (a NaN score) decides nothing
    return float(special.stdtr(df, value)) if df > 0 else 0.5  # scipy.stats.t.cdf, without its overhead


def _t_quantile(probability: float, df: int | np.ndarray) -> float | np.ndarray:
    """scipy.stats.t.ppf, without its overhead (the calibration calls it a million times)."""
    return special.stdtrit(df, probability)


def has_spread(differences: np.ndarray) -> bool:
    """Whether paired differences vary at all: the t-test needs their spread. The same difference on every split
    (likely where folds are small and accuracies move by whole images) says nothing about how much it varies;
    a zero standard error would turn any mean past the ROPE into p = 0, a claim no correction can undo."""
    return len(differences) > 1 and float(np.ptp(differences)) > SAME_DIFFERENCE


def compare(candidate: np.ndarray, reference: np.ndarray, *, n_folds: int, rope: float = DEFAULT_ROPE) -> Comparison:
    """The corrected repeated k-fold t-test of ``candidate - reference`` (paired by split) against a ROPE. Without
    a spread (fewer than two splits, or the same difference on each) the standard error is unknown (infinite): no
    region is claimed."""
    differences = np.asarray(candidate, float) - np.asarray(reference, float)
    se = corrected_se(differences, n_folds) if has_spread(differences) else math.inf
    mean, df = float(differences.mean()), len(differences) - 1
    above, below = (mean - rope) / se, (mean + rope) / se  # se > 0: finite with a spread, else infinite
    p_better = 1.0 - _t_cdf(above, df)
    p_worse = _t_cdf(below, df)
    p_equivalent = max(1.0 - _t_cdf(below, df), _t_cdf(above, df))
    return Comparison(mean, se, df, p_better, p_worse, p_equivalent)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), same order as given."""
    order = np.argsort(p_values, kind="stable")
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def holm_levels(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """The level each hypothesis faced in Holm's step-down: ``alpha * p / q`` with ``q`` its (uncapped) adjusted
    p-value, so ``p < level`` exactly when ``q < alpha``. It is Holm's own ``alpha / (m - rank + 1)`` when the
    hypothesis set its adjusted value, smaller when an earlier one did (then an earlier failure blocked it).

    Holm's step-down has no simultaneous intervals that track its decisions; an interval drawn at this level
    does, hypothesis by hypothesis (the first ranked is at Bonferroni's ``alpha / m``)."""
    order = np.argsort(p_values, kind="stable")
    m, levels, running = len(p_values), [alpha] * len(p_values), 0.0
    for rank, index in enumerate(order):
        p = float(p_values[index])
        running = max(running, (m - rank) * p)
        levels[index] = alpha * p / running if p > 0 else alpha / (m - rank)
    return levels


def breakdown_test(breakdowns: Sequence[int], trials: Sequence[int]) -> float:
    """Exact test that breakdowns (collapsed or diverged folds) do not depend on the candidate.

    Given the step's total of breakdowns, every way of placing them among the candidates' trained folds is
    equally likely under "the parameter does not matter" (a multivariate hypergeometric law). The p-value is the
    probability of a table at least as uneven as the one seen, by Pearson's statistic ``sum(b_i^2 / n_i)``
    (Fisher-Freeman-Halton's exact chi-square test of a 2 x m table). Folds of one split that break down
    together make the counts more even, so sharing splits only makes the test conservative."""
    counts = [(int(b), int(n)) for b, n in zip(breakdowns, trials, strict=True) if n > 0]
    total = sum(b for b, _ in counts)
    if total < 2 or len(counts) < 2:
        return 1.0  # one breakdown (or one candidate) can be placed only one way, up to relabelling
    observed = sum(b * b / n for b, n in counts)
    # Distribution of (breakdowns placed so far, statistic so far), weighted by the product of binomials.
    states: dict[tuple[int, float], float] = {(0, 0.0): 1.0}
    for _, n in counts:
        grown: dict[tuple[int, float], float] = {}
        for (used, statistic), weight in states.items():
            for b in range(min(n, total - used) + 1):
                key = (used + b, round(statistic + b * b / n, 9))
                grown[key] = grown.get(key, 0.0) + weight * math.comb(n, b)
        states = grown
    denominator = math.comb(sum(n for _, n in counts), total)
    tail = sum(w for (used, statistic), w in states.items() if used == total and statistic >= observed - 1e-9)
    return min(1.0, tail / denominator)


def mean_interval(scores: np.ndarray, n_folds: int, level: float = MEAN_LEVEL) -> tuple[float, float, float]:
    """A candidate's corrected standard error and the interval of its mean accuracy on the logit scale.

    The interval is the corrected t interval on logit(mean) (delta method), mapped back: it stays in (0, 1) and
    is asymmetric near 1, where a symmetric one would be wrong. A Wilson interval would need a binomial count,
    but the corrected error is not binomial (it carries training noise and overlapping folds). NaN bounds ("n/a")
    when the variance is unknown: fewer than two folds, or every fold scored the same."""
    scores = np.asarray(scores, float)
    mean = float(np.mean(scores))
    se = corrected_se(scores - mean, n_folds)
    if not math.isfinite(se) or se == 0 or not 0 < mean < 1:
        return se, math.nan, math.nan
    half = float(_t_quantile(0.5 + level / 2, len(scores) - 1)) * se / (mean * (1 - mean))
    centre = float(special.logit(mean))
    return se, float(special.expit(centre - half)), float(special.expit(centre + half))


def repeats_to_decide(
    comparison: Comparison, *, n_folds: int, variance: float, rope: float, alpha: float, verdict: str
) -> float:
    """Repeats at which the observed difference and spread would give ``verdict``: a whole number up to
    :data:`MAX_REPEATS`, ``inf`` when more would be needed, NaN when no number of repeats will.

    The corrected variance has a floor (``var * n_test/n_train``) that repeats do not shrink, so some
    differences can never be decided by repeating the split: more data or more folds would be needed.
    """
    n_limit = 1_000_000 * n_folds  # where the floor is all that is left of the standard error
    se_limit = math.sqrt((1.0 / n_limit + 1.0 / (n_folds - 1)) * variance)
    if not _decided(comparison.mean, se_limit, n_limit, rope=rope, alpha=alpha, verdict=verdict):
        return math.nan
    repeats = np.arange(1, MAX_REPEATS + 1)
    n = repeats * n_folds
    se = np.sqrt((1.0 / n + 1.0 / (n_folds - 1)) * variance)
    decided = _decided(comparison.mean, se, n, rope=rope, alpha=alpha, verdict=verdict)
    return float(repeats[np.argmax(decided)]) if decided.any() else math.inf


def _decided(mean: float, se, n, *, rope: float, alpha: float, verdict: str):
    """Whether a mean difference with standard error ``se`` over ``n`` splits gives ``verdict`` at ``alpha``."""
    if verdict == EQUIVALENT:
        return abs(mean) + _t_quantile(1 - alpha, n - 1) * se < rope
    margin = mean - rope if verdict == BETTER else -(mean + rope)
    return margin > _t_quantile(1 - alpha / 2, n - 1) * se


# -- the fold table's reference columns -------------------------------------------------------------------------


def with_reference_columns(folds: pd.DataFrame) -> pd.DataFrame:
    """The fold table with ``is_reference``, ``reference_reused`` and ``role``, whatever store made it.

    ``analysis.store`` gives ``role`` (the schema's candidate role: "reference" for the candidate the search
    trained as the step's reference) and ``is_reference``: that candidate, or on stores made before fresh
    references (or with ``--reuse-reference``) the carried-in grid point (``is_incumbent``); and
    ``reference_reused``: the reference is such a grid point. Here a reference counts as reused only where its
    folds were read from an earlier step (the fold's ``reused`` flag): the seed's start trained in a store's first
    step is fixed before that step's scores too. ``value`` becomes text. Tables without these columns (hand-made
    ones) get the same meaning: ``role`` "grid", and a "reference" role if any, else the incumbent."""
    folds = folds.copy()
    folds["value"] = folds["value"].astype(str)
    if "role" not in folds:
        folds["role"] = "grid"
    if "is_reference" not in folds:
        by_role = folds["role"] == REFERENCE
        step_has_role = by_role.groupby(folds["step"]).transform("any")
        folds["is_reference"] = np.where(step_has_role, by_role, folds["is_incumbent"].astype(bool))
    folds["is_reference"] = folds["is_reference"].fillna(False).astype(bool)
    reused = folds["reused"].fillna(False).astype(bool) if "reused" in folds else pd.Series(False, index=folds.index)
    given = folds["reference_reused"].fillna(False).astype(bool) if "reference_reused" in folds else reused
    folds["reference_reused"] = given & reused & folds["is_reference"]
    return folds


# -- per candidate ----------------------------------------------------------------------------------------------


def candidate_summary(folds: pd.DataFrame, *, rope: float = DEFAULT_ROPE, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (step, candidate): mean and interval, health, verdict against the step's reference, the
    Holm-adjusted p-value and the interval at the level its verdict was decided."""
    if folds.empty:
        return pd.DataFrame()
    folds = with_reference_columns(folds).sort_values(["step", "candidate_index", "candidate"], kind="stable")
    # Plain arrays and slices: the calibration sends thousands of steps through here.
    column = {name: folds[name].to_numpy() for name in folds.columns}
    rows: list[dict] = []
    step_starts = _starts(column["step"])
    for begin, stop in zip(step_starts[:-1], step_starts[1:], strict=True):
        rows += _step_rows(column, begin, stop, rope=rope, alpha=alpha)
    summary = pd.DataFrame(rows)
    return summary.sort_values(["step_order", "candidate_index"], kind="stable", ignore_index=True)


def _starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values begins in a sorted array, and its end."""
    changes = np.flatnonzero(values[1:] != values[:-1]) + 1
    return np.concatenate([[0], changes, [len(values)]])


def _candidate_row(column: dict, begin: int, stop: int, *, n_folds: int, n_expected: int) -> dict:
    statuses = [str(s) for s in column["status"][begin:stop]]
    accuracies = column["accuracy"][begin:stop].astype(float)
    health = candidate_health(statuses, accuracies, column["chance"][begin:stop].astype(float), n_expected=n_expected)
    scores = accuracies[~np.isnan(accuracies)]
    se, low, high = mean_interval(scores, n_folds) if len(scores) else (math.nan, math.nan, math.nan)
    n_diverged = statuses.count("diverged")
    return {
        "step": column["step"][begin],
        "step_order": column["step_order"][begin],
        "candidate": column["candidate"][begin],
        "candidate_index": int(column["candidate_index"][begin]),
        "value": column["value"][begin],
        "varied": column["varied"][begin],
        "role": column["role"][begin],
        "is_incumbent": bool(column["is_incumbent"][begin]),
        "is_reference": bool(column["is_reference"][begin:stop].any()),
        "n_splits": stop - begin,
        "mean": float(np.mean(scores)) if len(scores) else math.nan,
        "std": float(np.std(scores)) if len(scores) else math.nan,
        "se": se,
        "ci_low": low,
        "ci_high": high,
        "status": health.status,
        "collapsed_folds": health.n_collapsed,
        "diverged_folds": n_diverged,
        "breakdowns": health.n_collapsed + n_diverged,
        "trained_folds": n_diverged + statuses.count("ok"),
        "diverged": n_diverged > 0,
    }


def _pick_best(ordered: list[dict]) -> dict:
    """The search's choice: the best grid point by :func:`~mlflow_mnist.results.rank_key` (an extra reference
    candidate never competes; it repeats the carried-in configuration)."""
    eligible = [r for r in ordered if r["role"] != REFERENCE] or ordered
    return min(
        eligible,
        key=lambda r: rank_key(
            {"status": r["status"], "mean_test_score": r["mean"], "std_test_score": r["std"]}, r["candidate_index"]
        ),
    )


def _step_rows(column: dict, begin: int, stop: int, *, rope: float, alpha: float) -> list[dict]:
    n_folds = int(column["n_folds"][begin:stop].max())
    n_expected = int(column["n_splits"][begin:stop].max())
    splits = column["split"][begin:stop].astype(int)
    starts = _starts(column["candidate"][begin:stop]) + begin
    slices = list(zip(starts[:-1], starts[1:], strict=True))
    rows = [_candidate_row(column, a, b, n_folds=n_folds, n_expected=n_expected) for a, b in slices]
    # candidates x splits, NaN where a fold is missing: comparisons pair by split.
    matrix = np.full((len(rows), int(splits.max()) + 1), np.nan)
    for number, (a, b) in enumerate(slices):
        matrix[number, splits[a - begin : b - begin]] = column["accuracy"][a:b].astype(float)
    for number, row in enumerate(rows):
        row["_scores"] = matrix[number]
    ordered = sorted(rows, key=lambda r: r["candidate_index"])
    best = _pick_best(ordered)
    references = [r for r in ordered if r["is_reference"]]
    reference = references[-1] if references else None  # the extra reference candidate comes last
    flagged = column["reference_reused"][begin:stop][column["is_reference"][begin:stop]]
    reused = bool(reference is not None and flagged.any())
    usable = reference is not None and reference["status"] == "ok"
    state = MISSING if reference is None else (REUSED if reused else FRESH)
    # The carried-in grid point beside a fresh reference: the reference's own configuration (see SAME_AS_REFERENCE).
    twins = {r["candidate"] for r in ordered if reference is not None and r["is_incumbent"] and not r["is_reference"]}

    comparisons: dict[str, Comparison] = {}
    if usable:
        for row in ordered:
            if row["status"] == "ok" and row is not reference and row["candidate"] not in twins:
                paired = ~np.isnan(row["_scores"]) & ~np.isnan(reference["_scores"])
                comparisons[row["candidate"]] = compare(
                    row["_scores"][paired], reference["_scores"][paired], n_folds=n_folds, rope=rope
                )
    breakdown_p = breakdown_test([r["breakdowns"] for r in ordered], [r["trained_folds"] for r in ordered])
    family: dict[str | None, float] = {name: c.p_value for name, c in comparisons.items()}
    if sum(r["breakdowns"] for r in ordered) >= 2:
        family[None] = breakdown_p  # the breakdown test joins the step's Holm family
    adjusted = dict(zip(family, holm(list(family.values())), strict=True))
    levels = dict(zip(family, holm_levels(list(family.values()), alpha), strict=True))

    for row in ordered:
        name = row["candidate"]
        row.update(
            is_best=row is best,
            reference=reference["candidate"] if reference is not None else "",
            reference_value=reference["value"] if reference is not None else "",
            reference_state=state,
            reference_reused=reused,
            breakdown_p=breakdown_p,
            breakdown_p_adjusted=adjusted.get(None, math.nan),
            delta=math.nan,
            delta_low=math.nan,
            delta_high=math.nan,
            interval_level=math.nan,
            threshold=math.nan,
            p_value=math.nan,
            effect_p=math.nan,
            p_adjusted=math.nan,
            holm_level=math.nan,
            direction="",
            repeats_needed=math.nan,
        )
        if row is reference:
            row["verdict"] = REFERENCE if usable else row["status"]
            row["delta"] = 0.0 if usable else math.nan
        elif row["status"] != "ok":
            row["verdict"] = row["status"]
        elif name in twins:
            row["verdict"] = SAME_AS_REFERENCE
        elif name not in comparisons:
            row["verdict"] = NO_REFERENCE if reference is None else REFERENCE_UNHEALTHY
        else:
            comparison, level = comparisons[name], levels[name]
            row["delta"] = comparison.mean
            row["delta_low"], row["delta_high"], row["interval_level"] = comparison.decision_interval(level)
            row.update(
                threshold=comparison.threshold(level, rope),
                p_value=comparison.p_value,
                effect_p=comparison.effect_p,
                p_adjusted=adjusted[name],
                holm_level=level,
                direction=comparison.direction,
                verdict=comparison.verdict(adjusted[name], alpha),
            )
            if row["verdict"] == UNDECIDED and math.isfinite(comparison.se):
                # The Holm level this candidate would face if it were the next to be decided.
                next_level = alpha / max(1, sum(p >= adjusted[name] for p in adjusted.values()))
                paired = ~np.isnan(row["_scores"]) & ~np.isnan(reference["_scores"])
                differences = row["_scores"][paired] - reference["_scores"][paired]
                variance = float(np.var(differences, ddof=1)) if len(differences) > 1 else math.nan
                aim = comparison.direction if abs(comparison.mean) > rope else EQUIVALENT
                row["repeats_needed"] = repeats_to_decide(
                    comparison, n_folds=n_folds, variance=variance, rope=rope, alpha=next_level, verdict=aim
                )
    for row in ordered:
        del row["_scores"]
    return ordered


def _undecided_kind(row: dict) -> str:
    """What would decide an undecided candidate: ``repeats`` (a number of them), ``many`` (more than
    :data:`MAX_REPEATS`), ``unknown`` (no spread to test with yet) or ``never`` (no number of repeats)."""
    if math.isnan(row["delta_low"]):  # the standard error is unknown
        return "unknown"
    needed = row["repeats_needed"]
    return "never" if math.isnan(needed) else "many" if math.isinf(needed) else "repeats"


def _undecided_hint(kind: str, rows: list[dict]) -> str:
    """The hint for undecided candidates of one :func:`_undecided_kind`; ``repeats`` names the most any of them
    needs. More data, not more folds, is what narrows a floor set by test sampling (docs/analysis.md)."""
    if kind == "never":
        return "repeats will not decide it: the correction's floor is wider than the ROPE; more data would"
    if kind == "unknown":
        return "the same difference on every split (or one split) leaves its spread unknown; repeats would measure it"
    if kind == "many":
        return f"more than {MAX_REPEATS} repeats of the split would be needed"
    return f"about {int(max(r['repeats_needed'] for r in rows))} repeats of the split would decide it"


# -- per step ---------------------------------------------------------------------------------------------------


def step_verdicts(summary: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per step: its verdict, reference and best, how its candidates fell, its health row, and the
    p-values of its two possible claims (``p_effect``, ``p_no_effect``) for a campaign-level correction."""
    steps: dict[str, list[dict]] = {}
    for row in summary.to_dict("records"):
        steps.setdefault(row["step"], []).append(row)
    return pd.DataFrame([_step_verdict(rows, alpha) for rows in steps.values()])


def _step_verdict(rows: list[dict], alpha: float) -> dict:
    first = rows[0]
    best = next(r for r in rows if r["is_best"])
    reference = next((r for r in rows if r["is_reference"]), None)
    usable = reference is not None and reference["status"] == "ok"
    count = {}
    for row in rows:
        count[row["verdict"]] = count.get(row["verdict"], 0) + 1
    compared = [r for r in rows if r["p_adjusted"] == r["p_adjusted"]]
    others = [r for r in rows if not r["is_reference"] and r["verdict"] != SAME_AS_REFERENCE]
    breakdown_adjusted = first["breakdown_p_adjusted"]
    # The p-values of the step's two possible claims; 1 where the data point elsewhere, NaN where nothing was
    # tested (no usable reference and no breakdown test), so the campaign's families are the steps that tested.
    claims = [r["p_adjusted"] for r in compared if r["direction"] in (BETTER, WORSE)]
    if breakdown_adjusted == breakdown_adjusted:
        claims.append(breakdown_adjusted)
    tested = bool(compared) or breakdown_adjusted == breakdown_adjusted
    p_effect = min(claims, default=1.0) if tested else math.nan
    all_equivalent = len(compared) == len(others) and all(r["direction"] == EQUIVALENT for r in compared)
    p_no_effect = (max(r["p_adjusted"] for r in compared) if all_equivalent else 1.0) if compared else math.nan
    breakdown_depends = breakdown_adjusted < alpha
    undecided = [r for r in rows if r["verdict"] == UNDECIDED]
    if count.get(BETTER, 0) + count.get(WORSE, 0) or breakdown_depends:
        verdict = EFFECT
    elif usable and others and all(r["verdict"] == EQUIVALENT for r in others):
        verdict = NO_EFFECT
    else:
        verdict = STEP_UNDECIDED
    needed = [r["repeats_needed"] for r in undecided]
    conclusion, health = conclusion_sentence(rows), health_sentence(rows, alpha)
    return {
        "step": first["step"],
        "step_order": first["step_order"],
        "varied": first["varied"],
        "verdict": verdict,
        "best": best["candidate"],
        "best_value": best["value"],
        "best_mean": best["mean"],
        "best_std": best["std"],
        "reference": first["reference"],
        "reference_value": first["reference_value"],
        "reference_state": first["reference_state"],
        "reference_status": reference["status"] if reference is not None else "",
        "reference_reused": bool(first["reference_reused"]),
        "reference_is_incumbent": bool(reference is not None and reference["is_incumbent"]),
        "n_candidates": len(rows),
        "n_better": count.get(BETTER, 0),
        "n_worse": count.get(WORSE, 0),
        "n_equivalent": count.get(EQUIVALENT, 0),
        "n_undecided": len(undecided),
        "n_unstable": count.get("unstable", 0),
        "n_diverged": count.get("diverged", 0),
        "n_failed": count.get("failed", 0),
        "n_incomplete": count.get("incomplete", 0),
        "breakdowns": sum(r["breakdowns"] for r in rows),
        "breakdown_p": float(first["breakdown_p"]),
        "breakdown_depends": bool(breakdown_depends),
        "p_effect": p_effect,
        "p_no_effect": p_no_effect,
        "repeats_needed": max(needed) if needed and all(n == n for n in needed) else math.nan,
        "conclusion": conclusion,
        "health": health,
        "sentence": conclusion + (f". Health: {health}" if health else ""),
    }


def _label(row: dict) -> str:
    return f"{row['value']} (reference)" if row.get("role") == REFERENCE else str(row["value"])


def _values(rows: list[dict]) -> str:
    values = [_label(r) for r in rows]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def conclusion_sentence(rows: list[dict]) -> str:
    """The step's accuracy conclusion in plain words (``rows``: its summary rows as records), e.g.
    "(5, 5) (+0.42 points) is better than the reference (3, 3) (the carried-in value, trained afresh)"."""
    first = rows[0]
    reference = next((r for r in rows if r["is_reference"]), None)
    if reference is None:
        return (
            "no reference: the carried-in value was not trained in this step, so no candidate is compared "
            "(the step's best, chosen after its scores, would be a biased reference)"
        )
    if reference["status"] != "ok":
        return (
            f"the reference {reference['value']} is {reference['status']}, so no candidate is compared and the "
            "step stays undecided"
        )
    if first["reference_state"] == REUSED:
        against = f"the carried-in {reference['value']} (its folds reused from the step that chose it)"
    else:
        against = f"the reference {reference['value']} (the carried-in value, trained afresh)"
    parts = []
    for verdict in (BETTER, WORSE):
        chosen = [
            {**r, "role": "", "value": f"{_label(r)} ({100 * r['delta']:+.2f} points)"}
            for r in rows
            if r["verdict"] == verdict
        ]
        if chosen:
            parts.append(f"{_values(chosen)} {'is' if len(chosen) == 1 else 'are'} {verdict} than {against}")
    equivalent = [r for r in rows if r["verdict"] == EQUIVALENT]
    if equivalent:
        verb = "is" if len(equivalent) == 1 else "are"
        parts.append(f"{_values(equivalent)} {verb} practically equivalent to {against}")
    kinds: dict[str, list[dict]] = {}  # each kind of undecided candidate with its own hint, not the hardest's
    for row in rows:
        if row["verdict"] == UNDECIDED:
            kinds.setdefault(_undecided_kind(row), []).append(row)
    for kind in ("repeats", "many", "unknown", "never"):
        if undecided := kinds.get(kind):
            verb = "is" if len(undecided) == 1 else "are"
            hint = _undecided_hint(kind, undecided)
            parts.append(f"{_values(undecided)} {verb} not yet distinguishable from {against} ({hint})")
    twins = [r for r in rows if r["verdict"] == SAME_AS_REFERENCE]
    if twins:
        parts.append(f"{_values(twins)} is the reference's own configuration (not compared)")
    if not parts:
        parts.append(f"only the reference {reference['value']} is usable")
    text = "; ".join(parts)
    if first["reference_reused"]:
        text += (
            "; the reference's folds won the previous step, so they are high by selection: 'worse' is claimed "
            "too often (about 0.07 instead of 0.05 in simulation)"
        )
    return text


def health_sentence(rows: list[dict], alpha: float = ALPHA) -> str:
    """The step's health row: which candidates broke down, lost folds or failed, and whether the breakdowns
    depend on the parameter (exact test, Holm-adjusted in the step's family); empty when all is well."""
    parts = []
    for count, verb in (("collapsed_folds", "collapse{s} to chance on"), ("diverged_folds", "diverge{s} on")):
        groups: dict[tuple[int, int], list[dict]] = {}
        for row in rows:
            if row[count]:
                groups.setdefault((row[count], row["n_splits"]), []).append(row)
        for (broken, n_splits), group in groups.items():
            verb_form = verb.format(s="s" if len(group) == 1 else "")
            parts.append(f"{_values(group)} {verb_form} {broken} of {n_splits} folds")
    missing = (("failed", "fails", "fail"), ("incomplete", "has missing folds", "have missing folds"))
    for status, one, several in missing:
        group = [r for r in rows if r["status"] == status]
        if group:
            parts.append(f"{_values(group)} {one if len(group) == 1 else several}")
    if not parts:
        return ""
    total = sum(r["breakdowns"] for r in rows)
    adjusted = rows[0]["breakdown_p_adjusted"]
    if total >= 2:
        if adjusted < alpha:
            parts.append(f"breakdowns depend on the parameter (exact test, Holm p = {adjusted:.2g})")
        else:
            parts.append(f"not shown to depend on the parameter (exact test, Holm p = {adjusted:.2g})")
    elif total == 1:
        parts.append("one breakdown cannot show a dependence on the parameter")
    if any(r["status"] in ("failed", "incomplete") for r in rows):
        parts.append("missing and failed folds are never an effect")
    return "; ".join(parts)


# -- across the campaign ----------------------------------------------------------------------------------------


def campaign_correction(verdicts: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Which step decisions survive Holm's correction across the campaign's steps.

    Two families, each at familywise ``alpha``: the steps' "effect" claims (p-value ``p_effect``: the smallest
    Holm-adjusted p among the step's better/worse directions and breakdown test) over every step that tested
    for one, and their "no practical effect" claims (``p_no_effect``: the largest adjusted p of the step's
    equivalences) over every step that compared candidates. Holm, not Benjamini-Hochberg: the steps share one
    data set and its splits, so their p-values depend on each other in ways BH's positive-dependence condition
    does not cover for certain, while Holm holds under any dependence; and a step's verdict is acted on one at a
    time (a false "effect" changes what the campaign carries forward), so the error to bound is any false claim,
    not their share."""
    rows = []
    for claim, column, made in (("effect", "p_effect", EFFECT), ("no practical effect", "p_no_effect", NO_EFFECT)):
        family = verdicts[verdicts[column].notna()]
        corrected = holm(family[column].tolist()) if len(family) else []
        for (_, step), p_campaign in zip(family.iterrows(), corrected, strict=True):
            if step["verdict"] != made:
                continue
            rows.append(
                {
                    "step": step["step"],
                    "claim": claim,
                    "p_step": float(step[column]),
                    "p_campaign": float(p_campaign),
                    "family_size": len(family),
                    "survives": p_campaign < alpha,
                }
            )
    return pd.DataFrame(rows, columns=["step", "claim", "p_step", "p_campaign", "family_size", "survives"])


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"{value:.2g}"


def campaign_sentence(correction: pd.DataFrame, n_steps: int, alpha: float = ALPHA) -> str:
    """The report's campaign-level line."""
    if correction.empty:
        return f"No step of the {n_steps} made a claim (effect or no practical effect), so none needs correcting."
    parts = []
    for claim, rows in correction.groupby("claim", sort=False):
        size = int(rows["family_size"].iloc[0])
        kept = rows[rows["survives"]]
        lost = rows[~rows["survives"]]
        text = f"{len(kept)} of {len(rows)} '{claim}' verdicts survive Holm across the {size} steps that tested it"
        if len(kept):
            text += ": " + ", ".join(f"{r.step} (p {_p(r.p_campaign)})" for r in kept.itertuples())
        if len(lost):
            text += "; not: " + ", ".join(f"{r.step} (p {_p(r.p_campaign)})" for r in lost.itertuples())
        parts.append(text)
    return f"Across the campaign (familywise alpha = {alpha} per kind of claim): " + ". ".join(parts) + "."


IMPORTANCE_COLUMNS = [
    "step",
    "step_order",
    "varied",
    "verdict",
    "candidate",
    "value",
    "shift",
    "needed",
    "ratio",
    "beyond_noise",
    "breakdown_effect",
]

# -- importance -------------------------------------------------------------------------------------------------


def importance(summary: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per step: the largest move a candidate made from the reference, against the move its test needed.

    From the verdicts' own test, on the same candidates (the healthy ones compared with the reference): for each,
    the move needed to be called better or worse at its Holm level (the ROPE plus the half-width of its decision
    interval, :meth:`Comparison.threshold`). The step's bar is the candidate that went furthest relative to its
    need; the bar passes its tick exactly when some candidate is better or worse, so this figure and the
    verdicts cannot disagree. Steps without a usable reference have no bar (n/a)."""
    if summary.empty:
        return pd.DataFrame(columns=IMPORTANCE_COLUMNS)
    verdict_of = dict(zip(verdicts["step"], verdicts["verdict"], strict=True))
    steps: dict[str, list[dict]] = {}
    for record in summary.to_dict("records"):
        steps.setdefault(record["step"], []).append(record)
    rows = []
    for step, group in steps.items():
        first = group[0]
        row = {
            "step": step,
            "step_order": first["step_order"],
            "varied": first["varied"],
            "verdict": verdict_of[step],
            "candidate": "",
            "value": "",
            "shift": math.nan,
            "needed": math.nan,
            "ratio": math.nan,
            "beyond_noise": False,
            "breakdown_effect": bool(first["breakdown_p_adjusted"] < ALPHA),
        }
        compared = [r for r in group if r["threshold"] == r["threshold"]]
        if compared:
            top = max(compared, key=lambda r: abs(r["delta"]) / r["threshold"])
            row.update(
                candidate=top["candidate"],
                value=top["value"],
                shift=abs(float(top["delta"])),
                needed=float(top["threshold"]),
                ratio=abs(float(top["delta"])) / float(top["threshold"]),
                beyond_noise=bool(abs(top["delta"]) > top["threshold"]),
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)
