"""One writer at a time: a lock the store grants atomically, kept alive by a heartbeat, fenced by its own clock.

The primitive is MLflow's ``create_registered_model``: the store inserts the name under a unique key, so of
drivers creating one name at the same instant exactly one succeeds and the others get
``RESOURCE_ALREADY_EXISTS`` (SQLite, PostgreSQL, and through ``mlflow server``; file stores check and then
create, so they are refused). The lock on a key (an experiment id, a registered model's name) is the registered
model ``mlflow-mnist-lock-<kind>-<key>-g<n>`` with the highest generation ``n``; its tags name its holder.
Taking the lock creates generation ``n + 1``, whether ``n`` was released, broken, or held by a holder that is
gone: racers compute the same name, and the store lets one of them create it.

Liveness never compares two machines' clocks. The holder increments a heartbeat counter every ``ttl / 4``;
it trusts its lock only while its last successful renewal (timed from when the request was sent, on its own
monotonic clock) is younger than ``ttl / 2``. A newcomer takes over a holder on another machine only after
watching the counter stand still for the holder's own ``ttl`` on the newcomer's clock, and then waits
``ttl / 2`` plus the holder's longest request (``in_flight``: timeout x attempts) more before it writes: by then
a holder whose renewal was still in flight has stopped itself, and a write it issued just before has landed.
A holder on the same machine whose process is gone (pid and kernel start time) is taken over at once.

The top generation is never deleted: a released lock stays as one free entity per key, so generation numbers
never restart (two racers who saw different, stale tops can then never both succeed). Older generations are
deleted by the next holder. Every process that locks one key must be able to read the others' lock entities
(one MLflow user, or READ on each other's registered models): a name that exists but stays unreadable for
``UNREADABLE_GRACE`` seconds (an mlflow server grants its creator READ only just after creating it) is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow_mnist.paging import all_pages
from mlflow_mnist.schema import LOCK_PREFIX

PREFIX = "mlflow-mnist-lock"
HELD, FREE, BROKEN = "held", "free", "broken"
LEASE_ENV = "MLFLOW_MNIST_LEASE_SECONDS"
DEFAULT_TTL = 60.0  # the lease without $MLFLOW_MNIST_LEASE_SECONDS (read by lease_seconds, never at import)
LEASE_RANGE = (5.0, 86400.0)  # shorter leases are lost to one slow write; longer ones keep a dead holder a day
DEFAULT_IN_FLIGHT = 120.0  # a holder that did not say how long its requests may take: MLflow's default timeout
SQL_BUSY_TIMEOUT = 20.0  # MLflow's SQLite sessions wait this long for the database (PRAGMA busy_timeout = 20000)
UNREADABLE_GRACE = 5.0  # seconds a name the store refused as existing may stay unreadable to its creator (auth hook)
_clock = (lambda: time.clock_gettime(time.CLOCK_BOOTTIME)) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
# CLOCK_BOOTTIME keeps counting while a laptop sleeps, where CLOCK_MONOTONIC stops: a holder that wakes up
# after an hour must know that an hour has passed.


class LockError(RuntimeError):
    """The lock cannot be had or kept; the message is one line naming the holder or the cause, and the fix."""


def env_seconds(name: str, default: float, low: float, high: float, error: type[Exception] = RuntimeError) -> float:
    """The number of seconds the environment variable ``name`` sets (``default`` where it is unset or empty),
    checked: a value that is not a finite number from ``low`` to ``high`` is ``error``, one line naming the
    variable, its range and the fix. Read when a command starts (never at import), before it writes anything."""
    import math

    text = os.environ.get(name, "").strip()
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise error(
            f"${name}={text[:40]!r} must be a number of seconds from {low:g} to {high:g} (default {default:g}): fix "
            f"or unset it"
        )
    return value


def lease_seconds() -> float:
    """This driver's lock TTL: ``$MLFLOW_MNIST_LEASE_SECONDS`` (default 60 s), or :class:`LockError` naming it.
    ``tune`` and ``final`` call it before the store is reached, so a bad value is refused with nothing written."""
    return env_seconds(LEASE_ENV, DEFAULT_TTL, *LEASE_RANGE, error=LockError)


class LockHeld(LockError):
    """Another live process holds the lock."""


class LockLost(LockError):
    """This process no longer holds its lock: it must not write anything more."""


class LockUnsupported(LockError):
    """The store cannot create a name atomically."""


@dataclass(frozen=True)
class Kind:
    """What a lock guards, for names and messages."""

    name: str  # in the entity's name: mlflow-mnist-lock-<name>-<key>-g<n>
    holder: str  # who holds it, in messages: "driver"
    subject: str  # "this experiment", or a format with {key}
    after_loss: str  # what a user keeps and does once the lock is lost

    def about(self, key: str) -> str:
        return self.subject.format(key=key)


EXPERIMENT = Kind("experiment", "driver", "this experiment", "finished folds are kept; run the same command again")
MODEL = Kind("model", "promotion", "registered model {key!r}", "the alias was not moved; run the same command again")


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str]:
    """(state letter, kernel start time) of ``pid`` from /proc, or ("", "") when there is no such process."""
    text = _read(f"/proc/{pid}/stat")
    fields = text.rsplit(")", 1)[-1].split() if text else []
    return (fields[0], fields[19]) if len(fields) > 19 else ("", "")


def _machine() -> str:
    """Equal for two processes exactly when their pids name the same processes: one boot, one pid namespace."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot}/{namespace}" if boot and namespace else ""


@dataclass(frozen=True)
class Process:
    """A process as another process can recognise it: host for people, machine and start time for the kernel."""

    host: str
    machine: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> Process:
        pid = os.getpid()
        return cls(socket.gethostname(), _machine(), pid, _stat(pid)[1])

    def state(self) -> str:
        """``running`` or ``gone`` when this machine can tell (same boot and pid namespace), else ``unknown``."""
        if not self.machine or self.machine != _machine() or not self.started:
            return "unknown"
        letter, started = _stat(self.pid)
        return "running" if started == self.started and letter not in ("Z", "X", "") else "gone"


@dataclass(frozen=True)
class Holder:
    """A generation of a lock as the store shows it."""

    name: str
    generation: int
    token: str
    process: Process
    command: str
    ttl: float
    beat: str
    state: str
    in_flight: float  # the longest one of its store requests may take, retries included
    since: str  # when it was taken, by the holder's own clock: for people only, never for decisions

    @classmethod
    def from_model(cls, model, generation: int) -> Holder:
        tags = dict(model.tags or {})

        def tag(name: str, default: str = "") -> str:
            return str(tags.get(LOCK_PREFIX + name, default))

        try:
            ttl = float(tag("ttl", "nan"))
        except ValueError:
            ttl = float("nan")
        pid = tag("pid", "0")
        process = Process(tag("host", "?"), tag("machine"), int(pid) if pid.isdigit() else 0, tag("started"))
        ttl = ttl if 0 < ttl < float("inf") else lease_seconds()  # an unreadable TTL is judged by ours
        try:
            in_flight = float(tag("in_flight", "nan"))
        except ValueError:
            in_flight = float("nan")
        in_flight = in_flight if 0 <= in_flight < float("inf") else DEFAULT_IN_FLIGHT
        return cls(
            model.name,
            generation,
            tag("token"),
            process,
            tag("command", "unknown"),
            ttl,
            tag("beat"),
            tag("state", HELD),
            in_flight,
            tag("since"),
        )

    @property
    def free(self) -> bool:
        return self.state in (FREE, BROKEN)

    def describe(self) -> str:
        return f"{self.command} (pid {self.process.pid} on {self.process.host}, since {self.since or '?'})"


def _safe_key(key: str) -> str:
    """The key as it may appear in a registered model's name and inside a quoted search filter."""
    if re.fullmatch(r"[A-Za-z0-9.-]{1,80}", key):
        return key
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", key)[:40]
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _check_registry(client) -> None:
    uri = str(getattr(client, "_registry_uri", "") or "")
    scheme = uri.split(":", 1)[0] if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri) else ""  # C:\\ is a path
    if scheme in ("", "file"):
        raise LockUnsupported(
            f"the model registry at {uri or 'a local folder'} is a folder (file store): it cannot create a name "
            f"atomically, so two drivers could both write; use a database (sqlite:///mlflow.db) or an mlflow server"
        )


def request_bound(client) -> float:
    """The longest one store request of this process may take, retries and backoff included: a write issued
    just before the lock expired may land this much later (MLflow's HTTP settings; a database's lock wait)."""
    uri = str(getattr(client, "_registry_uri", "") or "")
    if not uri.startswith(("http://", "https://")):
        return SQL_BUSY_TIMEOUT
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    retries = max(0, MLFLOW_HTTP_REQUEST_MAX_RETRIES.get())
    backoff = sum(
        min(120.0, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() * 2 ** (n - 1)) + MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get()
        for n in range(1, retries + 1)
    )
    return MLFLOW_HTTP_REQUEST_TIMEOUT.get() * (retries + 1) + backoff


def _error_name(error: BaseException) -> str:
    """An error as a word, never its text: store errors can quote URIs with credentials."""
    return str(getattr(error, "error_code", "") or type(error).__name__)


class StoreLock:
    """The lock on ``key``: take it with :meth:`acquire` (or ``with``), check it before every write with
    :meth:`check` (or write through :meth:`fenced`), give it back with :meth:`release`.

    ``wait`` bounds how long :meth:`acquire` watches a holder on another machine for a heartbeat before it
    refuses; the default, that holder's own ``ttl`` plus one poll, takes over a dead holder in the same call.
    ``notify`` receives a line when acquiring has to wait. ``process`` stands for this process (tests).
    """

    def __init__(
        self,
        client,
        key: str,
        *,
        kind: Kind = EXPERIMENT,
        command: str,
        ttl: float | None = None,
        wait: float | None = None,
        notify: Callable[[str], None] | None = None,
        process: Process | None = None,
        in_flight: float | None = None,
        break_hint: str = "--break-lease",
    ):
        ttl = lease_seconds() if ttl is None else ttl  # None: $MLFLOW_MNIST_LEASE_SECONDS, checked, or 60 s
        if not ttl > 0:
            raise ValueError(f"ttl={ttl} must be positive")
        self.client, self.key, self.kind, self.ttl, self.wait = client, str(key), kind, float(ttl), wait
        self.command, self.notify, self.break_hint = command[:500], notify, break_hint
        self.process = process or Process.current()
        self.in_flight = request_bound(client) if in_flight is None else float(in_flight)
        self.token = uuid.uuid4().hex
        self.base = f"{PREFIX}-{kind.name}-{_safe_key(self.key)}"
        self.generation: int | None = None
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)
        self._last_ok = 0.0  # clock() when the last successful renewal was sent
        self._beat = 0
        self._lost: str | None = None
        self._failure = ""  # the last renewal error, as a word
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading the store -----------------------------------------------------------------------------------
    def generations(self) -> list[Holder]:
        """Every generation of this key's lock, oldest first."""
        return generations(self.client, self.base)

    def _say(self, line: str) -> None:
        if self.notify is not None:
            self.notify(line)

    # -- taking ----------------------------------------------------------------------------------------------
    def acquire(self) -> StoreLock:
        """Hold the lock, or raise :class:`LockHeld` naming the holder. Waits only for a holder on another
        machine: up to its TTL watching its heartbeat, then, taking over, half that TTL and its longest request."""
        if self.generation is not None:
            raise RuntimeError("this lock was already acquired once; make a new one")
        _check_registry(self.client)
        for _ in range(5):  # a top that turns free while we look is looked at again
            stack = self.generations()
            top = stack[-1] if stack else None
            if top is None or top.free:
                if self._create(top.generation + 1 if top else 1):
                    return self
                continue
            state = top.process.state()
            if state == "running":
                raise self._held(
                    top,
                    "running on this machine (a process paused with SIGSTOP included); wait for it, or end it: "
                    f"once a {self.kind.holder}'s process on this machine has exited, killed included, its lock is "
                    "taken over at once",
                )
            if state == "gone":
                self._say(f"taking over from {top.describe()}: its process is gone")
                if self._create(top.generation + 1):
                    return self
                continue
            dead = self._watch(top)
            if dead is None:
                continue
            if self._create(top.generation + 1, grace=dead.ttl / 2 + dead.in_flight, previous=dead):
                return self
        raise LockHeld(f"the lock on {self.kind.about(self.key)} kept changing hands while we looked; run again")

    def _watch(self, top: Holder) -> Holder | None:
        """Watch ``top``'s heartbeat: the holder if it stood still for its TTL, None if the lock turned free;
        :class:`LockHeld` if it moved, a newer holder appeared, or ``wait`` ran out first."""
        limit = top.ttl + top.ttl / 8 if self.wait is None else self.wait
        poll = min(5.0, max(0.05, top.ttl / 8))
        hint = f"if it is dead and cannot wait: {self.break_hint}"
        if limit <= 0:
            raise self._held(
                top,
                f"on another machine; it may be taken over once its heartbeat stands still for "
                f"{top.ttl:.0f} s: run again then, or {hint}",
            )
        self._say(
            f"{top.describe()} holds {self.kind.about(self.key)}; watching its heartbeat for up to "
            f"{min(limit, top.ttl):.0f} s before taking over"
        )
        start = previous = _clock()  # after the read that saw ``top``: any later renewal shows in a later read
        while True:
            time.sleep(poll)
            sent = _clock()
            stack = self.generations()
            now = stack[-1] if stack else None
            if now is None or now.free:
                return None
            if (now.generation, now.token) != (top.generation, top.token):
                raise self._held(now, f"it took the lock while we watched; wait for it, or stop it ({hint})")
            if now.beat != top.beat:
                raise self._held(
                    now,
                    f"on another machine, its heartbeat moved in the last {sent - previous:.0f} s; "
                    f"wait for it or stop it (a dead holder is taken over once its heartbeat stands "
                    f"still for {top.ttl:.0f} s; {hint})",
                )
            if sent - start >= top.ttl:
                return top
            if sent - start >= limit:
                raise self._held(
                    now,
                    f"on another machine, its heartbeat has not moved for {sent - start:.0f} s "
                    f"of the {top.ttl:.0f} s after which it may be taken over; run again then, or {hint}",
                )
            previous = sent

    def _create(self, generation: int, *, grace: float = 0.0, previous: Holder | None = None) -> bool:
        """Create ``generation``: True when it is ours, False when it was created free by someone else (look
        again); :class:`LockHeld` naming the winner of a race."""
        from mlflow.exceptions import MlflowException

        name = f"{self.base}-g{generation}"
        sent = _clock()
        try:
            self.client.create_registered_model(name, tags=self._tags(), description=self._description())
        except MlflowException as error:
            # Lost the race, or our own request was retried after it had succeeded: the store says which.
            stack, winner = self._read_winner(generation, error)
            if winner is None:
                if stack and stack[-1].generation > generation:
                    return False  # it moved on meanwhile: look again
                raise self._unreadable(name, error) from None
            if winner.token != self.token:
                if winner.free:
                    return False
                raise self._held(winner, "it took the lock at the same moment; wait for it, or stop it") from None
        with self._mutex:
            self.generation, self._last_ok = generation, sent
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.base}", daemon=True)
        self._thread.start()
        if grace > 0:
            self._say(
                f"took over from {previous.describe() if previous else 'a dead holder'}: its heartbeat stood "
                f"still for {previous.ttl if previous else 0:.0f} s; waiting {grace:.0f} s so that it has stopped "
                f"itself and its last requests have landed"
            )
            time.sleep(grace)
            try:
                self.check()
            except LockLost:
                self._stop.set()
                raise
        self._delete_older(generation)
        return True

    def _read_winner(self, generation: int, error: BaseException) -> tuple[list[Holder], Holder | None]:
        """The generations after a refused create, and the one that was created, if this user can see it.

        An ``mlflow server`` with basic auth grants its creator READ on a new registered model only after the
        model is committed (an after-request hook), so for a moment a name that exists is invisible to everyone,
        its creator's own MLflow user included: look again for up to ``UNREADABLE_GRACE`` seconds before calling
        it another user's lock (CI saw one racer of four refused that way on PostgreSQL)."""
        deadline = _clock() + (UNREADABLE_GRACE if getattr(error, "error_code", "") == "RESOURCE_ALREADY_EXISTS" else 0)
        while True:
            stack = self.generations()
            winner = next((h for h in stack if h.generation == generation), None)
            if winner is not None or (stack and stack[-1].generation > generation) or _clock() >= deadline:
                return stack, winner
            time.sleep(0.2)

    def _tags(self) -> dict[str, str]:
        values = {
            "token": self.token,
            "host": self.process.host,
            "machine": self.process.machine,
            "pid": self.process.pid,
            "started": self.process.started,
            "command": self.command,
            "ttl": repr(self.ttl),
            "in_flight": repr(self.in_flight),
            "beat": 0,
            "state": HELD,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time())),
        }
        return {LOCK_PREFIX + key: str(value) for key, value in values.items()}

    def _description(self) -> str:
        return (
            f"mlflow-mnist's lock on {self.kind.about(self.key)}: one {self.kind.holder} at a time. Not a model: "
            f"its tags name the holder; between commands one stays, marked free. A dead holder's lock is taken "
            f"over once its heartbeat stops; {self.break_hint} breaks it. Do not delete it by hand."
        )

    def _delete_older(self, generation: int) -> None:
        for older in self.generations():
            if older.generation < generation:
                try:
                    self.client.delete_registered_model(older.name)
                except Exception:  # noqa: BLE001 - a leftover older generation is harmless: only the top counts
                    pass

    def _unreadable(self, name: str, error: BaseException) -> BaseException:
        """A name the store says exists but that this user cannot see: a lock of another MLflow user."""
        if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            return error
        # Unreadable, it may be held now or left free by a finished run: the line cannot say which.
        return LockHeld(
            f"the lock {name} of {self.kind.about(self.key)} belongs to another MLflow user (held now, or left by "
            f"an earlier {self.kind.holder}), and this user may not read it; run every {self.kind.holder} of one "
            f"experiment as one MLflow user, or give its users READ on each other's registered models"
        )

    def _held(self, holder: Holder, situation: str) -> LockHeld:
        return LockHeld(
            f"another {self.kind.holder} is working on {self.kind.about(self.key)}: {holder.describe()}, {situation}"
        )

    # -- keeping ---------------------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Beat every ``ttl / 4`` counted from when the last good beat was sent (so a slow store's latency is
        not added to the interval); a failed beat is retried after ``ttl / 16``."""
        while self._expiry() > 0:  # an expired lock is never renewed: it is lost for good
            with self._mutex:
                due = _clock() + self.ttl / 16 if self._failure else self._last_ok + self.ttl / 4
            if self._stop.wait(max(0.0, due - _clock())):
                return
            self._renew()

    def _renew(self) -> None:
        """One beat: count up on our generation, then look for a newer one; trust the lock from ``sent`` on."""
        from mlflow.exceptions import MlflowException

        sent = _clock()
        try:
            self.client.set_registered_model_tag(
                f"{self.base}-g{self.generation}", LOCK_PREFIX + "beat", str(self._beat + 1)
            )
            stack = self.generations()
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                self._lose("its lock was removed from the store")
            else:
                self._fail(error)
            return
        except Exception as error:  # noqa: BLE001 - any failure to renew counts against the TTL, nothing more
            self._fail(error)
            return
        mine = next((h for h in stack if h.generation == self.generation), None)
        newer = [h for h in stack if h.generation > (self.generation or 0)]
        if newer:
            taker = newer[-1]
            how = "broke it" if taker.state == BROKEN else "took it over"
            self._lose(f"{taker.describe()} {how}")
        elif mine is None or mine.token != self.token:
            self._lose("its lock was removed from the store")
        else:
            with self._changed:
                if self._lost is None and _clock() - self._last_ok <= self.ttl / 2:
                    self._last_ok, self._beat, self._failure = sent, self._beat + 1, ""
                self._changed.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._changed:
            self._failure = _error_name(error)
            self._changed.notify_all()

    def _lose(self, reason: str) -> None:
        with self._changed:
            if self._lost is None:
                self._lost = reason
            self._changed.notify_all()

    def _expiry(self) -> float:
        """Seconds until the lock expires by our own clock (<= 0: expired); records the loss once it has."""
        with self._mutex:
            if self.generation is None:
                raise RuntimeError("the lock was never acquired")
            if self._lost is not None:
                return 0.0
            age = _clock() - self._last_ok
            left = self.ttl / 2 - age
            if left <= 0:
                failure = f", last error {self._failure}" if self._failure else ", the renewal has not returned"
                self._lost = f"no renewal succeeded for {age:.0f} s{failure}"
            return left

    @property
    def lost(self) -> bool:
        return self._expiry() <= 0

    def check(self) -> None:
        """Raise :class:`LockLost` unless the lock is certainly still ours; local and cheap (no store request)."""
        if self._expiry() <= 0:
            raise LockLost(
                f"lost the lock on {self.kind.about(self.key)} ({self._lost}); stopped before writing more: "
                f"{self.kind.after_loss}"
            )

    def wait_lost(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as the lock is lost (for a wait loop that polls)."""
        end = _clock() + timeout
        while True:
            left = self._expiry()
            if left <= 0:
                return True
            remaining = end - _clock()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, remaining))

    def fenced(self, client) -> FencedClient:
        """``client``, with :meth:`check` before every call that may write (every method but reads)."""
        return FencedClient(client, self)

    # -- giving back ------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Stop the heartbeat and mark our generation free, unless the lock was lost (then another may hold it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl / 4)
        if self.generation is None or self._expiry() <= 0:
            return
        with self._mutex:
            self._lost = "released"
        try:
            self.client.set_registered_model_tag(f"{self.base}-g{self.generation}", LOCK_PREFIX + "state", FREE)
        except Exception:  # noqa: BLE001 - the store is gone: the next driver takes the lock over after a TTL
            pass

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class CampaignLock(StoreLock):
    """One driver per experiment (``tune``, ``search``, ``final``)."""

    def __init__(self, client, experiment_id: str, *, command: str, ttl: float | None = None, **options: Any):
        super().__init__(client, experiment_id, kind=EXPERIMENT, command=command, ttl=ttl, **options)


class RegistryLock(StoreLock):
    """One promotion per registered model."""

    def __init__(self, client, model_name: str, *, command: str, ttl: float | None = None, **options: Any):
        super().__init__(client, model_name, kind=MODEL, command=command, ttl=ttl, **options)


class FencedClient:
    """An MlflowClient whose writing methods first check that the lock is still held."""

    READS = ("get_", "search_", "list_", "download_", "load_", "_")

    def __init__(self, client, lock: StoreLock):
        self._client, self._lock = client, lock

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith(self.READS):
            return attribute

        def fenced(*args, **kwargs):
            self._lock.check()
            return attribute(*args, **kwargs)

        return fenced


def generations(client, base: str) -> list[Holder]:
    """The generations of the lock named ``base`` (``mlflow-mnist-lock-<kind>-<key>``), oldest first."""
    pattern = re.compile(re.escape(base) + r"-g(\d+)")
    models = all_pages(
        lambda token: client.search_registered_models(
            filter_string=f"name LIKE '{base}-g%'", max_results=100, page_token=token
        )
    )
    found = [
        Holder.from_model(model, int(match.group(1))) for model in models if (match := pattern.fullmatch(model.name))
    ]
    return sorted(found, key=lambda holder: holder.generation)


def lock_base(key: str, kind: Kind = EXPERIMENT) -> str:
    return f"{PREFIX}-{kind.name}-{_safe_key(str(key))}"


def holder(client, key: str, *, kind: Kind = EXPERIMENT) -> Holder | None:
    """Who holds the lock on ``key`` now, or None when it is free."""
    stack = generations(client, lock_base(key, kind))
    return stack[-1] if stack and not stack[-1].free else None


def break_lock(
    client,
    key: str,
    *,
    kind: Kind = EXPERIMENT,
    command: str = "",
    settle: bool = True,
    notify: Callable[[str], None] | None = None,
) -> str | None:
    """Break the lock on ``key`` held by a process that is dead on another machine; returns whom it broke (None
    when the lock was free). A holder still running on this machine is refused: stop it instead. The break is a
    new generation marked broken, so the broken holder's next renewal sees it lost; with ``settle`` this waits
    half the holder's TTL and its longest request, by when even a holder that was in fact alive has stopped
    itself and its last write has landed (``notify`` is told how long)."""
    from mlflow.exceptions import MlflowException

    _check_registry(client)
    base = lock_base(key, kind)
    stack = generations(client, base)
    top = stack[-1] if stack else None
    if top is None or top.free:
        return None
    if top.process.state() == "running":
        raise LockHeld(
            f"another {kind.holder} is working on {kind.about(key)}: {top.describe()}, running on this machine; "
            f"stop it instead of breaking its lock (once its process has exited, killed included, its lock is taken "
            f"over at once)"
        )
    breaker = StoreLock(client, key, kind=kind, command=command or "break", ttl=top.ttl, in_flight=0.0)
    tags = {**breaker._tags(), LOCK_PREFIX + "state": BROKEN, LOCK_PREFIX + "broke": top.describe()[:500]}
    name = f"{base}-g{top.generation + 1}"
    try:
        client.create_registered_model(name, tags=tags, description=breaker._description())
    except MlflowException as error:
        newer = generations(client, base)
        if newer and newer[-1].generation > top.generation and not newer[-1].free:
            raise breaker._held(newer[-1], "it took the lock while we broke it; wait for it, or stop it") from None
        if not newer or newer[-1].generation <= top.generation:
            raise breaker._unreadable(name, error) from None
    if settle and top.process.state() != "gone":
        pause = top.ttl / 2 + top.in_flight
        if notify is not None:
            notify(f"broke the lock of {top.describe()}; waiting {pause:.0f} s in case it was still running")
        time.sleep(pause)
    breaker._delete_older(top.generation + 1)
    return top.describe()
