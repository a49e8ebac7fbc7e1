"""Held-out accuracy against the varied parameter of one step: every fold, mean with 95% interval, best marked."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from analysis._plotting import COLORS, MARKERS, empty, is_numeric, plt, save
from analysis.stats import UNHEALTHY


class SensitivityInfo(NamedTuple):
    step: str
    varied: str
    numeric: bool
    log_x: bool
    points: pd.DataFrame  # one row per split: x, accuracy, diverged
    means: pd.DataFrame  # one row per candidate: x, mean, ci_low, ci_high, is_best, verdict
    verdict: str


def get_sensitivity_info(folds: pd.DataFrame, summary: pd.DataFrame, step: str, verdict: str = "") -> SensitivityInfo:
    step_folds = folds[folds["step"] == step]
    means = summary[summary["step"] == step].copy()
    varied = means["varied"].iloc[0] if len(means) else step
    numeric = "," not in varied and is_numeric(means["value"])
    convert = (lambda v: float(v)) if numeric else (lambda v: v)
    means["x"] = means["value"].map(convert)
    points = step_folds.assign(x=step_folds["value"].map(convert))[["x", "accuracy", "diverged", "candidate_index"]]
    positive = means["x"][means["x"] > 0] if numeric else []
    log_x = bool(numeric and len(positive) == len(means) and positive.max() / positive.min() >= 100)
    return SensitivityInfo(step, varied, numeric, log_x, points, means, verdict)


def render_sensitivity(info: SensitivityInfo, path: Path) -> Path:
    if info.means.empty:
        return empty(path, f"no finished folds for step {info.step}")
    unhealthy = info.means["verdict"].isin(UNHEALTHY)
    bad = info.means[unhealthy]
    fig, axes = plt.subplots(
        2 if len(bad) else 1,
        1,
        figsize=(9, 5.6 if len(bad) else 4.6),
        squeeze=False,
        sharex=True,
        gridspec_kw={"height_ratios": [4, 1]} if len(bad) else None,
    )
    ax = axes[0, 0]
    good = info.means[~unhealthy]
    order = {x: i for i, x in enumerate(info.means.sort_values("candidate_index")["x"])}
    position = (lambda x: x) if info.numeric else (lambda x: order[x])
    bad_indexes = set(bad["candidate_index"])
    healthy_points = info.points[~info.points["candidate_index"].isin(bad_indexes)]
    ax.scatter(
        healthy_points["x"].map(position),
        healthy_points["accuracy"],
        s=18,
        alpha=0.55,
        color=COLORS["point"],
        label="fold",
        zorder=2,
    )
    for row in good.itertuples():
        color = COLORS[row.verdict]
        ax.errorbar(
            position(row.x),
            row.mean,
            yerr=[[row.mean - row.ci_low], [row.ci_high - row.mean]],
            fmt="D" if row.is_best else "o",
            color=color,
            capsize=4,
            ms=7 if row.is_best else 5,
            zorder=3,
        )
    if info.numeric:
        ax.plot(good.sort_values("x")["x"], good.sort_values("x")["mean"], color="#999999", lw=1, zorder=1)
    ax.set_ylabel("held-out accuracy")
    title = info.step if not info.verdict else f"{info.step}\n" + "\n".join(textwrap.wrap(info.verdict, 95))
    ax.set_title(title, fontsize=9)
    handles = [
        plt.Line2D([], [], color=COLORS[v], marker="o", ls="", label=f"{v} (mean, 95% CI)")
        for v in dict.fromkeys(good["verdict"])
    ]
    handles.append(plt.Line2D([], [], color=COLORS["point"], marker="o", ls="", label="one fold"))
    handles.append(plt.Line2D([], [], color="black", marker="D", ls="", label="chosen (best)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    if len(bad):
        low = axes[1, 0]
        for row in bad.itertuples():
            points = info.points[info.points["candidate_index"] == row.candidate_index]
            low.scatter(
                points["x"].map(position),
                points["accuracy"],
                marker=MARKERS[row.verdict],
                color=COLORS[row.verdict],
                label=row.verdict,
            )
        low.set_ylabel("unhealthy\nfolds", fontsize=8)
        low.set_ylim(0, 1.05)
        low.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    bottom = axes[-1, 0]
    if info.log_x:
        bottom.set_xscale("log")
    if not info.numeric:
        bottom.set_xticks(
            range(len(order)),
            list(order),
            rotation=30 if len(order) > 5 else 0,
            ha="right" if len(order) > 5 else "center",
        )
    bottom.set_xlabel(info.varied)
    return save(fig, path)


def plot_sensitivity(folds: pd.DataFrame, summary: pd.DataFrame, step: str, path: Path, verdict: str = "") -> Path:
    return render_sensitivity(get_sensitivity_info(folds, summary, step, verdict), path)
