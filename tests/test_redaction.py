"""No secret in any output: the redaction rule, the streams that apply it, the real CLI failing in many ways
with a password in its tracking URI or environment, and no TensorFlow start-up lines on the terminal."""

from __future__ import annotations

import base64
import http.server
import io
import logging
import os
import subprocess
import sys
import threading

import pytest
from conftest import cli
from services import free_port

from mlflow_mnist import redaction
from mlflow_mnist.redaction import MASK, RedactingStream, redact

PW = "Zq81-s3cret-PW"

# (text, what must vanish, what must stay)
TEXTS = [
    ("http://alice:Zq81-s3cret-PW@10.0.0.5:5000", [PW, "alice"], ["http://***@10.0.0.5:5000"]),
    ("https://alice:Zq81-s3cret-PW@mlflow.example.com/", [PW], ["https://***@mlflow.example.com/"]),
    (
        "API request to http://alice:Zq81-s3cret-PW@127.0.0.1:1/api/2.0/mlflow/experiments/search failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: "
        "/api/2.0/mlflow/experiments/search?max_results=1",
        [PW],
        ["API request to http://***@127.0.0.1:1/api/2.0/mlflow/experiments/search failed", "?max_results=1"],
    ),
    ("postgresql://mlflow:Zq81-s3cret-PW@db:5432/mlflow", [PW, "mlflow:"], ["postgresql://***@db:5432/mlflow"]),
    (
        "(psycopg2) postgresql+psycopg2://mlflow:Zq81-s3cret-PW@db.internal/mlflow?sslmode=require: refused",
        [PW],
        ["postgresql+psycopg2://***@db.internal/mlflow?sslmode=require: refused"],
    ),
    ("mysql+pymysql://root:Zq81-s3cret-PW@127.0.0.1:3306/mlflow", [PW], ["mysql+pymysql://***@127.0.0.1:3306"]),
    ("s3://AKIAEXAMPLE:Zq81-s3cret-PW@bucket/artifacts", [PW, "AKIAEXAMPLE"], ["s3://***@bucket/artifacts"]),
    ("password with @: http://alice:p@ss-Zq81@host:5000/x", ["p@ss-Zq81", "ss-Zq81"], ["http://***@host:5000/x"]),
    ("encoded: http://alice:p%40ss%3AZq81%2F@host/x done", ["p%40ss%3AZq81%2F"], ["http://***@host/x done"]),
    ("a token as user name: https://ghp_Zq81token@github.com/org/repo.git", ["ghp_Zq81token"], ["github.com/org"]),
    (
        "GET https://bucket.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=Zq81sig&X-Amz-Expires=60",
        ["Zq81sig", "AKIA%2F1"],
        ["X-Amz-Signature=***", "X-Amz-Expires=60"],
    ),
    ("http://127.0.0.1:5000/?token=Zq81-tok&experiment=1 failed", ["Zq81-tok"], ["?token=***&experiment=1 failed"]),
    ("https://h/sas?sv=2022&sig=Zq81%2Bsig%3D&se=x", ["Zq81%2Bsig%3D"], ["sig=***&se=x"]),
    ("libpq: host=db port=5432 password=Zq81-s3cret-PW user=x", [PW], ["password=*** user=x"]),
    ("headers: Authorization: Bearer eyJhbGci.Zq81.sig", ["eyJhbGci.Zq81.sig"], ["Bearer ***"]),
    ("Basic authentication failed for user alice", [], ["Basic authentication failed for user alice"]),
    ("sqlite:////tmp/runs@home/mlflow.db", [], ["sqlite:////tmp/runs@home/mlflow.db"]),
    ("sqlite:///mlflow.db?mode=ro", [], ["sqlite:///mlflow.db?mode=ro"]),
    ("file:///tmp/mlruns and s3://bucket/key@v2", [], ["file:///tmp/mlruns and s3://bucket/key@v2"]),
    ("http://127.0.0.1:5000/api/2.0/mlflow/runs/get?run_id=abc", [], ["?run_id=abc"]),
    ("kernel_size=(5, 5) fold 2/3: ok 0.9467, neurons_3=10", [], ["kernel_size=(5, 5) fold 2/3: ok 0.9467"]),
]


@pytest.mark.parametrize("text, gone, kept", TEXTS, ids=[f"text{i}" for i in range(len(TEXTS))])
def test_redact_masks_credentials_and_keeps_the_rest(text, gone, kept):
    out = redact(text)
    for secret in gone:
        assert secret not in out, out
    for part in kept:
        assert part in out, out
    if not gone:
        assert out == text
    assert redact(out) == out  # idempotent: redacting twice (stream and message) changes nothing more


def test_secret_environment_values_are_masked_at_call_time(monkeypatch):
    text = "server said: bad password Zq81-s3cret-PW / token tok-Pm37-live / key aws-Kx92/key+x / pg Zq81pg"
    assert redact(text) == text  # nothing set yet: nothing to mask
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PW)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-Pm37-live")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-Kx92/key+x")
    monkeypatch.setenv("PGPASSWORD", "Zq81pg")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "abc")  # too short to mask: it would mangle ordinary words
    out = redact(text + " (abc)")
    assert out == "server said: bad password *** / token *** / key *** / pg *** (abc)"
    assert redact("quoted aws-Kx92%2Fkey%2Bx") == f"quoted {MASK}"  # as it appears percent-encoded in a URL
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert PW in redact(f"bad password {PW}")


def test_password_of_a_uri_variable_is_masked_even_where_the_uri_pattern_cannot_see_it(monkeypatch):
    """A raw '/' in a password ends the URI's authority early; the password from $MLFLOW_TRACKING_URI still goes."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa/ss-Zq81@127.0.0.1:5000")
    out = redact("401 for user alice with password pa/ss-Zq81 at http://alice:pa/ss-Zq81@127.0.0.1:5000")
    assert "pa/ss-Zq81" not in out and "ss-Zq81" not in out


def test_a_password_too_short_to_mask_alone_is_masked_in_its_uri(monkeypatch):
    """Three characters with a '/': the URI pattern cannot bound it and a lone 3-character literal would mangle
    ordinary text, so the variable's whole user:password is masked wherever the URI is printed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:q/7@127.0.0.1:1")
    out = redact("cannot reach the tracking store at http://bob:q/7@127.0.0.1:1 (connection refused)")
    assert "q/7" not in out and out == "cannot reach the tracking store at http://***@127.0.0.1:1 (connection refused)"
    assert redact("step 7 of 17") == "step 7 of 17"


def test_stream_redacts_a_url_written_in_pieces_and_keeps_tqdm_working():
    target = io.StringIO()
    stream = RedactingStream(target)
    print("error:", "http://alice:", end="", file=stream)
    stream.flush()  # a flush in the middle of a URL must not let its first half out with the secret
    print(f"{PW}@host/x", "failed", file=stream)
    stream.write("\rbar  50%|#####     | 1/2 [00:01<00:01]")
    stream.flush()  # tqdm flushes after each redraw: the bar shows at once
    assert target.getvalue() == "error: http://***@host/x failed\n\rbar  50%|#####     | 1/2 [00:01<00:01]"
    stream.write("\rbar 100%|##########| 2/2 [00:02<00:00]\n")
    assert target.getvalue().endswith("\rbar 100%|##########| 2/2 [00:02<00:00]\n")
    with pytest.raises(TypeError):
        stream.write(b"bytes bypass nothing")
    assert not hasattr(stream, "buffer")  # click would write bytes to a buffer around the redaction
    stream.write("pending at exit")
    target.close()  # closed before the process's last flush (pytest's capture does that): no error at exit
    stream.close()


def test_stream_looks_like_the_terminal_it_wraps(tmp_path):
    with open(tmp_path / "out.txt", "w", encoding="utf-8") as handle:
        stream = RedactingStream(handle)
        assert stream.encoding == "utf-8" and stream.fileno() == handle.fileno() and stream.isatty() is False
        import click
        from tqdm import tqdm

        click.echo(f"click: https://bob:{PW}@h/", file=stream)
        for _ in tqdm(range(3), file=stream, desc=f"via https://bob:{PW}@h/"):
            pass
        stream.close()
    text = (tmp_path / "out.txt").read_text()
    assert PW not in text and "click: https://***@h/" in text and "3/3" in text


def test_install_redacts_prints_warnings_logging_and_tracebacks_of_the_whole_process(tmp_path):
    """In a fresh interpreter, as the CLI runs: a handler made before install() is pointed at the wrapper."""
    code = f"""
import logging, sys, warnings
early = logging.StreamHandler(sys.stderr)
logging.getLogger("early").addHandler(early)
from mlflow_mnist import redaction
redaction.install()
redaction.install()  # idempotent
assert type(sys.stderr.wrapped).__name__ != "RedactingStream"
url = "postgresql://u:{PW}@db/x"
print("stdout", url)
logging.getLogger("early").error("early handler %s", url)
logging.basicConfig()
logging.getLogger("late").error("late handler %s", url)
warnings.warn("warning " + url)
sys.stderr.write("no newline at exit " + url)
raise RuntimeError("traceback " + url)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert PW not in proc.stdout + proc.stderr
    assert "stdout postgresql://***@db/x" in proc.stdout
    for line in ("early handler", "late handler", "warning", "RuntimeError: traceback", "no newline at exit"):
        assert f"{line} postgresql://***@db/x" in proc.stderr, proc.stderr


def test_logging_filter_redacts_records_for_handlers_that_write_elsewhere(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-Pm37-live")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s in %s", ("tok-Pm37-live", "s3://k:v@b"), None)
    assert redaction.RedactingFilter().filter(record)
    assert record.getMessage() == "token *** in s3://***@b"


# -- the real CLI, failing in many ways with secrets in its configuration --------------------------------------

STAGE = ["tune", "--stage", "kernel_size", "--data", "sample", "--epochs", "1", "--folds", "2"]
TOKEN = "tok-Pm37-never-print"


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A server that misbehaves in the ways that put credentials into MLflow's exception texts."""

    def _answer(self) -> None:
        auth = self.headers.get("Authorization", "")
        decoded = ""
        if auth.startswith("Basic "):
            decoded = base64.b64decode(auth.removeprefix("Basic ")).decode(errors="replace")
        if self.path.startswith("/unauthorized"):
            status, body = 401, '{"error_code": "UNAUTHENTICATED", "message": "bad credentials"}'
        elif self.path.startswith("/forbidden"):  # echoes what it was sent, decoded
            status, body = 403, f"user:password {decoded} is not allowed"
        else:  # a broken proxy: echoes the request's headers (400: MLflow quotes the body, it retries a 5xx)
            status, body = 400, f"Authorization: {auth} ({decoded}) in {self.path}"
        payload = body.encode()
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def hostile_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


# (name, environment, extra CLI arguments, what the output must show: the path was taken, the secret masked in
# place); {port}: the hostile server, {closed}: a port nobody listens on, {tmp}: the test's folder.
FAILURES = [
    ("http unreachable", {"MLFLOW_TRACKING_URI": "http://alice:{pw}@127.0.0.1:{closed}"}, [], "http://***@127.0.0.1"),
    ("https unreachable", {"MLFLOW_TRACKING_URI": "https://alice:{pw}@127.0.0.1:{closed}"}, [], "https://***@"),
    (
        "https to a plain http server",
        {"MLFLOW_TRACKING_URI": "https://alice:{pw}@127.0.0.1:{port}"},
        [],
        "https://***@",
    ),
    (
        "401 from the server",
        {"MLFLOW_TRACKING_URI": "http://alice:{pw}@127.0.0.1:{port}/unauthorized"},
        [],
        "bad credentials",
    ),
    (
        "403 echoing the password",
        {"MLFLOW_TRACKING_URI": "http://alice:{pw}@127.0.0.1:{port}/forbidden"},
        [],
        "refused our credentials",
    ),
    ("400 echoing the headers", {"MLFLOW_TRACKING_URI": "http://alice:{pw}@127.0.0.1:{port}/proxy"}, [], "Basic ***"),
    (
        "password in the environment, 403 echo",
        {
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}/forbidden",
            "MLFLOW_TRACKING_USERNAME": "alice",
            "MLFLOW_TRACKING_PASSWORD": "{pw}",
        },
        [],
        "refused our credentials",
    ),
    (
        "token in the environment, 400 echo",
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}/proxy", "MLFLOW_TRACKING_TOKEN": TOKEN},
        [],
        "Bearer ***",
    ),
    ("token in the query", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{closed}/?token={pw}"}, [], "token=***"),
    (
        "postgresql without its driver",
        {"MLFLOW_TRACKING_URI": "postgresql+pg8000://alice:{pw}@127.0.0.1:{closed}/mlflow"},
        [],
        "pg8000",
    ),
    ("mysql without its driver", {"MLFLOW_TRACKING_URI": "mysql://alice:{pw}@127.0.0.1:{closed}/m"}, [], "MySQLdb"),
    ("unknown scheme", {"MLFLOW_TRACKING_URI": "htp://alice:{pw}@127.0.0.1:{closed}"}, [], "htp://***@"),
    ("password with @ and :", {"MLFLOW_TRACKING_URI": "http://alice:p@ss:{pw}@127.0.0.1:{closed}"}, [], "http://***@"),
    (
        "Dask scheduler address with a password",
        {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/mlflow.db", "MLFLOW_TRACKING_PASSWORD": "{pw}"},
        ["--executor", "dask", "--scheduler", "tcp://alice:{pw}@127.0.0.1:{closed}"],
        "address",
    ),
]


@pytest.mark.parametrize("name, env, args, shown", FAILURES, ids=[case[0] for case in FAILURES])
def test_no_secret_in_any_output_of_a_failing_command(tmp_path, hostile_server, name, env, args, shown):
    fill = {"pw": PW, "port": hostile_server, "closed": free_port(), "tmp": tmp_path}
    env = {key: value.format(**fill) for key, value in env.items()}
    args = [value.format(**fill) for value in args]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID"):
        env.setdefault(key, "")  # nothing from the outer environment
    env.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    proc = cli(*STAGE, *args, env=env, cwd=tmp_path, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    secrets = [PW, TOKEN, base64.b64encode(f"alice:{PW}".encode()).decode()]
    secrets += [base64.b64encode(f"alice:p@ss:{PW}".encode()).decode(), "p%40ss"]
    for secret in secrets:
        assert secret not in output, output[-3000:]
        for db in tmp_path.rglob("*.db"):  # whatever the command wrote to a store
            assert secret.encode() not in db.read_bytes()
    assert shown in output, output[-3000:]  # the failure path this case is about was taken


def test_a_password_in_the_uri_is_warned_of_since_mlflow_run_prints_the_uri_as_it_is(tmp_path):
    """From an audit: our output is redacted, but `mlflow run`'s launcher prints the tracking URI, userinfo and all,
    in its closing "View run ... at:" lines. A password in the URI is warned of (without showing it); credentials
    in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD are not."""
    closed = free_port()
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_RUN_ID": "", "MLFLOW_TRACKING_PASSWORD": ""}
    inline = cli("promote", env={**quick, "MLFLOW_TRACKING_URI": f"http://alice:{PW}@127.0.0.1:{closed}"}, cwd=tmp_path)
    lines = (inline.stdout + inline.stderr).strip().splitlines()
    assert lines[0].startswith("warning: MLFLOW_TRACKING_URI holds a password, which `mlflow run` prints")
    assert "MLFLOW_TRACKING_PASSWORD instead" in lines[0] and PW not in inline.stdout + inline.stderr
    apart = {**quick, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}", "MLFLOW_TRACKING_USERNAME": "alice"}
    separate = cli("promote", env={**apart, "MLFLOW_TRACKING_PASSWORD": PW}, cwd=tmp_path)
    assert "warning" not in separate.stdout + separate.stderr and separate.returncode == 2


# -- TensorFlow's start-up lines ------------------------------------------------------------------------------

NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "Could not find cuda drivers", "I0000")


@pytest.mark.slow
def test_tensorflow_import_prints_nothing_but_real_errors_survive(tmp_path):
    """Without TF_CPP_MIN_LOG_LEVEL, as a user's shell has it: importing keras says nothing; a line the import
    writes that is not Abseil's start-up chatter still reaches stderr."""
    code = (
        "import os, sys\n"
        "from mlflow_mnist import redaction\n"
        "redaction.quiet_tensorflow_startup()\n"
        "import keras\n"
        "os.write(2, b'after import\\n')\n"
        "with redaction.native_stderr_filtered():\n"
        "    os.write(2, b'E0000 00:00:1796183305.213063 6461 cuda_platform.cc:52] below FATAL: dropped\\n')\n"
        "    os.write(2, b'a real problem stays\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "after import\na real problem stays\n", proc.stderr


@pytest.mark.slow
def test_tensorflow_noise_is_kept_when_the_user_asks_for_it(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    code = "from mlflow_mnist import redaction\nredaction.quiet_tensorflow_startup()\nimport tensorflow\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "oneDNN custom operations" in proc.stderr  # TF_CPP_MIN_LOG_LEVEL=0 means: show me everything


@pytest.mark.slow
def test_no_startup_noise_from_a_dask_cluster(tmp_path):
    """The whole command, its local Dask cluster's worker included, as a user's shell runs it. The serial
    executor trains in the driver, whose import test_tensorflow_import_prints_nothing_but_real_errors_survive
    checks; joblib's pool workers are checked by test_end_to_end's `mlflow run`, which starts them anyway."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_RUN_ID": ""})
    # The digits task trains in a second a fold, its smallest grid (3 candidates) is enough: the start-up noise is
    # TensorFlow's, whatever the task and however many folds follow.
    stage = ["tune", "--task", "digits", "--stage", "activation", "--epochs", "1", "--folds", "2"]
    stage += ["--log-models", "false"]
    # One Dask worker is a process of its own.
    command = [sys.executable, "-m", "mlflow_mnist", *stage, "--executor", "dask", "--n-jobs", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    noise = [line for line in proc.stderr.replace("\r", "\n").splitlines() if any(n in line for n in NOISE)]
    assert not noise, noise[:5]
    assert "Creating initial MLflow database tables" not in proc.stderr  # the store's creation is quiet too
    assert "activation: best" in proc.stdout


@pytest.mark.slow
def test_a_fresh_worker_process_is_quiet_from_its_first_import(tmp_path):
    """A loky or Dask worker starts by unpickling a task, which imports mlflow_mnist.worker: the package's
    ``__init__`` must have installed the filter before that import can reach TensorFlow."""
    code = "import pickle, mlflow_mnist.worker\nimport keras\nimport sys\nprint('imported', file=sys.stderr)\n"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "imported\n", proc.stderr[-2000:]


def test_a_quoted_error_is_cut_at_a_words_end():
    """A store's error quoted in one of our lines is cut to its limit at a word's end, marked; before, "(Cau)"."""
    from mlflow_mnist.redaction import shorten

    text = "Max retries exceeded with url: /?token=*** (Caused by NewConnectionError('refused'))"
    assert shorten(text, 200) == text
    cut = shorten(text, 50)
    assert cut == "Max retries exceeded with url: /?token=*** ..." and len(cut) <= 50
    assert shorten("x" * 80, 20) == "x" * 16 + " ..."  # one long word: cut inside it, still within the limit
