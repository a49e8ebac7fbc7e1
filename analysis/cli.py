"""The ``analyze`` command, shared by ``python -m analysis`` and ``mlflow-mnist analyze``."""

from __future__ import annotations

from pathlib import Path

import click


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
    from analysis.report import build_report
    from mlflow_mnist import tracking
    from mlflow_mnist.runs import log_report

    client = tracking.connect()
    launcher = None
    if not experiments:  # under `mlflow run`, its experiment (the report goes on its run); else the latest campaign
        where = tracking.resolve_experiment(client, create=False)
        if where.chosen_because:
            click.echo(where.chosen_because, err=True)
        experiments, launcher = [where.name], where.launcher_run_id
    try:
        report = build_report(client, experiments, out, stage_run or None, rope=rope)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    for row in report.verdicts.itertuples():
        click.echo(f"{row.step}: {row.verdict}: {row.sentence} (chose {row.best_value}, mean {row.best_mean:.5f})")
    if log:
        run_id = log_report(client, experiments[0], out, stage_run or launcher)
        click.echo(f"report logged to run {run_id} under analysis/")
    click.echo(f"report: {report.html_path}" + (f"; verdicts: {report.csv_path}" if report.csv_path else ""))
