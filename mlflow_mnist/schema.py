"""The run-tree schema: every tag name the tool writes, the metric and param names other modules read back, and a
typed record per level with its format and parse.

    search run      level "stage" (several groups) or "step" (a single-group search)
      group run     level "step": a staged step, a rung of successive halving
        candidate   level "candidate": a grid point, a sampled configuration, a trial at a rung
          fold      level "fold": one split, its curves and model
    final run       level "final", with "final_seed" children when there are several seeds
    analysis run    level "analysis"

Meaning travels as typed values: a rung is ``(index, count, budget)`` and counts when ``index == count``; a
candidate's role is a word; numbers are numbers. Parsing accepts what older versions wrote (a rung's
``final_rung`` "true"/"false" tag, ``@`` inside low rungs' step names, a final's task tag holding its class
variant), so every store this tool ever made reads the same. Nothing else in the tool spells a tag name, nor the
name of a metric or param that another module reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_mnist.params import Params, from_json, json_value

PREFIX = "mlflow_mnist."
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # the run's description in the UI (markdown)
DATASET_CONTEXT = "mlflow.data.context"  # a logged dataset input's role: "train" or "test"
# MLflow's tag for an experiment of model training. MLflow 3.17's UI does not read it to choose a view: it opens
# experiments on the GenAI overview until the user picks "Model training" once (remembered by the browser).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _tag(name: str) -> str:
    return f"{PREFIX}{name}"


# -- levels --------------------------------------------------------------------------------------------------
LEVEL = _tag("level")
STAGE_LEVEL, STEP_LEVEL, CANDIDATE_LEVEL, FOLD_LEVEL = "stage", "step", "candidate", "fold"
FINAL_LEVEL, FINAL_SEED_LEVEL, ANALYSIS_LEVEL = "final", "final_seed", "analysis"

# -- every run of a campaign ---------------------------------------------------------------------------------
DIGEST = _tag("data_digest")
SETTINGS_KEY = _tag("settings_key")  # SearchSettings.key(): which runs' step bests may carry forward
DATA_SOURCE = _tag("data_source")
TASK = _tag("task")  # the task's name; before tasks existed, a final's class variant ("3v5")
TASK_VARIANT = _tag("task_variant")  # which classes ("3v5", "all")
STAGE = _tag("stage")
STEP = _tag("step")
STATUS = _tag("status")
BEST_CHILD = _tag("best_child_run_id")
LOCK_TOKEN = _tag("lock_token")  # the campaign lock holder that wrote the run
LOCK_PREFIX = _tag("lock.")  # the campaign lock's own tags, on its registered models (lock.py): lock.state, ...
SEAL = _tag("seal")  # seal.py: the keyed digest of a finished run, written last; readers with the key check it

# -- search and group runs -----------------------------------------------------------------------------------
STRATEGY = _tag("strategy")
SEARCH_KEY = _tag("search_key")
BEST_CONFIG = _tag("best_config")  # a search's best full configuration: what `final --search` trains
VERSION_PREFIX = _tag("version.")
PLAN_HASH = _tag("plan_hash")
VARIED = _tag("varied")
INCUMBENT = _tag("incumbent")  # the carried-in values of the varied parameters
REFERENCE_RULE = _tag("reference_rule")  # how a staged step's reference was trained: FRESH or REUSED
BEST_PARAMS, BEST_SCORE, BEST_CANDIDATE = _tag("best_params"), _tag("best_mean_accuracy"), _tag("best_candidate")
RUNG, RUNGS, BUDGET = _tag("rung"), _tag("rungs"), _tag("budget_epochs")
LEGACY_FINAL_RUNG = _tag("final_rung")  # "true"/"false", written before rungs carried their count
SPACE = _tag("space")  # a joint search's space: its name and each dimension's distribution (Optuna's JSON)

# -- candidate and fold runs ---------------------------------------------------------------------------------
CONFIG_HASH = _tag("config_hash")
CANDIDATE = _tag("candidate")
CANDIDATE_INDEX = _tag("candidate_index")
ROLE = _tag("role")
TRIAL, SAMPLED = _tag("trial"), _tag("sampled")
COLLAPSED_FOLDS = _tag("collapsed_folds")
REUSED = _tag("reused_fold_runs")
FOLD_KEY = _tag("fold_key")
FOLD, REPEAT, WORKER, ERROR = _tag("fold"), _tag("repeat"), _tag("worker"), _tag("error")

# -- final runs ----------------------------------------------------------------------------------------------
MEDIAN_RUN, MEDIAN_MODEL = _tag("median_run_id"), _tag("median_model_id")
ENSEMBLE_MODEL = _tag("ensemble_model_id")  # the seeds' average as one LoggedModel
TEST_DIGEST, TEST_SIZE = _tag("test_digest"), _tag("test_size")  # which test set the accuracy is on
SOURCE_RUNS = _tag("source_step_runs")
SEED = _tag("seed")
CONFIG_RANK = _tag("config_rank")  # a seed run of a final over several configurations: 1 = the search's best
# planning.final_seed_key: by it the next final takes a killed final's finished seeds instead of retraining them
FINAL_SEED_KEY = _tag("final_seed_key")
PROBABILITIES_SHA256 = "probabilities_sha256"  # param: a seed's test_probabilities.npy, which a resumed final reads
RESUMED_FROM = _tag("resumed_from_final_runs")  # the killed finals whose finished seeds a final took (comma-separated)
# Tags a run may gain after its seal was written (a best child named once its siblings end, folds and seeds taken
# over by a later run): outside the seal, with MLflow's own (parent, note). Nothing a reader trusts a run for.
UNSEALED_TAGS = frozenset({SEAL, BEST_CHILD, REUSED, RESUMED_FROM})

# -- registered model versions (promote) -----------------------------------------------------------------------
CHAMPION = "champion"  # the alias that names the served version
# Every tag of a version promote creates ("" where none applies); plain names, as the registry UI shows them.
VERSION_TEST_ACCURACY, VERSION_TEST_ERRORS = "test_accuracy", "test_errors"
VERSION_TEST_DIGEST, VERSION_TEST_SIZE, VERSION_TEST_SET_USES = "test_digest", "test_size", "test_set_uses"
VERSION_TASK, VERSION_TASK_VARIANT, VERSION_MODEL_KIND = "task", "task_variant", "model_kind"
#: The served answer's columns, in order: a JSON list of the task's class names (column k is the k-th name).
VERSION_CLASS_NAMES = "class_names"
#: The threshold the gate applied (``--min-accuracy``, or the task's own).
VERSION_MIN_ACCURACY = "min_accuracy"
VERSION_SOURCE_RUN, VERSION_FINAL_RUN = "source_run", "final_run"
VERSION_PREVIOUS_CHAMPION, VERSION_DECIDED_BY = "previous_champion", "decided_by"  # "gate", or "--force"
DECIDED_BY_GATE, DECIDED_BY_FORCE = "gate", "--force"  # versions before this one carried forced="true"/"false"
VERSION_MCNEMAR_CANDIDATE_ONLY, VERSION_MCNEMAR_CHAMPION_ONLY = "mcnemar_candidate_only", "mcnemar_champion_only"
VERSION_MCNEMAR_P = "mcnemar_p"
# The final's repeats param, its training data's digest, and its params as JSON (less task and data_digest).
VERSION_REPEATS, VERSION_DATA_DIGEST, VERSION_PARAMS = "repeats", "data_digest", "params"
# The version serves a copy of the files the gate verified (model_files.tree_sha256 of them), made from the
# LoggedModel it measured (verified_model); read_champion and load_champion check the files against the digest that
# copy recorded (COPY_RECORD, below).
VERSION_MODEL_SHA256, VERSION_VERIFIED_MODEL = "model_sha256", "verified_model"
# Every LoggedModel the tool writes (fold, seed, ensemble and registered copy) has its files' digest as this param,
# logged once its files are uploaded and before it is READY: a param is written once, its folder can be changed by
# anyone who can write the artifact store. Readers (the gate, a continued fold, a resumed final) compare it.
MODEL_SHA256 = VERSION_MODEL_SHA256
# The LoggedModel a run logged (a fold's, a seed's, the final's ensemble; each run logs at most one), a param of the
# run written once as the model is READY: readers (the gate, a resumed final, a continued fold) take the run's model
# from it, not from the run's model outputs or a tag, to which anyone can add a model of their own (one created
# while the run was open names it as its source as well as the real one does).
LOGGED_MODEL_ID = "logged_model_id"
COPY_OF = _tag("copy_of")  # on that copy (a LoggedModel promote creates): the id of the model it copies
# ... and the registered model it was made for (copies' names lose '.', '/', ...: "a.b" and "a-b" share one); the
# next promote of that name deletes its copies no version uses (left by a promote killed after its upload).
COPY_FOR = _tag("copy_for")
# What the gate verified, also recorded as params of that copy, named as the version's tags: a LoggedModel's params
# are written once (MLflow refuses to change one), a version's tags anyone can set. read_champion and load_champion
# read these; the tags are for people reading the registry.
COPY_RECORD = (
    VERSION_MODEL_SHA256, VERSION_TEST_ACCURACY, VERSION_TEST_ERRORS, VERSION_TEST_DIGEST, VERSION_TEST_SIZE,
    VERSION_TASK, VERSION_TASK_VARIANT, VERSION_MODEL_KIND, VERSION_FINAL_RUN, VERSION_VERIFIED_MODEL,
)  # fmt: skip
#: What a version serves: the final's median seed, or its seeds' ensemble.
MEDIAN_KIND, ENSEMBLE_KIND = "median seed", "seed ensemble"

#: Candidate roles: a point of a step's grid, the step's reference (the carried-in configuration trained
#: afresh, fixed before any score is seen), a configuration sampled from a space, an Optuna trial.
GRID, REFERENCE, SAMPLE, TRIAL_ROLE = "grid", "reference", "sample", "trial"
#: A staged step's reference: trained afresh in the step, or the carried-in grid point's folds reused from the
#: step before (the only rule before references were retrained; biased, since they won that step).
FRESH, REUSED_RULE = "fresh", "reused"
MAX_TAG = 5000  # MLflow's tag value limit is 8,000 characters; long JSON is cut well before it

# -- metrics and params ----------------------------------------------------------------------------------------
# The names of the metrics and params one module writes and another reads back: the campaign's memory
# (tracking.read_store_state), the gate, the analysis, the tools and the benchmarks. Readers take ``.get(name,
# nan)``, so a name changed on one side only fails silently; and every store ever written carries these values.
# Fold runs: its held-out split's accuracy (linked to the fold's model) and loss, what guessing the majority class
# scores, the seconds of its fit and the epochs it trained.
HELDOUT_ACCURACY, HELDOUT_LOSS, CHANCE_ACCURACY = "heldout_accuracy", "heldout_loss", "chance_accuracy"
FIT_SECONDS, EPOCHS_RUN = "fit_seconds", "epochs_run"
# Candidate runs (a parent carries its best child's): over the candidate's folds. A candidate's CHANCE_ACCURACY is
# its folds' mean.
MEAN_HELDOUT_ACCURACY, STD_HELDOUT_ACCURACY = "mean_heldout_accuracy", "std_heldout_accuracy"
MIN_HELDOUT_ACCURACY, MEAN_FIT_SECONDS, RANK = "min_heldout_accuracy", "mean_fit_seconds", "rank"
BEST_FOLD_HELDOUT_ACCURACY = "best_fold_heldout_accuracy"
# Group and search runs: their best candidate's mean and std; the share of the search its workers sat idle.
BEST_MEAN_ACCURACY, BEST_STD_ACCURACY = "best_mean_accuracy", "best_std_accuracy"
WORKERS_IDLE_SHARE = "workers_idle_share"
# Seed runs (the final run itself with one seed): the test set's accuracy (linked to the seed's model), loss, errors.
SEED_ACCURACY, SEED_LOSS, SEED_ERRORS = "test_accuracy", "test_loss", "test_errors"
# Final runs: the median seed's test accuracy (what ``promote --model median`` gates on), the seeds' ensemble's
# (linked to the ensemble's model; ``--model ensemble``) and its errors, and the spread over seeds.
MEDIAN_ACCURACY, ENSEMBLE_ACCURACY = "median_test_accuracy", "ensemble_test_accuracy"
ENSEMBLE_ERRORS = "ensemble_test_errors"
MEAN_TEST_ACCURACY, STD_TEST_ACCURACY = "mean_test_accuracy", "std_test_accuracy"
MIN_TEST_ACCURACY, MAX_TEST_ACCURACY = "min_test_accuracy", "max_test_accuracy"
SPREAD = (MEAN_TEST_ACCURACY, STD_TEST_ACCURACY, MIN_TEST_ACCURACY, MAX_TEST_ACCURACY)
# The campaign's settings: params of every search, fold and final run.
TASK_PARAM, CLASSES, DATA_DIGEST_PARAM = "task", "classes", "data_digest"
N_FOLDS, SPLIT_SEED, CV_REPEATS, PRECISION = "n_folds", "split_seed", "cv_repeats", "precision"
# A fold run's split (besides N_FOLDS and SPLIT_SEED): fold ``FOLD_PARAM`` of repeat ``REPEAT_PARAM``; a continued
# fold's schedule horizon and the fold key it continues ("none" for a first rung).
FOLD_PARAM, REPEAT_PARAM, HORIZON_EPOCHS, CONTINUES = "fold", "repeat", "horizon_epochs", "continues"
# The tasks' epochs hyperparameter (tasks.base.FIT_PARAMS): a param of every candidate, fold and final run, and
# the budget a rung of successive halving sets.
EPOCHS = "epochs"
# A final run's seed count, and (only when above one) how many of a search's best configurations they spread over.
REPEATS, CONFIGS = "repeats", "configs"
# A final's seed runs (their ids' digest, final_tree.seed_runs_sha256), logged as it ends: written once, so the gate
# tells its seeds from runs re-parented under it later.
SEED_RUNS = "seed_runs_sha256"
# A final's data (tasks.base.dataset_sha256: the full sha256 of the arrays it trained and tested on), logged as it
# starts. The task's own digests (DIGEST, TEST_DIGEST) are 64 bits, short enough to collide on purpose.
DATA_SHA256 = "data_sha256"
# A final's end (ms since the epoch, the final's clock), logged as its last write, after every metric, tag and model
# of the final and its seeds, just before the run is closed (with the same time as its end_time). The run's end_time
# can be set again through the API (``set_terminated`` works on a finished run); this param is written once, so the
# gate's "while the final was open" windows end here.
ENDED_MS = "ended_ms"
#: The run ``mlflow run`` made already holds the entry point's -P values: a param of ours that differs is logged
#: beside it under this prefix (``effective_precision``).
EFFECTIVE_PREFIX = "effective_"


def effective_param(params: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """The value a command used for param ``name``: its ``effective_`` param where ``mlflow run``'s -P value (say
    ``classes=''``, "the default") differs from it, else the param itself."""
    return params.get(EFFECTIVE_PREFIX + name, params.get(name, default))


def as_int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def as_float(value: Any, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Rung:
    """Where a group or candidate sits in successive halving: rung ``index`` of ``count``, at ``budget`` epochs.
    Only the last rung decides anything (a step's result, a trial's value)."""

    index: int
    count: int
    budget: int

    @property
    def counts(self) -> bool:
        return self.index >= self.count

    def tags(self) -> dict[str, str]:
        return {RUNG: str(self.index), RUNGS: str(self.count), BUDGET: str(self.budget)}

    @classmethod
    def parse(cls, tags: Mapping[str, str]) -> Rung | None:
        index = as_int(tags.get(RUNG))
        if index is None:
            return None
        count = as_int(tags.get(RUNGS))
        if count is None:  # older stores: only whether it was the last
            count = index if tags.get(LEGACY_FINAL_RUNG, "true") == "true" else index + 1
        return cls(index, count, as_int(tags.get(BUDGET), 0) or 0)


def counts(tags: Mapping[str, str]) -> bool:
    """Whether a group or candidate run decides anything: it is not a low rung of successive halving."""
    rung = Rung.parse(tags)
    return rung is None or rung.counts


def step_name(tags: Mapping[str, str]) -> str:
    """The step a run belongs to; older stores put ``@rung2`` or ``@6`` after a low rung's step name."""
    return str(tags.get(STEP, "")).split("@")[0]


@dataclass(frozen=True)
class TaskRef:
    """Which task and which of its class variants a run was made on."""

    name: str
    variant: str

    def tags(self) -> dict[str, str]:
        return {TASK: self.name, TASK_VARIANT: self.variant}

    @classmethod
    def parse(cls, tags: Mapping[str, str], *, legacy_task: str) -> TaskRef:
        """Stores made before tasks existed tagged only the variant (``task=3v5``): it is ``legacy_task``'s."""
        if TASK_VARIANT in tags:
            return cls(str(tags.get(TASK, "")), str(tags[TASK_VARIANT]))
        return cls(legacy_task, str(tags.get(TASK, "")))

    def version_tags(self) -> dict[str, str]:
        return {VERSION_TASK: self.name, VERSION_TASK_VARIANT: self.variant}

    @classmethod
    def parse_version(cls, tags: Mapping[str, str], *, legacy_task: str) -> TaskRef | None:
        """A model version's task; versions registered before tasks existed carry only ``task=3v5``; None when
        the version has no task tag at all."""
        if VERSION_TASK_VARIANT in tags:
            return cls(str(tags.get(VERSION_TASK, "")), str(tags[VERSION_TASK_VARIANT]))
        return cls(legacy_task, str(tags[VERSION_TASK])) if tags.get(VERSION_TASK) else None


@dataclass(frozen=True)
class GroupTags:
    """What a group run (a step, a rung) says about itself when it starts."""

    step: str
    varied: tuple[str, ...]
    incumbent: Params
    plan_hash: str
    rung: Rung | None = None
    reference_rule: str = REUSED_RULE

    def tags(self) -> dict[str, str]:
        tags = {
            STEP: self.step,
            PLAN_HASH: self.plan_hash,
            VARIED: json.dumps(list(self.varied)),
            INCUMBENT: json.dumps({k: json_value(v) for k, v in self.incumbent.items()}),
            REFERENCE_RULE: self.reference_rule,
        }
        return {**tags, **(self.rung.tags() if self.rung else {})}

    @classmethod
    def parse(cls, tags: Mapping[str, str]) -> GroupTags:
        varied = tuple(json.loads(tags.get(VARIED) or "[]"))
        incumbent = from_json(json.loads(tags.get(INCUMBENT) or "{}"))
        rule = str(tags.get(REFERENCE_RULE, REUSED_RULE))
        return cls(step_name(tags), varied, incumbent, str(tags.get(PLAN_HASH, "")), Rung.parse(tags), rule)


@dataclass(frozen=True)
class GroupResult:
    """What a group run says when it finishes: its best candidate's varied values and mean score."""

    best_params: Params
    best_score: float
    best_candidate: str

    def tags(self) -> dict[str, str]:
        return {
            BEST_PARAMS: json.dumps({k: json_value(v) for k, v in self.best_params.items()}),
            BEST_SCORE: repr(self.best_score),
            BEST_CANDIDATE: self.best_candidate,
        }

    @classmethod
    def parse(cls, tags: Mapping[str, str]) -> GroupResult | None:
        if BEST_PARAMS not in tags:
            return None
        params = from_json(json.loads(tags[BEST_PARAMS]))
        return cls(params, as_float(tags.get(BEST_SCORE)), str(tags.get(BEST_CANDIDATE, "")))


@dataclass(frozen=True)
class CandidateTags:
    """A candidate run: its step, label, position, role, and a trial's number and sampled values."""

    step: str
    label: str
    index: int
    config_hash: str
    varied: tuple[str, ...]
    role: str = GRID
    rung: Rung | None = None
    trial: int | None = None
    sampled: Params = field(default_factory=dict)
    search_key: str = ""

    def tags(self) -> dict[str, str]:
        tags = {
            STEP: self.step,
            CANDIDATE: self.label,
            CANDIDATE_INDEX: str(self.index),
            CONFIG_HASH: self.config_hash,
            VARIED: json.dumps(list(self.varied)),
            ROLE: self.role,
        }
        if self.rung is not None:
            tags.update(self.rung.tags())
        if self.trial is not None:
            tags.update({TRIAL: str(self.trial), SAMPLED: json.dumps(self.sampled)})
        if self.search_key:
            tags[SEARCH_KEY] = self.search_key
        return tags

    @classmethod
    def parse(cls, tags: Mapping[str, str]) -> CandidateTags:
        trial = as_int(tags.get(TRIAL))
        role = tags.get(ROLE) or (TRIAL_ROLE if trial is not None else GRID)
        return cls(
            step=step_name(tags),
            label=str(tags.get(CANDIDATE) or tags.get(RUN_NAME, "")),
            index=as_int(tags.get(CANDIDATE_INDEX), 0) or 0,
            config_hash=str(tags.get(CONFIG_HASH, "")),
            varied=tuple(json.loads(tags.get(VARIED) or "[]")),
            role=str(role),
            rung=Rung.parse(tags),
            trial=trial,
            sampled=json.loads(tags[SAMPLED]) if trial is not None and SAMPLED in tags else {},
            search_key=str(tags.get(SEARCH_KEY, "")),
        )


@dataclass(frozen=True)
class FoldTags:
    """A fold run: the fold key that identifies its result anywhere, its split, who trained it, its status."""

    step: str
    fold_key: str
    label: str
    config_hash: str
    fold: int
    repeat: int
    status: str
    worker: str = ""
    error: str = ""

    def tags(self) -> dict[str, str]:
        tags = {
            STEP: self.step,
            FOLD_KEY: self.fold_key,
            CANDIDATE: self.label,
            CONFIG_HASH: self.config_hash,
            FOLD: str(self.fold),
            REPEAT: str(self.repeat),
            STATUS: self.status,
            WORKER: self.worker,
        }
        return {**tags, **({ERROR: self.error[:500]} if self.error else {})}

    @classmethod
    def parse(cls, tags: Mapping[str, str]) -> FoldTags:
        return cls(
            step=step_name(tags),
            fold_key=str(tags.get(FOLD_KEY, "")),
            label=str(tags.get(CANDIDATE, "")),
            config_hash=str(tags.get(CONFIG_HASH, "")),
            fold=as_int(tags.get(FOLD), 0) or 0,
            repeat=as_int(tags.get(REPEAT), 0) or 0,
            status=str(tags.get(STATUS, "ok")),
            worker=str(tags.get(WORKER, "")),
            error=str(tags.get(ERROR, "")),
        )


@dataclass(frozen=True)
class FinalTags:
    """A final run: its task and classes, the test set its accuracy is on, where its configuration came from."""

    task: TaskRef
    test_digest: str
    test_size: int
    sources: Mapping[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {
            STAGE: FINAL_LEVEL,
            **self.task.tags(),
            TEST_DIGEST: self.test_digest,
            TEST_SIZE: str(self.test_size),
            SOURCE_RUNS: json.dumps(dict(self.sources))[:MAX_TAG],
        }

    @classmethod
    def parse(cls, tags: Mapping[str, str], *, legacy_task: str) -> FinalTags:
        try:
            sources = json.loads(tags.get(SOURCE_RUNS) or "{}")
        except ValueError:
            sources = {}
        return cls(
            TaskRef.parse(tags, legacy_task=legacy_task),
            str(tags.get(TEST_DIGEST, "")),
            as_int(tags.get(TEST_SIZE), 0) or 0,
            sources,
        )


SEARCH_OPTION_PREFIX = "search."  # a strategy's options, as params of its search run (search.trials, ...)


def search_option_params(options: Mapping[str, Any]) -> dict[str, str]:
    """A strategy's options as its search run's params, named apart from the campaign's settings and from the
    entry point's own parameters (``mlflow run`` logs those as typed, e.g. ``trials`` as "08")."""
    return {f"{SEARCH_OPTION_PREFIX}{name}": str(value) for name, value in options.items()}


def space_tag(name: str, distributions: Mapping[str, Any]) -> dict[str, str]:
    """A search space as a tag, so the analysis reads it from the store (fANOVA needs each distribution)."""
    from optuna.distributions import distribution_to_json

    encoded = {key: distribution_to_json(value) for key, value in distributions.items()}
    return {SPACE: json.dumps({"name": name, "distributions": encoded})}


def parse_space(tags: Mapping[str, str]) -> tuple[str, dict[str, Any]] | None:
    """The space's name and distributions, or None for a search without one (or made before spaces were kept)."""
    text = tags.get(SPACE)
    if not text:
        return None
    from optuna.distributions import json_to_distribution

    data = json.loads(text)
    return data["name"], {key: json_to_distribution(value) for key, value in data["distributions"].items()}


def tags_of_row(row: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a run given as a row of ``mlflow.search_runs``' DataFrame (columns ``tags.<name>``)."""
    return {
        key[5:]: value
        for key, value in row.items()
        if key.startswith("tags.") and value is not None and not (isinstance(value, float) and value != value)
    }


def best_config(tags: Mapping[str, str]) -> Params | None:
    text = tags.get(BEST_CONFIG)
    return from_json(json.loads(text)) if text else None


def best_config_tag(params: Params) -> dict[str, str]:
    return {BEST_CONFIG: json.dumps({k: json_value(v) for k, v in params.items()})[:MAX_TAG]}
