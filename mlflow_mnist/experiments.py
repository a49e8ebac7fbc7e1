"""Which experiment a command works in: `mlflow run`'s, a named one, the one ``$MLFLOW_EXPERIMENT_ID`` names, or
the latest campaign's; readers only look, writers create, restore and mark it. Reaching the store is
:mod:`mlflow_mnist.tracking`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlflow_mnist.redaction import redact
from mlflow_mnist.schema import EXPERIMENT_KIND, LEVEL, MODEL_TRAINING, TASK_PARAM
from mlflow_mnist.tracking import TrackingError, launcher_run, prepared_uri, sqlite_store_path, tracking_uri


@dataclass(frozen=True)
class Experiment:
    """Where a command works: the experiment, the run `mlflow run` made for it, and why this experiment."""

    experiment_id: str
    name: str
    launcher_run_id: str | None = None
    chosen_because: str = ""  # set when no experiment was named: the line that tells the user which one


def check_experiment_name(name: str | None = None) -> str | None:
    """``name``, else ``$MLFLOW_EXPERIMENT_NAME``, else None; a blank one (MLflow would make an experiment no one
    can tell apart) or one longer than MLflow keeps is refused, naming where it came from, and so is an
    experiment id from ``$MLFLOW_EXPERIMENT_ID`` that a SQLite store not made yet cannot hold. Writers call it
    before the store is reached."""
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    where, fix = "--experiment", "give --experiment a name, or leave it out"
    if not name and os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        name, where, fix = os.environ["MLFLOW_EXPERIMENT_NAME"], "$MLFLOW_EXPERIMENT_NAME", "fix or unset it"
    if name and not name.strip():
        raise TrackingError(f"experiment name {name!r} from {where} is blank: {fix}")
    if name and len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise TrackingError(
            f"the experiment name from {where} has {len(name)} characters; MLflow keeps at most "
            f"{MAX_EXPERIMENT_NAME_LENGTH}: give a shorter one"
        )
    wanted = _experiment_id_from_env()
    if name or wanted in (None, "0"):
        return name
    path = sqlite_store_path(prepared_uri(None))
    if path is not None and not path.exists():
        raise TrackingError(  # a new store holds only experiment 0: refused before it is made
            f"MLFLOW_EXPERIMENT_ID={wanted!r} names an experiment, and there is no store at {path} yet: unset it, "
            f"or set MLFLOW_TRACKING_URI to the store that holds it"
        )
    return name


def _experiment_id_from_env() -> str | None:
    """``$MLFLOW_EXPERIMENT_ID``, which MLflow's own API reads when no experiment is named: a user who set it
    expects runs there."""
    return os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip() or None


def _experiment_named_by_id(client, name: str | None) -> str | None:
    """The name of the experiment ``$MLFLOW_EXPERIMENT_ID`` names, when set and no ``--experiment`` was given
    (``name`` then comes from ``$MLFLOW_EXPERIMENT_NAME``, if anywhere, and must name the same experiment, as
    MLflow requires); one line when the store has no such experiment."""
    from mlflow.exceptions import MlflowException

    wanted = _experiment_id_from_env()
    if wanted is None:
        return name
    try:
        found = client.get_experiment(wanted)
    except MlflowException:  # "No Experiment with id=... exists" (a store without it, or not an id at all)
        found = None
    if found is None:
        raise TrackingError(
            f"MLFLOW_EXPERIMENT_ID={wanted!r} is not an experiment in {redact(tracking_uri())}: fix or unset it"
        )
    if name and name != found.name:
        raise TrackingError(
            f"MLFLOW_EXPERIMENT_NAME={name!r} and MLFLOW_EXPERIMENT_ID={wanted!r} (experiment {found.name!r}) name "
            f"different experiments: unset one of them"
        )
    return found.name


def resolve_experiment(
    client,
    name: str | None = None,
    *,
    create: bool = True,
    must_exist: bool = False,
    default: str = "Default",
    missing_fix: str = "check --experiment",
    task: str | None = None,
) -> Experiment:
    """Under `mlflow run`, the run it made and its experiment; else ``name``, $MLFLOW_EXPERIMENT_NAME or the
    experiment $MLFLOW_EXPERIMENT_ID names (as MLflow's own API reads them); else the experiment holding the latest
    campaign runs (of ``task``, when given: so `mlflow run` into Default, then `final`, finds it); else ``default``
    (a campaign passes its task's name). Readers pass ``create=False``, and writers that need what an earlier
    command left (``final --search``) ``must_exist``: a missing experiment is then an error (``missing_fix`` says
    what to do), not a new empty one.
    """
    launcher = os.environ.get("MLFLOW_RUN_ID") or None
    if launcher:
        run = launcher_run(client, launcher)
        experiment = client.get_experiment(run.info.experiment_id)
        if create:
            mark_model_training(client, experiment)
        return Experiment(experiment.experiment_id, experiment.name, launcher)
    if name:  # --experiment: over the environment's variables
        name = check_experiment_name(name)
    else:
        name = _experiment_named_by_id(client, check_experiment_name(None))
    because = ""
    if not name:
        latest = latest_campaign_experiment(client, task)
        if latest is not None:
            name = latest.name
            whose = f" of task {task}" if task is not None else ""
            because = (
                f"experiment {name!r}: it holds the latest campaign runs{whose} (choose another with --experiment)"
            )
        else:
            name = default
    if not create or must_exist:
        check_experiment_exists(client, name, fix=missing_fix)
        # A reader only looks: no tag written, nothing restored. So does a writer that needs what an earlier command
        # left there (which tagged it then): its own refusal (no such search) must leave the store as it was.
        return Experiment(client.get_experiment_by_name(name).experiment_id, name, None, because)
    return Experiment(experiment_id(client, name), name, None, because)


def check_experiment_exists(client, name: str, *, fix: str = "check --experiment") -> None:
    """A reader's experiment: there, and not deleted (a reader would promote from it, or log a report into it)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        raise TrackingError(f"experiment {name!r} does not exist in {redact(tracking_uri())}: {fix}")
    if found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment {name!r} is deleted in {redact(tracking_uri())}: restore it (`mlflow experiments "
            f"restore --experiment-id {found.experiment_id}`) or choose another with --experiment"
        )


def latest_campaign_experiment(client, task: str | None = None):
    """The active experiment whose newest run carries our tags, or None in a store without campaigns. With a
    ``task``, the experiment of that task's newest campaign (a team's new task went into another task's experiment
    because it held the newest runs); in a store made before runs named their task, the newest
    campaign's, for the default task."""
    from mlflow_mnist.tasks import DEFAULT_TASK

    ids = [e.experiment_id for e in client.search_experiments(max_results=50000)]
    if not ids:
        return None

    def newest(where: str):
        found = client.search_runs(ids, where, max_results=1, order_by=["attributes.start_time DESC"])
        return client.get_experiment(found[0].info.experiment_id) if found else None

    if task is None:
        return newest(f"tags.`{LEVEL}` != ''")
    named = f"tags.`{LEVEL}` != '' and params.`{TASK_PARAM}` != ''"  # a search's or a final's root: names its task
    if "'" not in task and (own := newest(f"{named} and params.`{TASK_PARAM}` = '{task}'")) is not None:
        return own
    if task == DEFAULT_TASK and newest(named) is None:  # no run names a task: all are the default task's
        return newest(f"tags.`{LEVEL}` != ''")
    return None


def mark_model_training(client, experiment) -> None:
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created (tagged as model training) or restored when needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND: MODEL_TRAINING})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    mark_model_training(client, experiment)
    return experiment.experiment_id
