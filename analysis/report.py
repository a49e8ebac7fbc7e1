"""One self-contained HTML report (figures embedded) from the tracking store, also logged back as artifacts."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import curves, importance, interaction, noise, progression, sensitivity
from analysis.stats import ALPHA, candidate_summary, step_verdicts
from analysis.store import epoch_table, fold_table, read_runs


@dataclass
class Report:
    folds: pd.DataFrame
    summary: pd.DataFrame
    verdicts: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    html_path: Path | None = None


def build_report(
    client, experiments: list[str], out: Path, stage_run_id: str | None = None, data_digest: str | None = None
) -> Report:
    """Read, compute, draw every figure into ``out`` and write ``out/report.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds = fold_table(read_runs(client, experiments), data_digest, stage_run_id)
    if folds.empty:
        raise ValueError(f"no finished steps in experiment(s) {', '.join(experiments)}: run `mlflow-mnist tune` first")
    summary = candidate_summary(folds)
    verdicts = step_verdicts(summary)
    epochs = epoch_table(client, folds)
    report = Report(folds, summary, verdicts)
    figures = report.figures
    figures["progression"] = progression.plot_progression(summary, out / "progression.png")
    figures["noise"] = noise.plot_noise(summary, verdicts, out / "noise_floor.png")
    figures["importance"] = importance.plot_importance(summary, out / "importance.png")
    verdict_of = verdicts.set_index("step")["verdict"]
    for step in verdicts["step"]:
        figures[f"sensitivity {step}"] = sensitivity.plot_sensitivity(
            folds, summary, step, out / f"sensitivity_{step}.png", verdict_of[step]
        )
        figures[f"curves {step}"] = curves.plot_curves(epochs, step, out / f"curves_{step}.png")
    for step in interaction.steps_with_two_parameters(summary):
        figures[f"interaction {step}"] = interaction.plot_interaction(summary, step, out / f"interaction_{step}.png")
    report.html_path = out / "report.html"
    report.html_path.write_text(render_html(report, experiments))
    return report


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def render_html(report: Report, experiments: list[str]) -> str:
    table = report.verdicts.assign(
        **{
            "best mean +/- std": [
                f"{m:.5f} +/- {s:.5f}"
                for m, s in zip(report.verdicts["best_mean"], report.verdicts["best_std"], strict=True)
            ]
        }
    )[["step", "varied", "best_value", "best mean +/- std", "n_candidates", "tied", "n_diverged", "verdict"]]
    sections = "\n".join(
        f'<section id="{html.escape(name.replace(" ", "-"))}"><h2>{html.escape(name)}</h2>{_image(path)}</section>'
        for name, path in report.figures.items()
    )
    links = " | ".join(f'<a href="#{html.escape(n.replace(" ", "-"))}">{html.escape(n)}</a>' for n in report.figures)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlflow-mnist campaign report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style></head>
<body><h1>Campaign report: {html.escape(", ".join(experiments))}</h1>
<p>{len(report.folds)} fold results in {len(report.verdicts)} steps. A candidate is <em>tied</em> with its step's
best when a two-sided paired t-test over the folds gives p &ge; {ALPHA}; a step whose candidates are all tied shows
<strong>no detectable effect</strong>.</p>
{table.to_html(index=False, float_format=lambda v: f"{v:.5f}")}
<p>{links}</p>
{sections}
</body></html>
"""
