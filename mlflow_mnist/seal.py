"""Run seals: a keyed digest on every run this installation finished, so resume, reuse and the gate take only
runs it wrote.

Anyone who can write the tracking store through MLflow's API can create runs that look like ours: a fold run
with a fold's key (reused, or continued from, by the next search) or seed runs under a killed final (taken by
the next ``final`` and promoted from it). Tags, params and digests cannot tell them apart, because the forger
writes those too. A secret can: with ``$MLFLOW_MNIST_SEAL_KEY_FILE`` naming a file only the campaign's user can
read, the driver (it alone writes the store; workers never see the key) writes on each run it finishes an
HMAC-SHA256 over the run's experiment, id, params, latest metrics, tags and parent, if the store holds exactly what
it wrote there (:class:`mlflow_mnist.runs.Written`), and every reader that trusts a run for what it holds (fold
reuse and continuation, carry-forward, final's choice of search and its resume, the gate) takes only runs whose
seal verifies. Runs without one, made before the key was set or by someone else, are retrained or refused.

Without the variable nothing is sealed or checked, as before. The key never leaves the file: no message, tag or
log shows it (only the seal, a digest that reveals nothing of it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from mlflow_mnist.schema import (
    ANALYSIS_LEVEL,
    FINAL_SEED_LEVEL,
    FOLD_LEVEL,
    LEVEL,
    LOGGED_MODEL_ID,
    PARENT,
    SEAL,
    UNSEALED_TAGS,
)

SEAL_KEY_ENV = "MLFLOW_MNIST_SEAL_KEY_FILE"
MIN_KEY_BYTES = 32
_SYSTEM_TAGS = "mlflow."  # MLflow's own tags (run name, parent, note, source) change without us: not sealed
REPARENTED_LEVELS = (FOLD_LEVEL, FINAL_SEED_LEVEL)  # runs a later run takes over: their parent changes
_DIGEST = re.compile(r"[0-9a-f]{64}")


class SealKeyError(RuntimeError):
    """``$MLFLOW_MNIST_SEAL_KEY_FILE`` is set but unusable; the message names the problem and the fix."""


class RunSeal:
    """Signs and checks runs with one key."""

    def __init__(self, key: bytes):
        self._key = key

    def __repr__(self) -> str:  # never the key
        return "RunSeal(<key from $MLFLOW_MNIST_SEAL_KEY_FILE>)"

    def sign(self, run: Any) -> str:
        """The seal of ``run`` (an MLflow ``Run``) as it stands in the store."""
        return hmac.new(self._key, _content(run), hashlib.sha256).hexdigest()

    def verifies(self, run: Any) -> bool:
        recorded = run.data.tags.get(SEAL, "")
        # Anyone can write the tag: a value that is not a digest is no seal (and compare_digest refuses non-ASCII).
        return bool(_DIGEST.fullmatch(recorded)) and hmac.compare_digest(recorded.encode(), self.sign(run).encode())


def _content(run: Any) -> bytes:
    """What a seal covers: everything a reader may act on, in one canonical form. Metrics are their latest
    values (what readers read); tags that legitimately change after a run ends (see ``UNSEALED_TAGS``) and
    MLflow's own are left out, except the parent of a run that keeps it (only folds and seeds move to a later run,
    which then vouches for them itself: a resumed final re-checks each seed, a search each fold by its key)."""
    tags = {
        key: value
        for key, value in run.data.tags.items()
        if not key.startswith(_SYSTEM_TAGS) and key not in UNSEALED_TAGS
    }
    body = {
        "experiment": run.info.experiment_id,
        "run": run.info.run_id,
        "params": run.data.params,
        "metrics": {key: repr(float(value)) for key, value in run.data.metrics.items()},
        "tags": tags,
    }
    if run.data.tags.get(LEVEL) not in REPARENTED_LEVELS:
        body["parent"] = run.data.tags.get(PARENT, "")
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def active_seal() -> RunSeal | None:
    """The seal ``$MLFLOW_MNIST_SEAL_KEY_FILE`` names, or None when it is unset. Commands call it before the store
    is reached, so an unusable key file (or an empty value) is one line with nothing written."""
    path = os.environ.get(SEAL_KEY_ENV)
    if path is None:
        return None
    if not path.strip():  # set, but to nothing: a mistake in a script, not a wish to turn the checks off
        raise SealKeyError(f"${SEAL_KEY_ENV} is set but empty: give the key file's path, or unset the variable")
    return RunSeal(_read_key(Path(path)))


def _read_key(path: Path) -> bytes:
    where = f"${SEAL_KEY_ENV} ({path})"
    try:
        info = path.stat()
    except OSError:  # the value is not echoed: set to the key itself by mistake, it would be printed
        raise SealKeyError(
            f"${SEAL_KEY_ENV} names no file that exists or can be read (its value is not shown: it may be the key "
            f"itself): set it to the key file's path; make one with `umask 077; head -c 32 /dev/urandom | base64 > "
            f"KEYFILE`, or unset the variable"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise SealKeyError(f"{where} is not a regular file: point it at the key file itself")
    if info.st_uid != os.geteuid():
        raise SealKeyError(f"{where} belongs to another user: use a key file of your own (`chown` it, or make one)")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SealKeyError(f"{where} can be read or written by others: `chmod 600 {path}` (it signs your runs)")
    try:
        key = path.read_bytes().strip()
    except OSError:
        raise SealKeyError(f"{where} cannot be read by this user: run as its owner, or fix its permissions") from None
    if len(key) < MIN_KEY_BYTES:
        raise SealKeyError(
            f"{where} holds {len(key)} bytes, fewer than {MIN_KEY_BYTES}: write a longer random key "
            f"(`head -c 32 /dev/urandom | base64`)"
        )
    return key


def trusted(run: Any, seal: RunSeal | None) -> bool:
    """Whether a reader may act on ``run``: any run without a seal key, only sealed ones with it."""
    return seal is None or seal.verifies(run)


def seal_run(client: Any, run_id: str, seal: RunSeal, written: Any) -> bool:
    """Write ``run_id``'s seal (the run's last write before it ends) if the store holds exactly what this driver
    ``written`` to it (a run-shaped record: :class:`mlflow_mnist.runs.Written`); returns whether it sealed. Someone
    who writes into the run while it is open (a metric at a later step, a tag, a param) is not vouched for: the run
    is left unsealed, and readers with the key take it as anyone's."""
    stored = client.get_run(run_id)
    if _content(stored) != _content(written):
        return False
    client.set_tag(run_id, SEAL, seal.sign(stored))
    return True


def seal_existing(client: Any, seal: RunSeal, runs: list[Any]) -> tuple[int, int]:
    """Seal each of ``runs`` (an experiment's) that is a FINISHED campaign run without a valid seal, as it stands;
    returns (sealed now, sealed before). Only for a store whose contents its owner trusts: whatever is in it, a
    forged run included, is trusted from then on."""
    sealed = already = 0
    for run in runs:
        if run.info.status != "FINISHED" or run.data.tags.get(LEVEL) in (None, ANALYSIS_LEVEL):
            continue
        if seal.verifies(run):
            already += 1
            continue
        outputs = run.outputs.model_outputs if run.outputs else []
        if outputs and LOGGED_MODEL_ID not in run.data.params:  # older than the param: record its model, sealed
            client.log_param(run.info.run_id, LOGGED_MODEL_ID, outputs[0].model_id)
            run.data.params[LOGGED_MODEL_ID] = outputs[0].model_id
        client.set_tag(run.info.run_id, SEAL, seal.sign(run))
        sealed += 1
    return sealed, already
