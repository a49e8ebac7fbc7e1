"""Train the campaign's best configuration on all training images, test it once per seed, log it.

``final`` gathers the best value of every completed step (the search's carry-forward rule), trains on the whole
training set and evaluates once on the test set. With ``repeats`` > 1 it trains one model per seed, through
the same executors as the search, so users see how much of a test accuracy is luck; ``promote`` gates on the
*median* seed, not the luckiest, or on the seeds' ensemble. ``configs`` > 1 spreads the seeds over a joint
search's best few configurations.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from mlflow_mnist.executors import Executor
from mlflow_mnist.final_resume import finished_seeds
from mlflow_mnist.final_tree import FinalTree
from mlflow_mnist.params import Params, StageError, parse_value
from mlflow_mnist.planning import final_seed_key
from mlflow_mnist.results import rank_key
from mlflow_mnist.schema import (
    BEST_CONFIG,
    CANDIDATE_LEVEL,
    DIGEST,
    ENSEMBLE_ACCURACY,
    ENSEMBLE_ERRORS,
    EPOCHS,
    LEVEL,
    MAX_TEST_ACCURACY,
    MEAN_FIT_SECONDS,
    MEAN_HELDOUT_ACCURACY,
    MEAN_TEST_ACCURACY,
    MEDIAN_ACCURACY,
    MIN_TEST_ACCURACY,
    PARENT,
    STATUS,
    STD_HELDOUT_ACCURACY,
    STD_TEST_ACCURACY,
    STEP_LEVEL,
    STRATEGY,
    CandidateTags,
    best_config,
)
from mlflow_mnist.seal import SEAL_KEY_ENV, trusted
from mlflow_mnist.strategies.staged import StagedGrid
from mlflow_mnist.worker import FinalResult, FinalWorker


def summarize(results: list[tuple[FinalResult, str]]) -> dict[str, Any]:
    """Mean/std/min/max over seeds, and the median seed (the lower middle one for an even count)."""
    accuracies = [r.test_accuracy for r, _ in results]
    ordered = sorted(results, key=lambda pair: pair[0].test_accuracy)
    median_result, median_run = ordered[(len(ordered) - 1) // 2]
    return {
        MEAN_TEST_ACCURACY: statistics.fmean(accuracies),
        STD_TEST_ACCURACY: float(np.std(accuracies)),
        MIN_TEST_ACCURACY: min(accuracies),
        MAX_TEST_ACCURACY: max(accuracies),
        MEDIAN_ACCURACY: median_result.test_accuracy,
        "median_run_id": median_run,
        MEAN_FIT_SECONDS: statistics.fmean(r.fit_seconds for r, _ in results),
        "n_repeats": len(results),
        "seeds": {str(r.seed): r.test_accuracy for r, _ in results},
        # which configuration (1 = the best; all 1 unless the seeds were spread over several) each seed trained
        "config_ranks": {str(r.seed): r.config_index + 1 for r, _ in results},
    }


def seed_ensemble(results: list[FinalResult], data) -> tuple[dict[str, bytes], float, int] | None:
    """The seeds as one model (their averaged probabilities): its model folder, test accuracy and errors; None
    with one seed, or when a seed has no model (diverged). Its accuracy is measured once, like each seed's."""
    from mlflow_mnist.ensemble import average, ensemble_files
    from mlflow_mnist.worker.model_files import model_requirements

    if len(results) < 2 or any(r.model_files is None or r.probabilities is None for r in results):
        return None
    probabilities = average([r.probabilities for r in results])
    errors = int(np.sum(probabilities.argmax(axis=1) != data.y_test))
    files = ensemble_files(
        {r.seed: r.model_files for r in results},
        x_example=data.x_test[:2],
        y_example=probabilities[:2],
        requirements=model_requirements(),
    )
    return files, 1 - errors / len(data.y_test), errors


def _search_run(campaign, search: str):
    """The search run ``search`` names (its id, or ``latest``: the newest finished search on this data)."""
    if search == "latest":
        runs = campaign.client.search_runs(
            [campaign.experiment_id],
            f"tags.`{BEST_CONFIG}` != '' and attributes.status = 'FINISHED' "
            f"and tags.`{DIGEST}` = '{campaign.settings.data_digest}'",
            max_results=1000,
            order_by=["attributes.end_time DESC"],
        )
        # With a seal key, only searches it sealed: a search run anyone could write would choose what final trains.
        joint = [run for run in runs if run.data.tags.get(STRATEGY) != StagedGrid.name and trusted(run, campaign.seal)]
        if not joint:
            raise StageError(
                "no finished joint search on this data left a best configuration: run one first (`tune --strategy "
                "asha`), or leave out --search to train the staged steps' carry-forward"
            )
        return joint[0]
    from mlflow.exceptions import MlflowException

    try:
        run = campaign.client.get_run(search)
    except MlflowException:
        raise StageError(f"--search {search}: no such run; pass a search run's id or 'latest'") from None
    if BEST_CONFIG not in run.data.tags or run.info.experiment_id != campaign.experiment_id:
        raise StageError(f"--search {search} is not a finished search run of this experiment with a best configuration")
    if run.data.tags.get(STRATEGY) == StagedGrid.name:
        raise StageError(
            f"--search {search} is a staged step, not a joint search: leave out --search to train the staged steps' "
            f"carry-forward"
        )
    if not trusted(run, campaign.seal):
        raise StageError(
            f"--search {search} has no valid seal of the key in ${SEAL_KEY_ENV} (run before the key was set, or "
            f"written by someone else): run the search again with the key, or `mlflow-mnist seal-runs` if you trust it"
        )
    return run


def search_config(campaign, search: str) -> tuple[Params, str]:
    """The best configuration a joint search left on its run (``latest``: the newest such search on this data)."""
    run = _search_run(campaign, search)
    config = best_config(run.data.tags)
    return campaign.task.validate({**config, **campaign.overrides}), run.info.run_id


def search_configs(campaign, search: str, count: int) -> tuple[list[Params], str]:
    """The ``count`` best configurations of a joint search, best first, and the search's run id.

    The first is the search's own best. The others are its other trials, each as far as it went: further rungs
    (more epochs) first, then by the one ranking rule at that rung; a trial that failed where it went furthest
    is left out. Each is trained at the best's epochs, the full budget (a trial's learning-rate schedule already
    spans it, so a trial stopped at a lower rung trains on as its promotion would have). Decided on CV alone,
    before any test score is seen."""
    from mlflow_mnist import tracking

    best, search_id = search_config(campaign, search)
    if count == 1:
        return [best], search_id
    client, experiment = campaign.client, [campaign.experiment_id]
    groups = tracking.search_all(client, experiment, _children(search_id, STEP_LEVEL))  # halving's rungs
    below = [search_id] + [run.info.run_id for run in groups if trusted(run, campaign.seal)]
    trials: dict[int, tuple[tuple, Params | None]] = {}  # trial -> (its furthest run's order, params)
    for parent in below:
        for run in tracking.search_all(client, experiment, _children(parent, CANDIDATE_LEVEL)):
            tags = CandidateTags.parse(run.data.tags)
            if tags.trial is None or not trusted(run, campaign.seal):  # a trial run anyone could add: not with a key
                continue
            metrics = run.data.metrics
            row = {
                "status": run.data.tags.get(STATUS, "ok"),
                "mean_test_score": metrics.get(MEAN_HELDOUT_ACCURACY, math.nan),
                "std_test_score": metrics.get(STD_HELDOUT_ACCURACY, 0.0),
            }
            budget = tags.rung.budget if tags.rung is not None else 0
            order = (-budget, *rank_key(row, tags.trial))
            if tags.trial not in trials or order < trials[tags.trial][0]:
                params = {key: parse_value(value) for key, value in run.data.params.items()}
                trials[tags.trial] = (order, params if row["status"] == "ok" else None)
    configs = [best]
    # A trial that failed (or diverged) where it went furthest is left out, whatever it scored before.
    for _, params in sorted((entry for entry in trials.values() if entry[1] is not None), key=lambda e: e[0]):
        config = campaign.task.validate({**params, **campaign.overrides, EPOCHS: best[EPOCHS]})
        if config not in configs:
            configs.append(config)
        if len(configs) == count:
            return configs, search_id
    raise StageError(
        f"--configs {count}: the search {search_id} has {len(configs)} configuration(s) that trained without "
        f"failing; pass --configs {len(configs)} or fewer"
    )


def _children(parent: str, level: str | None = None) -> str:
    where = f"tags.`{PARENT}` = '{parent}' and attributes.status = 'FINISHED'"
    return where + (f" and tags.`{LEVEL}` = '{level}'" if level else "")


def check_final_options(*, repeats: int, search: str | None, configs: int) -> None:
    """Refuse options that cannot go together, before anything starts."""
    if repeats < 1:
        raise StageError(f"--repeats {repeats}: train at least one seed")
    if configs < 1:
        raise StageError(f"--configs {configs}: train at least one configuration")
    if configs > 1 and not search:
        raise StageError(f"--configs {configs} takes a joint search's best configurations: pass --search latest")
    if configs > repeats:
        raise StageError(f"--configs {configs} needs at least as many seeds: pass --repeats {configs} or more")


def _nothing_carried(campaign) -> str:
    """The notice for a final that found no finished staged step to carry forward: it trains the task's starting
    configuration, which users who tuned with other options (``--folds 2``, then ``final`` with the default 3)
    would not expect."""
    steps = campaign.client.search_runs(
        [campaign.experiment_id],
        f"tags.`{LEVEL}` = '{STEP_LEVEL}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    elsewhere = (
        "staged steps finished here under other settings: give final the same --data, --classes, --epochs, "
        "--folds, --cv-repeats, --seed and --precision as tune to carry them forward"
        if steps
        else "no staged step finished here (tune a stage first, or pass --search for a joint search's best)"
    )
    return (
        f"final: nothing to carry forward in experiment {campaign.experiment.name!r} under these settings; "
        f"{elsewhere}; training the task's starting configuration{' with --overrides' if campaign.overrides else ''}"
    )


def run_final(
    campaign,
    *,
    repeats: int = 1,
    executor: Executor,
    progress: bool = True,
    search: str | None = None,
    configs: int = 1,
    announce: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Train ``repeats`` seeds of the store's best configuration on ``executor`` and log them; returns the summary.
    ``announce`` (what the campaign chose, said to the user) is called once the configuration is found.

    The configuration is the staged campaign's (every step's best, carried forward), or with ``search`` the best
    configuration of a joint search (its run id, or ``latest``). ``configs`` > 1 spreads the seeds over the
    search's best ``configs`` configurations (seed k trains the (k mod configs)-th), so the seeds' ensemble hedges
    one configuration whose cross-validation promised more than it holds.
    """
    from tqdm.auto import tqdm

    from mlflow_mnist import tracking

    check_final_options(repeats=repeats, search=search, configs=configs)
    state = campaign.read_state()
    source = None
    if search:
        chosen, source = search_configs(campaign, search, configs)
    else:
        chosen = [campaign.final_params(state)]
    if announce is not None:
        announce(*([] if search or state.step_bests else [_nothing_carried(campaign)]))
    seeds = [campaign.settings.split_seed + k for k in range(repeats)]
    worker = FinalWorker(
        campaign.task_spec,
        campaign.worker_data(),
        tuple(chosen),
        campaign.settings.precision,
        executor.threads_per_worker,
        driver_pid=os.getpid(),
    )
    with campaign.hold() as hold, campaign.writer(hold).closing_on_failure(tracking.tracking_uri()) as writer:
        # The test set's digest and profile are computed once, for the final run and every seed.
        tree = FinalTree(writer, task=campaign.task, data=campaign.data, test_dataset=campaign.dataset("test"))
        parent = tree.start(
            chosen,
            state,
            repeats=repeats,
            settings_params=campaign.stage_params,
            adopt_run_id=campaign.adopt_run_id,
            source_search=source,
        )
        test_digest = campaign.data.digest("test")
        assignments = [(seed, k % len(chosen)) for k, seed in enumerate(seeds)]  # (seed, configuration index)
        keys = {
            final_seed_key(chosen[index], seed, campaign.settings, test_digest=test_digest): (seed, index)
            for seed, index in assignments
        }
        # A killed final's finished seeds are this final's (one seed's final logs on its own run: nothing to take).
        taken = {}
        if repeats > 1:
            taken = finished_seeds(
                campaign.client, campaign.experiment_id, keys, campaign.data.y_test, seal=campaign.seal
            )
        tree.take_seeds(list(taken.values()))
        results = [(seed.result, seed.run_id) for seed in taken.values()]
        to_train = [assignment for key, assignment in keys.items() if key not in taken]
        key_of = {assignment: key for key, assignment in keys.items()}
        with tqdm(total=repeats, initial=len(taken), desc="final", unit="seed", disable=not progress) as bar:
            if taken:
                killed = ", ".join(sorted({seed.final_id for seed in taken.values()}))
                bar.set_postfix_str(f"{len(taken)} seed(s) taken from the killed final {killed}")
            for result in executor.map_unordered(worker, to_train):
                hold.check()  # a driver that lost the campaign lock writes nothing more
                key = key_of[(result.seed, result.config_index)]
                results.append((result, tree.seed_finished(result, key=key)))
                bar.set_postfix_str(f"seed {result.seed}: test accuracy {result.test_accuracy:.4f}")
                bar.update()
        results.sort(key=lambda pair: pair[0].seed)  # taken or trained, in whatever order: one median, one average
        summary = summarize(results)
        ensemble = seed_ensemble([r for r, _ in results], campaign.data)
        if ensemble is not None:
            summary[ENSEMBLE_ACCURACY], summary[ENSEMBLE_ERRORS] = ensemble[1], ensemble[2]
        tree.finish(summary, ensemble=ensemble)
    return {**summary, "run_id": parent, "params": chosen[0], "configs": chosen, "seeds_taken": len(taken)}
