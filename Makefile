# `make run` and `make test` work on a fresh machine: they create .venv and install the project first.
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)
# What users set (on make's command line or in the environment) is text, never make code: make expands a variable
# it exports or reads, so `DATA='/x$(shell touch f)'` ran `touch` and `EXPERIMENT=team$budget` lost `$b`. Each such
# value is taken as typed, once (`$(value ...)` into a simple variable, which is never expanded again).
USER_VARIABLES := MLFLOW_TRACKING_URI DATA EXPERIMENT RUN_STAGES CHAMPION_EXPERIMENT PRECISION TRIALS MIN_EPOCHS \
  PROMOTION TOP_RUNG_PARTS REPEATS CONFIGS CHAMPION_MODEL
$(foreach v,$(USER_VARIABLES),$(if $(filter environment% command%,$(origin $(v))),$(eval override $(v) := $$(value $(v)))))
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
# Real MNIST: an explicit DATA=..., else $MLFLOW_MNIST_DATA, else the shared copy beside this checkout
# (machines without internet), else empty: Keras downloads it.
SHARED_MNIST := $(wildcard ../shared/datasets/mnist)
ifeq ($(origin DATA),undefined)
DATA := $(if $(value MLFLOW_MNIST_DATA),$(value MLFLOW_MNIST_DATA),$(SHARED_MNIST))
endif
EXPERIMENT ?= mnist
RUN_STAGES ?= kernel_size pool_size
# Recipes read what users set through the environment, quoted ("$$DATA"), never pasted into a command line: a
# value is one argument whatever it holds (spaces, quotes, `;`, `*`), and no user value reaches the shell as code.
export DATA EXPERIMENT RUN_STAGES

.PHONY: setup run promote champion test test-fast lint ui clean postgres cluster-demo

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the seed's last two search stages on real 2-vs-7 data (6 epochs, 3 folds), each as nested
# runs through `mlflow run`, then the final model (trained once, tested once) and the analysis report, all in
# experiment $(EXPERIMENT). About 2.5 minutes on 2 cores once installed. Promotion is left to you: `make promote`.
run: setup
	@set -f; for stage in $$RUN_STAGES; do \
	  echo "mlflow run . -P stage=$$stage"; \
	  mlflow run . --env-manager local --experiment-name "$$EXPERIMENT" -P stage="$$stage" -P data="$$DATA" || exit 1; \
	done
	mlflow run . -e final --env-manager local --experiment-name "$$EXPERIMENT" -P data="$$DATA"
	mlflow run . -e analyze --env-manager local --experiment-name "$$EXPERIMENT"
	@echo "Open the UI: make ui   (report: reports/report.html)"

promote: setup
	mlflow run . -e promote --env-manager local --experiment-name "$$EXPERIMENT"

# Beyond the seed: ASHA over the wide space (TPE asks, rungs of 2, 6 and 18 epochs, promoted trials continue
# their folds' models), the winner trained on all training images with $(REPEATS) seeds and tested once each, then
# its seeds' ensemble promoted if it passes the default gate (99.66%). What is promoted (CHAMPION_MODEL) is fixed
# here, before any test score is seen; decisions on CV only. Four seeds take the same time as three on 2 workers.
# Rerunning resumes: the store is the campaign's memory. PRECISION=auto trains in bfloat16 where a probe measures
# it at least 1.1x faster, float32 elsewhere (2-core AMX Xeon: 8.0 min in all instead of 19.7 in float32, the same
# winner, the ensemble 6 errors in both; 2-core AMD EPYC with AVX512-BF16: the probe 1.20x, 14.9 min, the ensemble
# 4 errors; README's Performance). PRECISION=float32 gives the float32 champion.
# PROMOTION=eager lets each rung's first best go on (Optuna's rule): on this search's seed it trained 216
# fold-epochs instead of 132 (2-core AMX Xeon, float32, benchmarks/results/peers-xeon-eager.md).
CHAMPION_EXPERIMENT ?= champion
PRECISION ?= auto
TRIALS ?= 8
MIN_EPOCHS ?= 2
PROMOTION ?= quota
# TOP_RUNG_PARTS=2 trains each fold of the last rung in two parts (6 + 6 epochs, checkpointed between): its three
# folds then fill both workers to the end instead of the third training alone beside an idle one (2-core AMD EPYC,
# seeds 0, 1, 4: the search's workers idle 2.6-3.8% instead of 9.8-12.7%, in the same minutes; docs/performance.md).
TOP_RUNG_PARTS ?= 2
REPEATS ?= 4
# CONFIGS=2 spreads the final's seeds over the search's best two configurations; on five campaign seeds it met the
# goal once against three times for one (2-core AMX Xeon, docs/performance.md), so one it is.
CONFIGS ?= 1
CHAMPION_MODEL ?= ensemble
export CHAMPION_EXPERIMENT PRECISION TRIALS MIN_EPOCHS PROMOTION TOP_RUNG_PARTS REPEATS CONFIGS CHAMPION_MODEL
champion: setup
	mlflow run . --env-manager local --experiment-name "$$CHAMPION_EXPERIMENT" -P strategy=asha -P space=wide \
	  -P trials="$$TRIALS" -P min_epochs="$$MIN_EPOCHS" -P promotion="$$PROMOTION" -P top_rung_parts="$$TOP_RUNG_PARTS" \
	  -P data="$$DATA" -P precision="$$PRECISION"
	mlflow run . -e final --env-manager local --experiment-name "$$CHAMPION_EXPERIMENT" -P search=latest \
	  -P repeats="$$REPEATS" -P configs="$$CONFIGS" -P data="$$DATA" -P precision="$$PRECISION"
	mlflow run . -e promote --env-manager local --experiment-name "$$CHAMPION_EXPERIMENT" -P model="$$CHAMPION_MODEL"

# The cluster tests start PostgreSQL from the OS binaries; install them where they are missing.
postgres:
	@./tools/ensure_postgres.sh

# Three test processes, each file in one of them (module fixtures are built once): many slow tests wait on
# servers, subprocesses and sleeps, so three keep two cores ~90% busy (2-core AMD EPYC, fresh clones of the
# releases of 2026-12-06: 11.8 to 15.3 min of pytest at -n 3, the suite growing from 456 to 496 tests; 22-23 min for
# 505-508 tests in slow hours, when the suite took 1.5x its CPU time, and -n 4 no faster: the suite is CPU-bound;
# 18.8 min for 511 in those hours once the tests' CLI calls forked from a warm server and their temporary files went
# to /dev/shm, tests/conftest.py). Files go to the workers longest first (tests/conftest.py), not in
# xdist's order (by test count).
# The 20 slowest tests are listed at the end: CI's log says where the suite's minutes go.
test: setup postgres
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n 3 --dist loadfile --no-loadscope-reorder --durations=20

# The fast lane for your own loop: what starts no TensorFlow, no server and no racing processes (none trains).
test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not slow" -q -n 2

# README "Running on a cluster" on this machine: PostgreSQL (password in a 0600 passfile), mlflow server with
# basic-auth on it, a Dask scheduler and two workers requiring TLS, all on 127.0.0.1; one stage through
# `mlflow run ... -P executor=dask` as user `driver`, checked for passwords on any command line; then torn down.
# About 100 s of CPU: 2 minutes on two idle cores (198 s measured on a shared 2-core AMD EPYC, load average 8).
cluster-demo: setup postgres
	$(PYTHON) tools/cluster_demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The store's address reaches `mlflow ui` through its environment variable: off the command line (`ps`) and out
# of make's echo, since a server's URI may hold a password. It serves 127.0.0.1 with no login: for one user on
# their own machine; a team's server takes basic-auth and TLS (docs/cluster.md).
ui: setup
	@echo "mlflow ui (the store in \$$MLFLOW_TRACKING_URI) on http://127.0.0.1:5000: in an experiment, pick"
	@echo "'Model training' at the top left once (MLflow opens experiments on their GenAI overview)"
	@MLFLOW_BACKEND_STORE_URI="$$MLFLOW_TRACKING_URI" mlflow ui

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts reports
