"""Effect against noise, computed from a fold table alone.

The test: within a step, every candidate is compared with the best one by a two-sided **paired t-test across
folds** (the same folds for every candidate of a step), at alpha = 0.05. A candidate whose fold scores equal the
best's is tied. A step whose candidates are all tied with its best shows **no detectable effect**: with k folds,
differences smaller than the fold-to-fold noise cannot be told apart from luck.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
NO_EFFECT = "no detectable effect"
EFFECT = "effect detected"


def candidate_summary(folds: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, candidate): mean, std, 95% interval, rank, p-value against the best, tied flag."""
    rows = []
    for step, step_folds in folds.groupby("step", sort=False):
        table = step_folds.pivot_table(index="fold", columns="candidate", values="accuracy", aggfunc="first")
        meta = step_folds.groupby("candidate").agg(
            candidate_index=("candidate_index", "first"),
            value=("value", "first"),
            varied=("varied", "first"),
            diverged=("diverged", "any"),
            step_order=("step_order", "first"),
            n_folds=("fold", "nunique"),
        )
        means = table.mean()
        healthy = [c for c in means.index if not meta.loc[c, "diverged"]]
        pool = healthy or list(means.index)
        best = max(pool, key=lambda c: (means[c], -table[c].std(ddof=0), -meta.loc[c, "candidate_index"]))
        for candidate in means.index:
            scores = table[candidate].dropna()
            n = len(scores)
            sem = scores.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
            half = stats.t.ppf(0.975, n - 1) * sem if n > 1 else math.nan
            p_value = paired_p_value(table[best], table[candidate])
            rows.append(
                {
                    "step": step,
                    "candidate": candidate,
                    **meta.loc[candidate].to_dict(),
                    "mean": means[candidate],
                    "std": scores.std(ddof=0),
                    "sem": sem,
                    "ci_low": means[candidate] - half,
                    "ci_high": means[candidate] + half,
                    "is_best": candidate == best,
                    "p_value": p_value,
                    "tied": candidate == best or (not meta.loc[candidate, "diverged"] and p_value >= ALPHA),
                    "delta": means[candidate] - means[best],
                }
            )
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    summary = summary.astype({"diverged": bool, "tied": bool, "is_best": bool})
    return summary.sort_values(["step_order", "candidate_index"], ignore_index=True)


def paired_p_value(best: pd.Series, other: pd.Series) -> float:
    """Two-sided paired t-test over the folds both have; identical scores give p = 1."""
    both = pd.concat([best, other], axis=1).dropna()
    if len(both) < 2:
        return math.nan
    differences = both.iloc[:, 0] - both.iloc[:, 1]
    if np.allclose(differences, 0):
        return 1.0
    if np.allclose(differences, differences.iloc[0]):
        return 0.0  # a constant non-zero difference on every fold: as clear as it gets
    return float(stats.ttest_rel(both.iloc[:, 0], both.iloc[:, 1]).pvalue)


def step_verdicts(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per step: varied parameter, best value, best mean +/- std, tied candidates, verdict."""
    rows = []
    for step, group in summary.groupby("step", sort=False):
        best = group[group["is_best"]].iloc[0]
        tied = group[group["tied"] & ~group["is_best"]]
        rows.append(
            {
                "step": step,
                "varied": best["varied"],
                "best": best["candidate"],
                "best_value": best["value"],
                "best_mean": best["mean"],
                "best_std": best["std"],
                "n_candidates": len(group),
                "tied": ", ".join(tied["value"]),
                "n_tied": len(tied),
                "n_diverged": int(group["diverged"].sum()),
                "verdict": _verdict(group),
                "step_order": best["step_order"],
            }
        )
    return pd.DataFrame(rows)


def _verdict(group: pd.DataFrame) -> str:
    if group["tied"].all():
        return NO_EFFECT
    diverged = int(group["diverged"].sum())
    if diverged and group.loc[~group["diverged"], "tied"].all():
        return f"{NO_EFFECT} apart from {diverged} diverged"  # the healthy values are indistinguishable
    return EFFECT


def importance(summary: pd.DataFrame) -> pd.DataFrame:
    """Per step: effect = spread of healthy candidates' means; noise = median standard error of a mean.

    ``ratio`` > 1 means the parameter moved accuracy by more than the typical noise of one mean estimate.
    """
    rows = []
    for step, group in summary.groupby("step", sort=False):
        healthy = group[~group["diverged"]]
        if healthy.empty:
            continue
        effect = healthy["mean"].max() - healthy["mean"].min()
        noise = float(np.nanmedian(healthy["sem"])) if healthy["sem"].notna().any() else math.nan
        rows.append(
            {
                "step": step,
                "varied": group["varied"].iloc[0],
                "effect": effect,
                "noise": noise,
                "ratio": effect / noise if noise and noise > 0 else math.inf,
                "step_order": group["step_order"].iloc[0],
            }
        )
    return pd.DataFrame(rows, columns=["step", "varied", "effect", "noise", "ratio", "step_order"])
