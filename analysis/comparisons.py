"""Every candidate against its step's reference, one panel per step: the difference in accuracy points with the
interval its verdict read (Holm's level for better/worse, twice it for equivalence), the ROPE shaded, the colour
the verdict, every row named by its candidate. Candidates not compared (unhealthy, or no usable reference) are
listed with the reason instead of a mark; "n/a" where the variance is unknown."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from analysis._plotting import COLORS, MARKERS, candidate_label, empty, fitted, save, subplots, wrap
from analysis.stats import ALPHA, REFERENCE

#: A difference of two accuracies lies in [-100, 100] points.
POSSIBLE = 100.0
COLUMNS = [
    "step",
    "step_order",
    "candidate",
    "candidate_index",
    "label",
    "verdict",
    "status",
    "delta",
    "delta_low",
    "delta_high",
    "interval_level",
    "p_adjusted",
    "collapsed_folds",
    "diverged_folds",
    "n_splits",
]


def get_comparisons_info(summary: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per candidate, in grid order (the reference last): its label, verdict, difference from the
    reference in points with the interval its verdict read; plus the step's verdict and reference state."""
    if summary.empty:
        return pd.DataFrame(columns=[*COLUMNS, "step_verdict", "reference_state"])
    info = summary.assign(label=[candidate_label(r) for r in summary.to_dict("records")])[
        [*COLUMNS, "reference_state"]
    ].copy()
    for column in ("delta", "delta_low", "delta_high"):
        info[column] = 100 * info[column]
    info["step_verdict"] = info["step"].map(_step_titles(verdicts)).fillna("")
    return info.sort_values(["step_order", "candidate_index"], ignore_index=True)


def _step_titles(verdicts: pd.DataFrame | None) -> dict[str, str]:
    """Each step's verdict, with its reason when the reason is not in the panel's marks."""
    if verdicts is None:
        return {}
    titles = {}
    for row in verdicts.itertuples():
        title = row.verdict
        if row.verdict == "effect" and row.n_better + row.n_worse == 0:
            title += " (breakdowns depend on the parameter)"
        elif row.reference_status not in ("ok", ""):
            title += f" (the reference is {row.reference_status})"
        titles[row.step] = title
    return titles


def _note(row) -> str:
    """Why a candidate has no mark."""
    if row.verdict == "unstable":
        return f"unstable: collapsed on {row.collapsed_folds} of {row.n_splits} folds, not compared"
    if row.verdict == "diverged":
        return f"diverged on {row.diverged_folds} of {row.n_splits} folds, not compared"
    if row.verdict in ("failed", "incomplete"):
        return f"{row.verdict}, not compared"
    if row.verdict == "no reference":
        return "no reference: not compared"
    if row.verdict == "reference unhealthy":
        return "the reference is unhealthy: not compared"
    if row.verdict == "the reference's configuration":
        return "the reference's own configuration: not compared"
    if row.verdict == REFERENCE:
        return ""
    return f"{row.status}, not compared" if row.status != "ok" else "n/a: variance unknown"


def _limits(part: pd.DataFrame, rope: float) -> tuple[float, float]:
    """The panel's x range: every drawn difference and interval end, at least three ROPEs wide each side, never
    beyond what a difference of accuracies can be."""
    values = part[["delta", "delta_low", "delta_high"]].to_numpy(float).ravel()
    values = values[np.isfinite(values)]
    reach = max([3 * 100 * rope, 0.05, *np.abs(values)]) if len(values) else 3 * 100 * rope or 1.0
    reach = min(POSSIBLE, reach * 1.12)
    return -reach, reach


def _panel(ax, part: pd.DataFrame, *, rope: float) -> None:
    rows = list(part.itertuples())
    low, high = _limits(part, rope)
    ax.axvspan(-100 * rope, 100 * rope, color=COLORS["practically equivalent"], alpha=0.2, lw=0)
    ax.axvline(0, color="#444444", lw=0.6)
    for y, row in enumerate(rows):
        color = COLORS.get(row.verdict, COLORS["undecided"])
        if row.verdict == REFERENCE:
            ax.scatter(0, y, marker="D", color=color, s=30, zorder=3)
            continue
        if not math.isfinite(row.delta):
            ax.text(low + 0.02 * (high - low), y, _note(row), va="center", fontsize=7, color=color)
            if row.verdict in MARKERS:
                ax.scatter(low, y, marker=MARKERS[row.verdict], color=color, s=30, zorder=3, clip_on=False)
            continue
        if math.isfinite(row.delta_low) and math.isfinite(row.delta_high):
            ax.hlines(y, row.delta_low, row.delta_high, color=color, lw=2, zorder=2)
            for end in (row.delta_low, row.delta_high):
                if abs(end) >= POSSIBLE:  # the interval reaches what a difference can be
                    ax.scatter(end, y, marker="|", color=color, s=60, zorder=3)
        else:
            ax.text(row.delta, y + 0.32, "n/a", ha="center", fontsize=7, color=color)
        ax.scatter(row.delta, y, marker="o", color=color, s=22, zorder=3)
    ax.set_yticks(range(len(rows)), [row.label for row in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.7)
    ax.set_xlim(low, high)
    ax.tick_params(axis="x", labelsize=7)
    first = rows[0]
    state = {"fresh": "fresh reference", "reused": "REUSED reference (biased)", "none": "no reference"}
    ax.set_title(
        wrap(f"{first.step}: {first.step_verdict} ({state.get(first.reference_state, '')})", 60),
        fontsize=8,
        loc="left",
    )


def render_comparisons(info: pd.DataFrame, path: Path, *, rope: float) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    steps = list(dict.fromkeys(info["step"]))
    columns = 1 if len(steps) <= 3 else 2
    grid_rows = math.ceil(len(steps) / columns)
    sizes = [len(info[info["step"] == s]) for s in steps]
    heights = [max(sizes[i * columns : (i + 1) * columns]) * 0.26 + 0.75 for i in range(grid_rows)]
    fig, axes = subplots(
        grid_rows,
        columns,
        figsize=(6.2 * columns + 0.6, sum(heights) + 1.6),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
        layout="constrained",
    )
    for ax, step in zip(axes.ravel(), steps, strict=False):
        _panel(ax, info[info["step"] == step], rope=rope)
    for ax in axes.ravel()[len(steps) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("accuracy minus reference (points)", fontsize=8)
    shown = [v for v in COLORS if v in set(info["verdict"]) and v != "point"]
    handles = [
        Line2D(
            [],
            [],
            color=COLORS[v],
            marker=MARKERS.get(v, "D" if v == REFERENCE else "o"),
            ls="-" if v not in MARKERS and v != REFERENCE else "",
            label=v,
        )
        for v in shown
    ]
    handles.append(Rectangle((0, 0), 1, 1, color=COLORS["practically equivalent"], alpha=0.2, label="ROPE"))
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=min(len(handles), 5))
    title = (
        "Each candidate against its step's reference: corrected repeated k-fold t-test, Holm across the step, "
        f"alpha={ALPHA}, ROPE +/-{100 * rope:g} points (shaded)\n"
        "bars: the interval each verdict read (two-sided at its Holm level; equivalence at 1 - 2 x level); "
        f"axes end where a difference can (+/-{POSSIBLE:g})"
    )
    fig.suptitle(fitted(title, fig, 9), fontsize=9)
    return save(fig, path, tight=False)


def plot_comparisons(summary: pd.DataFrame, path: Path, *, rope: float, verdicts: pd.DataFrame | None = None) -> Path:
    return render_comparisons(get_comparisons_info(summary, verdicts), path, rope=rope)
