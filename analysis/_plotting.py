"""What every figure shares: figures outside pyplot, one style, verdict colours, saving, an empty-data placeholder.

Nothing here changes the process it runs in: importing the analysis set a notebook's matplotlib back end to Agg (its
figures stopped showing) and seaborn's theme on 34 of its rc parameters. The report's figures are
:class:`~matplotlib.figure.Figure` objects of their own (no back end, never shown, freed with their last
reference), drawn inside :func:`style`.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import seaborn as sns
from cycler import cycler
from matplotlib.figure import Figure

#: seaborn's ``set_theme(style="whitegrid", context="notebook")``, as rc parameters applied by :func:`style` only.
STYLE = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook"),
    "axes.prop_cycle": cycler(color=sns.color_palette("deep")),
}


@contextmanager
def style() -> Iterator[None]:
    """The report's look while its figures are drawn and saved; the caller's own settings before and after."""
    with matplotlib.rc_context(STYLE):
        yield


def subplots(*args, figsize: tuple[float, float], layout: str | None = None, **kwargs):
    """A figure of our own and its axes, as ``pyplot.subplots`` returns them, without pyplot."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*args, **kwargs)


#: One colour per verdict, in every figure.
COLORS = {
    "reference": "#1b7837",
    "the reference's configuration": "#7fbc41",
    "better": "#2166ac",
    "practically equivalent": "#7f7f7f",
    "undecided": "#e08214",
    "worse": "#c51b7d",
    "unstable": "#8c510a",
    "diverged": "#d73027",
    "failed": "#d73027",
    "incomplete": "#bababa",
    "no reference": "#5e3c99",
    "reference unhealthy": "#5e3c99",
    "point": "#9e9ac8",
    "effect": "#2166ac",
    "no practical effect": "#7f7f7f",
}
MARKERS = {"unstable": "v", "diverged": "x", "failed": "x", "incomplete": "s"}


def fitted(text: str, fig, fontsize: float) -> str:
    """``text`` rewrapped, line by line, to the width of ``fig`` at ``fontsize``: a title longer than its figure is
    cut at both edges, not wrapped, by matplotlib (a narrow report's titles lost their test's name)."""
    width_px = fig.get_figwidth() * fig.dpi
    per_line = max(20, int(width_px / (0.6 * fontsize * fig.dpi / 72)))  # an average character: 0.6 em wide
    return "\n".join(textwrap.fill(line, per_line) for line in text.split("\n"))


def save(fig, path: Path, *, tight: bool = True) -> Path:
    """``fig`` as a PNG at ``path``; closes it. Where ``tight_layout`` cannot fit the figure (matplotlib warns and
    leaves it as it was: a warning that reached the Python API's users), the saved image is cropped to what was
    drawn instead, so nothing is cut and nothing is said."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    crop = None
    if tight:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=UserWarning, message=".*[Tt]ight")
            try:
                fig.tight_layout()
            except UserWarning:
                crop = "tight"
    fig.savefig(path, dpi=110, bbox_inches=crop)
    _close(fig)
    return path


def _close(fig) -> None:
    """Forget ``fig`` where pyplot made it (Optuna's figures are pyplot's); ours are freed with their reference."""
    import matplotlib.pyplot as plt

    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)


class Placeholder(type(Path())):
    """The path of a figure drawn without data (:func:`empty`): ``reason`` says why. The report lists these in a
    line instead of showing each as a figure of its own."""

    reason: str = ""


def empty(path: Path, message: str) -> Placeholder:
    """Optuna's habit: no data warns and still renders a (labelled) figure; its path says it is a placeholder."""
    warnings.warn(message, stacklevel=3)
    fig, ax = subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    placeholder = Placeholder(save(fig, path))
    placeholder.reason = message
    return placeholder


def is_numeric(values) -> bool:
    try:
        [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return True


def wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def candidate_label(row: dict) -> str:
    """A candidate's name in figures: its value, and which one is the reference (trained afresh, or reused)."""
    if not row.get("is_reference"):
        return str(row["value"])
    how = "reused" if row.get("reference_state") == "reused" else "fresh" if row.get("role") == "reference" else ""
    return f"{row['value']} (reference{', ' + how if how else ''})"
