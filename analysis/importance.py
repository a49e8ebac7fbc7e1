"""Parameter importance across the campaign, from the verdicts' own test: per step, the largest move a candidate
made from the reference (bar) against the move its test needed to call it better or worse (tick). A bar passes
its tick exactly when the step has a better or worse candidate (:func:`analysis.stats.importance`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from analysis._plotting import COLORS, empty, save, subplots
from analysis.stats import ALPHA, importance

POSSIBLE = 100.0  # a move in accuracy points is at most 100


def get_importance_info(summary: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per step (campaign order): the candidate that moved furthest relative to its need, its move and
    the move needed (accuracy), whether it passed, and the step's verdict."""
    return importance(summary, verdicts).sort_values("step_order", ascending=False, ignore_index=True)


def _label(row) -> str:
    label = f"{row.step}: {row.value}" if row.value else f"{row.step}"
    return label + ("\n(effect: breakdowns depend on it)" if row.breakdown_effect else "")


def render_importance(info: pd.DataFrame, path: Path) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    fig, ax = subplots(figsize=(9.5, 0.34 * len(info) + 2.4))
    shift, needed = 100 * info["shift"], 100 * info["needed"].replace(np.inf, np.nan)
    finite = pd.concat([shift, needed]).dropna()
    top = min(POSSIBLE, max(1.0, float(finite.max()) * 1.6)) if len(finite) else 1.0
    ys = np.arange(len(info))
    for y, row, move, need in zip(ys, info.itertuples(), shift, needed, strict=True):
        color = COLORS.get(row.verdict, COLORS["undecided"])
        if math.isnan(move):
            ax.text(0.02, y, "n/a: no usable reference", va="center", fontsize=7, color="#555555")
            continue
        ax.barh(y, move, color=color, height=0.6)
        if math.isfinite(need) and need <= POSSIBLE:
            ax.scatter(need, y, marker="|", s=220, color="black", zorder=3, clip_on=False)
        note = "beyond its need" if row.beyond_noise else "within its need"
        if not math.isfinite(need):
            note += " (need: n/a, variance unknown)"
        elif need > POSSIBLE:
            note += f" (need: {need:.0f} points, past 100)"
        tick = need if math.isfinite(need) and need <= POSSIBLE else 0.0  # no tick drawn: the note follows the bar
        at = min(max(move, tick), top)
        if at > top / 8 and at == move:  # no room to its right on the log axis: inside the bar's end, in white
            ax.text(at, y, f"{note}  ", va="center", ha="right", fontsize=7, color="white")
        else:
            ax.text(at, y, f"  {note}", va="center", fontsize=7)
    ax.set_yticks(ys, [_label(r) for r in info.itertuples()], fontsize=8)
    ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
    ax.set_xlim(0, top * 1.9 if top < POSSIBLE else POSSIBLE)
    ax.set_ylim(-0.7, len(info) - 0.3)
    ax.set_xlabel("move from the reference (accuracy points; linear below 0.1, log above; at most 100)")
    ax.set_title(
        "Parameter importance, by the verdicts' own test: per step, the candidate nearest to being decided\n"
        "(its move relative to its need; not always the largest move)\n"
        "tick: the move that candidate needed to be called better or worse\n"
        f"(the ROPE + the half-width of its Holm-level interval, alpha={ALPHA}); colour: the step's verdict",
        fontsize=9,
    )
    shown = [v for v in ("effect", "no practical effect", "undecided") if v in set(info["verdict"])]
    handles = [Rectangle((0, 0), 1, 1, color=COLORS[v], label=f"step verdict: {v}") for v in shown]
    handles.append(Line2D([], [], color="black", marker="|", ls="", ms=12, label="move needed"))
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles), bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06 * 6 / (0.34 * len(info) + 2.4), 1, 1))
    return save(fig, path, tight=False)


def plot_importance(summary: pd.DataFrame, verdicts: pd.DataFrame, path: Path) -> Path:
    return render_importance(get_importance_info(summary, verdicts), path)
