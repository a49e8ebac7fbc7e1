"""Held-out accuracy against the varied parameter of one step: every fold, each candidate's mean with the interval
its verdict read (the difference from the reference, drawn around the reference's mean, whose ROPE is shaded),
the reference and the chosen value marked. Unhealthy candidates sit in a strip of their own."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from analysis._plotting import COLORS, MARKERS, candidate_label, empty, is_numeric, save, subplots
from analysis.stats import MEAN_LEVEL, REFERENCE, SAME_AS_REFERENCE, UNHEALTHY


class SensitivityInfo(NamedTuple):
    step: str
    varied: str
    numeric: bool
    log_x: bool
    points: pd.DataFrame  # one row per split: x, accuracy, diverged, candidate_index
    means: pd.DataFrame  # one row per candidate: x, label, mean, low, high, is_best, is_reference, verdict
    reference_mean: float  # NaN: no usable reference
    rope: float
    interval: str  # what the bars are: the verdicts' intervals, or (no reference) each mean's own
    verdict: str


def get_sensitivity_info(
    folds: pd.DataFrame, summary: pd.DataFrame, step: str, verdict: str = "", *, rope: float = 0.001
) -> SensitivityInfo:
    means = summary[summary["step"] == step].sort_values("candidate_index").copy()
    varied = means["varied"].iloc[0] if len(means) else step
    numeric = "," not in varied and is_numeric(means["value"])
    extra = means["role"].eq(REFERENCE) if "role" in means else pd.Series(False, index=means.index)
    if numeric:
        means["x"] = means["value"].map(float)
    else:
        order = list(dict.fromkeys(means.loc[~extra, "value"]))
        means["x"] = [
            len(order) if is_extra else order.index(v) for v, is_extra in zip(means["value"], extra, strict=True)
        ]
    means["label"] = [candidate_label(r) for r in means.to_dict("records")]
    reference = means[means["verdict"] == REFERENCE]
    reference_mean = float(reference["mean"].iloc[0]) if len(reference) else math.nan
    if math.isnan(reference_mean):
        means["centre"], means["low"], means["high"] = means["mean"], means["ci_low"], means["ci_high"]
        interval = f"{MEAN_LEVEL:.0%} interval of each mean (no usable reference: nothing compared)"
    else:
        means["centre"] = np.where(means["delta"].notna(), reference_mean + means["delta"], means["mean"])
        means["low"] = (reference_mean + means["delta_low"]).clip(0, 1)
        means["high"] = (reference_mean + means["delta_high"]).clip(0, 1)
        interval = "the interval each verdict read (difference from the reference, around the reference's mean)"
    position = dict(zip(means["candidate"], means["x"], strict=True))
    step_folds = folds[folds["step"] == step]
    points = step_folds.assign(x=step_folds["candidate"].map(position))[
        ["x", "accuracy", "diverged", "candidate_index", "candidate"]
    ]
    log_x = numeric and log_spaced(means["x"])
    return SensitivityInfo(step, varied, numeric, log_x, points, means, reference_mean, rope, interval, verdict)


def log_spaced(values) -> bool:
    """Whether a grid of numbers reads better on a log axis: all positive, and either spanning two decades or more,
    or (at least three values over a factor of 4) spaced more evenly by ratio than by difference (16, 32, 64, 128
    or 2, 6, 18 epochs; not 10, 20, 40, ..., 100)."""
    grid = np.unique(np.asarray(values, dtype=float))
    if len(grid) < 2 or grid.min() <= 0:
        return False
    if grid.max() / grid.min() >= 100:
        return True
    if len(grid) < 3 or grid.max() / grid.min() < 4:
        return False

    def unevenness(gaps: np.ndarray) -> float:
        return float(gaps.std() / gaps.mean())

    return unevenness(np.diff(np.log(grid))) < unevenness(np.diff(grid))


def _nudge(info: SensitivityInfo, x: float, row) -> float:
    """Moves an extra reference candidate off its grid twin on a numeric axis."""
    if not (info.numeric and row.role == REFERENCE):
        return x
    if info.log_x:
        return x * 1.12
    span = float(info.means["x"].max() - info.means["x"].min()) or 1.0
    return x + 0.025 * span


def _limits(info: SensitivityInfo, healthy: pd.DataFrame, good: pd.DataFrame) -> tuple[float, float]:
    values = pd.concat([healthy["accuracy"], good["centre"], good["low"], good["high"]]).dropna()
    if not math.isnan(info.reference_mean):
        values = pd.concat([values, pd.Series([info.reference_mean - info.rope, info.reference_mean + info.rope])])
    low, high = float(values.min()), float(values.max())
    pad = 0.08 * (high - low or 0.01)
    return max(0.0, low - pad), min(1.0, high + pad)


def render_sensitivity(info: SensitivityInfo, path: Path) -> Path:
    if info.means.empty:
        return empty(path, f"no finished folds for step {info.step}")
    unhealthy = info.means["verdict"].isin(UNHEALTHY)
    bad, good = info.means[unhealthy], info.means[~unhealthy]
    fig, axes = subplots(
        2 if len(bad) else 1,
        1,
        figsize=(10, 6.0 if len(bad) else 5.0),
        squeeze=False,
        sharex=True,
        gridspec_kw={"height_ratios": [4, 1]} if len(bad) else None,
    )
    ax = axes[0, 0]
    healthy = info.points[~info.points["candidate_index"].isin(set(bad["candidate_index"]))]
    x_of = {row.candidate: _nudge(info, row.x, row) for row in info.means.itertuples()}
    ax.scatter(healthy["candidate"].map(x_of), healthy["accuracy"], s=16, alpha=0.5, color=COLORS["point"], zorder=2)
    if not math.isnan(info.reference_mean):
        ax.axhspan(
            info.reference_mean - info.rope,
            info.reference_mean + info.rope,
            color=COLORS["practically equivalent"],
            alpha=0.25,
            lw=0,
        )
        ax.axhline(info.reference_mean, color=COLORS[REFERENCE], lw=0.8, ls="--", zorder=1)
    for row in good.itertuples():
        color = COLORS.get(row.verdict, COLORS["undecided"])
        x = x_of[row.candidate]
        if math.isfinite(row.low) and math.isfinite(row.high):
            ax.vlines(x, row.low, row.high, color=color, lw=2, zorder=3)
        elif row.verdict not in (REFERENCE, SAME_AS_REFERENCE):  # those two have no interval by design
            ax.annotate("n/a", (x, row.centre), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
        marker = "D" if row.verdict == REFERENCE else "*" if row.is_best else "o"
        ax.scatter(x, row.centre, marker=marker, color=color, s=90 if row.is_best else 36, zorder=4)
    if info.numeric:
        line = good[good["role"] != REFERENCE].sort_values("x")
        ax.plot(line["x"], line["centre"], color="#999999", lw=1, zorder=1)
    ax.set_ylim(*_limits(info, healthy, good))
    ax.set_ylabel("held-out accuracy")
    title = info.step if not info.verdict else f"{info.step}\n" + "\n".join(textwrap.wrap(info.verdict, 110))
    ax.set_title(title, fontsize=8, loc="left")
    handles = [
        Line2D([], [], color=COLORS[v], marker="D" if v == REFERENCE else "o", ls="-", label=v)
        for v in dict.fromkeys(good["verdict"])
    ]
    handles += [
        Line2D([], [], color="#555555", marker="*", ls="", ms=10, label="chosen (best)"),
        Line2D([], [], color=COLORS["point"], marker="o", ls="", label="one fold"),
    ]
    if not math.isnan(info.reference_mean):
        handles.append(
            Rectangle((0, 0), 1, 1, color=COLORS["practically equivalent"], alpha=0.25, label="reference +/- ROPE")
        )
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        title="\n".join(textwrap.wrap(f"bars: {info.interval}", 34)),
        title_fontsize=7,
    )
    if len(bad):
        low = axes[1, 0]
        for row in bad.itertuples():
            points = info.points[info.points["candidate_index"] == row.candidate_index]
            low.scatter(
                points["candidate"].map(x_of),
                points["accuracy"],
                marker=MARKERS[row.verdict],
                color=COLORS[row.verdict],
                label=f"{row.label}: {row.verdict}",
            )
        low.set_ylabel("unhealthy\nfolds", fontsize=8)
        low.set_ylim(0, 1.05)
        low.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _x_axis(info, axes[-1, 0])
    return save(fig, path)


def _x_axis(info: SensitivityInfo, bottom) -> None:
    if info.log_x:
        from matplotlib.ticker import NullFormatter

        bottom.set_xscale("log")
        grid = info.means.loc[info.means["role"] != REFERENCE, "value"].drop_duplicates()
        # The grid's own values as ticks: a grid within a decade has no power of ten to label.
        bottom.set_xticks([float(v) for v in grid], [str(v) for v in grid], fontsize=8)
        bottom.xaxis.set_minor_formatter(NullFormatter())
    if not info.numeric:
        ticks = info.means.drop_duplicates("x").sort_values("x")
        labels = [
            label.replace(" (reference", "\n(reference") for label in ticks["label"]
        ]  # the reference's own category
        many = len(ticks) > 5
        bottom.set_xticks(
            list(ticks["x"]), labels, rotation=30 if many else 0, ha="right" if many else "center", fontsize=8
        )
    bottom.set_xlabel(info.varied)


def plot_sensitivity(
    folds: pd.DataFrame, summary: pd.DataFrame, step: str, path: Path, verdict: str = "", *, rope: float = 0.001
) -> Path:
    return render_sensitivity(get_sensitivity_info(folds, summary, step, verdict, rope=rope), path)
