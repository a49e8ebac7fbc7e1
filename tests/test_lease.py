"""The campaign lease as a pure rule: who is alive, when it lapses."""

from __future__ import annotations

import os
import socket

from mlflow_mnist.lease import Holder, _process_start, is_alive


def _holder(**changes) -> Holder:
    me = os.getpid()
    base = Holder("t", socket.gethostname(), me, _process_start(me), "mlflow-mnist tune", renewed=1000.0)
    return Holder(**{**base.__dict__, **changes})


def test_a_lease_lapses_after_its_ttl():
    holder = _holder(host="elsewhere")
    assert is_alive(holder, now=1050.0, ttl=60)
    assert not is_alive(holder, now=1061.0, ttl=60)


def test_on_its_own_machine_a_lease_dies_with_its_process():
    assert is_alive(_holder(), now=1001.0, ttl=60)
    assert not is_alive(_holder(started="0"), now=1001.0, ttl=60)  # the pid was reused by another process
    assert not is_alive(_holder(pid=2**22 + 7), now=1001.0, ttl=60)  # no such process
    assert is_alive(_holder(host="elsewhere", started="0"), now=1001.0, ttl=60)  # elsewhere: only the TTL counts
