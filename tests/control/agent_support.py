"""Helpers shared by the MeshAgent tests (import them as `tests.control.agent_support`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from meshbreaker.config import BreakerConfig
from meshbreaker.control.convert import config_to_proto
from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.server_support import ServerThread, wait_until

__all__ = [
    "METHOD",
    "AdminStub",
    "ControlPlaneThread",
    "StartControlPlane",
    "method_policy",
    "settle_decider",
    "wait_for",
    "wait_until",
]

METHOD = "/bank.v1.AccountService/GetBalance"

# The types of the factory fixtures of tests/control/conftest.py.
StartControlPlane = Callable[..., Awaitable[ControlPlaneServer]]
ControlPlaneThread = Callable[..., ServerThread]
AdminStub = Callable[..., pb_grpc.ControlPlaneStub]


def method_policy(policy_id: str, config: BreakerConfig, method: str = METHOD) -> pb.Policy:
    """A policy that applies `config` to `method` for every caller."""
    return pb.Policy(
        id=policy_id, selector=pb.Selector(method=method), config=config_to_proto(config)
    )


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `predicate` while letting the event loop run."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


def settle_decider(cp: ServerThread) -> None:
    """Let the fleet decider of the server `cp` runs make three passes from now: it has looked at
    least twice at what is reported and stored now (for a test that something does not happen)."""

    async def passes() -> int:
        servicer = cp.running._servicer
        assert servicer is not None
        return int(servicer.decider.passes)

    seen = cp.call(passes())
    assert wait_until(lambda: cp.call(passes()) >= seen + 3)
