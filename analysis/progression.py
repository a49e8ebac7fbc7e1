"""The campaign's best mean CV accuracy after each step, in the order the steps ran, with the 95% interval of that
mean (logit scale, so it stays within [0, 1]; "n/a" where the variance is unknown), coloured by the step's
verdict and labelled with the value chosen. A step that did not hold the step before it at that step's choice
(it ran out of the task's order, whose carry-forward reaches only later steps, or an override replaced the value)
is joined to it by a dashed line: the two are not one progression."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

from analysis._plotting import COLORS, empty, fitted, save, subplots
from analysis.stats import MEAN_LEVEL
from analysis.store import VALUE_SEPARATOR


def get_progression_info(
    summary: pd.DataFrame, verdicts: pd.DataFrame | None = None, held: dict[str, dict[str, str]] | None = None
) -> pd.DataFrame:
    """One row per step: the best candidate's mean and interval, the step's verdict, and ``holds_previous``: whether
    the step held the parameters the step before it varied at that step's choice (``held``: each step's fixed values
    as logged, :func:`analysis.store.held_values`; unknown values count as held, as does the first step)."""
    columns = ["step", "candidate", "value", "mean", "ci_low", "ci_high", "verdict", "holds_previous"]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    best = summary[summary["is_best"]].sort_values("step_order")
    verdict = verdicts.set_index("step")["verdict"] if verdicts is not None else {}
    holds = [True]
    for before, after in zip(best.itertuples(), best.iloc[1:].itertuples(), strict=False):
        chosen = dict(zip(before.varied.split(","), before.value.split(VALUE_SEPARATOR), strict=False))
        kept = (held or {}).get(after.step, {})
        holds.append(all(kept[key] == value for key, value in chosen.items() if key in kept))
    return best.assign(verdict=best["step"].map(verdict), holds_previous=holds)[columns].reset_index(drop=True)


def render_progression(info: pd.DataFrame, path: Path) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    fig, ax = subplots(figsize=(max(6.5, 0.62 * len(info) + 3.2), 5.2))
    x = list(range(len(info)))
    for i in x[1:]:
        dashed = not info["holds_previous"].iloc[i]
        ax.plot([i - 1, i], info["mean"].iloc[i - 1 : i + 1], color="#999999", lw=1, ls="--" if dashed else "-")
    for i, row in enumerate(info.itertuples()):
        color = COLORS.get(row.verdict, COLORS["undecided"])
        if math.isfinite(row.ci_low) and math.isfinite(row.ci_high):
            ax.vlines(i, row.ci_low, row.ci_high, color=color, lw=2, zorder=2)
        else:
            ax.annotate("n/a", (i, row.mean), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
        ax.scatter(i, row.mean, color=color, s=36, zorder=3)
    # The chosen value goes in the tick label, under the step name: no text over the curve or the axis label.
    ax.set_xticks(x, [f"{r.step}\n{r.value}" for r in info.itertuples()], rotation=45, ha="right", fontsize=7)
    ends = pd.concat([info["mean"], info["ci_low"], info["ci_high"]]).dropna()
    span = float(ends.max() - ends.min()) or 0.01
    ax.set_ylim(max(0.0, float(ends.min()) - 0.08 * span), min(1.0, float(ends.max()) + 0.08 * span))
    ax.set_ylabel("best mean CV accuracy")
    title = (
        f"Campaign progression: each step's chosen value, its mean and {MEAN_LEVEL:.0%} interval\n"
        "(corrected standard error, logit scale: stays within [0, 1]; n/a where the folds give no variance)"
    )
    fig.suptitle(fitted(title, fig, 9), fontsize=9)
    handles = [
        Line2D([], [], color=COLORS[v], marker="o", ls="-", label=f"step verdict: {v}")
        for v in dict.fromkeys(info["verdict"].dropna())
    ]
    if not info["holds_previous"].all():
        note = (
            "dashed: the next step did not start\nfrom this one's choice (it is earlier\n"
            "in the task's order, or overridden)"
        )
        handles.append(Line2D([], [], color="#999999", ls="--", label=note))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def plot_progression(
    summary: pd.DataFrame, verdicts: pd.DataFrame, path: Path, held: dict[str, dict[str, str]] | None = None
) -> Path:
    return render_progression(get_progression_info(summary, verdicts, held), path)
