"""``mlflow-mnist``: a thin click layer over data, stages, search, tracking and registry.

Mistakes a user can fix (bad stage, bad value, missing file, unreachable server) end in one line on stderr and
exit code 2, before anything is written to the store; Ctrl-C marks the open runs KILLED and exits 130.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import click  # noqa: E402

from mlflow_mnist.data import DataError  # noqa: E402
from mlflow_mnist.executors import EXECUTORS  # noqa: E402
from mlflow_mnist.model import HyperparameterError  # noqa: E402
from mlflow_mnist.stages import STAGES, StageError, get_step  # noqa: E402
from mlflow_mnist.strategies.base import STRATEGIES  # noqa: E402

USER_ERRORS = (DataError, HyperparameterError, StageError)


def _user_errors() -> tuple[type[Exception], ...]:
    from mlflow_mnist.executors.dask import ExecutorError
    from mlflow_mnist.lease import LeaseHeld
    from mlflow_mnist.tracking import TrackingError

    return (*USER_ERRORS, TrackingError, LeaseHeld, ExecutorError)


def _store_errors() -> tuple[type[Exception], ...]:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return (MlflowException, RequestException)


def _rejections() -> tuple[type[Exception], ...]:
    from mlflow_mnist.registry import PromotionRejected

    return (PromotionRejected,)


class _Group(click.Group):
    """Turns user errors into one line and Ctrl-C into a clean exit, for every command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _user_errors() as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except _store_errors() as error:  # a store that fails outside a search (stale runs, reads, promote)
            from mlflow_mnist.tracking import redact, tracking_uri

            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            click.echo(
                f"error: the tracking store at {redact(tracking_uri())} failed ({reason}): "
                "check that it is up and rerun the same command",
                err=True,
            )
            sys.exit(2)
        except _rejections() as error:
            click.echo(str(error), err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: open runs were marked KILLED; run the same command again to resume", err=True)
            sys.exit(130)


def _quiet_libraries() -> None:
    for name in ("mlflow", "absl", "tensorflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


COMMON = [
    click.option("--epochs", default=6, show_default=True, type=int, help="Epochs per fit unless a step varies it."),
    click.option("--folds", default=3, show_default=True, type=int, help="Cross-validation folds."),
    click.option(
        "--cv-repeats",
        default=1,
        show_default=True,
        type=int,
        help="Repeats of the stratified k-fold split (repeated CV: tighter verdicts; fold runs per repeat and fold).",
    ),
    click.option("--digits", default="2,7", show_default=True, help="Digits to classify, e.g. 2,7 or all."),
    click.option("--data", default="", help="IDX folder, .npz, 'sample', or empty for $MLFLOW_MNIST_DATA / Keras."),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fold split."),
    click.option("--overrides", default="", help="Fixed values that win over the store, e.g. neurons_3=10,epochs=8."),
    click.option(
        "--experiment",
        default=None,
        help="MLflow experiment [default: $MLFLOW_EXPERIMENT_NAME, else the latest campaign's, else mnist].",
    ),
    click.option(
        "--precision",
        default="float32",
        show_default=True,
        help="float32, or mixed_bfloat16 (faster on CPUs with AMX / AVX512-BF16; part of the fold key).",
    ),
]


def common_options(function):
    for option in reversed(COMMON):
        function = option(function)
    return function


@click.group(cls=_Group)
def main() -> None:
    """Run, track and understand the seed's staged grid search of a Keras convnet with MLflow."""
    _quiet_libraries()


@main.command()
def stages() -> None:
    """List stages, their steps and grids."""
    for stage, step_names in STAGES.items():
        if stage == "all":
            click.echo(f"all: every step above, in this order ({len(step_names)} steps)")
            continue
        click.echo(f"{stage}:")
        for name in step_names:
            step = get_step(name)
            grid = "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in step.grid.items())
            click.echo(f"  {name}: {grid}  ({len(step.candidates())} candidates)")


@main.command()
def spaces() -> None:
    """List the search spaces of joint searches: each parameter's range, and why it is there."""
    from mlflow_mnist.spaces import SPACES

    for space in SPACES.values():
        click.echo(f"{space.name}: {space.about} (resource: up to {space.max_epochs} epochs)")
        for dimension in space.dimensions:
            click.echo(f"  {dimension.name}: {_describe(dimension.distribution)}  -- {dimension.why}")


def _describe(distribution) -> str:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return "one of " + ", ".join(map(str, choices))
    scale = " (log scale)" if getattr(distribution, "log", False) else ""
    return f"{distribution.low} to {distribution.high}{scale}"


EXECUTOR_OPTION = click.option(
    "--executor",
    default="joblib",
    show_default=True,
    type=click.Choice(EXECUTORS),
    help="Where folds run: a local process pool (joblib), this process (serial), or Dask (dask).",
)
SCHEDULER_OPTION = click.option(
    "--scheduler",
    default="",
    envvar="DASK_SCHEDULER_ADDRESS",
    help="Dask scheduler address for --executor dask [default: $DASK_SCHEDULER_ADDRESS, else a local cluster].",
)
N_JOBS_OPTION = click.option(
    "--n-jobs", default=0, show_default=True, type=int, help="Parallel workers; 0 or -1: every core."
)


def _open_campaign(*, data, digits, **settings):
    """The campaign the common options describe (data, digits, folds, repeats, seed, epochs, overrides, ...)."""
    from mlflow_mnist.campaign import Campaign

    campaign = Campaign.open(data, digits, **settings)
    if campaign.experiment.chosen_because:
        click.echo(campaign.experiment.chosen_because, err=True)
    return campaign


@main.command()
@click.option("--stage", default="", help="Stage to run (see `mlflow-mnist stages`); staged and halving searches.")
@click.option(
    "--strategy",
    default="staged",
    show_default=True,
    type=click.Choice(STRATEGIES),
    help="staged: the seed's steps; halving: successive halving over epochs (of --stage's steps, else of "
    "--trials configurations sampled from --space); optuna: TPE over --space with pruning.",
)
@click.option("--space", default="wide", show_default=True, help="Search space of a joint search: seed or wide.")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(1), help="Trials of a joint search.")
@click.option("--halving-factor", default=3, show_default=True, type=click.IntRange(2), help="Rung ratio.")
@common_options
@EXECUTOR_OPTION
@SCHEDULER_OPTION
@N_JOBS_OPTION
@click.option("--log-models/--no-log-models", default=True, show_default=True, help="Log each fold's model.")
def tune(stage, strategy, space, trials, halving_factor, executor, scheduler, n_jobs, log_models, **common):
    """Run a search as nested MLflow runs: search (stage) > [step or rung] > grid point or trial > fold."""
    from mlflow_mnist.executors import make_executor
    from mlflow_mnist.spaces import get_space
    from mlflow_mnist.stages import StageError, steps_of

    # Everything the user chose is validated once, before any data is read.
    steps = steps_of(stage) if stage else []
    if strategy == "staged" and not steps:
        raise StageError("--stage is required for --strategy staged: e.g. --stage kernel_size (see `stages`)")
    chosen_space = get_space(space) if not steps else None
    campaign = _open_campaign(**common)
    with make_executor(executor, n_jobs=n_jobs, scheduler=scheduler or None) as pool:
        search, name = campaign.strategy(
            strategy,
            stage=stage,
            steps=steps,
            space=chosen_space,
            trials=trials,
            factor=halving_factor,
            batch=2 * pool.n_workers,
        )
        outcomes = campaign.search(search, name=name, executor=pool, with_model=log_models)
    trained, reused = sum(o.trained for o in outcomes), sum(o.reused for o in outcomes)
    for outcome in outcomes:
        if strategy == "optuna" or "@" in outcome.step:  # trials and low rungs: summed up below
            continue
        best = outcome.best
        click.echo(
            f"{outcome.step}: best {best['candidate']} mean held-out accuracy {best['mean_test_score']:.5f} "
            f"(std {best['std_test_score']:.5f}); trained {outcome.trained} folds, reused {outcome.reused}"
        )
    if strategy != "staged":
        finals = [o for o in outcomes if "@" not in o.step]
        best = max((o.best for o in finals), key=lambda row: (row["status"] == "ok", row["mean_test_score"]))
        click.echo(
            f"{name}: best {best['candidate']} mean held-out accuracy {best['mean_test_score']:.5f}; "
            f"trained {trained} folds, reused {reused} in all"
        )


@main.command()
@common_options
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(1), help="Seeds to train and test.")
@click.option(
    "--search",
    default="",
    help="Train a joint search's best configuration (its run id, or 'latest') instead of the staged carry-forward.",
)
@EXECUTOR_OPTION
@SCHEDULER_OPTION
@N_JOBS_OPTION
def final(repeats, search, executor, scheduler, n_jobs, **common) -> None:
    """Train the store's best configuration on all training data and test it once (per seed)."""
    from mlflow_mnist.executors import make_executor
    from mlflow_mnist.executors.joblib import usable_cores
    from mlflow_mnist.final import run_final

    campaign = _open_campaign(**common)
    n_jobs = min(n_jobs if n_jobs > 0 else usable_cores(), repeats)  # one seed: every core to it
    with make_executor(executor, n_jobs=n_jobs, scheduler=scheduler or None) as pool:
        summary = run_final(campaign, repeats=repeats, executor=pool, search=search or None)
    click.echo(
        f"final: median test accuracy {summary['median_test_accuracy']:.4%} over {repeats} seed(s) "
        f"(mean {summary['mean_test_accuracy']:.4%}, min {summary['min_test_accuracy']:.4%}, "
        f"max {summary['max_test_accuracy']:.4%}); run {summary['run_id']}"
    )


@main.command()
@click.option("--experiment", default=None, help="MLflow experiment [default: the one with the latest campaign runs].")
@click.option("--name", default="", help="Registered model name [default: mnist-<digits>-convnet].")
@click.option("--min-accuracy", default=0.9966, show_default=True, type=float, help="Gate on the median test accuracy.")
@click.option("--force/--no-force", default=False, help="Replace a better current champion.")
@click.option("--run-id", default="", help="Final run to promote [default: the latest finished one].")
def promote(experiment, name, min_accuracy, force, run_id) -> None:
    """Register the final model and move alias @champion to it if it passes the gate."""
    from mlflow_mnist import tracking
    from mlflow_mnist.registry import promote as promote_model

    client = tracking.connect()
    where = tracking.resolve_experiment(client, experiment, create=False)
    if where.chosen_because:
        click.echo(where.chosen_because, err=True)
    done = promote_model(
        client, where.experiment_id, name=name or None, min_accuracy=min_accuracy, force=force, run_id=run_id or None
    )
    click.echo(f"promoted: {done['name']} version {done['version']} is @champion ({done['reason']})")
    if done["warning"]:
        click.echo(done["warning"], err=True)


def _add_plugin_commands() -> None:
    """Commands other packages register (``analyze`` from ``analysis``), found through entry points so this
    package never imports them."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="mlflow_mnist.commands"):
        main.add_command(entry.load(), entry.name)


_add_plugin_commands()

if __name__ == "__main__":
    main()
