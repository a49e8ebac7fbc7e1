"""Real services for the cluster tests and ``make cluster-demo``, started from their own binaries, bound to
127.0.0.1 and secured as README "Running on a cluster" says:

- PostgreSQL (the OS packages): TCP logins need a password (scram-sha-256); role ``mlflow`` owns the tracking
  and the auth databases; its password is only in a 0600 passfile that libpq reads (``PGPASSFILE``).
- ``mlflow server --app-name basic-auth`` on it, with proxied artifacts, over HTTPS with ``tls=True`` (a
  throw-away CA): the admin's password is set in a 0600 auth config file (MLflow has no default), users are
  created through the auth API, nobody may see an experiment they were not given
  (``default_permission = NO_PERMISSIONS``).
- A Dask scheduler and workers that require TLS (``distributed.comm.require-encryption``), with certificates
  from a throw-away CA whose key is never written; the client's settings are Dask's own environment variables.

Secrets are random, written only to 0600 files in 0700 folders or passed in environment variables: never on a
command line (``ps`` shows every process's argv to every user of the machine).
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # every service listens here only
# What the driver's environment may hold that a worker or a server must not inherit.
DRIVER_SECRETS = ("MLFLOW_TRACKING_", "PGPASS", "AWS_SECRET", "DASK_DISTRIBUTED__COMM__TLS__CLIENT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 90, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listened on port {port} within {seconds} s")


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def private_folder(path: Path) -> Path:
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: str | bytes) -> Path:
    """A new file only its owner can read, created with that mode (never briefly readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the driver's credentials, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(DRIVER_SECRETS)}
    return {**env, **extra}


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def postgres_bindir() -> Path | None:
    """The PostgreSQL server binaries (``pg_config --bindir``, else the Debian layout), or None."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


class Postgres:
    """A throw-away PostgreSQL cluster. The superuser logs in only through the Unix socket as its own OS user
    (peer); over TCP every login needs a password, and the one role there is, ``mlflow``, has its password in
    ``passfile`` (0600), which libpq reads through ``PGPASSFILE``. ``initdb`` refuses root, so as root the
    cluster belongs to user postgres."""

    ROLE = "mlflow"

    def __init__(self, folder: Path):
        self.port = free_port()
        self.bindir = postgres_bindir()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.superuser = "postgres" if self.as_user else getpass.getuser()
        # User postgres cannot enter root's private temporary folders: give it one of its own under /tmp.
        self.folder = Path(tempfile.mkdtemp(prefix="mlflow-mnist-pg-")) if self.as_user else private_folder(folder)
        self.passfile = private_folder(Path(folder) / "client") / "pgpass"  # ours: root's, or this user's

    def database_uri(self, database: str) -> str:
        """A SQLAlchemy URI without a password: libpq takes it from the passfile (see :meth:`env`)."""
        return f"postgresql+psycopg2://{self.ROLE}@{HOST}:{self.port}/{database}"

    @property
    def uri(self) -> str:
        """The tracking store's database (``auth_uri``: the auth app's)."""
        return self.database_uri("mlflow")

    @property
    def auth_uri(self) -> str:
        return self.database_uri("mlflow_auth")

    def env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}

    def _run(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True, input=stdin)

    def start(self) -> Postgres:
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")
        data = self.folder / "pgdata"
        # pg_ctl starts the server through /bin/sh with its folders in double quotes, where `$(...)` still runs.
        if not re.fullmatch(r"[\w./-]+", str(self.folder)):
            shutil.rmtree(self.folder, ignore_errors=True)
            raise RuntimeError(
                f"PostgreSQL's folder {str(self.folder)!r} holds characters pg_ctl's shell would read: set TMPDIR "
                "to a path of letters, digits, '.', '_', '-' and '/'"
            )
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        auth = ["--auth-local=peer", "--auth-host=scram-sha-256"]
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", self.superuser, *auth, "-E", "UTF8")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses={HOST} -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.folder / "pg.log"),
            "-w",
            "start",
        )
        password = new_secret()
        write_private(self.passfile, f"{HOST}:{self.port}:*:{self.ROLE}:{password}\n")
        # The password travels on psql's standard input (never its argv) over the superuser's socket login.
        sql = (
            f"CREATE ROLE {self.ROLE} LOGIN PASSWORD '{password}';\n"
            f"CREATE DATABASE mlflow OWNER {self.ROLE};\nCREATE DATABASE mlflow_auth OWNER {self.ROLE};\n"
        )
        psql = [str(self.bindir / "psql"), "-h", str(self.folder), "-p", str(self.port), "-U", self.superuser]
        self._run(*psql, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-", stdin=sql)
        return self

    def stop(self) -> None:
        if self.bindir is not None and (self.folder / "pgdata").exists():
            pg_ctl = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.folder / "pgdata")]
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        if self.as_user:
            shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on a backend store URI, with proxied artifacts in a local folder.

    With ``auth`` (the default) it runs MLflow's basic-auth app: the admin's random password is written to the
    auth config file (0600), where MLflow reads it when it creates the admin on first start; :meth:`add_user`
    creates users through the auth API. With ``tls`` it serves HTTPS (uvicorn's TLS, a certificate from a
    throw-away CA that clients trust through ``MLFLOW_TRACKING_SERVER_CERT_PATH``), as docs/cluster.md deploys it.
    ``env`` carries what the server needs to reach its store (PGPASSFILE).
    :meth:`start` after :meth:`stop` starts it again on the same port, store and users (a server that went away).
    """

    def __init__(
        self,
        backend: str,
        folder: Path,
        *,
        auth: bool = True,
        auth_database: str | None = None,
        env: dict[str, str] | None = None,
        workers: int = 2,
        tls: bool = False,
    ):
        self.backend, self.folder, self.port = backend, private_folder(folder), free_port()
        self.auth, self.auth_database, self.extra_env, self.workers = auth, auth_database, env or {}, workers
        self.tls = write_tls_files(self.folder / "tls", roles=("server",)) if tls else None
        self.admin = ("admin", new_secret())
        self.process = None
        self.auth_config: Path | None = None  # written at the first start; a restart (same port) reads it again

    @property
    def uri(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def verify(self) -> str | bool:
        """What ``requests`` needs to trust the server: its CA's certificate when it serves HTTPS."""
        return str(self.tls / "ca.pem") if self.tls else True

    def _auth_config(self) -> Path:
        database = self.auth_database or f"sqlite:///{self.folder / 'basic_auth.db'}"
        # Credentials are checked with scrypt (~85 ms of CPU each on a 2-core AMD EPYC): without the cache every
        # request pays it. A changed password may keep working on other server workers for up to 60 s.
        text = (
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {database}\n"
            f"admin_username = {self.admin[0]}\n"
            f"admin_password = {self.admin[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n"
        )
        return write_private(self.folder / "basic_auth.ini", text)

    def start(self) -> MlflowServer:
        command = [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(self.port)]
        command += ["--workers", str(self.workers), "--backend-store-uri", self.backend]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        if self.tls:  # paths of this object's own folder: no user value in the option string uvicorn splits
            command += [
                "--uvicorn-opts",
                f"--ssl-certfile {self.tls / 'server.pem'} --ssl-keyfile {self.tls / 'server.key'}",
            ]
        # MLflow's job runners (four huey consumers, each importing MLflow and polling the store) serve GenAI
        # jobs this tool never submits: ~15 s of CPU at every start and a steady load on 2 cores.
        env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.extra_env)
        if self.auth:
            command += ["--app-name", "basic-auth"]
            self.auth_config = self.auth_config or self._auth_config()
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = new_secret()  # signs the UI's CSRF tokens
        log = open(self.folder / "mlflow-server.log", "ab")  # noqa: SIM115 - the server outlives this call
        self.process = subprocess.Popen(
            command, stdout=log, stderr=log, start_new_session=True, cwd=self.folder, env=env
        )
        wait_for_port(self.port, process=self.process)
        self._wait_until_serving()
        return self

    def _wait_until_serving(self, seconds: float = 60) -> None:
        import requests

        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=5, verify=self.verify).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server at {self.uri} did not answer /health within {seconds} s")

    def add_user(self, username: str) -> tuple[str, str]:
        """A new user with a random password, created by the admin through the auth API."""
        import requests

        password = new_secret()
        response = requests.post(
            f"{self.uri}/api/2.0/mlflow/users/create",
            json={"username": username, "password": password},
            auth=self.admin,
            timeout=30,
            verify=self.verify,
        )
        response.raise_for_status()
        return username, password

    def client_env(self, user: tuple[str, str] | None = None) -> dict[str, str]:
        """What a driver needs: the server's URI and, with auth, a user's credentials (environment only)."""
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if self.tls:
            env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = self.verify
        if user is not None:
            env |= {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}
        return env

    def secrets(self) -> list[str]:
        return [self.admin[1]] if self.auth else []

    def stop(self) -> None:
        _stop(self.process)


KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
    "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip


def write_tls_files(folder: Path, roles: tuple[str, ...] = ("scheduler", "worker", "client")) -> Path:
    """A throw-away CA's certificate (``ca.pem``) and, per role, a certificate and key it signed
    (``ROLE.pem``, ``ROLE.key``, 0600) in a 0700 folder. The CA's key lives only in memory: nobody can sign
    another certificate for this cluster. Dask checks that peers' certificates come from the CA, not names; an
    HTTPS client checks the names too (each certificate names 127.0.0.1 and localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = private_folder(folder)
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(name: str, key, issuer_name, issuer_key, *, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
        if ca:  # keyUsage on the CA: strict verifiers (OpenSSL's X509_STRICT, Python 3.13's default) require it
            usage = {name: False for name in KEY_USAGES} | {"key_cert_sign": True, "crl_sign": True}
            builder = builder.add_extension(x509.KeyUsage(**usage), critical=True)
        else:
            usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # every role does both
            altnames = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            builder = builder.add_extension(x509.SubjectAlternativeName(altnames), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("mlflow-mnist demo CA", ca_key, None, ca_key, ca=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(f"mlflow-mnist-{role}", key, ca.subject, ca_key, ca=False)
        (folder / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(folder / f"{role}.key", pem)
    return folder


def dask_client_env(tls: Path) -> dict[str, str]:
    """Dask's own configuration for a client of a TLS cluster (``Client()`` reads it by itself)."""
    return {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(tls / "ca.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(tls / "client.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(tls / "client.key"),
    }


class DaskCluster:
    """``dask scheduler`` and ``dask worker`` processes (one thread each), as on real machines: TLS required
    everywhere (``tls=False`` for plain TCP), every listening socket on 127.0.0.1, the diagnostics HTTP
    servers (which Dask starts even with ``--no-dashboard``) there too."""

    def __init__(self, folder: Path, port: int | None = None, *, tls: bool = True):
        self.folder, self.port = private_folder(folder), port or free_port()
        self.tls = write_tls_files(self.folder / "tls") if tls else None
        self.scheduler = None
        self.workers: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://{HOST}:{self.port}"

    def client_env(self) -> dict[str, str]:
        return dask_client_env(self.tls) if self.tls else {}

    def _tls_args(self, role: str) -> list[str]:
        if not self.tls:
            return []
        return ["--tls-ca-file", str(self.tls / "ca.pem"), "--tls-cert", str(self.tls / f"{role}.pem")] + [
            "--tls-key",
            str(self.tls / f"{role}.key"),
        ]

    def _spawn(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the process outlives this call
        # Workers never see the store's address or anyone's credentials; they do require encryption.
        env = clean_env(TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("MLFLOW_TRACKING_URI", None)
        if self.tls:
            env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
        return subprocess.Popen(
            [str(BIN / "dask"), *args], stdout=log, stderr=log, start_new_session=True, cwd=self.folder, env=env
        )

    def start_scheduler(self, *extra: str) -> DaskCluster:
        protocol = ["--protocol", "tls"] if self.tls else []
        self.scheduler = self._spawn(
            "scheduler",
            *["--host", HOST, "--port", str(self.port), *protocol],
            *["--no-dashboard", "--dashboard-address", f"{HOST}:0"],
            *self._tls_args("scheduler"),
            *extra,
            name="scheduler",
        )
        wait_for_port(self.port, process=self.scheduler)
        return self

    def add_worker(self, *extra: str) -> subprocess.Popen:
        worker = self._spawn(
            "worker",
            self.address,
            *["--host", HOST, "--nthreads", "1", "--no-nanny"],
            *["--no-dashboard", "--dashboard-address", f"{HOST}:0"],
            *self._tls_args("worker"),
            *extra,
            name=f"worker-{len(self.workers)}",
        )
        self.workers.append(worker)
        return worker

    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self.workers if worker.poll() is None]

    def start(self, n_workers: int = 2) -> DaskCluster:
        self.start_scheduler()
        for _ in range(n_workers):
            self.add_worker()
        return self

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            _stop(process)


def process_tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants that are still alive."""
    import psutil

    found = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            found += [parent.pid, *(child.pid for child in parent.children(recursive=True))]
        except psutil.NoSuchProcess:
            pass
    return found


def argv_holding(secrets_: list[str], pids: list[int] | None = None) -> dict[int, str]:
    """The processes (``pids``, else all of this machine's) whose command line holds any of ``secrets_``:
    what ``ps`` shows every user. Empty when none does."""
    found = {}
    for entry in [Path(f"/proc/{pid}") for pid in pids] if pids is not None else Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        if any(secret in argv for secret in secrets_):
            found[int(entry.name)] = argv.split(" ")[0]  # the program only: never print the secret
    return found


def listening_addresses(pids: list[int]) -> set[str]:
    """The addresses the processes ``pids`` listen on (TCP), e.g. ``127.0.0.1``."""
    import psutil

    addresses = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        addresses |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    return addresses
