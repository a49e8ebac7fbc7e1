"""One driver per experiment: a lease kept in the tracking store, renewed by a heartbeat, that expires.

Two drivers writing one experiment would close each other's runs as stale. So a driver takes the lease (an
experiment tag naming it) before it touches any run, renews it every few seconds, and gives it back when it
stops. A second driver sees a live lease and refuses with one line naming the first. A driver killed with
``kill -9`` cannot give its lease back: a rerun on the same machine sees that its process is gone and takes the
lease at once; anywhere else the lease expires ``ttl`` seconds after its last heartbeat.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

LEASE_TAG = "mlflow_mnist.lease"
DEFAULT_TTL = float(os.environ.get("MLFLOW_MNIST_LEASE_SECONDS", "60"))


class LeaseHeld(RuntimeError):
    """Another live driver holds the experiment; the message names it."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not mistaken for the lease holder."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    started: str | None  # the process's start time, when known
    command: str
    renewed: float  # time.time() of the last heartbeat

    def describe(self, now: float, ttl: float) -> str:
        return (
            f"{self.command} (pid {self.pid} on {self.host}, lease renewed {now - self.renewed:.0f} s ago, "
            f"expires in {max(0.0, self.renewed + ttl - now):.0f} s)"
        )


def is_alive(holder: Holder, *, now: float, ttl: float, host: str | None = None) -> bool:
    """A lease is live until it expires; on its own machine, only while its process still runs."""
    if now > holder.renewed + ttl:
        return False
    if holder.host == (host or socket.gethostname()) and holder.started is not None:
        return _process_start(holder.pid) == holder.started
    return True


class CampaignLease:
    """Take with :meth:`acquire` (or ``with``); a daemon thread renews it until :meth:`release`."""

    def __init__(self, client, experiment_id: str, *, command: str, ttl: float = DEFAULT_TTL):
        self.client, self.experiment_id, self.ttl = client, experiment_id, ttl
        pid = os.getpid()
        self.holder = Holder(uuid.uuid4().hex, socket.gethostname(), pid, _process_start(pid), command, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> Holder | None:
        text = self.client.get_experiment(self.experiment_id).tags.get(LEASE_TAG)
        if not text:
            return None
        try:
            return Holder(**json.loads(text))
        except (TypeError, ValueError):
            return None  # an unreadable lease protects nothing

    def _write(self) -> None:
        holder = Holder(**{**asdict(self.holder), "renewed": time.time()})
        self.client.set_experiment_tag(self.experiment_id, LEASE_TAG, json.dumps(asdict(holder)))

    def acquire(self) -> CampaignLease:
        now = time.time()
        other = self.current()
        if other is not None and other.token != self.holder.token and is_alive(other, now=now, ttl=self.ttl):
            raise LeaseHeld(
                f"another driver is working on this experiment: {other.describe(now, self.ttl)}; wait for it, "
                f"or stop it (a killed driver's lease lapses within {self.ttl:.0f} s)"
            )
        self._write()
        # Two drivers may have written at once: the tag keeps the last, and only its writer goes on.
        time.sleep(0.2)
        winner = self.current()
        if winner is None or winner.token != self.holder.token:
            raise LeaseHeld(
                f"another driver took this experiment at the same moment: "
                f"{winner.describe(time.time(), self.ttl) if winner else 'unknown'}; run again once it is done"
            )
        self._thread = threading.Thread(target=self._heartbeat, name="campaign-lease", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the main thread reports a lost store
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder = self.current()
            if holder is not None and holder.token == self.holder.token:
                self.client.delete_experiment_tag(self.experiment_id, LEASE_TAG)
        except Exception:  # noqa: BLE001 - the store is gone: the lease lapses by itself
            pass

    def __enter__(self) -> CampaignLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
