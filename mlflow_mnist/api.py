"""The Python API: ``tune``, ``final``, ``promote``, ``load_champion`` and ``analyze`` for notebooks and scripts;
the CLI is a thin layer over it. Every argument is keyword-only and means what the CLI option of the same name means.

    >>> import mlflow_mnist
    >>> result = mlflow_mnist.tune(task="digits", strategy="optuna", space="small", trials=8, epochs=20)
    >>> result.cv_results.sort_values("rank_test_score").head()   # scikit-learn's cv_results_, as a DataFrame
    >>> result.run_id                                               # the search run in MLflow
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_mnist.params import HyperparameterError, Overrides, check_number
from mlflow_mnist.schema import EPOCHS
from mlflow_mnist.tasks import DEFAULT_TASK


@dataclass
class TuneResult:
    """A search's ``cv_results`` rows (one per candidate of every group, with its step and rung), its MLflow run,
    and its best row by the tool's one ranking rule."""

    cv_results: Any  # pandas.DataFrame
    run_id: str | None
    best: dict[str, Any] | None
    best_params: dict[str, Any] | None
    trained: int
    reused: int
    outcome: Any  # mlflow_mnist.search.SearchOutcome


def _say(message: str, notify: Callable[[str], None] | None) -> None:
    if message and notify is not None:
        notify(message)


def open_campaign(*, notify: Callable[[str], None] | None = None, **settings: Any):
    """A campaign (task, data, settings, experiment) from the common options, and a callable that says which
    experiment and precision it chose: callers call it once their checks have passed, so that a refusal is its
    one line alone."""
    from mlflow_mnist import tracking
    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.seal import SEAL_KEY_ENV

    campaign = Campaign.open(**settings)
    lines = [campaign.experiment.chosen_because]
    if settings.get("precision") == "auto":
        lines.append(f"precision {campaign.settings.precision}: {campaign.precision_because}")
    if campaign.seal is None and tracking.has_sealed_runs(campaign.client, campaign.experiment_id):
        lines.append(  # a shell or job that lost the variable: nothing is checked, and nothing new sealed
            f"warning: this campaign's runs are sealed, but ${SEAL_KEY_ENV} is not set: no run is checked and none "
            f"sealed; set it to the campaign's key file"
        )
    return campaign, functools.partial(_say_all, lines, notify)


def _say_all(lines: list[str], notify: Callable[[str], None] | None, *more: str) -> None:
    for line in (*lines, *more):
        _say(line, notify)


def _check_counts(**counts: tuple[Any, int | None]) -> None:
    """Each value a whole number (``int``, not ``bool``) and at least its minimum where one is given: the CLI's
    click ranges, for Python callers (``trials=0`` returned an empty result, ``halving_factor=1`` divided by zero,
    ``epochs="1"`` raised a TypeError deep inside). Ranges with a message of their own (folds, epochs, seed) are
    left to the campaign."""
    for name, (value, minimum) in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # check_number would convert "1"
            raise HyperparameterError(f"{name}={value!r} must be a whole number (int)")
        if minimum is not None:
            check_number(name, value, int, minimum, None)


def _check_settings(*, epochs: int | None, folds: int, cv_repeats: int, seed: int, n_jobs: int) -> None:
    """The campaign settings ``tune`` and ``final`` share: whole numbers (their ranges are the campaign's)."""
    _check_counts(folds=(folds, None), cv_repeats=(cv_repeats, None), seed=(seed, None), n_jobs=(n_jobs, None))
    if epochs is not None:
        _check_counts(epochs=(epochs, None))


def tune(
    *,
    task: str = DEFAULT_TASK,
    strategy: str = "staged",
    stage: str = "",
    space: str = "",
    trials: int = 20,
    halving_factor: int = 3,
    min_epochs: int = 0,
    brackets: int = 1,
    promotion: str = "quota",
    top_rung_parts: int = 1,
    warm_start: int = 0,
    epochs: int | None = None,
    folds: int = 3,
    cv_repeats: int = 1,
    classes: str = "",
    data: str = "",
    seed: int = 0,
    overrides: Overrides = "",
    experiment: str | None = None,
    precision: str = "float32",
    executor: str = "joblib",
    scheduler: str | None = None,
    n_jobs: int = -1,
    log_models: bool = True,
    reuse_reference: bool = False,
    break_lease: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run a search as nested MLflow runs; returns its ``cv_results`` and run id.

    ``strategy`` is a registered strategy (``mlflow_mnist.strategies.STRATEGIES``); ``stage`` names the task's
    staged steps, ``space`` its joint-search space (default: the task's ``default_space``). An option the strategy
    does not read (its class's ``options``), given a value other than its default, is refused, not ignored.
    Everything is validated, and the store and the executor reached, before any run is written.
    """
    arguments = dict(locals())  # this call's arguments, taken before any other name is bound
    import pandas as pd

    _check_settings(epochs=epochs, folds=folds, cv_repeats=cv_repeats, seed=seed, n_jobs=n_jobs)
    _check_counts(
        trials=(trials, 1),
        halving_factor=(halving_factor, 2),
        min_epochs=(min_epochs, 0),
        brackets=(brackets, 1),
        top_rung_parts=(top_rung_parts, 1),
        warm_start=(warm_start, 0),
    )

    from mlflow_mnist.executors import make_executor, resolve_n_jobs
    from mlflow_mnist.lock import lease_seconds
    from mlflow_mnist.strategies import SPACE_FORM, STAGE_FORM, STRATEGIES, check_options, make_strategy, searching
    from mlflow_mnist.strategies.base import SearchRequest
    from mlflow_mnist.tasks import get_task

    resolve_n_jobs(n_jobs)  # a bad --n-jobs is one line before the experiment exists
    lease_seconds()  # so is a bad $MLFLOW_MNIST_LEASE_SECONDS
    chosen = get_task(task)
    if strategy not in STRATEGIES:
        from mlflow_mnist.params import StageError

        raise StageError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if stage and space:
        from mlflow_mnist.params import StageError

        raise StageError(
            f"--stage {stage} and --space {space}: --stage is a stage's grid ({', '.join(searching(STAGE_FORM))}), "
            f"--space a joint search's trials ({', '.join(searching(SPACE_FORM))}); give one of them"
        )
    # An option only other strategies read (the registry says which), given a value of its own, is refused.
    defaults = {name: parameter.default for name, parameter in inspect.signature(tune).parameters.items()}
    check_options(strategy, arguments, defaults)
    strategy_class = STRATEGIES[strategy]
    if stage and STAGE_FORM in strategy_class.searches and trials != defaults["trials"]:
        # A strategy that also searches a space (halving) reads --trials there only: it would be ignored here.
        from mlflow_mnist.params import StageError

        raise StageError(
            f"--trials {trials}: --strategy {strategy} --stage {stage} searches the stage's grid, not sampled "
            f"trials: leave --trials out, or give --space instead of --stage"
        )
    steps = tuple(chosen.steps_of(stage)) if stage else ()
    chosen_space = chosen.get_space(space) if not steps and chosen.spaces else None
    # The strategy built once from the options alone (construction is pure): a missing --stage or --space is one
    # line before any worker process starts or the store is reached.
    dry = dict(stage=stage, steps=steps, space=chosen_space, trials=trials, factor=halving_factor)
    dry_epochs = max(1, int(chosen.start.get(EPOCHS, 1)) if epochs is None else epochs)
    # The dry and the real request's options.
    options = dict(min_epochs=min_epochs, brackets=brackets, promotion=promotion, top_rung_parts=top_rung_parts)
    make_strategy(strategy, SearchRequest(chosen, dry_epochs, **options, **dry))
    _check_grids(chosen, steps, overrides, dry_epochs)
    if chosen_space is not None:
        _check_space_covers_start(chosen, chosen_space, overrides)
    budget_note = _joint_budget_note(chosen, chosen_space, epochs, overrides, by_rungs=strategy_class.by_rungs)
    with make_executor(executor, n_jobs=n_jobs, scheduler=scheduler or None) as pool:
        campaign, announce = open_campaign(
            notify=notify,
            task=task,
            data=data,
            classes=classes,
            folds=folds,
            seed=seed,
            epochs=epochs,
            overrides=overrides,
            experiment=experiment,
            precision=precision,
            cv_repeats=cv_repeats,
            executor=pool,
        )
        if break_lease:
            campaign.break_lease(notify or print)
        request = campaign.request(
            stage=stage,
            steps=steps,
            space=chosen_space,
            trials=trials,
            factor=halving_factor,
            batch=2 * pool.n_workers,
            reuse_reference=reuse_reference,
            warm_start=warm_start,
            **options,
        )
        search = make_strategy(strategy, request)
        announce()
        _say(budget_note, notify)
        outcome = campaign.search(search, executor=pool, with_model=log_models, progress=progress)
    rows = [
        {"step": g.step, "rung": g.group.rung.index if g.group.rung else None, **row}
        for g in outcome.groups
        for row in g.rows
    ]
    best = outcome.best
    return TuneResult(
        cv_results=pd.DataFrame(rows),
        run_id=outcome.run_id,
        best=best.best if best else None,
        best_params=dict(best.winner.params) if best else None,
        trained=outcome.trained,
        reused=outcome.reused,
        outcome=outcome,
    )


def _joint_budget_note(task, space, epochs: int | None, overrides: Overrides, *, by_rungs: bool = True) -> str:
    """A line for ``--epochs`` (or an ``epochs`` override) given to a joint search, whose epochs are its space's
    budget: the value is a campaign setting (the staged steps' epochs, part of the settings key), not this
    search's, and said so rather than dropped without a word. ``by_rungs``: the strategy reaches that budget rung
    by rung (else each trial trains at it)."""
    asked = epochs if epochs is not None else task.parse_overrides(overrides).get(EPOCHS)
    if space is None or asked is None or int(asked) == space.max_epochs:
        return ""
    return (
        f"note: epochs {asked} is the campaign's setting for staged steps; a joint search trains up to its space's "
        f"budget ({space.max_epochs} epochs in space {space.name}), "
        + ("rung by rung" if by_rungs else "every trial at that budget")
    )


def _check_space_covers_start(task, space, overrides: Overrides) -> None:
    """A space whose base, dimensions and ``overrides`` leave a hyperparameter of the task's ``start`` unset makes
    every trial invalid: one line naming the space before the store is reached (a task's own space, built without
    ``base``)."""
    from mlflow_mnist.params import StageError

    covered = {*space.base, *space.names, *task.parse_overrides(overrides), EPOCHS}
    unset = [name for name in task.start if name not in covered]
    if unset:
        raise StageError(
            f"space {space.name} of task {task.name} leaves {', '.join(unset)} unset: give the Space a base with "
            f"every value it does not search (usually base=start)"
        )


def _check_grids(task, steps, overrides: Overrides, epochs: int) -> None:
    """Every grid point of ``steps`` on top of the task's start and ``overrides``, validated as ``Campaign.open``
    validates the overrides alone: a bad grid value of a task's own, a clash (``kernel_size=(13, 13)`` leaves no
    room for ``pool_size=(5, 5)``) or an override the grid would ignore is one line naming the step before the store
    is reached, not a refusal once the store, the experiment and the lock exist."""
    from mlflow_mnist.params import HyperparameterError, StageError, format_value
    from mlflow_mnist.strategies.staged import step_candidates

    parsed = task.parse_overrides(overrides)
    fixed = {**task.start, "epochs": epochs, **parsed}
    task.validate(fixed)  # as Campaign.open will: a bad value is said as such, before what the grid does with it
    # An override of what every step varies sets nothing: each grid point takes its own value (it was ignored
    # without a word). One that only some steps vary is kept: it holds the others fixed.
    ignored = [key for key in parsed if steps and all(key in step.varied for step in steps)]
    if ignored:
        raise StageError(
            f"--overrides {ignored[0]}={format_value(parsed[ignored[0]])} would be ignored: the stage searches "
            f"{ignored[0]} over its grid; leave it out, or give a stage that holds {ignored[0]} fixed"
        )
    for step in steps:
        for spec in step_candidates(step, fixed):
            try:
                task.validate(spec.params)
            except HyperparameterError as error:
                raise HyperparameterError(f"{step.name}: {error}") from None


def final(
    *,
    task: str = DEFAULT_TASK,
    repeats: int = 1,
    search: str = "",
    configs: int = 1,
    epochs: int | None = None,
    folds: int = 3,
    cv_repeats: int = 1,
    classes: str = "",
    data: str = "",
    seed: int = 0,
    overrides: Overrides = "",
    experiment: str | None = None,
    precision: str = "float32",
    executor: str = "joblib",
    scheduler: str | None = None,
    n_jobs: int = -1,
    break_lease: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the store's best configuration (the staged carry-forward, or ``search``'s best) on all training data
    with ``repeats`` seeds and test each once; returns the summary (median, mean, min, max, run id, params, and
    the task's ``promotion_threshold``).
    ``configs`` > 1 spreads the seeds over ``search``'s best few configurations (their ensemble hedges one)."""
    from mlflow_mnist.executors import DASK, make_executor, remote_scheduler, resolve_n_jobs
    from mlflow_mnist.final_run import check_final_options, run_final
    from mlflow_mnist.lock import lease_seconds

    _check_settings(epochs=epochs, folds=folds, cv_repeats=cv_repeats, seed=seed, n_jobs=n_jobs)
    _check_counts(repeats=(repeats, 1), configs=(configs, 1))
    check_final_options(repeats=repeats, search=search or None, configs=configs)
    lease_seconds()  # a bad $MLFLOW_MNIST_LEASE_SECONDS is one line before the store is reached
    # One seed gets every core; more share them. A remote cluster counts its own workers.
    workers = n_jobs if executor == DASK and remote_scheduler(scheduler) else min(resolve_n_jobs(n_jobs), repeats)
    with make_executor(executor, n_jobs=workers, scheduler=scheduler or None) as pool:
        campaign, announce = open_campaign(
            notify=notify,
            task=task,
            data=data,
            classes=classes,
            folds=folds,
            seed=seed,
            epochs=epochs,
            overrides=overrides,
            experiment=experiment,
            precision=precision,
            cv_repeats=cv_repeats,
            executor=pool,
            needs="a search (`tune --strategy asha`)" if search else "",
        )
        if break_lease:
            campaign.break_lease(notify or print)
        summary = run_final(
            campaign,
            repeats=repeats,
            executor=pool,
            search=search or None,
            progress=progress,
            configs=configs,
            announce=announce,
        )
    return {**summary, "promotion_threshold": campaign.task.min_accuracy}  # what promote applies by default


def promote(
    *,
    experiment: str | None = None,
    name: str = "",
    min_accuracy: float | None = None,
    force: bool = False,
    run_id: str = "",
    model: str = "median",
    break_lease: bool = False,
    notify: Callable[[str], None] | None = None,
    task: str = "",
) -> dict[str, Any]:
    """Verify the latest (or ``run_id``'s) final's model (``model``: its median seed, or its seeds' ``ensemble``),
    compare it with ``@champion`` on the same test set, and register and move the alias if the gate allows;
    ``min_accuracy`` defaults to the task's threshold; ``task`` names the final's task where it is not a
    registered one (``package.module:attr``, as ``tune`` and ``final`` were given it). Raises
    ``PromotionRejected`` when the gate says no."""
    from mlflow_mnist import experiments, tracking
    from mlflow_mnist.registry import PromoteInputError, PromotionRejected, check_promote_options
    from mlflow_mnist.registry import promote as promote_model
    from mlflow_mnist.seal import active_seal

    check_promote_options(model=model, min_accuracy=min_accuracy, name=name)  # before the store is reached
    seal = active_seal()
    if task:
        from mlflow_mnist.tasks import get_task

        get_task(task)  # a --task that cannot be imported is its one line before the store is reached
    client = tracking.connect(existing=True)
    where = experiments.resolve_experiment(client, experiment, create=False)
    try:
        result = promote_model(
            client,
            where.experiment_id,
            name=name or None,
            min_accuracy=min_accuracy,
            force=force,
            run_id=run_id or None,
            model=model,
            break_lease=break_lease,
            task_spec=task,
            notify=notify,
            seal=seal,
        )
    except PromoteInputError:
        raise  # a mistake: its one line alone
    except PromotionRejected:  # the gate's verdict: which experiment it judged comes first
        _say(where.chosen_because, notify)
        raise
    _say(where.chosen_because, notify)  # after the checks: a refused input is its one line alone
    return result


def seal_runs(*, experiment: str | None = None, notify: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Seal, with the key in ``$MLFLOW_MNIST_SEAL_KEY_FILE``, every finished run of the campaign's experiment that
    has no valid seal, as it stands (:mod:`mlflow_mnist.seal`), under the campaign's lock; returns (sealed now,
    sealed before). For a campaign begun before the key was set, once its owner trusts what the store holds: its
    runs are then reused, resumed and promoted as sealed ones are."""
    from mlflow_mnist import experiments, tracking
    from mlflow_mnist.lock import CampaignLock, lease_seconds
    from mlflow_mnist.seal import SEAL_KEY_ENV, SealKeyError, active_seal, seal_existing

    seal = active_seal()
    if seal is None:
        raise SealKeyError(f"${SEAL_KEY_ENV} is not set: set it to the key file the campaign's runs are sealed with")
    lease_seconds()
    client = tracking.connect(existing=True)
    where = experiments.resolve_experiment(client, experiment, create=False)
    with CampaignLock(client, where.experiment_id, command="mlflow-mnist seal-runs", notify=notify) as held:
        runs = tracking.search_all(client, [where.experiment_id])
        counts = seal_existing(held.fenced(client), seal, runs)
    _say(where.chosen_because, notify)
    return counts


def load_champion(*, name: str) -> Any:
    """Registered model ``name``'s ``@champion`` as an ``mlflow.pyfunc`` model, loaded only when its files are the
    ones the gate verified (their digest is the ``model_sha256`` param of the copy it registered); raises
    ``mlflow_mnist.registry.ChampionUnverified`` otherwise. ``mlflow.pyfunc.load_model("models:/<name>@champion")``
    loads whatever the artifact store holds now."""
    from mlflow_mnist import tracking
    from mlflow_mnist.registry import load_champion as load_verified

    return load_verified(tracking.connect(existing=True), name)


def export_champion(*, name: str, out: str | Path) -> tuple[str, str]:
    """Write registered model ``name``'s ``@champion`` files into the new folder ``out`` when they are the ones the
    gate verified (as :func:`load_champion` checks them), to serve from there; returns the version and the files'
    sha256 (:func:`mlflow_mnist.model_files.tree_sha256`). ``out`` must not exist or be an empty folder: checked
    before the store is read."""
    from mlflow_mnist import tracking
    from mlflow_mnist.registry import check_export_folder
    from mlflow_mnist.registry import export_champion as export_verified

    check_export_folder(Path(out))
    return export_verified(tracking.connect(existing=True), name, Path(out))


def analyze(
    *,
    experiments: str | Sequence[str] = (),
    out: str | Path = "reports",
    stage_run: str = "",
    log: bool = True,
    rope: float = 0.001,
    notify: Callable[[str], None] | None = None,
):
    """The analysis report from the tracking store alone: every figure, ``report.html`` and ``verdicts.csv`` in
    ``out``, logged back as an analysis run unless ``log`` is false; returns the report (its ``verdicts`` and
    ``summary`` are DataFrames). ``experiments``: one name or several (none: the latest campaign's);
    ``stage_run``: one search run only; ``rope``: the region of practical equivalence, 0 to 0.5.

    ``analysis.cli.analyze_api`` does it: the analysis package registers it under the entry point group
    ``mlflow_mnist.api``, so this package never imports it (the signatures are compared by a test)."""
    options = dict(locals())  # the arguments, before any other name is bound
    from importlib.metadata import entry_points

    for entry in entry_points(group="mlflow_mnist.api"):
        if entry.name == "analyze":
            return entry.load()(**options)
    raise RuntimeError("the analysis package is not installed: pip install -e . installs it")
