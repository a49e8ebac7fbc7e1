# How tests/data/legacy_store.db.gz was made: the code of commit b4bdd44 (before tasks, the schema module and
# retrained references), checked out in /tmp/old, on the shipped sample; then gzip -9 of the SQLite file (the
# runs' artifacts, models included, are not shipped: resuming needs the runs only).
set -e
export PYTHONPATH=/tmp/old MLFLOW_TRACKING_URI=sqlite:////tmp/legacy/mlflow.db
P=/work/main/.venv/bin/python
$P -m mlflow_mnist tune --stage kernel_size --data sample --epochs 1 --folds 2 --experiment legacy
$P -m mlflow_mnist tune --stage pool_size --data sample --epochs 1 --folds 2 --experiment legacy
$P -m mlflow_mnist tune --strategy optuna --space seed --trials 3 --data sample --folds 2 --experiment legacy-optuna
$P -m mlflow_mnist tune --strategy halving --stage dropout_rate_1 --data sample --epochs 3 --folds 2 --experiment legacy-halving
$P -m mlflow_mnist final --data sample --epochs 1 --folds 2 --experiment legacy
