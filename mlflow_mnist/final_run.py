"""Train the campaign's best configuration on all training images, test it once per seed, log it.

``final`` gathers the best value of every completed step (the search's carry-forward rule), trains on the whole
training set and evaluates once on the test set. With ``repeats`` > 1 it trains one model per seed, through
the same executors as the search, so users see how much of a test accuracy is luck; ``promote`` gates on the
*median* seed, not the luckiest.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import numpy as np

from mlflow_mnist.executors import Executor
from mlflow_mnist.final_tree import ENSEMBLE_ACCURACY, FinalTree
from mlflow_mnist.params import Params, StageError
from mlflow_mnist.schema import BEST_CONFIG, DIGEST, best_config
from mlflow_mnist.worker import FinalResult, FinalWorker

MEDIAN_ACCURACY = "median_test_accuracy"


def summarize(results: list[tuple[FinalResult, str]]) -> dict[str, Any]:
    """Mean/std/min/max over seeds, and the median seed (the lower middle one for an even count)."""
    accuracies = [r.test_accuracy for r, _ in results]
    ordered = sorted(results, key=lambda pair: pair[0].test_accuracy)
    median_result, median_run = ordered[(len(ordered) - 1) // 2]
    return {
        "mean_test_accuracy": statistics.fmean(accuracies),
        "std_test_accuracy": float(np.std(accuracies)),
        "min_test_accuracy": min(accuracies),
        "max_test_accuracy": max(accuracies),
        MEDIAN_ACCURACY: median_result.test_accuracy,
        "median_run_id": median_run,
        "mean_fit_seconds": statistics.fmean(r.fit_seconds for r, _ in results),
        "n_repeats": len(results),
        "seeds": {str(r.seed): r.test_accuracy for r, _ in results},
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


def search_config(campaign, search: str) -> tuple[Params, str]:
    """The best configuration a joint search left on its run (``latest``: the newest such search on this data)."""
    if search == "latest":
        runs = campaign.client.search_runs(
            [campaign.experiment_id],
            f"tags.`{BEST_CONFIG}` != '' and attributes.status = 'FINISHED' "
            f"and tags.`{DIGEST}` = '{campaign.settings.data_digest}'",
            max_results=1,
            order_by=["attributes.end_time DESC"],
        )
        if not runs:
            raise StageError("no finished search on this data left a best configuration: run a search first")
        run = runs[0]
    else:
        from mlflow.exceptions import MlflowException

        try:
            run = campaign.client.get_run(search)
        except MlflowException:
            raise StageError(f"--search {search}: no such run; pass a search run's id or 'latest'") from None
        if BEST_CONFIG not in run.data.tags or run.info.experiment_id != campaign.experiment_id:
            raise StageError(
                f"--search {search} is not a finished search run of this experiment with a best configuration"
            )
    config = best_config(run.data.tags)
    return campaign.task.validate({**config, **campaign.overrides}), run.info.run_id


def run_final(
    campaign, *, repeats: int = 1, executor: Executor, progress: bool = True, search: str | None = None
) -> dict[str, Any]:
    """Train ``repeats`` seeds of the store's best configuration on ``executor`` and log them; returns the summary.

    The configuration is the staged campaign's (every step's best, carried forward), or with ``search`` the best
    configuration of a joint search (its run id, or ``latest``).
    """
    from tqdm.auto import tqdm

    from mlflow_mnist import tracking

    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    state = campaign.read_state()
    source = None
    if search:
        params, source = search_config(campaign, search)
    else:
        params = campaign.final_params(state)
    seeds = [campaign.settings.split_seed + k for k in range(repeats)]
    worker = FinalWorker(
        campaign.task_spec,
        campaign.worker_data(),
        params,
        campaign.settings.precision,
        executor.threads_per_worker,
        driver_pid=os.getpid(),
    )
    with campaign.hold() as hold, campaign.writer(hold).closing_on_failure(tracking.tracking_uri()) as writer:
        # The test set's digest and profile are computed once, for the final run and every seed.
        tree = FinalTree(writer, task=campaign.task, data=campaign.data, test_dataset=campaign.dataset("test"))
        parent = tree.start(
            params,
            state,
            repeats=repeats,
            settings_params=campaign.stage_params,
            adopt_run_id=campaign.adopt_run_id,
            source_search=source,
        )
        results = []
        with tqdm(total=repeats, desc="final", unit="seed", disable=not progress) as bar:
            for result in executor.map_unordered(worker, seeds):
                hold.check()  # a driver that lost the campaign lock writes nothing more
                results.append((result, tree.seed_finished(result)))
                bar.set_postfix_str(f"seed {result.seed}: test accuracy {result.test_accuracy:.4f}")
                bar.update()
        summary = summarize(results)
        ensemble = seed_ensemble([r for r, _ in results], campaign.data)
        if ensemble is not None:
            summary[ENSEMBLE_ACCURACY], summary["ensemble_test_errors"] = ensemble[1], ensemble[2]
        tree.finish(summary, ensemble=ensemble)
    return {**summary, "run_id": parent, "params": params}
