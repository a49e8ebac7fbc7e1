"""The Makefile's recipes take what users set as data, never as shell code, and keep the store's address off
command lines: run against a stand-in ``mlflow`` that records its arguments and environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "store": os.environ.get("MLFLOW_BACKEND_STORE_URI")}}) + "\\n")
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
# What the Makefile exports to its recipes (and so to a `make test` run's environment).
MAKEFILE_VARIABLES = (
    "DATA", "EXPERIMENT", "RUN_STAGES", "CHAMPION_EXPERIMENT", "PRECISION", "TRIALS", "MIN_EPOCHS", "PROMOTION",
    "TOP_RUNG_PARTS", "REPEATS", "CONFIGS", "CHAMPION_MODEL",
)  # fmt: skip


def _make(tmp_path: Path, target: str, *arguments: str, **variables: str) -> tuple[list[dict], str]:
    """``make target`` (with ``arguments``: variables on make's command line; ``variables``: in its environment)
    with a stand-in venv whose ``mlflow`` records each call; returns the calls and make's output."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    mlflow = venv / "bin" / "mlflow"
    mlflow.write_text(STAND_IN.format(python=sys.executable))
    mlflow.chmod(0o755)
    (venv / ".installed-stamp").touch()  # newer than pyproject.toml: setup has nothing to do
    record = tmp_path / "calls.jsonl"
    # Under `make test`, the outer make exports its own DATA, EXPERIMENT, ... (and MAKEFLAGS): a test's values
    # must not lose to them.
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", *MAKEFILE_VARIABLES}
    env = {**{k: v for k, v in os.environ.items() if k not in outer}, "RECORD": str(record), **variables}
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, f"VENV={venv}", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return calls, done.stdout + done.stderr


def test_user_values_reach_mlflow_as_single_arguments_never_as_shell_code(tmp_path):
    planted = tmp_path / "planted"
    data = f"sample; touch {planted} #$(touch {planted})`touch {planted}`"
    calls, _ = _make(tmp_path, "run", DATA=data, EXPERIMENT="my experiment", RUN_STAGES="kernel_size;")
    assert not planted.exists()
    stage, final, analyze = calls
    assert stage["argv"][stage["argv"].index("-P") + 1] == "stage=kernel_size;"
    assert f"data={data}" in stage["argv"] and f"data={data}" in final["argv"]
    assert all(call["argv"][call["argv"].index("--experiment-name") + 1] == "my experiment" for call in calls)
    assert analyze["argv"][:3] == ["run", ".", "-e"]


def test_user_values_are_never_make_code_either(tmp_path):
    """From an audit: make expands the variables it exports and reads, so a `$(shell ...)` in DATA on make's command
    line, or in $MLFLOW_MNIST_DATA, ran (before the shell's quoting could help) and `team$budget` lost `$b`; a
    stage of `*` was globbed into the folder's files. Every value now reaches mlflow as typed."""
    planted = tmp_path / "planted"
    data, experiment = f"/data/x$(shell touch {planted})", "team$budget"
    calls, _ = _make(tmp_path, "run", f"DATA={data}", f"EXPERIMENT={experiment}", "RUN_STAGES=* pool_size")
    stages = [call["argv"][call["argv"].index("-P") + 1] for call in calls[:-2]]
    assert stages == ["stage=*", "stage=pool_size"] and not planted.exists()
    assert all(f"data={data}" in call["argv"] for call in calls[:-1])
    assert all(call["argv"][call["argv"].index("--experiment-name") + 1] == experiment for call in calls)
    from_environment = f"/env$(shell touch {planted})"
    calls, _ = _make(tmp_path / "env", "run", MLFLOW_MNIST_DATA=from_environment, MLFLOW_TRACKING_URI="sqlite:///$(x)")
    assert not planted.exists() and all(f"data={from_environment}" in call["argv"] for call in calls[:-1])
    calls, _ = _make(tmp_path / "champion", "champion", f"TRIALS=8$(shell touch {planted})", PRECISION="$(y)")
    assert not planted.exists() and f"trials=8$(shell touch {planted})" in calls[0]["argv"]
    assert "precision=$(y)" in calls[0]["argv"]


def test_make_ui_gives_the_store_through_the_environment_not_the_command_line(tmp_path):
    uri = "postgresql://alice:S3cretPW@127.0.0.1:1/db?a=1&b=$(id)"
    calls, output = _make(tmp_path, "ui", MLFLOW_TRACKING_URI=uri)
    (call,) = calls
    assert call["argv"] == ["ui"] and call["store"] == uri
    assert "S3cretPW" not in output
