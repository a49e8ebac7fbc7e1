"""A campaign: one task's data, its search settings and its experiment in the tracking store.

Opening one validates everything a user typed and reaches the store before any run is created, so a mistake
costs one line and leaves the store untouched. It then wires a search: strategy, executor, run tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_mnist import tracking
from mlflow_mnist.data import DATA_ENV_VAR, SAMPLE_PATH, DataRef, Task, load_mnist, parse_digits, select_digits
from mlflow_mnist.executors import Executor, JoblibExecutor
from mlflow_mnist.lease import CampaignLease
from mlflow_mnist.model import HyperparameterError, Params, check_precision
from mlflow_mnist.planning import Group, SearchSettings, StoreState, canonical, check_folds, resolve_fixed_params
from mlflow_mnist.runs import RunWriter
from mlflow_mnist.search import GroupOutcome, Progress, run_search
from mlflow_mnist.search_tree import SearchTree
from mlflow_mnist.spaces import Space, get_space
from mlflow_mnist.stages import STEPS, StageError, Step, parse_overrides, steps_of
from mlflow_mnist.strategies import STRATEGIES, OptunaSearch, StagedGrid, Strategy, SuccessiveHalving, trial_records
from mlflow_mnist.worker import FoldWorker

LOG_THREADS = 8  # folds logged at once to a tracking server (benchmarks/bench_driver.py); SQLite: one at a time


def _data_source(data: str) -> str:
    """Where workers load the data from: ``sample``, an absolute path, or "" for Keras' own cache."""
    if data == "sample":
        return "sample"
    chosen = data or os.environ.get(DATA_ENV_VAR, "")
    return str(Path(chosen).expanduser().resolve()) if chosen else ""


@dataclass
class Campaign:
    task: Task
    settings: SearchSettings
    overrides: Params
    client: Any
    experiment: tracking.Experiment
    data_ref: DataRef
    data_source: str

    @classmethod
    def open(
        cls,
        data: str,
        digits: str,
        *,
        folds: int = 3,
        seed: int = 0,
        epochs: int = 6,
        overrides: str = "",
        experiment: str | None = None,
        precision: str = "float32",
        cv_repeats: int = 1,
    ) -> Campaign:
        check_precision(precision)
        if cv_repeats < 1:
            raise HyperparameterError(f"cv_repeats={cv_repeats} must be at least 1")
        parsed_overrides = parse_overrides(overrides)
        if epochs < 1:
            raise HyperparameterError(f"epochs={epochs} must be at least 1")
        if folds < 2:
            raise HyperparameterError(f"folds={folds}: cross-validation needs at least 2 folds")
        chosen = parse_digits(digits)
        # Validate overrides now, on top of the seed's start, so a typo never reaches the store.
        resolve_fixed_params(STEPS[0].name, {}, parsed_overrides, epochs)
        task = select_digits(load_mnist(data), chosen)
        check_folds(task.y_train, folds, chosen)
        settings = SearchSettings(folds, seed, epochs, task.digest(), task.n_classes, precision, cv_repeats)
        client = tracking.connect()
        where = tracking.resolve_experiment(client, experiment)  # `mlflow run`'s run is adopted
        source = str(SAMPLE_PATH) if data == "sample" else str(Path(data).resolve()) if data else task.source
        ref = DataRef(_data_source(data), chosen, settings.data_digest)
        return cls(task, settings, parsed_overrides, client, where, ref, source)

    @property
    def experiment_id(self) -> str:
        return self.experiment.experiment_id

    @property
    def adopt_run_id(self) -> str | None:
        return self.experiment.launcher_run_id

    @property
    def stage_params(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "n_folds": self.settings.n_folds,
            "split_seed": self.settings.split_seed,
            "data_digest": self.settings.data_digest,
            "precision": self.settings.precision,
            "cv_repeats": self.settings.cv_repeats,
        }

    def dataset(self, split: str = "train"):
        import mlflow.data

        x, y = (self.task.x_train, self.task.y_train) if split == "train" else (self.task.x_test, self.task.y_test)
        return mlflow.data.from_numpy(
            features=x, targets=y, name=f"mnist-{self.task.name}-{split}", digest=self.task.digest(split)
        )

    def writer(self) -> RunWriter:
        return RunWriter(
            self.client,
            self.experiment_id,
            dataset=self.dataset("train"),
            common_tags={
                tracking.DIGEST: self.settings.data_digest,
                tracking.SETTINGS_KEY: self.settings.key(),
                f"{tracking.PREFIX}data_source": self.data_source,
            },
            adopted_run_id=self.adopt_run_id,
        )

    def lease(self) -> CampaignLease:
        """This driver's hold on the experiment: only one driver may write it at a time."""
        return CampaignLease(self.client, self.experiment_id, command=" ".join(["mlflow-mnist", *sys.argv[1:4]]))

    def read_state(self) -> StoreState:
        return tracking.read_store_state(
            self.client, self.experiment_id, self.settings.data_digest, self.settings.key()
        )

    def search(
        self,
        strategy: Strategy,
        *,
        name: str,
        executor: Executor,
        with_model: bool = True,
        progress: bool = True,
    ) -> list[GroupOutcome]:
        """Run ``strategy`` as search run ``name`` on ``executor``; the driver alone writes the run tree."""
        writer = self.writer()
        tree = SearchTree(
            writer,
            name=name,
            strategy=strategy.name,
            single_group=strategy.single_group,
            settings_params=self.stage_params,
            adopt_run_id=self.adopt_run_id,
            log_threads=LOG_THREADS if tracking.tracking_uri().startswith(("http://", "https://")) else 1,
        )
        worker = FoldWorker(self.data_ref, executor.threads_per_worker, with_model, driver_pid=os.getpid())
        with self.lease(), writer.closing_on_failure(tracking.tracking_uri()):
            tracking.close_stale_runs(self.client, self.experiment_id, keep=[self.adopt_run_id or ""])
            return run_search(
                strategy,
                settings=self.settings,
                executor=executor,
                worker=worker,
                read_state=self.read_state,
                listeners=[tree, Progress(progress)],
            )

    def tune(
        self,
        stage: str,
        *,
        steps: Sequence[Step] | None = None,
        executor: Executor | None = None,
        n_jobs: int = 0,
        with_model: bool = True,
        progress: bool = True,
    ) -> list[GroupOutcome]:
        """The seed's staged grid for ``stage`` (its ``steps``, when the caller has already looked them up)."""
        strategy = StagedGrid(steps or steps_of(stage), overrides=self.overrides, epochs=self.settings.epochs)
        if executor is not None:
            return self.search(strategy, name=stage, executor=executor, with_model=with_model, progress=progress)
        with JoblibExecutor(n_jobs) as own:
            return self.search(strategy, name=stage, executor=own, with_model=with_model, progress=progress)

    def search_key(self, *parts: object) -> str:
        """Identity of a joint search: the same key on a rerun finds (and continues) the same search."""
        text = json.dumps([self.settings.key(), canonical(self.overrides), *map(str, parts)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def strategy(
        self,
        name: str,
        *,
        stage: str = "",
        steps: Sequence[Step] = (),
        space: Space | None = None,
        trials: int = 20,
        factor: int = 3,
        batch: int = 4,
    ) -> tuple[Strategy, str]:
        """The strategy a user named and its search run's name: staged (``steps`` of ``stage``), halving (of those
        steps, or of ``trials`` configurations sampled from ``space``), or optuna (``trials`` over ``space``)."""
        if name == "staged":
            return StagedGrid(steps, overrides=self.overrides, epochs=self.settings.epochs), stage
        if name == "halving" and steps:
            strategy = SuccessiveHalving(
                steps=steps, overrides=self.overrides, epochs=self.settings.epochs, factor=factor
            )
            return strategy, f"{stage} (halving)"
        chosen = space or get_space("wide")
        key = self.search_key(name, chosen.name, factor, self.settings.split_seed, trials if name == "halving" else "")
        if name == "halving":
            group = Group(name=f"halving:{chosen.name}", step=f"halving:{chosen.name}", varied=chosen.names)

            def sample():
                return OptunaSearch.sampled_configs(
                    chosen, trials, seed=self.settings.split_seed, overrides=self.overrides
                )

            return SuccessiveHalving(sample=sample, sample_group=group, factor=factor), f"halving:{chosen.name}"
        if name == "optuna":
            strategy = OptunaSearch(
                chosen,
                n_trials=trials,
                overrides=self.overrides,
                batch=batch,
                factor=factor,
                seed=self.settings.split_seed,
                search_key=key,
                past_trials=lambda: trial_records(
                    tracking.search_all(self.client, [self.experiment_id], f"tags.`{tracking.SEARCH_KEY}` = '{key}'"),
                    key,
                ),
            )
            return strategy, f"optuna:{chosen.name}"
        raise StageError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
