"""One self-contained HTML report (figures embedded) and a machine-readable ``verdicts.csv``, from the store."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import anytime, comparisons, curves, fanova, importance, interaction, progression, sensitivity, studies
from analysis._plotting import Placeholder, style
from analysis.searches import search_spaces, search_table, trial_table, trials_for_importance
from analysis.stats import (
    ALPHA,
    DEFAULT_ROPE,
    MAX_REPEATS,
    campaign_correction,
    campaign_sentence,
    candidate_summary,
    step_verdicts,
)
from analysis.store import epoch_table, fold_table, held_values, read_runs
from mlflow_mnist.results import FAR_BELOW, NEAR_CHANCE

#: verdicts.csv: one row per candidate. delta_low/delta_high: the interval its verdict read, at interval_level.
VERDICT_COLUMNS = [
    "step",
    "candidate",
    "value",
    "mean",
    "ci_low",
    "ci_high",
    "status",
    "verdict",
    "p_adjusted",
    "delta",
    "delta_low",
    "delta_high",
    "interval_level",
    "reference",
    "reference_state",
]


@dataclass
class Report:
    folds: pd.DataFrame
    summary: pd.DataFrame
    verdicts: pd.DataFrame
    campaign: pd.DataFrame = field(default_factory=pd.DataFrame)  # step decisions corrected across the steps
    figures: dict[str, Path] = field(default_factory=dict)
    # Figures without the data to draw them (a search too small for importance): name -> why, one line in the report
    not_drawn: dict[str, str] = field(default_factory=dict)
    html_path: Path | None = None
    csv_path: Path | None = None
    searches: int = 0  # search runs read (staged and joint)


def build_report(
    client,
    experiments: list[str],
    out: Path,
    stage_run_id: str | None = None,
    data_digest: str | None = None,
    *,
    rope: float = DEFAULT_ROPE,
) -> Report:
    """Read, compute, draw every figure into ``out`` (in the report's style, the caller's own settings kept);
    write ``out/report.html`` and ``out/verdicts.csv``."""
    with style():
        return _build_report(client, experiments, Path(out), stage_run_id, data_digest, rope=rope)


def _build_report(
    client, experiments: list[str], out: Path, stage_run_id: str | None, data_digest: str | None, *, rope: float
) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    runs = read_runs(client, experiments)
    folds = fold_table(runs, data_digest, stage_run_id)
    searches = search_table(runs)
    if folds.empty and searches.empty:
        raise ValueError(f"no finished steps in experiment(s) {', '.join(experiments)}: run `mlflow-mnist tune` first")
    summary = candidate_summary(folds, rope=rope) if not folds.empty else pd.DataFrame()
    verdicts = step_verdicts(summary) if not folds.empty else pd.DataFrame(columns=VERDICT_STEP_COLUMNS)
    campaign = campaign_correction(verdicts) if not folds.empty else pd.DataFrame()
    report = Report(
        folds, summary, verdicts, campaign, searches=searches["search_run_id"].nunique() if len(searches) else 0
    )
    figures = _Figures(report)
    if not searches.empty:
        figures["anytime"] = anytime.plot_anytime(searches, out / "anytime.png")
    trials = trial_table(runs)
    _joint_figures(figures, trials, search_spaces(runs, trials), out)
    if folds.empty:
        report.html_path = out / "report.html"
        report.html_path.write_text(render_html(report, experiments, rope=rope))
        return report
    epochs = epoch_table(client, folds)
    figures["progression"] = progression.plot_progression(
        summary, verdicts, out / "progression.png", held_values(runs, folds)
    )
    figures["comparisons"] = comparisons.plot_comparisons(
        summary, out / "comparisons.png", rope=rope, verdicts=verdicts
    )
    figures["importance"] = importance.plot_importance(summary, verdicts, out / "importance.png")
    sentence_of = verdicts.set_index("step")["sentence"]
    for step in verdicts["step"]:
        figures[f"sensitivity {step}"] = sensitivity.plot_sensitivity(
            folds, summary, step, out / f"sensitivity_{step}.png", sentence_of[step], rope=rope
        )
        figures[f"curves {step}"] = curves.plot_curves(epochs, step, out / f"curves_{step}.png")
    for step in interaction.steps_with_two_parameters(summary):
        figures[f"interaction {step}"] = interaction.plot_interaction(summary, step, out / f"interaction_{step}.png")
    report.csv_path = out / "verdicts.csv"
    summary[VERDICT_COLUMNS].to_csv(report.csv_path, index=False)
    report.html_path = out / "report.html"
    report.html_path.write_text(render_html(report, experiments, rope=rope))
    return report


VERDICT_STEP_COLUMNS = [
    "step",
    "verdict",
    "sentence",
    "conclusion",
    "health",
    "reference_value",
    "reference_state",
    "best_value",
    "best_mean",
    "best_std",
    "n_candidates",
    "repeats_needed",
]


class _Figures:
    """The report's figures as they are drawn: a placeholder (no data) is named in ``not_drawn``, its file removed."""

    def __init__(self, report: Report):
        self.report = report

    def __setitem__(self, name: str, path: Path) -> None:
        if isinstance(path, Placeholder):
            self.report.not_drawn[name] = path.reason
            path.unlink(missing_ok=True)
        else:
            self.report.figures[name] = path


def _joint_figures(figures: _Figures, trials: pd.DataFrame, spaces: dict[str, dict], out: Path) -> None:
    """fANOVA importance and the top-two interaction of each joint search, over the space its run keeps."""
    for search_run_id, part in trials.groupby("search_run_id", sort=False):
        distributions = spaces.get(search_run_id)
        if not distributions:
            continue
        search = part["search"].iloc[0]
        chosen = trials_for_importance(part, fanova.MIN_TRIALS)
        info = fanova.get_importance_info(chosen, distributions)
        slug = str(search).replace(":", "-").replace(" ", "_")
        which = f"{len(chosen)} trials at {chosen['budget'].max()} epochs" if len(chosen) else "no trials"
        figures[f"importance {search}"] = fanova.render_importance(
            info, out / f"importance_{slug}.png", str(search), which
        )
        figures[f"interaction {search}"] = fanova.render_interaction(
            fanova.get_interaction_info(chosen, info), out / f"interaction_{slug}.png", str(search), which
        )
        study = studies.build_study(part, distributions, name=str(search))
        for kind in studies.PLOTS:
            figures[f"optuna {kind} {search}"] = studies.render_optuna_figure(
                study, kind, out / f"optuna_{kind.replace(' ', '_')}_{slug}.png", f"{search}: Optuna's {kind}"
            )


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def _repeats(value: float) -> str:
    if math.isnan(value):
        return ""
    return f"more than {MAX_REPEATS}" if math.isinf(value) else f"{int(value)}"


REFERENCE_WORDS = {"fresh": "trained afresh", "reused": "folds REUSED (biased)", "none": "none"}


def _reference(row) -> str:
    if row.reference_state == "none":
        return "none: not trained in this step"
    return f"{row.reference_value} ({REFERENCE_WORDS.get(row.reference_state, row.reference_state)})"


def _counts(report: Report) -> str:
    """What the verdicts below stand on; a campaign of joint searches alone has none (it read "0 fold results in 0
    steps" of a search that had trained folds)."""
    if len(report.verdicts):
        return f"{len(report.folds)} fold results in {len(report.verdicts)} steps."
    runs = f"{report.searches} search run{'' if report.searches == 1 else 's'}"
    return f"No staged step among the {runs} read, so no verdicts: a joint search's trials are in its figures."


def render_html(report: Report, experiments: list[str], *, rope: float) -> str:
    v = report.verdicts
    table = pd.DataFrame(
        {
            "Step": v["step"],
            "Verdict": v["verdict"],
            "Conclusion": v["conclusion"],
            "Health": v["health"],
            "Reference": [_reference(row) for row in v.itertuples()],
            "Chosen value": v["best_value"],
            "Its mean accuracy (std over folds)": [
                f"{m:.5f} ({s:.5f})" for m, s in zip(v["best_mean"], v["best_std"], strict=True)
            ],
            "Candidates": v["n_candidates"],
            "Repeats that would decide it (estimate)": [_repeats(x) for x in v["repeats_needed"]],
        }
    )
    sections = "\n".join(
        f'<section id="{html.escape(name.replace(" ", "-"))}"><h2>{html.escape(name)}</h2>{_image(path)}</section>'
        for name, path in report.figures.items()
    )
    links = " | ".join(f'<a href="#{html.escape(n.replace(" ", "-"))}">{html.escape(n)}</a>' for n in report.figures)
    if report.not_drawn:
        reasons = "; ".join(report.not_drawn.values())  # each names its search and figure
        links += f"</p>\n<p>Not drawn, for want of data: {html.escape(reasons)}."
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlflow-mnist campaign report</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style></head>
<body><h1>Campaign report: {html.escape(", ".join(experiments))}</h1>
<p>{_counts(report)} Each candidate is compared with its step's reference, fixed
before the step's scores: the carried-in configuration trained afresh in the step (on older stores, the carried-in
grid point; its folds reused from the step that chose it are marked, as they bias verdicts toward "worse"; a step
whose carried-in value was not trained has no reference and decides nothing). The test is the corrected repeated
k-fold t-test (Nadeau &amp; Bengio; Bouckaert &amp; Frank), Holm-adjusted across the step at alpha = {ALPHA}, with a
region of practical equivalence of &plusmn;{100 * rope:g} accuracy points: <em>better</em> or <em>worse</em> means
shown to differ by more than that, <em>practically equivalent</em> shown to differ by less, <em>undecided</em>
neither. A fold <em>collapsed</em> when it kept at most {NEAR_CHANCE:.0%} of the way from guessing (the held-out
fold's majority-class rate) to a perfect score while another fold of its candidate scored at least
{FAR_BELOW:.0%} of that way higher; its candidate is <em>unstable</em>. Unstable, diverged, failed and incomplete
candidates are not compared; collapses and divergences make a step an effect only when an exact test, in the
step's Holm family, says they depend on the parameter; missing and failed folds never do. The same conclusions,
one row per candidate with the interval each verdict read, are in <code>verdicts.csv</code>.</p>
{table.to_html(index=False, escape=True)}
<p><strong>Across the campaign.</strong> {html.escape(campaign_sentence(report.campaign, len(v)))} Holm, not
Benjamini-Hochberg: the steps share one data set and its splits, so their p-values depend on each other in ways
that Benjamini-Hochberg's positive-dependence condition does not certainly cover, while Holm holds under any
dependence; and each step's verdict is acted on by itself (a false effect changes what the campaign carries
forward), so the error to bound is any false claim, not their share.</p>
<p>{links}</p>
{sections}
</body></html>
"""
