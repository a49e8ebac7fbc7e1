"""python -m analysis --experiment NAME --out reports/"""

from mlflow_mnist import redaction

redaction.install()  # before anything prints: reports quote the tracking URI and the store's exception texts

from analysis.cli import analyze  # noqa: E402

analyze()
