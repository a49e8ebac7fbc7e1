"""The ``analyze`` command and its Python form, shared by ``python -m analysis``, ``mlflow-mnist analyze`` and
``mlflow_mnist.analyze(...)`` (found through entry points: ``mlflow_mnist`` never imports this package)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import click


class _Refused(click.ClickException):
    """A mistake in what the command was given: one line, exit 2, as every mlflow-mnist command's mistakes."""

    exit_code = 2


def _check_rope(rope: float) -> None:
    import math
    import numbers

    if isinstance(rope, bool) or not isinstance(rope, numbers.Real) or not (math.isfinite(rope) and 0 <= rope <= 0.5):
        raise ValueError(f"rope={rope!r} must be a number from 0 to 0.5 (accuracy points / 100; default 0.001)")


def _finite(value: float, flag: str) -> float:
    """click's FloatRange lets NaN through (every comparison with it is false)."""
    import math

    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number in the range", param_hint=flag)
    return value


def analyze_api(
    *,
    experiments: str | Sequence[str] = (),
    out: str | Path = "reports",
    stage_run: str = "",
    log: bool = True,
    rope: float = 0.001,
    notify: Callable[[str], None] | None = None,
):
    """Build the report from the tracking store alone (every figure, ``report.html``, ``verdicts.csv``) and log
    it back; returns the :class:`analysis.report.Report` (its ``verdicts`` and ``summary`` are DataFrames).
    ``experiments``: one name or several (none: the latest campaign's); ``rope``: 0 to 0.5 (accuracy points / 100).
    """
    from analysis.report import build_report
    from mlflow_mnist import tracking
    from mlflow_mnist.experiments import check_experiment_exists, resolve_experiment
    from mlflow_mnist.runs import log_report

    _check_rope(rope)  # the CLI's range, for Python callers: a NaN or a negative ROPE drew a report of nonsense
    experiments = [experiments] if isinstance(experiments, str) else list(experiments)  # not its letters
    client = tracking.connect(existing=True)
    launcher, chosen_because = None, ""
    if not experiments:  # under `mlflow run`, its experiment (the report goes on its run); else the latest campaign
        where = resolve_experiment(client, create=False)
        chosen_because = where.chosen_because  # said once the report is made: a refusal is its one line alone
        experiments, launcher = [where.name], where.launcher_run_id
    else:  # each named one exists, before a folder is made or a figure drawn
        for name in experiments:
            check_experiment_exists(client, name)
    if stage_run:
        check_stage_run(client, stage_run)
    made = _missing_folders(Path(out))
    check_out_folder(Path(out), made)
    check_finished_steps(client, experiments)  # before the folder is made: a refusal leaves nothing behind
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file of that name, a folder that cannot hold it
        raise _not_a_folder(out, error.strerror or type(error).__name__) from None
    try:
        report = build_report(client, experiments, Path(out), stage_run or None, rope=rope)
    except ValueError:  # refused after all (a --stage-run with nothing finished): the folders made here go again
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty one: whatever was written there stays
        raise
    if chosen_because and notify is not None:
        notify(chosen_because)
    if log:
        report.logged_run_id = log_report(
            client, experiments[0], Path(out), stage_run or launcher, read=_what_was_read(report, experiments)
        )
    return report


def _what_was_read(report, experiments: Sequence[str]) -> str:
    """``"3 search runs (2 staged steps, 27 folds) in experiment 'campaign'"``, for the analysis run's page."""
    steps = report.folds["step"].nunique() if not report.folds.empty else 0
    staged = f" ({steps} staged step{'s' * (steps != 1)}, {len(report.folds)} folds)" if steps else ""
    where = ", ".join(repr(name) for name in experiments)
    searches = f"{report.searches} search run{'s' * (report.searches != 1)}"
    return f"{searches}{staged} in experiment{'s' * (len(experiments) != 1)} {where}"


def _not_a_folder(out, reason: str) -> ValueError:
    return ValueError(f"--out {out} cannot be the report's folder ({reason}): give a writable folder")


def check_out_folder(out: Path, missing: list[Path]) -> None:
    """``out`` is a folder to write in, or can be made one, asked without making it: a file of that name (or on
    its way) and a folder without write permission are refused, as ``mkdir`` or the first figure would be."""
    import errno
    import os

    existing = missing[-1].parent if missing else out.absolute()  # the deepest part of the path that exists
    if not existing.is_dir():
        raise _not_a_folder(out, os.strerror(errno.ENOTDIR if missing else errno.EEXIST))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _not_a_folder(out, os.strerror(errno.EACCES))


def _missing_folders(out: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` would create for ``out``, deepest first."""
    missing, folder = [], out.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def check_finished_steps(client, experiments: Sequence[str]) -> None:
    """The experiments hold a finished step or candidate run, without which there is nothing to report (what
    :func:`analysis.report.build_report` refuses, asked cheaply, before a folder is made)."""
    from mlflow_mnist import schema

    ids = [client.get_experiment_by_name(name).experiment_id for name in experiments]
    for level in (schema.STEP_LEVEL, schema.CANDIDATE_LEVEL):
        found = client.search_runs(
            ids, f"attributes.status = 'FINISHED' and tags.`{schema.LEVEL}` = '{level}'", max_results=1
        )
        if found:
            return
    raise ValueError(f"no finished steps in experiment(s) {', '.join(experiments)}: run `mlflow-mnist tune` first")


def check_stage_run(client, run_id: str) -> None:
    """``--stage-run`` names a search run (a stage, or a single step searched alone), before anything is written."""
    from mlflow.exceptions import MlflowException

    from mlflow_mnist import schema

    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException:
        raise ValueError(f"--stage-run {run_id} is not a run in this tracking store: pass a search run's id") from None
    if tags.get(schema.PARENT) or tags.get(schema.LEVEL) not in (schema.STAGE_LEVEL, schema.STEP_LEVEL):
        level = tags.get(schema.LEVEL) or "not a campaign run"
        raise ValueError(f"--stage-run {run_id} is a {level} run, not a search run: pass the id of a search (a stage)")


@contextlib.contextmanager
def _warnings_as_lines(echo: Callable[[str], None]) -> Iterator[None]:
    """Warnings raised meanwhile (a figure drawn empty: too few trials, no finished steps) print as the tool's
    other messages do, one line each (``warning: ...``), not as Python's file:line, category and source line.
    The Python API (:func:`analyze_api`) leaves them Python warnings, for its caller to filter or catch."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        echo("warning: " + " ".join(str(message).split()))

    with warnings.catch_warnings():  # restores Python's own showwarning on the way out
        warnings.showwarning = show
        yield


@click.command()
@click.option(
    "--experiment",
    "experiments",
    multiple=True,
    help="Experiment(s) to read [default: $MLFLOW_EXPERIMENT_NAME or _ID, else the one with the latest campaign runs].",
)
@click.option("--out", default="reports", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--stage-run", default="", help="Only this stage run (its run id); the report is logged on it.")
@click.option("--log/--no-log", default=True, show_default=True, help="Log the report back to the store.")
@click.option(
    "--rope",
    default=0.001,
    show_default=True,
    type=click.FloatRange(0, 0.5),
    callback=lambda ctx, param, value: _finite(value, "--rope"),
    help="Region of practical equivalence, in accuracy (0.001 = 0.1 points).",
)
def analyze(experiments, out, stage_run, log, rope) -> None:
    """Verdicts, sensitivity, curves, importance, progression and search figures, and an HTML report, from the
    tracking store alone."""

    def notify(message: str) -> None:
        click.echo(message, err=True)

    try:
        with _warnings_as_lines(notify):
            report = analyze_api(
                experiments=experiments, out=out, stage_run=stage_run, log=log, rope=rope, notify=notify
            )
    except ValueError as error:
        raise _Refused(str(error)) from None
    for row in report.verdicts.itertuples():
        click.echo(f"{row.step}: {row.verdict}: {row.sentence} (chose {row.best_value}, mean {row.best_mean:.5f})")
    if log:
        click.echo(f"report logged to run {report.logged_run_id} under analysis/")
    click.echo(f"report: {report.html_path}" + (f"; verdicts: {report.csv_path}" if report.csv_path else ""))


@click.command("export-study")
@click.option("--search", "search", default="latest", show_default=True, help="A joint search's run id, or 'latest'.")
@click.option(
    "--storage",
    required=True,
    help="Optuna storage to write, e.g. sqlite:///study.db (then: optuna-dashboard sqlite:///study.db).",
)
@click.option(
    "--experiment",
    default=None,
    help="Experiment [default: $MLFLOW_EXPERIMENT_NAME or _ID, else the one with the latest campaign runs].",
)
@click.option("--name", default="", help="Study name [default: the search run's name].")
def export_study(search, storage, experiment, name) -> None:
    """Write a joint search (Optuna, ASHA, halving or random) from the tracking store into an Optuna storage, so
    optuna-dashboard, optuna.load_study and optuna.visualization open it."""
    from analysis.searches import search_roots, trial_table
    from analysis.store import read_runs
    from analysis.studies import check_storage
    from analysis.studies import export_study as export
    from mlflow_mnist import tracking
    from mlflow_mnist.experiments import resolve_experiment

    try:  # a storage that must not take the study is refused before the tracking store is read
        check_storage(storage)
    except ValueError as error:
        raise _Refused(str(error)) from None
    client = tracking.connect(existing=True)
    where = resolve_experiment(client, experiment, create=False)
    runs = read_runs(client, [where.name])
    if search == "latest":
        trials = trial_table(runs, every_status=True)  # a search whose trials all diverged is still one
        roots = search_roots(runs)
        roots = roots[roots["run_id"].isin(set(trials["search_run_id"]))]
        if roots.empty:
            raise _Refused(f"experiment {where.name!r} has no joint search with trials: run one first")
        search = roots.sort_values("end_time")["run_id"].iloc[-1]
    try:
        study = export(runs, search, storage, name=name or None)
    except ValueError as error:
        raise _Refused(str(error)) from None
    states = [t.state.name for t in study.trials]
    words = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    counts = ", ".join(f"{states.count(state)} {word}" for state, word in words.items())
    click.echo(
        f"study {study.study_name!r}: {len(study.trials)} trials ({counts}; user attr search_trial is the "
        f"search's trial number) in {storage}; open it with optuna-dashboard {storage}"
    )
