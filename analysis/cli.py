"""The ``analyze`` command and its Python form, shared by ``python -m analysis``, ``mlflow-mnist analyze`` and
``mlflow_mnist.analyze(...)`` (found through entry points: ``mlflow_mnist`` never imports this package)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click


def analyze_api(
    *,
    experiments: Sequence[str] = (),
    out: str | Path = "reports",
    stage_run: str = "",
    log: bool = True,
    rope: float = 0.001,
    notify: Callable[[str], None] | None = None,
):
    """Build the report from the tracking store alone (every figure, ``report.html``, ``verdicts.csv``) and log
    it back; returns the :class:`analysis.report.Report` (its ``verdicts`` and ``summary`` are DataFrames)."""
    from analysis.report import build_report
    from mlflow_mnist import tracking
    from mlflow_mnist.runs import log_report

    client = tracking.connect()
    launcher = None
    experiments = list(experiments)
    if not experiments:  # under `mlflow run`, its experiment (the report goes on its run); else the latest campaign
        where = tracking.resolve_experiment(client, create=False)
        if where.chosen_because and notify is not None:
            notify(where.chosen_because)
        experiments, launcher = [where.name], where.launcher_run_id
    report = build_report(client, experiments, Path(out), stage_run or None, rope=rope)
    if log:
        report.logged_run_id = log_report(client, experiments[0], Path(out), stage_run or launcher)
    return report


@click.command()
@click.option(
    "--experiment",
    "experiments",
    multiple=True,
    help="Experiment(s) to read [default: $MLFLOW_EXPERIMENT_NAME, else the one with the latest campaign runs].",
)
@click.option("--out", default="reports", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--stage-run", default="", help="Only this stage run; the report is logged on it.")
@click.option("--log/--no-log", default=True, show_default=True, help="Log the report back to the store.")
@click.option(
    "--rope",
    default=0.001,
    show_default=True,
    type=click.FloatRange(0, 0.5),
    help="Region of practical equivalence, in accuracy (0.001 = 0.1 points).",
)
def analyze(experiments, out, stage_run, log, rope) -> None:
    """Sensitivity, noise floor, importance, curves and an HTML report, from the tracking store alone."""

    def notify(message: str) -> None:
        click.echo(message, err=True)

    try:
        report = analyze_api(experiments=experiments, out=out, stage_run=stage_run, log=log, rope=rope, notify=notify)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    for row in report.verdicts.itertuples():
        click.echo(f"{row.step}: {row.verdict}: {row.sentence} (chose {row.best_value}, mean {row.best_mean:.5f})")
    if log:
        click.echo(f"report logged to run {report.logged_run_id} under analysis/")
    click.echo(f"report: {report.html_path}" + (f"; verdicts: {report.csv_path}" if report.csv_path else ""))
