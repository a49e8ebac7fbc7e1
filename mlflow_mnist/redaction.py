"""What may reach the user's terminal and the store: secrets redacted, TensorFlow's start-up lines dropped.

:func:`redact` is the one rule for every text the program prints or logs: credentials in URIs of any scheme
(exception messages quote URLs mid-sentence), secret query parameters, ``Bearer``/``Basic`` tokens, and the
literal values of secret environment variables. :func:`install` applies it to everything this process writes to
``sys.stdout``/``sys.stderr`` (click, tqdm, warnings, tracebacks, logging). :func:`quiet_tensorflow_startup`
drops the lines TensorFlow's C++ core prints while it is imported, before it reads ``TF_CPP_MIN_LOG_LEVEL``.
"""

from __future__ import annotations

import atexit
import importlib.abc
import io
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
# Short values would mangle ordinary text ("test", "1"); real secrets are longer.
MIN_SECRET_LENGTH = 4
SECRET_ENV_NAMES = frozenset(
    {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD"}
)
SECRET_ENV_SUFFIX = re.compile(
    r"_(?:PASSWORD|PASSWD|TOKEN|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|API_KEY|ACCESS_KEY|PRIVATE_KEY)$"
)

# scheme://userinfo@: the userinfo ends at the authority's *last* '@' (a password may hold a raw '@'); it never
# spans whitespace, quotes or a path. A path starts at once in sqlite:////abs/path, so that never matches.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#'\"<>`]*@")
# A query parameter whose name says it is a secret (token, access_token, X-Amz-Signature, sig, api_key, ...).
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][\w.\-]*(?:token|passw(?:or)?d|pwd|secret|sig|signature|key|credential|auth)[\w.\-]*=)"
    r"[^&#\s'\"<>`)\],;]+",
    re.IGNORECASE,
)
# libpq-style key=value text outside URLs ("password=... host=...") and HTTP authorization schemes.
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>\b[\w\-]*(?:password|passwd|pwd|secret|token)\s*=\s*)[^\s&'\"<>`,;)]+", re.IGNORECASE
)
# A credential has a digit or a symbol in it; "Basic authentication" is English.
_AUTH_HEADER = re.compile(r"(?P<name>\b(?:Bearer|Basic)\s+)(?=[\w.~+/\-]*[\d.~+/\-])[\w.~+/\-]{8,}=*")


def _is_secret_name(name: str) -> bool:
    return name.upper() in SECRET_ENV_NAMES or bool(SECRET_ENV_SUFFIX.search(name.upper()))


def _uri_credentials(value: str) -> tuple[str, str] | None:
    """The userinfo (``user:password``) and the password in a URI-valued variable (MLFLOW_TRACKING_URI,
    DATABASE_URL), even ones the URI pattern cannot bound (a raw '/' or '#' in the password)."""
    match = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://([^\s]*)@", value)
    if not match or ":" not in match.group(1):
        return None
    return match.group(1), match.group(1).split(":", 1)[1]


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Every secret value in the environment: secret-named variables and passwords inside URI variables, each
    also as it appears percent-encoded in a URL; longest first, so a longer secret is masked whole."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in environ.items():
        candidates = [value] if _is_secret_name(name) else []
        credentials = _uri_credentials(value) if "://" in value else None
        if credentials:  # the whole user:password too: a password too short to mask alone is masked in its URI
            userinfo, password = credentials
            candidates += [userinfo, unquote(userinfo), password, unquote(password)]
        for candidate in candidates:
            found |= {candidate, quote(candidate, safe=""), quote_plus(candidate, safe="")}
    return sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


@lru_cache(maxsize=8)
def _literal_pattern(values: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(map(re.escape, values))) if values else None


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``***``; the environment is read at each call.

    >>> redact("API request to http://alice:pw@10.0.0.1:5000/api failed")
    'API request to http://***@10.0.0.1:5000/api failed'
    """
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group('name')}{MASK}", text)
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group('name')}{MASK}", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group('name')}{MASK}", text)
    literals = _literal_pattern(tuple(secret_values()))
    return literals.sub(MASK, text) if literals else text


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what it forwards, a line at a time.

    Text is held until a newline or carriage return (tqdm redraws with ``\\r``), so a URL that arrives in
    several ``write`` calls (``print`` writes each argument separately) is redacted whole. ``flush`` forwards a
    pending partial line (a progress bar, a prompt) except a trailing word that may be an unfinished URL.
    ``isatty``, ``encoding`` and ``fileno`` are the wrapped stream's, so tqdm and click treat a terminal as one;
    there is no ``buffer``, so nothing writes bytes around the redaction.
    """

    def __init__(self, stream):
        super().__init__()
        self.wrapped = stream
        self._pending = ""
        self._lock = threading.RLock()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.wrapped, "encoding", "utf-8")

    @property
    def errors(self):  # type: ignore[override]
        return getattr(self.wrapped, "errors", "strict")

    def isatty(self) -> bool:
        return self.wrapped.isatty()

    def fileno(self) -> int:
        return self.wrapped.fileno()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._pending += text
            end = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
            if end:
                ready, self._pending = self._pending[:end], self._pending[end:]
                self.wrapped.write(redact(ready))
        return len(text)

    def flush(self, *, everything: bool = False) -> None:
        with self._lock:
            ready, held = self._pending, ""
            if not everything:
                head, _, last = ready.rpartition(" ")
                if "://" in last:  # maybe a URL cut before its credentials: wait for the rest of it
                    ready, held = (f"{head} " if head else ""), last
            self._pending = held
            try:
                if ready:
                    self.wrapped.write(redact(ready))
                self.wrapped.flush()
            except (OSError, ValueError):
                pass  # a closed pipe or a stream closed before exit: there is no one left to read it

    def close(self) -> None:
        self.flush(everything=True)


class RedactingFilter(logging.Filter):
    """Redacts a record's message and arguments, for handlers that write elsewhere than stdout/stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except (TypeError, ValueError):  # arguments that do not fit the format: the handler reports that
            record.msg = redact(str(record.msg))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_INSTALL_LOCK = threading.Lock()


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word's end, marked with "..." when cut: a store's error
    quoted inside one of our lines (a cut in mid-word read as a garbled word, "(Cau)")."""
    if len(text) <= limit:
        return text
    head = text[: max(0, limit - 4)]
    if " " in head:
        head = head[: head.rindex(" ")]
    return head.rstrip(" ,;:(") + " ..."


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour and bold codes (Keras marks its errors up)


def error_line(text: str, limit: int = 300) -> str:
    """An error's text quoted in one of our lines: terminal codes removed, whitespace (newlines included)
    collapsed, redacted, then shortened to ``limit`` characters."""
    return shorten(redact(" ".join(ANSI_ESCAPE.sub("", text).split())), limit)


def first_line(error: BaseException, limit: int) -> str:
    """An exception's first line (its type's name where it has no text), redacted, then shortened to ``limit``: the
    reason quoted in a store's one-line errors."""
    return shorten(redact((str(error).splitlines() or [type(error).__name__])[0]), limit)


def install() -> None:
    """Redact everything this process prints from now on; idempotent.

    Wraps ``sys.stdout`` and ``sys.stderr``, points logging handlers that already hold the old streams at the
    wrappers, adds :class:`RedactingFilter` to every existing handler, and flushes pending text at exit.
    Call it first thing in the command-line entry point, before anything prints or creates a progress bar.
    """
    with _INSTALL_LOCK:
        replaced = {}
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None or isinstance(stream, RedactingStream):
                continue
            wrapper = RedactingStream(stream)
            replaced[id(stream)] = wrapper
            setattr(sys, name, wrapper)
            atexit.register(wrapper.close)
        loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values())]
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                stream = getattr(handler, "stream", None)
                if isinstance(handler, logging.StreamHandler) and id(stream) in replaced:
                    handler.setStream(replaced[id(stream)])
                if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                    handler.addFilter(RedactingFilter())


# -- TensorFlow's start-up lines ------------------------------------------------------------------------------
# TensorFlow 2.21 logs through Abseil; lines logged before absl::InitializeLog() (while the shared libraries
# load: the oneDNN notice, the CUDA stub, the CPU feature guard) go to fd 2 whatever TF_CPP_MIN_LOG_LEVEL says.
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_ABSL_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def _min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def _is_startup_noise(line: str, min_level: int) -> bool:
    """An Abseil line below the level the user asked for (``TF_CPP_MIN_LOG_LEVEL``), or its preamble."""
    if line.rstrip("\r\n") == _ABSL_PREAMBLE:
        return min_level >= 1
    match = _ABSL_LINE.match(line)
    return bool(match) and _SEVERITY[match.group("severity")] < min_level


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Capture file descriptor 2 (what C++ writes) for the block, then write back what is not start-up noise.

    Python-level writes made meanwhile are captured too and replayed through ``sys.stderr`` (so redacted);
    other threads' output is delayed by the block, not lost.
    """
    min_level = _min_log_level()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    capture = saved = None
    try:
        saved = os.dup(2)
        capture = tempfile.TemporaryFile()
    except OSError:
        pass
    if capture is None:  # no fd 2 (a daemon) or no temporary space: better noise than no import
        if saved is not None:
            os.close(saved)
        yield
        return
    with capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _is_startup_noise(line, min_level))
            if kept and sys.stderr is not None:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader of ``tensorflow`` with fd 2 filtered, then gets out of the way."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # nobody sees the wrapper afterwards
        with native_stderr_filtered():
            self.loader.exec_module(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the other finders would, with a loader that filters its start-up lines."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def quiet_tensorflow_startup() -> None:
    """Keep TensorFlow's start-up lines off the terminal in this process; idempotent, cheap until TF is imported.

    Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user chose a level (TensorFlow reads it once it is up) and, for
    the lines it prints before that, filters fd 2 while ``tensorflow`` is first imported, however it is reached
    (``import keras``, ``mlflow.keras``). Each process must call it itself: pool and cluster workers are new
    interpreters; the package's ``__init__`` is the one place every one of them runs first.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())
