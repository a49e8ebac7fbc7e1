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
def analyze(experiments, out, stage_run, log) -> None:
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
        report = build_report(client, experiments, out, stage_run or None)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    for row in report.verdicts.itertuples():
        click.echo(
            f"{row.step}: best {row.best} {row.best_mean:.5f} +/- {row.best_std:.5f}; {row.n_tied} tied; {row.verdict}"
        )
    if log:
        run_id = log_report(client, experiments[0], out, stage_run or launcher)
        click.echo(f"report logged to run {run_id} under analysis/")
    click.echo(f"report: {report.html_path}")
