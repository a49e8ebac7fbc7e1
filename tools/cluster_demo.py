"""The whole scale-out on one machine, with real processes, secured as README "Running on a cluster" says,
then torn down (``make cluster-demo``):

    PostgreSQL (password in a 0600 passfile) -> mlflow server --app-name basic-auth over HTTPS (a throw-away CA;
    admin password in a 0600 config file, a user `driver` made through the auth API) -> dask scheduler and two
    workers requiring TLS (another throw-away CA) -> mlflow run . -P executor=dask -P scheduler=tls://... as user
    `driver`

    .venv/bin/python tools/cluster_demo.py [--stage kernel_size] [--data sample] [--epochs 1] [--keep]

Every service listens on 127.0.0.1 only. While the stage runs, the demo reads every process's command line
(what ``ps`` shows any user) and fails if one holds a password. ``--keep`` leaves everything running until
Enter, to look at the runs in the server's UI (log in as `driver`: its password is in the folder printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services import (
    BIN,
    DaskCluster,
    MlflowServer,
    Postgres,
    argv_holding,
    clean_env,
    listening_addresses,
    process_tree,
    write_private,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="kernel_size")
    parser.add_argument("--data", default="sample")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--folds", default="2")
    parser.add_argument("--keep", action="store_true", help="keep the services up until Enter")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cluster-demo-"))  # 0700
    database = server = cluster = None
    try:
        started = time.perf_counter()
        database = Postgres(base / "postgres").start()
        print(f"postgresql   {database.uri}  (password: {database.passfile}, via PGPASSFILE)")
        server = MlflowServer(
            database.uri, base / "server", auth_database=database.auth_uri, env=database.env(), tls=True
        ).start()
        driver = server.add_user("driver")
        print(
            f"mlflow       {server.uri}  basic-auth over HTTPS (CA {server.verify}); "
            f"user 'driver' made through the auth API"
        )
        cluster = DaskCluster(base / "dask").start(n_workers=2)
        print(f"dask         {cluster.address} with 2 workers, TLS required (certificates in {cluster.tls})")
        print(f"up in {time.perf_counter() - started:.0f} s; running the stage through `mlflow run` as 'driver'")
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
        # The driver's credentials and TLS settings travel in its environment, never on its command line.
        env = clean_env(PATH=f"{BIN}:{os.environ['PATH']}", **server.client_env(driver), **cluster.client_env())
        run = subprocess.Popen(command, env=env)
        secrets = [database.passfile.read_text().strip().rsplit(":", 1)[1], *server.secrets(), driver[1]]
        checked, exposed, leaked = watch_processes(run, database, server, cluster, secrets)
        if run.returncode:
            sys.exit(f"the stage failed with exit code {run.returncode}")
        print(f"checked {len(checked)} processes' command lines while the stage ran: ", end="")
        if leaked:
            sys.exit(f"a password is on the command line of {sorted(set(leaked.values()))}")
        print("no password in any")
        print(f"listening sockets of the services and the driver: {', '.join(sorted(exposed))} only")
        if exposed != {"127.0.0.1"}:
            sys.exit("a service listens beyond 127.0.0.1")
        if args.keep:
            write_private(base / "driver-password", driver[1] + "\n")
            print(f"open {server.uri}/#/experiments, user driver, password in {base / 'driver-password'}")
            input("services are up; press Enter to tear them down ")
    finally:
        for service in (cluster, server, database):
            if service is not None:
                service.stop()
        shutil.rmtree(base, ignore_errors=True)  # its passfile, auth config and keys: no secret outlives the demo
        print("torn down: dask workers and scheduler, mlflow server, postgresql; their folder removed")


def watch_processes(run: subprocess.Popen, database, server, cluster, secrets: list[str]):
    """Until ``run`` ends: every process's argv (for ``secrets``) and the services' and driver's listening
    addresses, sampled every second; returns (processes seen, addresses, processes whose argv held a secret)."""
    postmaster = int((database.folder / "pgdata" / "postmaster.pid").read_text().split()[0])
    checked, exposed, leaked = set(), set(), {}
    while run.poll() is None:
        ours = process_tree([postmaster, server.process.pid, cluster.scheduler.pid, *cluster.worker_pids(), run.pid])
        checked |= set(ours)
        exposed |= listening_addresses(ours)
        leaked |= argv_holding(secrets)  # every process on the machine, not only ours
        time.sleep(1)
    return checked, exposed, leaked


if __name__ == "__main__":
    main()
