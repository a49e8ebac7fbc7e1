"""``mlflow-mnist``: a thin click layer over the Python API (:mod:`mlflow_mnist.api`).

Mistakes a user can fix (bad task, stage, value, missing file, unreachable server) end in one line on stderr and
exit code 2, before anything is written to the store; Ctrl-C marks the open runs KILLED and exits 130. The
choices of ``--task``, ``--strategy`` and ``--executor`` come from their registries.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
from pathlib import Path

from mlflow_mnist import redaction  # noqa: E402

redaction.install()  # before anything prints: every line this process writes goes through redaction.redact
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # downloads would break our lines

import click  # noqa: E402

from mlflow_mnist.executors import EXECUTORS, REGISTRY  # noqa: E402
from mlflow_mnist.params import HyperparameterError, StageError  # noqa: E402
from mlflow_mnist.strategies import SPACE_FORM, STAGE_FORM, STRATEGIES  # noqa: E402
from mlflow_mnist.strategies.asha import PROMOTION_RULES  # noqa: E402
from mlflow_mnist.tasks import DEFAULT_TASK, DataError  # noqa: E402

USER_ERRORS = (DataError, HyperparameterError, StageError)


def _user_errors() -> tuple[type[Exception], ...]:
    from mlflow_mnist.executors import ExecutorError, ExecutorOptionError
    from mlflow_mnist.gate import PromoteInputError
    from mlflow_mnist.lock import LockError
    from mlflow_mnist.registry import NoChampion
    from mlflow_mnist.seal import SealKeyError
    from mlflow_mnist.search import SearchFailed
    from mlflow_mnist.tracking import TrackingError
    from mlflow_mnist.worker import FinalSeedFailed

    errors = (
        TrackingError,
        LockError,
        ExecutorError,
        ExecutorOptionError,
        PromoteInputError,
        SealKeyError,
        SearchFailed,
        FinalSeedFailed,
        NoChampion,
    )
    return (*USER_ERRORS, *errors)


def _store_errors() -> tuple[type[Exception], ...]:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return (MlflowException, RequestException)


def _rejections() -> tuple[type[Exception], ...]:
    from mlflow_mnist.registry import ChampionUnverified, PromotionRejected

    return (PromotionRejected, ChampionUnverified)


# Control characters in a user value, written out: a newline in --run-id must not start a second, forged line.
_CONTROL_CHARACTERS = {code: f"\\x{code:02x}" for code in range(32)} | {9: "\\t", 10: "\\n", 13: "\\r"}


def _one_line(text: str) -> str:
    return text.translate(_CONTROL_CHARACTERS)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a CI job cancelled, ``docker stop``), handled as Ctrl-C is."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def _handle_sigterm() -> None:
    """SIGTERM's default kills the process where it stands, its runs left RUNNING until a later command takes
    over; raised as an interrupt instead, the same clean-up as Ctrl-C marks them KILLED and says so."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():  # only the main thread may set a handler
        signal.signal(signal.SIGTERM, _terminate)


def _exit_at_once(signum, frame) -> None:
    """Ctrl-C or SIGTERM once the command is over, while the interpreter exits (the pool's processes take seconds
    to stop): every run is closed, so nothing is left to clean. Raised there, the interrupt printed "Exception
    ignored in: <module 'threading'>" with a traceback, the exit status stayed 0, and once the pool was left
    running for minutes. The workers exit with this process (worker/process.py)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said there
    os._exit(128 + signum)


def _handle_interrupts_at_exit() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_at_once)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignored SIGINT stays ignored
            signal.signal(signal.SIGINT, _exit_at_once)


class _Group(click.Group):
    """Turns user errors into one line and Ctrl-C (or SIGTERM) into a clean exit, for every command."""

    def main(self, *args, **kwargs):
        """click's own usage errors (an unknown option, a value of the wrong type) as one line too."""
        _handle_sigterm()
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort as abort:  # an interrupt before a command started: click wraps it
            click.echo("interrupted", err=True)
            sys.exit(143 if isinstance(abort.__cause__, _Terminated) else 130)
        except click.ClickException as error:
            where = f" (see `{error.ctx.command_path} --help`)" if getattr(error, "ctx", None) else ""
            click.echo(f"error: {_one_line(error.format_message())}{where}", err=True)
            sys.exit(error.exit_code)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _user_errors() as error:
            click.echo(f"error: {_one_line(str(error))}", err=True)
            sys.exit(2)
        except _store_errors() as error:  # a store that fails outside a search (stale runs, reads, promote)
            from mlflow_mnist.redaction import first_line, redact
            from mlflow_mnist.tracking import refusal_line, tracking_uri

            refused = refusal_line(tracking_uri(), error)
            if refused is not None:
                click.echo(f"error: {_one_line(refused)}", err=True)
                sys.exit(2)
            reason = first_line(error, 200)
            click.echo(
                f"error: the tracking store at {redact(tracking_uri())} failed ({reason}): "
                "check that it is up and rerun the same command",
                err=True,
            )
            sys.exit(2)
        except _rejections() as error:  # the gate's verdict quotes the store (tags, a lock holder): one line
            click.echo(_one_line(str(error)), err=True)
            sys.exit(1)
        except KeyboardInterrupt as interrupt:
            click.echo("interrupted: open runs were marked KILLED; run the same command again to resume", err=True)
            sys.exit(143 if isinstance(interrupt, _Terminated) else 130)  # 128 + the signal, as shells report


def _quiet_libraries() -> None:
    for name in ("mlflow", "absl", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A new model per fold is a new tf.function by design: its "retracing" warnings would flood the progress bar
    # of a fold trained in this process (one worker), as a pool worker's set-up keeps them from its own.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # MLflow logs every failed database session at ERROR with its traceback (a database lost mid-search printed 594
    # lines before our one line); the failure reaches us as an exception, and we say it once.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _notify(message: str) -> None:
    """A notice: one line, whatever it quotes (a lock holder's host or command is read from the store, where
    another user may have written a newline or a terminal escape)."""
    click.echo(_one_line(message), err=True)


class _OptionalFloat(click.ParamType):
    """A number, or "" for the default (MLproject passes every parameter, empty ones included)."""

    name = "number"

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)


class _OptionalInt(click.ParamType):
    """A whole number, or "" for the default (MLproject passes every parameter, empty ones included)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid integer", param, ctx)


def bool_option(name: str, default: bool, help: str):
    """``--name`` alone means true; ``--name true|false`` takes a value, which is how MLproject passes booleans
    (as one quoted argument, never inside a shell construct)."""
    return click.option(
        name, default=default, type=click.BOOL, is_flag=False, flag_value=True, show_default=True, help=help
    )


def count_option(name: str, *, default: int, minimum: int, help: str):
    """A whole number of at least ``minimum`` (a bad one is click's one line), its default shown."""
    return click.option(name, default=default, show_default=True, type=click.IntRange(minimum), help=help)


def _task_from_environment(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A task read from ``$MLFLOW_MNIST_TASK`` is checked here, so that a mistake in it names the variable: users
    look for a bad --task on the command line, where there is none."""
    if ctx.get_parameter_source(param.name) == click.core.ParameterSource.ENVIRONMENT:
        from mlflow_mnist.tasks import get_task

        try:
            get_task(value)
        except StageError as error:
            raise StageError(f"{error} (from $MLFLOW_MNIST_TASK: fix or unset it)") from None
    return value


TASK_OPTION = click.option(
    "--task",
    default=DEFAULT_TASK,
    show_default=True,
    envvar="MLFLOW_MNIST_TASK",
    show_envvar=True,  # the variable, when set, is the default: --help says so
    callback=_task_from_environment,
    help="A registered task (`mlflow-mnist tasks`) or package.module:attr.",
)

COMMON = [
    TASK_OPTION,
    click.option(
        "--epochs",
        default=None,
        type=_OptionalInt(),
        help="Epochs per fit unless a step varies it [default: the task's starting configuration's].",
    ),
    click.option("--folds", default=3, show_default=True, type=int, help="Cross-validation folds."),
    click.option(
        "--cv-repeats",
        default=1,
        show_default=True,
        type=int,
        help="Repeats of the stratified k-fold split (repeated CV: tighter verdicts; fold runs per repeat and fold).",
    ),
    click.option("--classes", default="", help="Classes to learn, e.g. 2,7 or all [default: the task's]."),
    # The option's name before tasks existed, kept so that older commands and MLproject calls still work.
    click.option("--digits", default="", hidden=True, help="Alias of --classes."),
    click.option("--data", default="", help="The task's data source (see `mlflow-mnist tasks`)."),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fold split."),
    click.option("--overrides", default="", help="Fixed values that win over the store, e.g. neurons_3=10,epochs=8."),
    click.option(
        "--experiment",
        default=None,
        help=(
            "MLflow experiment [default: $MLFLOW_EXPERIMENT_NAME or _ID, else the latest campaign's, else the task's "
            "name]."
        ),
    ),
    click.option(
        "--precision",
        default="float32",
        show_default=True,
        help="float32, mixed_bfloat16 (faster on CPUs with AMX or AVX512-BF16), or auto: bfloat16 where a short "
        "probe measures it faster on this CPU (part of the fold key).",
    ),
]


def common_options(function):
    for option in reversed(COMMON):
        function = option(function)
    return function


def _command_options(common: dict) -> dict:
    """``--digits`` is ``--classes`` by its old name; giving both, differently, is a mistake. A ``--scheduler``
    read from ``$DASK_SCHEDULER_ADDRESS`` is left to Dask (which reads the variable itself): set for every command,
    it must not make a joblib run refuse the option it never gave."""
    digits = common.pop("digits", "")
    if digits and common.get("classes") and digits != common["classes"]:
        raise StageError(f"--digits {digits} and --classes {common['classes']} disagree: give one of them")
    common["classes"] = common.get("classes") or digits
    if click.get_current_context().get_parameter_source("scheduler") == click.core.ParameterSource.ENVIRONMENT:
        common["scheduler"] = ""
    return common


@click.group(cls=_Group)
def main() -> None:
    """Run, track and understand hyperparameter searches of Keras models with MLflow.

    \b
    Environment: MLFLOW_TRACKING_URI (the store; default sqlite:///mlflow.db), MLFLOW_EXPERIMENT_NAME or
    MLFLOW_EXPERIMENT_ID (--experiment's default), MLFLOW_MNIST_TASK (--task's default), the task's data variable
    (--data's default: `tasks` names it), MLFLOW_MNIST_SEAL_KEY_FILE (a 0600 key file: seal the runs written,
    and trust only sealed ones on resume, reuse and promote), MLFLOW_MNIST_LEASE_SECONDS (the campaign lock's
    TTL, seconds), MLFLOW_MNIST_DASK_WAIT (seconds to wait for a Dask worker), MLFLOW_MNIST_CACHE (the precision
    probe's results and the empty store; default ~/.cache/mlflow-mnist).
    """
    _quiet_libraries()
    _warn_of_a_password_in_the_uri()


def _warn_of_a_password_in_the_uri() -> None:
    """This process redacts what it prints, but MLflow's own `mlflow run` launcher prints the tracking URI as it is,
    userinfo included, in its closing "View run ... at:" lines (and its tracebacks): say where a password belongs."""
    from urllib.parse import urlsplit

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    try:
        parts = urlsplit(uri)
        has_password = parts.scheme in ("http", "https") and bool(parts.password)
    except ValueError:  # a malformed URI: connect says so in its own line
        return
    if has_password:
        click.echo(
            "warning: MLFLOW_TRACKING_URI holds a password, which `mlflow run` prints in its 'View run' lines: put "
            "the user in MLFLOW_TRACKING_USERNAME and the password in MLFLOW_TRACKING_PASSWORD instead",
            err=True,
        )


def run(args: list[str] | None = None, *, prog_name: str | None = None) -> None:
    """The program (``mlflow-mnist``, ``python -m mlflow_mnist``, ``python -m analysis``): the command, then, while
    the interpreter exits, Ctrl-C and SIGTERM end the process at once. Only the program's exit gets that: `main`
    called by other code in its own process (click's test runner) leaves that process's Ctrl-C as it was."""
    _headless_figures()
    try:
        main(args, prog_name=prog_name)
    finally:
        _handle_interrupts_at_exit()


def _headless_figures() -> None:
    """The program draws figures into files only: Agg for it and its pool's processes, whatever the desktop
    offers (the library itself chooses no back end: a notebook's is its user's)."""
    if "matplotlib" in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    os.environ["MPLBACKEND"] = "Agg"


@main.command()
def tasks() -> None:
    """List the registered tasks, their data, stages and spaces."""
    from mlflow_mnist.tasks import available_tasks, get_task

    broken = []
    for name, where in sorted(available_tasks().items()):
        try:
            task = get_task(name)
        except StageError as error:  # one broken package must not hide the other tasks: listed, then said
            broken.append(str(error))
            continue
        click.echo(f"{name} ({where}): {task.about}")
        click.echo(f"  data: {task.data_help}; classes by default: {task.default_classes}")
        click.echo(f"  promotion threshold: {task.min_accuracy:.4%}")
        click.echo(f"  stages: {', '.join(task.stages) or 'none'}")
        click.echo(f"  spaces: {', '.join(task.spaces) or 'none'}")
    for line in broken:
        click.echo(f"error: {_one_line(line)}", err=True)
    if broken:
        sys.exit(2)


@main.command()
@TASK_OPTION
def stages(task) -> None:
    """List a task's stages, their steps and grids."""
    from mlflow_mnist.tasks import get_task

    chosen = get_task(task)
    every = tuple(step.name for step in chosen.steps)
    for stage, step_names in chosen.stages.items():
        if step_names == every and len(every) > 1:
            click.echo(f"{stage}: every step above, in this order ({len(every)} steps)")
            continue
        click.echo(f"{stage}:")
        for name in step_names:
            step = chosen.get_step(name)
            grid = "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in step.grid.items())
            click.echo(f"  {name}: {grid}  ({len(step.candidates())} candidates)")


@main.command()
@TASK_OPTION
def spaces(task) -> None:
    """List a task's search spaces of joint searches: each parameter's range, and why it is there."""
    from mlflow_mnist.spaces import describe
    from mlflow_mnist.tasks import get_task

    chosen = get_task(task)
    if not chosen.spaces:
        click.echo(f"task {chosen.name} has no search spaces: its searches are staged (see `mlflow-mnist stages`)")
    for space in chosen.spaces.values():
        click.echo(f"{space.name}: {space.about} (resource: up to {space.max_epochs} epochs)")
        for dimension in space.dimensions:
            click.echo(f"  {dimension.name}: {describe(dimension.distribution)}  -- {dimension.why}")


@main.command()
def strategies() -> None:
    """List the search strategies: what each searches (--stage, --space) and the options it reads."""
    for name, strategy in STRATEGIES.items():
        forms = " or ".join(f"--{form}" for form in (STAGE_FORM, SPACE_FORM) if form in strategy.searches)
        flags = ", ".join("--" + option.replace("_", "-") for option in sorted(strategy.options))
        click.echo(f"{name}: {strategy.help} [searches {forms}; reads {flags}]")


EXECUTOR_OPTION = click.option(
    "--executor",
    default="joblib",
    show_default=True,
    type=click.Choice(EXECUTORS),
    help="Where folds run: " + "; ".join(f"{entry.help} ({name})" for name, entry in REGISTRY.items()) + ".",
)
SCHEDULER_OPTION = click.option(
    "--scheduler",
    default="",
    envvar="DASK_SCHEDULER_ADDRESS",
    help="Dask scheduler address for --executor dask [default: $DASK_SCHEDULER_ADDRESS, else a local cluster].",
)
BREAK_LEASE_OPTION = bool_option(
    "--break-lease",
    False,
    "Break the lock a killed driver on another machine left (one still running on this machine is refused).",
)
N_JOBS_OPTION = click.option(
    "--n-jobs",
    default=-1,
    show_default=True,
    type=int,
    help="Parallel workers, joblib's convention: -1 every core, -2 all but one, N that many.",
)


@main.command()
@click.option("--stage", default="", help="Stage to run (see `mlflow-mnist stages`); staged and halving searches.")
@click.option(
    "--strategy",
    default="staged",
    show_default=True,
    type=click.Choice(list(STRATEGIES)),
    help="; ".join(f"{name}: {strategy.help}" for name, strategy in STRATEGIES.items()),
)
@click.option("--space", default="", help="Search space of a joint search [default: the task's default space].")
@count_option("--trials", default=20, minimum=1, help="Trials of a joint search.")
@count_option("--halving-factor", default=3, minimum=2, help="Rung ratio.")
@count_option(
    "--min-epochs",
    default=0,
    minimum=0,
    help="asha: epochs at the first rung (0: the space's budget / factor^2).",
)
@count_option(
    "--brackets",
    default=1,
    minimum=1,
    help="asha: first rungs to spread trials over (Hyperband's brackets; 1: every trial starts at the first).",
)
@click.option(
    "--promotion",
    default="quota",
    show_default=True,
    type=click.Choice(list(PROMOTION_RULES)),
    help="asha: " + "; ".join(f"{name}: {rule}" for name, rule in PROMOTION_RULES.items()) + ".",
)
@count_option(
    "--top-rung-parts",
    default=1,
    minimum=1,
    help="asha: train each fold of the top rung in this many parts, checkpointed between, so that the search's "
    "last folds fill every worker (2 for 3 folds on 2 workers: 6 parts, no worker idle beside the last fold).",
)
@count_option(
    "--warm-start",
    default=0,
    minimum=0,
    help="asha: start from this many of the experiment's best configurations (staged winner, earlier trials).",
)
@common_options
@EXECUTOR_OPTION
@SCHEDULER_OPTION
@N_JOBS_OPTION
@BREAK_LEASE_OPTION
@bool_option("--log-models", True, "Log each fold's model.")
@bool_option(
    "--reuse-reference",
    False,
    "Staged steps: compare with the previous step's winning folds (cheaper, biased) instead of retraining the "
    "carried-in configuration as the step's reference.",
)
def tune(**options) -> None:
    """Run a search as nested MLflow runs: search (stage) > [step or rung] > grid point or trial > fold."""
    from mlflow_mnist.api import tune as run_tune

    result = run_tune(**_command_options(options), notify=_notify)
    outcome = result.outcome
    if not outcome.groups:
        click.echo("nothing to evaluate: every trial asked for is already in the store (ask for more --trials)")
    # A step's line counts its low rungs too (successive halving): it said "trained 4" after training 10.
    trained, reused = collections.Counter(), collections.Counter()
    for group in outcome.groups:
        trained[group.step] += group.trained
        reused[group.step] += group.reused
        if group.counts and group.group.own_run:
            best = group.best
            click.echo(
                f"{group.step}: best {best['candidate']} mean held-out accuracy {best['mean_test_score']:.5f} "
                f"(std {best['std_test_score']:.5f}); trained {trained[group.step]} folds, reused "
                f"{reused[group.step]}"
            )
    counted = [g for g in outcome.groups if g.counts]
    # The whole search's line when several groups counted, or when none had a line of its own (a joint search's
    # trials hang under the search run): a rerun that finished one cut-short rung still says what it trained.
    if outcome.best is not None and (len(counted) > 1 or not any(g.group.own_run for g in counted)):
        best = outcome.best.best
        click.echo(
            f"{outcome.best.step if outcome.best.group.own_run else 'search'}: best {best['candidate']} mean "
            f"held-out accuracy {best['mean_test_score']:.5f}; trained {outcome.trained} folds, reused "
            f"{outcome.reused} in all"
        )
    if outcome.best is not None:
        staged = any(g.group.carry is not None for g in outcome.groups)  # staged steps say what they carried in
        click.echo(
            "next: more stages (`mlflow-mnist stages`), or `mlflow-mnist final --repeats 5` to train the "
            "configuration carried forward so far on several seeds and test it once"
            if staged
            else "next: `mlflow-mnist final --search latest --repeats 5` trains this search's best on several seeds "
            "and tests it once"
        )


@main.command()
@common_options
@count_option("--repeats", default=1, minimum=1, help="Seeds to train and test.")
@click.option(
    "--search",
    default="",
    help="Train a joint search's best configuration (its run id, or 'latest') instead of the staged carry-forward.",
)
@count_option(
    "--configs",
    default=1,
    minimum=1,
    help="With --search: spread the seeds over the search's best this many configurations (by CV, best first; "
    "seed k trains the (k mod configs)-th), so the seeds' ensemble does not rest on one pick.",
)
@EXECUTOR_OPTION
@SCHEDULER_OPTION
@N_JOBS_OPTION
@BREAK_LEASE_OPTION
def final(**options) -> None:
    """Train the store's best configuration on all training data and test it once (per seed)."""
    from mlflow_mnist import schema
    from mlflow_mnist.api import final as run_final

    summary = run_final(**_command_options(options), notify=_notify)
    ensemble = summary.get(schema.ENSEMBLE_ACCURACY)
    click.echo(
        f"final: median test accuracy {summary[schema.MEDIAN_ACCURACY]:.4%} over {summary['n_repeats']} seed(s) "
        f"(mean {summary[schema.MEAN_TEST_ACCURACY]:.4%}, min {summary[schema.MIN_TEST_ACCURACY]:.4%}, "
        f"max {summary[schema.MAX_TEST_ACCURACY]:.4%})"
        + (f", {len(summary['configs'])} configurations" if len(summary["configs"]) > 1 else "")
        + (f"; seeds' ensemble {ensemble:.4%}" if schema.ENSEMBLE_ACCURACY in summary else "")
        + (f"; {summary['seeds_taken']} seed(s) taken from a killed final" if summary["seeds_taken"] else "")
        + f"; run {summary['run_id']}"
    )
    threshold = summary["promotion_threshold"]
    if summary[schema.MEDIAN_ACCURACY] < threshold:
        click.echo(
            f"note: the median is below the task's promotion threshold {threshold:.4%}: `mlflow-mnist promote` "
            "will refuse it (its --min-accuracy sets another threshold, recorded on the version)"
        )
    else:
        click.echo("next: `mlflow-mnist promote` verifies the median seed and registers it as @champion if it passes")


@main.command()
@click.option(
    "--experiment",
    default=None,
    help="MLflow experiment [default: $MLFLOW_EXPERIMENT_NAME or _ID, else the one with the latest campaign runs].",
)
@click.option("--name", default="", help="Registered model name [default: the task's, for the final's classes].")
@click.option(
    "--min-accuracy",
    default=None,
    type=_OptionalFloat(),
    help="Gate on the median test accuracy [default: the task's].",
)
@bool_option("--force", False, "Replace a champion the gate would keep.")
@click.option("--run-id", default="", help="Final run to promote [default: the latest finished one].")
@click.option(
    "--model",
    default="median",
    show_default=True,
    type=click.Choice(["median", "ensemble"]),
    help="What to promote: the final's median seed, or its seeds' ensemble (average of their probabilities).",
)
@BREAK_LEASE_OPTION
@click.option(
    "--task",
    default="",
    envvar="MLFLOW_MNIST_TASK",
    show_envvar=True,
    callback=_task_from_environment,
    help="The final's task as package.module:attr, where it is not a registered task (as tune and final were given "
    "it) [default: the registered task of the final's task name].",
)
def promote(experiment, name, min_accuracy, force, run_id, model, break_lease, task) -> None:
    """Verify the final's model, compare it with @champion on the same test set, and promote it if the gate allows."""
    from mlflow_mnist.api import promote as run_promote

    done = run_promote(
        task=task,
        experiment=experiment,
        name=name,
        min_accuracy=min_accuracy,
        force=force,
        run_id=run_id,
        model=model,
        break_lease=break_lease,
        notify=_notify,
    )
    click.echo(f"promoted: {done['name']} version {done['version']} ({done['kind']}) is @champion ({done['reason']})")
    if done["warning"]:
        click.echo(done["warning"], err=True)


@main.command("export-champion")
@click.option("--name", required=True, help="Registered model name (promote printed it).")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New folder to write @champion's files into (it must not exist, or be empty).",
)
def export_champion(name: str, out: Path) -> None:
    """Write @champion's files into a folder of yours, only if they are the ones the gate verified.

    Serve that folder (`mlflow models serve -m OUT`): serving `models:/NAME@champion` reads the artifact store as it
    is now, which anyone who can write the store can change.
    """
    from mlflow_mnist.api import export_champion as run_export

    version, sha256 = run_export(name=name, out=out)
    click.echo(
        f"exported {name} version {version} (@champion) to {out}: the files the gate verified (sha256 {sha256}); "
        f"serve them with: mlflow models serve -m {out} --env-manager local"
    )


@main.command("seal-runs")
@click.option("--experiment", default=None, help="The campaign's experiment (default: the latest campaign's).")
def seal_runs(experiment: str | None) -> None:
    """Seal the finished runs of a campaign begun before $MLFLOW_MNIST_SEAL_KEY_FILE was set, as they stand.

    With the key set, resume, reuse and promote trust only sealed runs; this makes the runs already in the store
    count as yours. Run it only on a store whose contents you trust: whatever it holds is trusted from then on.
    """
    from mlflow_mnist.api import seal_runs as run_seal

    sealed, before = run_seal(experiment=experiment, notify=_notify)
    click.echo(f"sealed {sealed} finished run(s); {before} were sealed already")


def _add_plugin_commands() -> None:
    """Commands other packages register (``analyze`` from ``analysis``), found through entry points so this
    package never imports them."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="mlflow_mnist.commands"):
        main.add_command(entry.load(), entry.name)


_add_plugin_commands()

if __name__ == "__main__":
    main()
