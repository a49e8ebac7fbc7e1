"""A campaign: one task's data, its search settings and its experiment in the tracking store.

Opening one validates everything a user typed and reaches the store before any run is created, so a mistake
costs one line and leaves the store untouched. It then wires a search: strategy, executor, run tree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlflow_mnist import experiments, tracking
from mlflow_mnist.executors import Executor
from mlflow_mnist.lock import CampaignLock
from mlflow_mnist.params import HyperparameterError, Overrides, Params, check_choice
from mlflow_mnist.planning import (
    CandidateRecord,
    FoldTask,
    SearchSettings,
    StoreState,
    check_folds,
    resolve_fixed_params,
)
from mlflow_mnist.precision import choose_precision
from mlflow_mnist.progress import Progress
from mlflow_mnist.redaction import redact
from mlflow_mnist.results import FoldResult, rank_key
from mlflow_mnist.runs import RunWriter
from mlflow_mnist.schema import (
    CLASSES,
    CV_REPEATS,
    DATA_DIGEST_PARAM,
    DATA_SOURCE,
    DIGEST,
    EPOCHS,
    FOLD_KEY,
    LOCK_TOKEN,
    N_FOLDS,
    PRECISION,
    SETTINGS_KEY,
    SPLIT_SEED,
    TASK_PARAM,
)
from mlflow_mnist.seal import RunSeal, active_seal, trusted
from mlflow_mnist.search import SearchOutcome, run_search
from mlflow_mnist.search_tree import SearchTree
from mlflow_mnist.strategies import SearchRequest, Strategy
from mlflow_mnist.tasks import DEFAULT_TASK, DataError, get_task
from mlflow_mnist.tasks.base import PRECISIONS, Dataset, Task, expand_user
from mlflow_mnist.worker import DataRef, FoldWorker, WarmUp
from mlflow_mnist.worker.process import mark_caller

# numpy's and scikit-learn's seeds are 32-bit unsigned; a final's seeds count on from the campaign's (seed + k).
MAX_SEED = 2**31 - 1
LOG_THREADS = 8  # folds logged at once to a tracking server (benchmarks/bench_driver.py); SQLite: one at a time


class NoLock:
    """The test seam's stand-in for the campaign lock: holds nothing, fences nothing."""

    token = ""

    def fenced(self, client):
        return client

    def check(self) -> None:
        pass


Hold = CampaignLock | NoLock


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _rank(candidate: CandidateRecord) -> tuple:
    """The ranking rule (:func:`mlflow_mnist.results.rank_key`) for a candidate read from the store; its trial
    number breaks exact ties, so the order never depends on the order the store returned the runs in."""
    std = candidate.std if math.isfinite(candidate.std) else math.inf
    row = {"status": candidate.status, "mean_test_score": candidate.score, "std_test_score": std}
    return rank_key(row, candidate.tags.trial or 0)


def data_source(task: Task, data: str | os.PathLike) -> str:
    """Where workers load the data from: a path made absolute (workers may start elsewhere), a name the task
    knows (``sample``) as it is, or "" for the task's default. Without ``--data``, the task's own environment
    variable (``Task.data_env``) may name it. A Python caller may give a ``Path``."""
    if not isinstance(data, str | os.PathLike):  # data=123 raised a TypeError inside pathlib
        raise DataError(
            f"data={data!r} is neither a path nor a name: give a folder or file path, or a name such as 'sample'"
        )
    data = os.fspath(data)
    chosen = data or (os.environ.get(task.data_env, "") if task.data_env else "")
    if not chosen or chosen in task.named_sources:
        return chosen
    path = expand_user(chosen, where="" if data else f" (from ${task.data_env}: fix or unset it)")
    return str(path.resolve()) if path.exists() else chosen


@dataclass
class Campaign:
    task: Task
    task_spec: str  # how workers find the task: its registered name or module:attr
    data: Dataset
    settings: SearchSettings
    overrides: Params
    client: Any
    experiment: experiments.Experiment
    data_ref: DataRef
    shipped: bool = False  # the arrays came from memory (the test seam): workers get them, not a reference
    precision_because: str = ""  # why this precision (``--precision auto``'s measurement)
    seal: RunSeal | None = None  # $MLFLOW_MNIST_SEAL_KEY_FILE's: seals the runs written, trusts only sealed ones

    @classmethod
    def open(
        cls,
        data: str = "",
        classes: str = "",
        *,
        task: str = DEFAULT_TASK,
        folds: int = 3,
        seed: int = 0,
        epochs: int | None = None,
        overrides: Overrides = "",
        experiment: str | None = None,
        precision: str = "float32",
        cv_repeats: int = 1,
        dataset: Dataset | None = None,
        executor: Executor | None = None,
        needs: str = "",
    ) -> Campaign:
        """Validate every setting, load the data (or take ``dataset``, the test seam's in-memory arrays), reach
        the store; nothing is written yet. ``needs`` names what the command reads from an earlier one (``final
        --search``: "a search"): the store and the experiment must then exist, and are never made empty."""
        mark_caller()  # a fold trained in this process (one worker) leaves it as it was
        chosen_task = get_task(task)
        check_choice("precision", precision, (*PRECISIONS, "auto"))
        if cv_repeats < 1:
            raise HyperparameterError(f"cv_repeats={cv_repeats} must be at least 1: give --cv-repeats 1 or more")
        parsed_overrides = chosen_task.parse_overrides(overrides)
        epochs = int(chosen_task.start.get(EPOCHS, 1)) if epochs is None else epochs
        if epochs < 1:
            raise HyperparameterError(f"epochs={epochs} must be at least 1: give --epochs 1 or more")
        if folds < 2:
            raise HyperparameterError(f"folds={folds}: cross-validation needs at least 2 folds")
        if not 0 <= seed <= MAX_SEED:
            fix = "0 or a larger whole number" if seed < 0 else "a smaller whole number"
            raise HyperparameterError(f"seed={seed} must be 0 to {MAX_SEED}: give --seed {fix}")
        experiments.check_experiment_name(experiment)
        seal = active_seal()  # an unusable key file is refused before the data is loaded
        # Validate overrides now, on top of the task's start, so a typo never reaches the store.
        chosen_task.validate({**chosen_task.start, EPOCHS: epochs, **parsed_overrides})
        source = data_source(chosen_task, data)
        try:
            loaded = dataset if dataset is not None else chosen_task.load(source, classes=classes)
        except DataError as error:
            if data or not source or not chosen_task.data_env:
                raise
            # The user gave no --data: say where the value came from, or they look for it on the command line.
            raise DataError(f"{error} (from ${chosen_task.data_env}: fix or unset it)") from None
        check_folds(loaded.y_train, folds, loaded.class_names)
        spec = task or DEFAULT_TASK
        ref = DataRef(spec, source, classes, loaded.digest())
        probe = functools.partial(
            choose_precision,
            chosen_task,
            loaded,
            precision,
            task_spec=spec,
            threads=executor.threads_per_worker if executor is not None else None,
        )
        # A remote cluster's workers are probed, once it is reached; else this machine, before the pool starts,
        # so that no TensorFlow import shares the cores with the timed epochs.
        probe_there = precision == "auto" and executor is not None and executor.remote
        if not probe_there:
            if precision == "auto":
                tracking.reach()  # the probe may train for ~20 s: a store that refuses the command says so first
            precision, precision_because = probe()
        start_workers = None
        if executor is not None:
            # Once the store has answered (a refused command starts no process), the cluster is reached, with a
            # worker that imports the project, before any write; a local pool's processes ready themselves
            # (TensorFlow, the data) while this one builds a new store and sets up.
            warm_up = WarmUp(None if dataset is not None else ref, executor.threads_per_worker, os.getpid())
            start_workers = functools.partial(executor.start, warm_up=warm_up)
        client = tracking.connect(on_reached=start_workers, existing=bool(needs))
        if probe_there:
            precision, precision_because = probe(workers=executor)
        settings = SearchSettings(
            chosen_task,
            folds,
            seed,
            epochs,
            ref.digest,
            loaded.n_classes,
            precision,
            cv_repeats,
        )
        where = experiments.resolve_experiment(  # `mlflow run`'s is adopted
            client,
            experiment,
            default=chosen_task.name,
            task=chosen_task.name,
            must_exist=bool(needs),
            missing_fix=f"check --experiment, or run {needs} first",
        )
        campaign = cls(chosen_task, spec, loaded, settings, parsed_overrides, client, where, ref, dataset is not None)
        campaign.precision_because = precision_because
        campaign.seal = seal
        return campaign

    @property
    def experiment_id(self) -> str:
        return self.experiment.experiment_id

    @property
    def adopt_run_id(self) -> str | None:
        return self.experiment.launcher_run_id

    @property
    def stage_params(self) -> dict[str, Any]:
        return {
            TASK_PARAM: self.task.name,
            CLASSES: self.data.variant,
            N_FOLDS: self.settings.n_folds,
            SPLIT_SEED: self.settings.split_seed,
            DATA_DIGEST_PARAM: self.settings.data_digest,
            PRECISION: self.settings.precision,
            CV_REPEATS: self.settings.cv_repeats,
        }

    def dataset(self, split: str = "train"):
        import mlflow.data

        x, y = self.data.arrays(split)
        name = f"{self.task.name}-{self.data.variant}-{split}"
        return mlflow.data.from_numpy(features=x, targets=y, name=name, digest=self.data.digest(split))

    def writer(self, hold: Hold) -> RunWriter:
        """The run writer of one command, writing through the lock's fenced client: a driver that has lost its
        lock writes nothing more; every run carries its holder's token (close_stale_runs spares them)."""
        return RunWriter(
            hold.fenced(self.client),
            self.experiment_id,
            dataset=self.dataset("train"),
            common_tags={
                DIGEST: self.settings.data_digest,
                SETTINGS_KEY: self.settings.key(),
                DATA_SOURCE: redact(self.data.source),  # a URL's credentials never reach the store
                **({LOCK_TOKEN: hold.token} if hold.token else {}),
            },
            adopted_run_id=self.adopt_run_id,
            seal=self.seal,
        )

    def break_lease(self, notify: Callable[[str], None]) -> None:
        """``--break-lease``: break the lock of a holder that is gone from another machine (one still running on
        this machine is refused), saying whose it was."""
        from mlflow_mnist.lock import break_lock

        command = redact(" ".join(["mlflow-mnist", *sys.argv[1:4]]))
        whom = break_lock(self.client, self.experiment_id, command=command, notify=notify)
        notify(f"broke the lease of {whom}" if whom else "--break-lease: nobody held this experiment")

    @contextmanager
    def hold(self, *, lock: bool = True, notify: Callable[[str], None] | None = None) -> Iterator[Hold]:
        """This driver's hold on the experiment (:class:`mlflow_mnist.lock.CampaignLock`): only one driver writes
        it at a time. Runs that earlier holders left RUNNING are closed once it is held. ``lock=False`` (the test
        seam) holds nothing."""
        if not lock:
            yield NoLock()
            return
        command = redact(" ".join(["mlflow-mnist", *sys.argv[1:4]]))
        with CampaignLock(self.client, self.experiment_id, command=command, notify=notify or _stderr) as held:
            tracking.close_stale_runs(
                held.fenced(self.client), self.experiment_id, holder_token=held.token, keep=[self.adopt_run_id or ""]
            )
            yield held

    def read_state(self) -> StoreState:
        return tracking.read_store_state(
            self.client, self.experiment_id, self.settings.data_digest, self.settings.key(), seal=self.seal
        )

    def load_checkpoint(self, fold_key: str) -> dict[str, bytes] | None:
        """The saved model of the finished fold ``fold_key`` (an earlier rung a fold continues from), as the folder
        a worker returned; None when the store has none."""
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{FOLD_KEY}` = '{fold_key}' and attributes.status = 'FINISHED'",
            max_results=5,
        )
        for run in runs:  # the model as the fold recorded it: others can add model outputs
            if not trusted(run, self.seal):
                continue
            if (files := tracking.run_model_files(self.client, run)) is not None:
                return files
        return None

    def worker_data(self) -> DataRef | Dataset:
        """What workers load: a reference, or the arrays themselves when they came from memory (the test seam)."""
        return self.data if self.shipped else self.data_ref

    def search(
        self,
        strategy: Strategy,
        *,
        executor: Executor,
        with_model: bool = True,
        progress: bool = True,
        lock: bool = True,
        worker: Callable[[FoldTask], FoldResult] | None = None,
    ) -> SearchOutcome:
        """Run ``strategy`` on ``executor``; the driver alone writes the run tree.

        ``lock=False`` and ``worker`` (a stand-in for training) are the test seam's (:mod:`mlflow_mnist.testing`).
        """
        with self.hold(lock=lock) as hold:
            return self._search(
                strategy, hold, executor=executor, with_model=with_model, progress=progress, worker=worker
            )

    def _search(self, strategy: Strategy, hold: Hold, *, executor, with_model, progress, worker) -> SearchOutcome:
        writer = self.writer(hold)
        tree = SearchTree(
            writer,
            name=strategy.search_name,
            strategy=strategy.name,
            single_group=strategy.single_group,
            settings_params=self.stage_params,
            adopt_run_id=self.adopt_run_id,
            log_threads=LOG_THREADS if tracking.tracking_uri().startswith(("http://", "https://")) else 1,
            neutral=self.task.neutral,
            space=strategy.space,
            search_options=strategy.search_options,
        )
        worker = worker or FoldWorker(
            self.task_spec, self.worker_data(), executor.threads_per_worker, with_model, driver_pid=os.getpid()
        )
        with writer.closing_on_failure(tracking.tracking_uri()):
            outcome = run_search(
                strategy,
                settings=self.settings,
                executor=executor,
                worker=worker,
                read_state=self.read_state,
                listeners=[tree, Progress(progress, workers=executor.n_workers)],
                load_checkpoint=self.load_checkpoint,
                fence=hold.check,
            )
        outcome.run_id = tree.root
        return outcome

    def search_key(self, *parts: object) -> str:
        """Identity of a joint search: the same key on a rerun finds (and continues) the same search."""
        text = json.dumps([self.settings.key(), self.settings.canonical(self.overrides), *map(str, parts)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def request(self, **options: Any) -> SearchRequest:
        """What a strategy is built from: this campaign's task, epochs, overrides, seed and key, and ``options``."""
        defaults = {
            "task": self.task,
            "epochs": self.settings.epochs,  # SearchRequest's field, not the hyperparameter's name
            "overrides": self.overrides,
            "seed": self.settings.split_seed,
            "search_key": self.search_key,
            "warm_configs": self.warm_configs,
        }
        return SearchRequest(**{**defaults, **options})

    def warm_configs(self, state: StoreState) -> list[Params]:
        """The experiment's best configurations, best first: the staged grid's carry-forward winner, then the
        trials of earlier joint searches (their sampled values) by mean CV accuracy at their full budget."""
        configs = [self.final_params(state)] if state.step_bests else []
        trials = [
            c
            for c in state.candidates
            if c.finished
            and c.status == "ok"
            and c.tags.trial is not None
            and (c.tags.rung is None or c.tags.rung.counts)
        ]
        configs += [c.tags.sampled for c in sorted(trials, key=_rank)]
        return configs

    def final_params(self, state: StoreState) -> Params:
        return resolve_fixed_params(
            self.task, "final", state.step_bests, overrides=self.overrides, epochs=self.settings.epochs
        )
