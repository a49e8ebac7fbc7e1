"""Side by side with the tools a user would pick instead: plain Optuna, scikit-learn's successive halving, ours.

    python benchmarks/bench_peers.py --data ../shared/datasets/mnist                         # 12 trials each
    python benchmarks/bench_peers.py --data ../shared/datasets/mnist --final-seeds 5         # + each pick's test
    python benchmarks/bench_peers.py --quick --final-seeds 1                                  # a smoke run, ~2 min

What is compared, one run each, one after another, each in its own fresh process, on the same 2 cores: three
searches over the same space (``--space``, default ``wide``), the same number of trials (``--trials``), the same
Keras model (the task's ``build_model``), the same data and the same ``--folds`` splits
(``mlflow_mnist.planning.fold_indices``, split seed ``--seed``, default 0), with epochs as the resource (rungs at
the space's budget / 9, / 3 and the full budget, as ours):

- ``optuna``: plain Optuna as its documentation shows it: ``TPESampler(seed=--seed)`` with its defaults,
  ``HyperbandPruner(min_resource=first rung, max_resource=budget, reduction_factor=3)``,
  ``study.optimize(objective, n_trials, n_jobs=2)`` (two threads of one process) and MLflow's callback
  (``optuna_integration.MLflowCallback``; when optuna-integration is not installed, the same run per trial, logged by
  hand). The objective builds one model per fold (learning-rate schedule over the full budget), trains the folds
  epoch by epoch, reports the mean held-out accuracy after every epoch and stops when the pruner says so.
- ``halving``: ``HalvingRandomSearchCV`` over scikeras' ``KerasClassifier`` (``make_classifier``) with
  ``resource="epochs"``, ``factor=3``, ``max_resources`` the budget, ``n_jobs=2``, ``refit=False`` and the same
  splits as ``cv``. scikit-learn cannot sample inside the one dict-valued model parameter, so the ``--trials``
  configurations are drawn at random from the space first (Optuna's ``RandomSampler``, seeded, as our ``random``
  strategy draws them) and handed over as a list that it takes whole; each halving iteration retrains from scratch,
  as it always does. ``min_resources`` is set so that the last iteration trains the full budget.
- ``ours``: ``python -m mlflow_mnist tune --strategy asha --seed --promotion`` into an empty SQLite store, every
  fold tracked (``--promotion eager`` lets each rung's best go on before the rung has seen 3 trials, as
  Optuna's pruner does).

``--seed`` seeds every peer's draws and the split alike; one run per seed cannot rank the peers (plain Optuna's
two threads interleave its draws, a lucky early trial decides its reach), so run a few seeds, e.g. with
``--peers optuna,ours --seed 1`` and ``--seed 2``, and read them side by side (``peers_seeds.py``).

``--same-draws`` pairs them: ours and ``halving`` evaluate the same seeded random draws first (ours' TPE starts after
``STARTUP_TRIALS``; halving takes that many or fewer), and plain Optuna, whose threads would draw others, is handed
those configurations as its first trials (``study.enqueue_trial``; after them its sampler goes on alone). What the
peers then differ in is how they spend epochs on the same configurations, not which configurations chance gave
each: the comparison the search rules need, where ``--seed`` alone compares the tools as users run them.

``--others-from REPORT`` reruns only ``--peers`` and takes every other peer's result from an earlier report of the
same settings (seed, space, trials, folds, data, pairing, target; ours' options too where ours is taken): after a
change to ours alone, plain Optuna's ten minutes per seed need not be spent again. The report names where each
taken result came from.

Per peer: the best mean CV reached by a configuration trained the full budget, the minutes (since the search
started) and fold-epochs at which the best so far first reached ``--target`` (default 0.99656, the staged grid's
best; within 5e-6), what it spent in all, the configuration it picks. With ``--final-seeds N`` each pick is
trained on all training images with seeds 0..N-1 (``mlflow_mnist.worker.training.train_final``, two at a time) and
tested once per seed: the N-seed test median (lower middle for an even N) and each seed's errors.

The peers' curves come from the searches themselves: Optuna's objective stamps every finished full-budget trial;
scikit-learn's scorer appends every scored fold (time, epochs trained, score) to a file. Ours is read back from its
store (``analysis.searches.search_table``). Writes benchmarks/results/peers.{json,md} and peers.png (best CV so
far against minutes and against fold-epochs; peers-<space>.* for a space other than wide, -eager added for ours'
eager promotion, -seed<N> for a seed other than 0) and names the CPU; ``--quick`` (the shipped sample, 2 folds,
2 trials, the small ``seed`` space) writes to a temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

import machine  # noqa: E402
from bench_asha import (  # noqa: E402
    DEFAULT_TARGET,
    BenchError,
    anytime_curve,
    check_stores,
    plot_curves,
    prepare,
    reach,
    read_search,
    report_stem,
    run_each,
    run_tune,
    write_report,
)

from mlflow_mnist.strategies.asha import PROMOTION_RULES, STARTUP_TRIALS  # noqa: E402

PEERS = ("optuna", "halving", "ours")
FACTOR = 3
WORKERS = 2  # the benchmark's machine has 2 cores: every peer gets two workers
EVALUATION_BATCH = 512


# -- what every peer shares ----------------------------------------------------------------------------------------
def first_rung(space) -> int:
    """The first rung's epochs, as ours computes it (``--min-epochs 0``): the budget / factor**2, at least 1."""
    from mlflow_mnist.strategies.asha import rung_budgets

    return rung_budgets(space.max_epochs, FACTOR, max(1, space.max_epochs // FACTOR**2))[0]


def splits_of(y, folds: int, seed: int) -> list:
    """The (train, held-out) index pairs ours trains: repeat 0 of the stratified split with ``seed``."""
    from mlflow_mnist.planning import fold_indices

    return [fold_indices(y, n_folds=folds, split_seed=seed, fold=fold) for fold in range(folds)]


class Spend:
    """The clock and the fold-epoch counter of a search run in threads: what it spent, and every full-budget
    candidate as it finished (the anytime curve's points)."""

    def __init__(self):
        self.lock, self.start, self.fold_epochs, self.finished = threading.Lock(), time.perf_counter(), 0, []

    def trained(self, epochs: int) -> None:
        with self.lock:
            self.fold_epochs += epochs

    def candidate(self, name: str, mean: float, *, trial: int | None = None) -> None:
        with self.lock:
            self.finished.append((time.perf_counter() - self.start, self.fold_epochs, name, mean, trial))

    def minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60


def peer_curve(finished: list[tuple], *, fold_epochs: float, minutes: float) -> list:
    """``(seconds, fold-epochs, candidate, mean, trial number or None)`` of a peer's full-budget candidates -> its
    best-so-far curve, closed where the search stopped: the rows ``bench_asha.read_search`` reads from our store,
    the same rule."""
    import pandas as pd

    rows = [
        {
            "search_run_id": "",
            "finished": seconds,
            "candidate": name,
            "trial": trial,
            "mean": mean,
            "fold_epochs": float(spent),
            "minutes": seconds / 60,
        }
        for seconds, spent, name, mean, trial in finished
    ]
    closing = {
        "search_run_id": "",
        "finished": minutes * 60,
        "candidate": "",
        "trial": None,
        "mean": math.nan,
        "fold_epochs": float(fold_epochs),
        "minutes": minutes,
    }
    return anytime_curve(pd.DataFrame([*rows, closing]))


def to_json(params: dict) -> dict:
    from mlflow_mnist.params import json_value

    return {key: json_value(value) for key, value in params.items()}


# -- plain Optuna ------------------------------------------------------------------------------------------------
def suggest(trial, name: str, distribution):
    """Optuna's public suggest call for one of the space's distributions."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


class HandLoggedMLflow:
    """What ``optuna_integration.MLflowCallback`` logs, by hand: one run per finished trial (its number as name, its
    values as params, its value as a metric, its state as a tag). Used when optuna-integration is not installed."""

    def __init__(self, tracking_uri: str, experiment: str, metric_name: str):
        from mlflow import MlflowClient

        self.client, self.metric_name, self.lock = MlflowClient(tracking_uri), metric_name, threading.Lock()
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)

    def __call__(self, study, trial) -> None:
        from mlflow.entities import Metric, Param, RunTag

        with self.lock:
            run = self.client.create_run(self.experiment_id, run_name=str(trial.number))
            now = int(time.time() * 1000)
            metrics = [Metric(self.metric_name, v, now, 0) for v in (trial.values or [])]
            params = [Param(k, str(v)) for k, v in trial.params.items()]
            tags = [RunTag("number", str(trial.number)), RunTag("state", trial.state.name)]
            self.client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
            self.client.set_terminated(run.info.run_id)


def mlflow_callback(tracking_uri: str, experiment: str, metric_name: str):
    """MLflow's Optuna callback when optuna-integration is installed, else :class:`HandLoggedMLflow`; and which."""
    try:
        from optuna_integration.mlflow import MLflowCallback
    except ImportError:
        return HandLoggedMLflow(tracking_uri, experiment, metric_name), "by hand (optuna-integration not installed)"
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    callback = MLflowCallback(
        tracking_uri=tracking_uri,
        metric_name=metric_name,
        create_experiment=False,
        mlflow_kwargs={"experiment_id": experiment_id},
    )
    return callback, "optuna_integration.MLflowCallback"


def shared_draws(space, trials: int, seed: int) -> list[dict]:
    """The configurations ours and halving draw first for ``seed`` (sampled values), as many as are random in ours."""
    from mlflow_mnist.strategies.sampling import sample_configs

    return [spec.sampled for spec in sample_configs(space, min(trials, STARTUP_TRIALS), seed=seed)]


def run_optuna(
    task, data, space, *, trials: int, folds: int, seed: int, tracking_uri: str, same_draws: bool = False
) -> dict:
    import numpy as np
    import optuna

    from mlflow_mnist.worker.training import STEPS_PER_EXECUTION

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    x, y = data.x_train, data.y_train
    onehot = np.eye(data.n_classes, dtype="float32")
    splits = splits_of(y, folds, seed)
    callback, logged = mlflow_callback(tracking_uri, "peer-optuna", "mean_cv_accuracy")
    spend = Spend()

    def objective(trial) -> float:
        sampled = {name: suggest(trial, name, d) for name, d in space.distributions.items()}
        config = space.config(sampled)  # at the full budget; the schedule spans it
        models = [
            task.build_model(
                config,
                n_classes=data.n_classes,
                seed=seed,
                n_train=len(train),
                steps_per_execution=STEPS_PER_EXECUTION,
                total_epochs=space.max_epochs,
            )
            for train, _ in splits
        ]
        mean = math.nan
        for epoch in range(space.max_epochs):
            scores = []
            for model, (train, held) in zip(models, splits, strict=True):
                model.fit(
                    x[train],
                    onehot[y[train]],
                    batch_size=int(config["batch_size"]),
                    epochs=epoch + 1,
                    initial_epoch=epoch,
                    verbose=0,
                )
                spend.trained(1)
                scores.append(
                    model.evaluate(x[held], onehot[y[held]], batch_size=EVALUATION_BATCH, verbose=0, return_dict=True)[
                        "accuracy"
                    ]
                )
            mean = float(np.mean(scores))
            trial.report(mean, epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        spend.candidate(f"trial {trial.number}", mean, trial=trial.number)
        return mean

    study = optuna.create_study(
        study_name="peer-optuna",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=first_rung(space), max_resource=space.max_epochs, reduction_factor=FACTOR
        ),
    )
    enqueued = shared_draws(space, trials, seed) if same_draws else []
    for sampled in enqueued:
        study.enqueue_trial(sampled)
    spend.start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=WORKERS, callbacks=[callback])
    minutes = spend.minutes()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {
        "how": f"TPESampler(seed={seed}) + HyperbandPruner, study.optimize(n_jobs={WORKERS}), MLflow {logged}"
        + (f"; first {len(enqueued)} trials enqueued: ours' draws" if enqueued else ""),
        "trials": len(study.trials),
        "sampled": {str(t.number): t.params for t in study.trials},
        "full_budget_trials": len(complete),
        "epochs_per_trial": {str(t.number): len(t.intermediate_values) for t in study.trials},
        "fold_epochs": float(spend.fold_epochs),
        "minutes": minutes,
        "curve": peer_curve(spend.finished, fold_epochs=spend.fold_epochs, minutes=minutes),
        "best_mean_cv": best.value if best else None,
        "best_candidate": f"trial {best.number}" if best else None,
        "best_config": to_json(space.config(best.params)) if best else None,
    }


# -- scikit-learn's HalvingRandomSearchCV -----------------------------------------------------------------------------
class TracedAccuracy:
    """A scorer that is plain accuracy and also appends (time, epochs trained, budget, configuration, score) of
    every scored fold to a file: scikit-learn's workers are other processes, and their scores the only signal out."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, estimator, x, y) -> float:
        import numpy as np

        predicted, y = np.asarray(estimator.predict(x)), np.asarray(y)
        if y.ndim == 2:  # one-hot, as the tool's own training hands labels to scikeras
            predicted, y = predicted.argmax(axis=1), y.argmax(axis=1)
        score = float(np.mean(predicted == y))
        params = estimator.get_params()["model__hyperparameters"]
        line = {
            "time": time.time(),
            "epochs": len(estimator.history_.get("loss", [])),
            "budget": int(estimator.epochs),
            "config": json.dumps(to_json(params), sort_keys=True),
            "score": score,
        }
        with open(self.path, "a") as out:  # one short line per write, appended whole
            out.write(json.dumps(line) + "\n")
        return score


def halving_min_resources(trials: int, space) -> int:
    """Resources of the first iteration so that the last one trains the full budget: scikit-learn runs
    ``1 + floor(log_factor(trials))`` iterations at most, multiplying the resource by the factor each time."""
    iterations = 1 + math.floor(math.log(trials, FACTOR))
    return max(first_rung(space), space.max_epochs // FACTOR ** (iterations - 1))


def halving_curve(lines: list[dict], *, start: float, folds: int, budget: int) -> tuple[list, float]:
    """The anytime curve of scikit-learn's search from its scored folds, and the fold-epochs it trained in all."""
    lines = sorted(lines, key=lambda line: line["time"])
    spent, finished, scores = 0, [], {}
    for line in lines:
        spent += line["epochs"]
        if line["budget"] != budget:
            continue
        scores.setdefault(line["config"], []).append(line["score"])
        if len(scores[line["config"]]) == folds:
            mean = sum(scores[line["config"]]) / folds
            finished.append((line["time"] - start, spent, f"candidate {len(finished)}", mean, None))
    return finished, float(spent)


def run_halving(task, data, space, *, trials: int, folds: int, seed: int, trace: Path) -> dict:
    import numpy as np
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401 - the halving searches are experimental
    from sklearn.model_selection import HalvingRandomSearchCV

    from mlflow_mnist.strategies.sampling import sample_configs
    from mlflow_mnist.worker.training import STEPS_PER_EXECUTION, make_classifier

    configs = [spec.params for spec in sample_configs(space, trials, seed=seed)]
    splits = splits_of(data.y_train, folds, seed)
    estimator = make_classifier(
        task,
        configs[0],
        n_classes=data.n_classes,
        steps_per_execution=STEPS_PER_EXECUTION,
        seed=seed,
        n_train=len(splits[0][0]),  # a training fold's size: the cosine schedule's steps, as ours
    )
    candidates = [{"model__hyperparameters": [config], "batch_size": [config["batch_size"]]} for config in configs]
    search = HalvingRandomSearchCV(
        estimator,
        candidates,
        n_candidates=trials,
        factor=FACTOR,
        resource="epochs",
        max_resources=space.max_epochs,
        min_resources=halving_min_resources(trials, space),
        cv=splits,
        scoring=TracedAccuracy(str(trace)),
        refit=False,
        return_train_score=False,
        random_state=seed,
        n_jobs=WORKERS,
    )
    # One-hot labels, as the tool's own fit gives scikeras: it one-hot encodes integer labels for a categorical
    # cross-entropy only when there are more than two classes, and 2-vs-7 has two.
    onehot = np.eye(data.n_classes, dtype="float32")[data.y_train]
    start = time.time()
    search.fit(data.x_train, onehot)
    minutes = (time.time() - start) / 60
    lines = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    finished, fold_epochs = halving_curve(lines, start=start, folds=folds, budget=space.max_epochs)
    scores = np.asarray(search.cv_results_["mean_test_score"], dtype=float)
    last = np.asarray(search.cv_results_["iter"]) == search.n_iterations_ - 1
    picked = search.best_params_["model__hyperparameters"] if np.isfinite(search.best_score_) else None
    return {
        "how": (
            f"HalvingRandomSearchCV(resource='epochs', factor={FACTOR}, min_resources={search.min_resources_}, "
            f"max_resources={space.max_epochs}, n_jobs={WORKERS}) over KerasClassifier; iterations at "
            f"{search.n_resources_} epochs, candidates {search.n_candidates_}"
        ),
        "trials": trials,
        "full_budget_trials": int(np.sum(last & (np.asarray(search.cv_results_["n_resources"]) == space.max_epochs))),
        "fold_epochs": fold_epochs,
        "minutes": minutes,
        "curve": peer_curve(finished, fold_epochs=fold_epochs, minutes=minutes),
        "best_mean_cv": float(search.best_score_) if picked else None,
        "best_candidate": f"candidate {int(search.best_index_)}" if picked else None,
        "best_config": to_json(picked) if picked else None,
        "last_iteration_best": float(np.nanmax(scores[last])) if last.any() else None,
    }


# -- ours -------------------------------------------------------------------------------------------------------
def run_ours(store: Path, run: dict) -> dict:
    arguments = ["--strategy", "asha", "--space", run["space"], "--trials", str(run["trials"])]
    arguments += ["--data", run["data"], "--folds", str(run["folds"]), "--brackets", str(run["brackets"])]
    arguments += ["--seed", str(run["seed"]), "--promotion", run["promotion"]]
    wall = run_tune(store, arguments)
    found = read_search(store)
    return {
        "how": f"python -m mlflow_mnist tune {' '.join(arguments)}",
        "store": str(store),
        "wall_seconds": wall,
        **{k: found[k] for k in ("trials", "full_budget_trials", "fold_epochs", "minutes", "curve", "best_mean_cv")},
        "best_candidate": found["best_candidate"],
        "best_config": to_json(found["best_config"]) if found["best_config"] else None,
        "workers_idle_share": found["workers_idle_share"],
    }


# -- one peer in its own process ----------------------------------------------------------------------------------
def run_peer(name: str, run: dict, out: Path) -> None:
    """The child process: load the data, run one peer, write its result to ``out``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mlflow_mnist.tasks import get_task

    task = get_task(run["task"])
    data = task.load(run["data"])
    space = task.get_space(run["space"])
    common = {"trials": run["trials"], "folds": run["folds"], "seed": run["seed"]}
    if name == "optuna":
        tracking_uri = f"sqlite:///{out.parent}/mlflow.db"
        result = run_optuna(task, data, space, **common, tracking_uri=tracking_uri, same_draws=run["same_draws"])
    else:
        result = run_halving(task, data, space, **common, trace=out.parent / "scored_folds.jsonl")
    out.write_text(json.dumps(result, indent=2))


def spawn_peer(name: str, run: dict, folder: Path) -> dict:
    """Run one peer in a fresh process (an argument list); returns its result with the process's wall seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    out, log = folder / "result.json", folder / "peer.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--peer", name, "--peer-out", str(out)]
    command += ["--peer-settings", json.dumps(run)]
    start = time.perf_counter()
    with log.open("w") as stream:
        proc = subprocess.run(
            command,
            cwd=folder,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    wall = time.perf_counter() - start
    if proc.returncode or not out.exists():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"peer {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return {**json.loads(out.read_text()), "wall_seconds": wall, "folder": str(folder)}


# -- the picks, tested ------------------------------------------------------------------------------------------
def final_one(task_name: str, source: str, config: dict, seed: int) -> dict:
    """One pick trained on all training images with one seed, tested once (the tool's own final routine)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mlflow_mnist.params import from_json
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.worker.training import train_final

    task = get_task(task_name)
    result = train_final(task, from_json(config), task.load(source), seed, threads=1)
    return {
        "seed": seed,
        "test_accuracy": result.test_accuracy,
        "errors": result.errors,
        "status": result.status,
        "fit_seconds": result.fit_seconds,
    }


def final_seeds(picks: dict[str, dict], run: dict, seeds: int) -> dict[str, dict]:
    """Every pick with seeds 0..seeds-1, two trainings at a time: each seed's test accuracy and errors, the median.

    Peers that picked the same configuration share its trainings (seeded, a second one would give the same
    models): plain Optuna and ours both start from Optuna's seeded random draws, and may pick the same trial."""
    from joblib import Parallel, delayed

    keys = {name: json.dumps(config, sort_keys=True) for name, config in picks.items()}
    jobs = [(key, seed) for key in dict.fromkeys(keys.values()) for seed in range(seeds)]
    results = Parallel(n_jobs=WORKERS)(
        delayed(final_one)(run["task"], run["data"], json.loads(key), seed) for key, seed in jobs
    )
    finals = {}
    for name, key in keys.items():
        mine = [r for (trained, _), r in zip(jobs, results, strict=True) if trained == key]
        ordered = sorted(mine, key=lambda r: r["test_accuracy"])
        finals[name] = {
            "seeds": mine,
            "median_test_accuracy": ordered[(len(ordered) - 1) // 2]["test_accuracy"],
            "shared_with": [other for other, k in keys.items() if other != name and k == key],
        }
    return finals


# -- the report -------------------------------------------------------------------------------------------------
def _cell(value, form: str, missing: str = "-") -> str:
    return missing if value is None else format(value, form)


def markdown(report: dict) -> str:
    lines = [
        f"The peers a user would pick instead, one run each, one after another ({', '.join(report['peers'])}), "
        f"`--space {report['space']}`, {report['trials']} trials, {report['folds']} folds, data {report['data']}, on "
        f"{machine.line(report['machine'])}. Target: a mean CV of {report['target']:.5f} by a configuration trained "
        "the full budget. Minutes from each search's start. "
        + ("Same draws: plain Optuna's first trials are ours' configurations. " if report.get("same_draws") else "")
        + "".join(
            f"{name}: taken from {p['taken_from']}, an earlier run of the same settings. "
            for name, p in report["results"].items()
            if p.get("taken_from")
        )
        + f"Figure: {report['stem']}.png.",
        "",
        "| peer | trials (full budget) | fold-epochs in all | minutes in all (process) | best mean CV | "
        "fold-epochs to target | minutes to target | test median of the pick (errors per seed) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, p in report["results"].items():
        final = report["finals"].get(name)
        tested = "-"
        if final:
            errors = ", ".join(
                f"{s['errors']}" + ("" if s["status"] == "ok" else f" {s['status']}") for s in final["seeds"]
            )
            shared = f"; same pick as {', '.join(final['shared_with'])}" if final.get("shared_with") else ""
            tested = f"{final['median_test_accuracy']:.4%} ({errors}{shared})"
        lines.append(
            f"| {name} | {p['trials']} ({p['full_budget_trials']}) | {p['fold_epochs']:.0f} | {p['minutes']:.1f} "
            f"({p['wall_seconds'] / 60:.1f}) | "
            f"{_cell(p['best_mean_cv'], '.5f')} | {_cell(p['fold_epochs_to_target'], '.0f', 'not reached')} | "
            f"{_cell(p['minutes_to_target'], '.1f')} | {tested} |"
        )
    lines += ["", "How each ran, and the configuration it picked:", ""]
    for name, p in report["results"].items():
        lines.append(f"- {name}: {p['how']}; pick {p['best_candidate']}: `{json.dumps(p['best_config'])}`")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="MNIST (IDX folder or .npz) [default: $MLFLOW_MNIST_DATA]")
    parser.add_argument("--space", default="wide", help="the search space: wide, seed or seed20 [default: wide]")
    parser.add_argument("--trials", type=int, default=12, help="trials (candidates) per peer [default: 12]")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--brackets", type=int, default=1, help="ours: --brackets [default: 1]")
    parser.add_argument(
        "--promotion", choices=list(PROMOTION_RULES), default="quota", help="ours: --promotion [default: quota]"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds every peer's draws and the split [default: 0]")
    parser.add_argument(
        "--same-draws", action="store_true", help="plain Optuna's first trials are ours' draws (a paired comparison)"
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="which to run, in order [default: all]")
    parser.add_argument(
        "--others-from",
        type=Path,
        default=None,
        help="take the peers not in --peers from this earlier report of the same settings",
    )
    parser.add_argument("--final-seeds", type=int, default=0, help="test each pick with this many seeds (0: none)")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET, help="mean CV to reach [default: %(default)s]")
    parser.add_argument(
        "--stores", type=Path, default=None, help="where the runs go [default: a new temp folder; --quick: in /dev/shm]"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the report goes [default: benchmarks/results]")
    parser.add_argument("--quick", action="store_true", help="the shipped sample, 2 folds, 2 trials: a smoke run")
    parser.add_argument("--peer", choices=PEERS[:2], help=argparse.SUPPRESS)  # the child process's own arguments
    parser.add_argument("--peer-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-settings", help=argparse.SUPPRESS)
    return parser


def settings(args: argparse.Namespace) -> dict:
    """The validated run settings; a bad value raises :class:`BenchError` before anything runs."""
    from mlflow_mnist.campaign import data_source
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.tasks.mnist.data import DATA_ENV_VAR

    task = get_task("mnist")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or any(p not in PEERS for p in peers):
        raise BenchError(f"--peers {args.peers!r}: choose among {', '.join(PEERS)} (comma-separated)")
    if args.quick:
        data, space, folds, trials = "sample", "seed", 2, 2
    else:
        data = args.data if args.data is not None else os.environ.get(DATA_ENV_VAR, "")
        space, folds, trials = args.space, args.folds, args.trials
        if not data:
            raise BenchError("real MNIST is needed: pass --data ../shared/datasets/mnist or set MLFLOW_MNIST_DATA")
    if data != "sample" and not Path(data).expanduser().exists():
        raise BenchError(f"--data {data}: no such file or folder; give MNIST's IDX folder or .npz")
    task.get_space(space)  # an unknown space: one line naming the known ones
    if folds < 2:
        raise BenchError(f"--folds {folds}: cross-validation needs at least 2")
    check_stores(args.stores, peers)
    if trials < 1 or args.brackets < 1 or args.final_seeds < 0 or args.seed < 0:
        raise BenchError("--trials and --brackets need at least 1, --final-seeds and --seed at least 0")
    if not 0 < args.target <= 1:
        raise BenchError(f"--target {args.target}: a mean CV accuracy is between 0 and 1")
    run = {
        "task": task.name,
        "data": data_source(task, data),
        "space": space,
        "trials": trials,
        "folds": folds,
        "seed": args.seed,
        "same_draws": args.same_draws,
        "brackets": args.brackets,
        "promotion": args.promotion,
        "peers": peers,
        "final_seeds": args.final_seeds,
        "target": args.target,
        "quick": args.quick,
    }
    if args.others_from is not None:
        run["others_from"] = str(args.others_from)
        taken_results(run)  # an unreadable or unlike report: one line now, before anything runs
    return run


#: What a taken result must share with this run; ours' own options too where ours is taken.
SAME_SETTINGS = ("task", "data", "space", "trials", "folds", "seed", "same_draws", "target")
OURS_SETTINGS = ("brackets", "promotion")


def taken_results(run: dict) -> dict[str, dict]:
    """The results of the peers this run does not run, from the report ``run["others_from"]`` of the same
    settings, each marked with the report it came from; raises :class:`BenchError` for one that cannot be used."""
    path = Path(run["others_from"])
    try:
        report = json.loads(path.read_text())
        results = report["results"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BenchError(f"--others-from {path}: not a bench_peers.py report ({type(error).__name__})") from None
    taken = {name: result for name, result in results.items() if name in PEERS and name not in run["peers"]}
    if not taken:
        raise BenchError(f"--others-from {path}: it holds no peer besides --peers {','.join(run['peers'])}")
    keys = SAME_SETTINGS + (OURS_SETTINGS if "ours" in taken else ())
    differ = [key for key in keys if report.get(key) != run[key]]
    if differ:
        raise BenchError(f"--others-from {path}: its {', '.join(differ)} differ from this run's; give the same")
    return {name: {**result, "taken_from": report.get("stem", path.stem)} for name, result in taken.items()}


def run_one(name: str, run: dict, stores: Path) -> dict:
    """One peer, in its own process, with the point where its best so far reached the target."""
    print(f"{name}: running", flush=True)
    p = run_ours(stores / name, run) if name == "ours" else spawn_peer(name, run, stores / name)
    point = reach(p["curve"], run["target"])
    p["fold_epochs_to_target"] = point["fold_epochs"] if point else None
    p["minutes_to_target"] = point["minutes"] if point else None
    print(
        f"{name}: {p['trials']} trials, {p['fold_epochs']:.0f} fold-epochs, {p['minutes']:.1f} min, best mean CV "
        f"{_cell(p['best_mean_cv'], '.5f')}",
        flush=True,
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.peer:
        run_peer(args.peer, json.loads(args.peer_settings), args.peer_out)
        return
    run, out, stores = prepare(args, settings, prefix="bench-peers-")
    results = run_each(run["peers"], lambda name: run_one(name, run, stores))
    if run.get("others_from"):
        results.update(taken_results(run))
        results = {name: results[name] for name in PEERS if name in results}
    picks = {name: p["best_config"] for name, p in results.items() if p["best_config"]}
    finals = final_seeds(picks, run, run["final_seeds"]) if run["final_seeds"] and picks else {}
    stem = report_stem("peers", run)
    report = {"machine": machine.describe(), "stem": stem, **run, "results": results, "finals": finals}
    write_report(out, stem, report, markdown(report))
    plot_curves(
        {name: p["curve"] for name, p in results.items()},
        out / f"{stem}.png",
        target=run["target"],
        common=None,
        axes=("minutes", "fold_epochs"),
        title=f"Best mean CV so far, --space {run['space']}, {run['trials']} trials, seed {run['seed']}, "
        f"{WORKERS} workers each ({machine.describe()['cpu']})",
    )
    print(markdown(report))
    print(f"written: {out / stem}.json, .md, .png")


if __name__ == "__main__":
    main()
