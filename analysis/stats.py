"""Verdicts from fold scores alone, with a test that knows cross-validation folds are not independent.

**The test.** Within a step, each candidate is compared with the step's *reference*: the value the step started
from (carried in from earlier steps), or, when that value is not in the grid, the step's best. The reference
is fixed before the scores are seen, so "better" can mean something. Over the ``r x k`` splits of repeated
k-fold cross-validation, the paired differences d are tested with the **corrected repeated k-fold t-test**
(Nadeau & Bengio 2003; Bouckaert & Frank 2004): variance ``var(d) * (1/(r k) + n_test/n_train)``, ``r k - 1``
degrees of freedom. The extra ``n_test/n_train`` term accounts for folds sharing most of their training data;
without it the test finds effects that are not there (see :mod:`analysis.calibration`).

**The verdict** uses a region of practical equivalence (ROPE, default +/-0.1 accuracy points): a candidate is
*better* (or *worse*) when the difference is shown to lie beyond the ROPE, *practically equivalent* when it is
shown to lie inside it (two one-sided tests), and *undecided* otherwise. Each candidate's smallest p-value is
Holm-adjusted across the step's comparisons at alpha = 0.05. A candidate with a fold that collapsed to chance
is *unstable*, one whose training broke is *diverged* (or *failed*), one with missing folds *incomplete*: these
are counted separately and never tied. A step shows an **effect** when a candidate is better, worse, unstable
or diverged; **no practical effect** when every healthy candidate is practically equivalent to the reference;
**undecided** otherwise, with an estimate of how many repeats would decide it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mlflow_mnist.results import candidate_status, collapsed

ALPHA = 0.05
DEFAULT_ROPE = 0.001  # 0.1 accuracy points: 2 of 2,060 test images, well below what a seed changes
BETTER, WORSE, EQUIVALENT, UNDECIDED, REFERENCE = (
    "better",
    "worse",
    "practically equivalent",
    "undecided",
    "reference",
)
EFFECT, NO_EFFECT, STEP_UNDECIDED = "effect", "no practical effect", "undecided"
UNHEALTHY = ("unstable", "incomplete", "diverged", "failed")
MAX_REPEATS = 50  # beyond this, an estimate of "repeats needed" is not worth giving


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
    def direction(self) -> str:
        """The region the data point to most strongly."""
        if 2 * self.p_better <= min(2 * self.p_worse, self.p_equivalent):
            return BETTER
        return WORSE if 2 * self.p_worse <= self.p_equivalent else EQUIVALENT

    def verdict(self, p_adjusted: float, alpha: float = ALPHA) -> str:
        """better / worse / practically equivalent when the (Holm-adjusted) p-value is below alpha."""
        return self.direction if p_adjusted < alpha else UNDECIDED

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.se if self.df > 0 else math.inf
        return self.mean - half, self.mean + half


def corrected_se(differences: np.ndarray, n_folds: int) -> float:
    """Standard error of the mean difference over r x k splits, corrected for overlapping training sets."""
    n = len(differences)
    if n < 2:
        return math.inf
    ratio = 1.0 / (n_folds - 1)  # n_test / n_train for k-fold
    return math.sqrt((1.0 / n + ratio) * float(np.var(differences, ddof=1)))


def _t_cdf(value: float, df: int) -> float:
    if math.isnan(value):
        return 0.5  # 0/0: a difference exactly on the ROPE's edge with no variance decides nothing
    return float(stats.t.cdf(value, df))


def compare(candidate: np.ndarray, reference: np.ndarray, *, n_folds: int, rope: float = DEFAULT_ROPE) -> Comparison:
    """The corrected repeated k-fold t-test of ``candidate - reference`` (paired by split) against a ROPE."""
    differences = np.asarray(candidate, float) - np.asarray(reference, float)
    mean, se, df = float(differences.mean()), corrected_se(differences, n_folds), len(differences) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        above, below = np.float64(mean - rope) / se, np.float64(mean + rope) / se
    p_better = 1.0 - _t_cdf(above, df)
    p_worse = _t_cdf(below, df)
    p_equivalent = max(1.0 - _t_cdf(below, df), _t_cdf(above, df))
    return Comparison(mean, se, df, p_better, p_worse, p_equivalent)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), same order as given."""
    order = np.argsort(p_values)
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def repeats_to_decide(
    comparison: Comparison, *, n_folds: int, variance: float, rope: float, alpha: float, verdict: str
) -> int | None:
    """Repeats at which the observed difference and spread would give ``verdict``; None if more repeats will not.

    The corrected variance has a floor (``var * n_test/n_train``) that repeats do not shrink, so some
    differences can never be decided by repeating the split: more data or more folds would be needed.
    """
    for repeats in range(1, MAX_REPEATS + 1):
        n = repeats * n_folds
        se = math.sqrt((1.0 / n + 1.0 / (n_folds - 1)) * variance)
        directional, one_sided = stats.t.ppf(1 - alpha / 2, n - 1), stats.t.ppf(1 - alpha, n - 1)
        mean = comparison.mean
        if verdict == BETTER and mean - rope > directional * se:
            return repeats
        if verdict == WORSE and mean + rope < -directional * se:
            return repeats
        if verdict == EQUIVALENT and abs(mean) + one_sided * se < rope:
            return repeats
    return None


def _mean_interval(scores: np.ndarray, n_folds: int, level: float = 0.95) -> tuple[float, float, float]:
    """A candidate's corrected standard error and interval of its mean, clipped to [0, 1] where accuracy lives."""
    mean, se = float(np.mean(scores)), corrected_se(scores - np.mean(scores), n_folds)
    if not math.isfinite(se):
        return se, mean, mean
    half = stats.t.ppf(0.5 + level / 2, len(scores) - 1) * se
    return se, max(0.0, mean - half), min(1.0, mean + half)


def candidate_summary(folds: pd.DataFrame, *, rope: float = DEFAULT_ROPE, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (step, candidate): mean, interval, status, verdict against the reference, adjusted p-value."""
    rows = []
    for _, step_folds in folds.groupby("step", sort=False):
        rows += _step_rows(step_folds, rope=rope, alpha=alpha)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    return summary.sort_values(["step_order", "candidate_index"], ignore_index=True)


def _step_rows(step_folds: pd.DataFrame, *, rope: float, alpha: float) -> list[dict]:
    from mlflow_mnist.results import rank_key

    n_folds = int(step_folds["n_folds"].max())
    n_expected = int(step_folds["n_splits"].max())
    table = step_folds.pivot_table(index="split", columns="candidate", values="accuracy", aggfunc="first")
    rows = {}
    for candidate, group in step_folds.groupby("candidate", sort=False):
        healthy = group[group["status"] == "ok"]
        n_collapsed = int(sum(collapsed(a, c) for a, c in zip(healthy["accuracy"], healthy["chance"], strict=True)))
        scores = group["accuracy"].dropna().to_numpy(float)
        se, low, high = _mean_interval(scores, n_folds) if len(scores) else (math.nan, math.nan, math.nan)
        first = group.iloc[0]
        rows[candidate] = {
            "step": first["step"],
            "step_order": first["step_order"],
            "candidate": candidate,
            "candidate_index": int(first["candidate_index"]),
            "value": first["value"],
            "varied": first["varied"],
            "is_incumbent": bool(first["is_incumbent"]),
            "n_splits": len(group),
            "mean": float(np.mean(scores)) if len(scores) else math.nan,
            "std": float(np.std(scores)) if len(scores) else math.nan,
            "se": se,
            "ci_low": low,
            "ci_high": high,
            "status": candidate_status(list(group["status"]), n_collapsed, n_expected),
            "collapsed_folds": n_collapsed,
            "diverged": bool((group["status"] == "diverged").any()),
        }
    ordered = sorted(rows.values(), key=lambda r: r["candidate_index"])
    ranked = sorted(
        ordered,
        key=lambda r: rank_key(
            {"status": r["status"], "mean_test_score": r["mean"], "std_test_score": r["std"]}, r["candidate_index"]
        ),
    )
    best = ranked[0]["candidate"]
    healthy = [r for r in ordered if r["status"] == "ok"]
    incumbents = [r for r in healthy if r["is_incumbent"]]
    reference = incumbents[0]["candidate"] if incumbents else best
    comparisons = {}
    for row in healthy:
        if row["candidate"] != reference:
            both = table[[row["candidate"], reference]].dropna()
            comparisons[row["candidate"]] = compare(
                both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy(), n_folds=n_folds, rope=rope
            )
    adjusted = dict(zip(comparisons, holm([c.p_value for c in comparisons.values()]), strict=True))
    for row in ordered:
        name = row["candidate"]
        row.update(
            is_best=name == best,
            is_reference=name == reference,
            reference=reference,
            delta=row["mean"] - rows[reference]["mean"],
            delta_low=math.nan,
            delta_high=math.nan,
            p_adjusted=math.nan,
            repeats_needed=math.nan,
        )
        if row["status"] != "ok":
            row["verdict"] = row["status"]
        elif name == reference:
            row["verdict"] = REFERENCE
        else:
            comparison = comparisons[name]
            row["delta_low"], row["delta_high"] = comparison.interval()
            row["p_adjusted"] = adjusted[name]
            row["verdict"] = comparison.verdict(adjusted[name], alpha)
            if row["verdict"] == UNDECIDED:
                # The Holm level this candidate would face if it were the next to be decided.
                level = alpha / max(1, sum(p >= adjusted[name] for p in adjusted.values()))
                both = table[[name, reference]].dropna()
                variance = float(np.var(both.iloc[:, 0] - both.iloc[:, 1], ddof=1)) if len(both) > 1 else math.nan
                aim = comparison.direction if abs(comparison.mean) > rope else EQUIVALENT
                needed = repeats_to_decide(
                    comparison, n_folds=n_folds, variance=variance, rope=rope, alpha=level, verdict=aim
                )
                row["repeats_needed"] = math.nan if needed is None else needed
    return ordered


def step_verdicts(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per step: the step's verdict, its reference and best, and how its candidates fell."""
    rows = []
    for step, group in summary.groupby("step", sort=False):
        best = group[group["is_best"]].iloc[0]
        reference = group[group["is_reference"]].iloc[0]
        counts = group["verdict"].value_counts()
        decisive = counts.get(BETTER, 0) + counts.get(WORSE, 0) + sum(counts.get(s, 0) for s in UNHEALTHY)
        undecided = group[group["verdict"] == UNDECIDED]
        if decisive:
            verdict = EFFECT
        elif len(undecided):
            verdict = STEP_UNDECIDED
        else:
            verdict = NO_EFFECT
        needed = undecided["repeats_needed"]
        rows.append(
            {
                "step": step,
                "step_order": best["step_order"],
                "varied": best["varied"],
                "verdict": verdict,
                "best": best["candidate"],
                "best_value": best["value"],
                "best_mean": best["mean"],
                "best_std": best["std"],
                "reference": reference["candidate"],
                "reference_is_incumbent": bool(reference["is_incumbent"]),
                "n_candidates": len(group),
                "n_better": int(counts.get(BETTER, 0)),
                "n_worse": int(counts.get(WORSE, 0)),
                "n_equivalent": int(counts.get(EQUIVALENT, 0)),
                "n_undecided": len(undecided),
                "n_unstable": int(counts.get("unstable", 0)),
                "n_diverged": int(counts.get("diverged", 0) + counts.get("failed", 0)),
                "repeats_needed": float(needed.max()) if len(needed) and needed.notna().all() else math.nan,
                "sentence": sentence(group),
            }
        )
    return pd.DataFrame(rows)


def _values(rows: pd.DataFrame) -> str:
    values = list(rows["value"])
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def sentence(group: pd.DataFrame) -> str:
    """The step's conclusion in one plain sentence, e.g. "(1, 1) collapses on 2 of 3 folds; (5, 5) and (7, 7)
    are practically equivalent to the carried-in (3, 3)"."""
    reference = group[group["is_reference"]].iloc[0]
    against = f"the carried-in {reference['value']}" if reference["is_incumbent"] else f"the best, {reference['value']}"
    parts = []
    unstable = group[group["verdict"] == "unstable"]
    for (collapsed_folds, n_splits), rows in unstable.groupby(["collapsed_folds", "n_splits"], sort=False):
        verb = "collapses" if len(rows) == 1 else "collapse"
        parts.append(f"{_values(rows)} {verb} to chance on {collapsed_folds} of {n_splits} folds")
    for status, verb in (("diverged", "diverges"), ("failed", "fails"), ("incomplete", "has missing folds")):
        rows = group[group["verdict"] == status]
        if len(rows):
            parts.append(f"{_values(rows)} {verb if len(rows) == 1 else verb.removesuffix('s')}")
    for verdict in (BETTER, WORSE):
        rows = group[group["verdict"] == verdict]
        if len(rows):
            listed = _values(rows.assign(value=[f"{r.value} ({100 * r.delta:+.2f} points)" for r in rows.itertuples()]))
            parts.append(f"{listed} {'is' if len(rows) == 1 else 'are'} {verdict} than {against}")
    equivalent = group[group["verdict"] == EQUIVALENT]
    if len(equivalent):
        verb = "is" if len(equivalent) == 1 else "are"
        parts.append(f"{_values(equivalent)} {verb} practically equivalent to {against}")
    undecided = group[group["verdict"] == UNDECIDED]
    if len(undecided):
        verb = "is" if len(undecided) == 1 else "are"
        needed = undecided["repeats_needed"]
        if needed.notna().all():
            hint = f"about {int(needed.max())} repeats of the split would decide it"
        else:
            hint = "repeats will not decide it: the correction's floor is wider than the ROPE; more folds or data would"
        parts.append(f"{_values(undecided)} {verb} not yet distinguishable from {against} ({hint})")
    if not parts:
        parts.append(f"only {reference['value']} is usable")
    return "; ".join(parts)


def paired_noise_se(scores: np.ndarray, n_folds: int) -> tuple[float, int]:
    """Standard error of one candidate's mean relative to the others, and its degrees of freedom.

    ``scores`` is candidates x splits. Candidates share their splits, so the split-to-split noise they share
    cancels; what remains is the candidate x split interaction (Tukey's repeated-measures error term), scaled
    by the corrected repeated k-fold factor for overlapping training sets.
    """
    m, n = scores.shape
    if m < 2 or n < 2:
        return math.nan, 0
    residual = scores - scores.mean(axis=1, keepdims=True) - scores.mean(axis=0, keepdims=True) + scores.mean()
    df = (m - 1) * (n - 1)
    variance = float((residual**2).sum()) / df
    return math.sqrt(variance * (1.0 / n + 1.0 / (n_folds - 1))), df


def importance(
    summary: pd.DataFrame, verdicts: pd.DataFrame, folds: pd.DataFrame, alpha: float = ALPHA
) -> pd.DataFrame:
    """Per step: the spread of candidates' mean accuracy, and the spread pure noise would give that many.

    The noise spread is the studentized range's (1 - alpha) quantile for that many candidates times the paired,
    corrected standard error of a mean (:func:`paired_noise_se`): a spread beyond it is more than noise. The
    colour and label of each bar are the step's verdict, so the figure never says something the verdicts do not.
    """
    rows = []
    verdict_of = verdicts.set_index("step")["verdict"]
    for step, group in summary.groupby("step", sort=False):
        scored = group[group["mean"].notna()]
        if scored.empty:
            continue
        healthy = set(group.loc[group["status"] == "ok", "candidate"])
        step_folds = folds[(folds["step"] == step) & folds["candidate"].isin(healthy)]
        table = step_folds.pivot_table(index="candidate", columns="split", values="accuracy", aggfunc="first")
        se, df = paired_noise_se(table.dropna(axis=1).to_numpy(float), int(step_folds["n_folds"].max() or 3))
        m = len(table)
        noise = float(stats.studentized_range.ppf(1 - alpha, m, df) * se) if df > 0 else math.nan
        spread = float(scored["mean"].max() - scored["mean"].min())
        rows.append(
            {
                "step": step,
                "step_order": group["step_order"].iloc[0],
                "varied": group["varied"].iloc[0],
                "spread": spread,
                "noise_spread": noise,
                "ratio": spread / noise if noise > 0 else (math.inf if spread > 0 else 0.0),
                "verdict": verdict_of[step],
            }
        )
    columns = ["step", "step_order", "varied", "spread", "noise_spread", "ratio", "verdict"]
    return pd.DataFrame(rows, columns=columns)
