"""Every candidate against its step's reference: the difference with its corrected 95% interval, the ROPE
shaded, the colour the verdict. Unhealthy candidates (unstable, diverged, failed) sit in a strip of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis._plotting import COLORS, MARKERS, empty, plt, save
from analysis.stats import ALPHA, UNHEALTHY


def get_comparisons_info(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate: step, value, difference from the reference (points) with interval, verdict."""
    info = summary[["step", "step_order", "candidate", "value", "verdict", "delta", "delta_low", "delta_high"]].copy()
    for column in ("delta", "delta_low", "delta_high"):
        info[column] = 100 * info[column]
    return info.sort_values(["step_order", "delta"], ignore_index=True)


def render_comparisons(info: pd.DataFrame, path: Path, *, rope: float) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    steps = list(dict.fromkeys(info["step"]))
    healthy = info[~info["verdict"].isin(UNHEALTHY)]
    finite = healthy[["delta_low", "delta_high", "delta"]].replace([np.inf, -np.inf], np.nan).stack()
    low, high = (min(finite.min(), -2 * 100 * rope), max(finite.max(), 2 * 100 * rope)) if len(finite) else (-1, 1)
    any_unhealthy = bool(info["verdict"].isin(UNHEALTHY).any())
    floor = low - (0.15 if any_unhealthy else 0.0) * (high - low)  # the strip where unhealthy candidates go
    fig, ax = plt.subplots(figsize=(max(9.0, 1.1 * len(steps) + 4.5), 5.4))
    ax.axhspan(-100 * rope, 100 * rope, color=COLORS["practically equivalent"], alpha=0.18, lw=0, label="ROPE")
    for i, step in enumerate(steps):
        part = info[info["step"] == step].reset_index(drop=True)
        offsets = np.linspace(-0.3, 0.3, len(part)) if len(part) > 1 else [0.0]
        for offset, row in zip(offsets, part.itertuples(), strict=True):
            x = i + offset
            if row.verdict in UNHEALTHY:
                ax.scatter(x, floor, marker=MARKERS[row.verdict], color=COLORS[row.verdict], s=45, zorder=3)
                continue
            if np.isfinite(row.delta_low) and np.isfinite(row.delta_high):
                ax.vlines(x, max(row.delta_low, floor), row.delta_high, color=COLORS[row.verdict], lw=1.5)
            marker = "D" if row.verdict == "reference" else "o"
            ax.scatter(x, row.delta, color=COLORS[row.verdict], marker=marker, s=30, zorder=3)
    if any_unhealthy:
        ax.axhline(floor + 0.07 * (high - low), color="black", lw=0.6, ls=":")
    ax.set_xticks(range(len(steps)), steps, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(floor - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.set_ylabel("mean accuracy minus reference (points)")
    ax.set_title(
        "Each candidate against its step's reference\n"
        f"corrected repeated k-fold t-test, Holm, alpha={ALPHA}, ROPE +/-{100 * rope:g} points (shaded)\n"
        "bars: 95% intervals"
        + ("; below the dotted line: candidates that collapsed, diverged or failed" if any_unhealthy else ""),
        fontsize=9,
    )
    shown = list(dict.fromkeys(info["verdict"]))
    handles = [
        plt.Line2D([], [], color=COLORS[v], marker=MARKERS.get(v, "D" if v == "reference" else "o"), ls="", label=v)
        for v in shown
    ]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig, path)


def plot_comparisons(summary: pd.DataFrame, path: Path, *, rope: float) -> Path:
    return render_comparisons(get_comparisons_info(summary), path, rope=rope)
