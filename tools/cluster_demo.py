"""The whole scale-out on one machine, with real processes, then torn down (``make cluster-demo``):

    PostgreSQL (OS binaries) -> mlflow server (PostgreSQL backend, proxied artifacts) -> dask scheduler ->
    two dask workers -> mlflow run . -P stage=... -P executor=dask -P scheduler=...

    .venv/bin/python tools/cluster_demo.py [--stage kernel_size] [--data sample] [--epochs 1] [--keep]

``--keep`` leaves everything running until Enter, to look at the runs in the server's UI. README "Running on a
cluster" gives the same steps for real machines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services import BIN, DaskCluster, MlflowServer, Postgres

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="kernel_size")
    parser.add_argument("--data", default="sample")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--folds", default="2")
    parser.add_argument("--keep", action="store_true", help="keep the services up until Enter")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cluster-demo-"))
    database = server = cluster = None
    try:
        started = time.perf_counter()
        database = Postgres(base / "postgres").start()
        print(f"postgresql   {database.uri}")
        server = MlflowServer(database.uri, base / "server").start()
        print(f"mlflow       {server.uri}  (artifacts proxied to {server.folder / 'artifacts'})")
        cluster = DaskCluster(base / "dask").start(n_workers=2)
        print(f"dask         {cluster.address} with 2 workers (logs in {cluster.folder})")
        print(f"up in {time.perf_counter() - started:.0f} s; running the stage through `mlflow run`")
        command = [str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", "--experiment-name", "cluster-demo"]
        for param in (
            f"stage={args.stage}",
            f"data={args.data}",
            f"epochs={args.epochs}",
            f"folds={args.folds}",
            "executor=dask",
            f"scheduler={cluster.address}",
        ):
            command += ["-P", param]
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
        run = subprocess.run(command, env=env)
        if run.returncode:
            sys.exit(f"the stage failed with exit code {run.returncode}")
        print(f"done: open {server.uri}/#/experiments (choose 'Model training') to see experiment cluster-demo")
        if args.keep:
            input("services are up; press Enter to tear them down ")
    finally:
        for service in (cluster, server, database):
            if service is not None:
                service.stop()
        print("torn down: dask workers and scheduler, mlflow server, postgresql")


if __name__ == "__main__":
    main()
