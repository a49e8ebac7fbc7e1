"""python -m analysis --experiment NAME --out reports/: the same command as `mlflow-mnist analyze`, through the same
CLI, so a mistake is one line (no traceback, no click usage block) here too; the MLproject's `analyze` runs this."""

import sys

from mlflow_mnist import redaction

redaction.install()  # before anything prints: reports quote the tracking URI and the store's exception texts

from mlflow_mnist.cli import run  # noqa: E402

run(["analyze", *sys.argv[1:]], prog_name="mlflow-mnist")
