"""A campaign: one task's data, its search settings and its experiment in the tracking store.

Opening one validates everything a user typed and reaches the store before any run is created, so a mistake
costs one line and leaves the store untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_mnist import tracking
from mlflow_mnist.data import SAMPLE_PATH, Task, load_mnist, parse_digits, select_digits
from mlflow_mnist.model import HyperparameterError, Params, check_precision
from mlflow_mnist.search import SearchSettings, StepOutcome, check_folds, resolve_fixed_params, run_stage
from mlflow_mnist.stages import STEPS, parse_overrides, steps_of


@dataclass
class Campaign:
    task: Task
    settings: SearchSettings
    overrides: Params
    client: Any
    experiment_id: str
    adopt_run_id: str | None
    data_source: str

    @classmethod
    def open(
        cls,
        data: str,
        digits: str,
        folds: int,
        seed: int,
        epochs: int,
        overrides: str,
        experiment: str | None,
        precision: str = "float32",
    ) -> Campaign:
        check_precision(precision)
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
        settings = SearchSettings(folds, seed, epochs, task.digest(), task.n_classes, precision)
        client = tracking.connect()
        experiment_id, adopt = tracking.resolve_experiment(client, experiment)  # `mlflow run`'s run is adopted
        source = str(SAMPLE_PATH) if data == "sample" else str(Path(data).resolve()) if data else task.source
        return cls(task, settings, parsed_overrides, client, experiment_id, adopt, source)

    @property
    def stage_params(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "n_folds": self.settings.n_folds,
            "split_seed": self.settings.split_seed,
            "data_digest": self.settings.data_digest,
            "precision": self.settings.precision,
        }

    def dataset(self, split: str = "train"):
        import mlflow.data

        x, y = (self.task.x_train, self.task.y_train) if split == "train" else (self.task.x_test, self.task.y_test)
        return mlflow.data.from_numpy(
            features=x, targets=y, name=f"mnist-{self.task.name}-{split}", digest=self.task.digest(split)
        )

    def logger(self) -> tracking.RunLogger:
        return tracking.RunLogger(
            self.client,
            self.experiment_id,
            self.dataset("train"),
            common_tags={tracking.DIGEST: self.settings.data_digest, f"{tracking.PREFIX}data_source": self.data_source},
            adopted_run_id=self.adopt_run_id,
        )

    def read_state(self):
        return tracking.read_store_state(self.client, self.experiment_id, self.settings.data_digest)

    def tune(self, stage: str, n_jobs: int = 0, with_model: bool = True, progress: bool = True) -> list[StepOutcome]:
        steps = steps_of(stage)
        logger = self.logger()
        tracking.close_stale_runs(self.client, self.experiment_id, keep=[self.adopt_run_id or ""])
        with logger.closing_on_failure(tracking.tracking_uri()):
            return run_stage(
                stage,
                steps,
                self.task.x_train,
                self.task.y_train,
                self.settings,
                self.overrides,
                logger,
                self.read_state,
                n_jobs,
                self.adopt_run_id,
                progress,
                self.stage_params,
                with_model,
            )
