"""Helpers shared by the MeshAgent tests (imported by name: tests/control is on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable

from meshbreaker.config import BreakerConfig
from meshbreaker.control.convert import config_to_proto
from meshbreaker.v1 import control_plane_pb2 as pb

METHOD = "/bank.v1.AccountService/GetBalance"


def wait_until(predicate: Callable[[], object], timeout: float = 2.0) -> bool:
    """Poll `predicate` every 20 ms (I/O waiting on background threads) until true or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def method_policy(policy_id: str, config: BreakerConfig, method: str = METHOD) -> pb.Policy:
    """A policy that applies `config` to `method` for every caller."""
    message, mode = config_to_proto(config)
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(method=method),
        config=message,
        mode=mode,
    )
