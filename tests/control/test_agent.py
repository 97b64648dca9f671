"""MeshAgent against a real control plane (and, for version skew, a newer-server stand-in)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from meshbreaker.config import BreakerConfig, State
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.convert import config_to_proto
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

METHOD = "/bank.v1.AccountService/GetBalance"
SERVICE = "bank.v1.AccountService"


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `predicate` every 20 ms (I/O waiting on background threads) until true or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def method_policy(policy_id: str, config: BreakerConfig, method: str = METHOD) -> pb.Policy:
    message, mode = config_to_proto(config)
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(method=method),
        config=message,
        mode=mode,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# A stand-in for a *newer* control plane, which may send values this agent does not know.


class ScriptedControlPlane(pb_grpc.ControlPlaneServicer):  # type: ignore[misc]
    """Streams the snapshots put in `snapshots` to one watcher and records reports."""

    def __init__(self) -> None:
        self.snapshots: queue.Queue[pb.ConfigSnapshot] = queue.Queue()
        self.reports: list[pb.ReportStateRequest] = []
        self.watchers = 0

    def WatchConfig(self, request: Any, context: Any) -> Iterator[pb.ConfigSnapshot]:
        self.watchers += 1
        while context.is_active():
            try:
                yield self.snapshots.get(timeout=0.02)
            except queue.Empty:
                continue

    def ReportState(self, request: Any, context: Any) -> pb.ReportStateResponse:
        self.reports.append(request)
        return pb.ReportStateResponse()


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedControlPlane, str]]:
    servicer = ScriptedControlPlane()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ControlPlaneServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_unknown_value_from_a_newer_server_is_nacked_and_previous_policies_kept(
    scripted: tuple[ScriptedControlPlane, str],
) -> None:
    servicer, target = scripted
    registry = BreakerRegistry()
    tight = BreakerConfig(consecutive_failures=2)
    with MeshAgent(target, "transaction", registry, report_interval=60.0) as agent:
        servicer.snapshots.put(
            pb.ConfigSnapshot(
                revision=1, service="transaction", policies=[method_policy("a", tight)]
            )
        )
        assert agent.wait_for_revision(1, timeout=2.0)
        assert registry.resolve(METHOD) == tight
        assert wait_until(lambda: any(r.applied_revision == 1 for r in servicer.reports))

        newer = method_policy("a", BreakerConfig(consecutive_failures=9))
        newer.override = 7  # type: ignore[assignment]  # an Override this agent predates
        servicer.snapshots.put(
            pb.ConfigSnapshot(revision=2, service="transaction", policies=[newer])
        )
        assert wait_until(lambda: agent.last_nack is not None)
        assert agent.last_nack == (2, "snapshot.policies[0].override: unknown Override value 7")
        assert agent.applied_revision == 1
        assert registry.resolve(METHOD) == tight  # nothing half-applied
        assert wait_until(lambda: any(r.HasField("nack") for r in servicer.reports))
        nacked = next(r for r in servicer.reports if r.HasField("nack"))
        assert (nacked.applied_revision, nacked.nack.revision) == (1, 2)
        assert "unknown Override value 7" in nacked.nack.reason

        servicer.snapshots.put(pb.ConfigSnapshot(revision=3, service="transaction"))
        assert agent.wait_for_revision(3, timeout=2.0)
        assert agent.last_nack is None
        assert registry.resolve(METHOD) == registry.default


def test_snapshot_for_another_service_is_nacked(scripted: tuple[ScriptedControlPlane, str]) -> None:
    servicer, target = scripted
    registry = BreakerRegistry()
    with MeshAgent(target, "transaction", registry, report_interval=60.0) as agent:
        servicer.snapshots.put(pb.ConfigSnapshot(revision=4, service="audit"))
        assert wait_until(lambda: agent.last_nack is not None)
        assert agent.last_nack is not None and "'audit'" in agent.last_nack[1]
        assert agent.applied_revision == 0


def test_transitions_are_reported_at_once_and_coalesced(
    scripted: tuple[ScriptedControlPlane, str],
) -> None:
    servicer, target = scripted
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1, open_duration=60.0))
    with MeshAgent(target, "transaction", registry, report_interval=60.0, report_coalesce=0.05):
        servicer.snapshots.put(pb.ConfigSnapshot(revision=1, service="transaction"))
        assert wait_until(lambda: len(servicer.reports) >= 1)
        time.sleep(0.1)
        before = len(servicer.reports)
        # A burst: ten breakers open within a few microseconds.
        for index in range(10):
            registry.get(f"/bank.v1.AccountService/M{index}").acquire().failure()
        assert wait_until(
            lambda: any(
                len(r.breakers) == 10 and all(b.state == pb.BREAKER_STATE_OPEN for b in r.breakers)
                for r in servicer.reports
            )
        )
        time.sleep(0.15)
        burst_reports = len(servicer.reports) - before
        assert 1 <= burst_reports <= 3  # coalesced, not one report per transition


def test_transition_listener_never_blocks_the_calling_thread(
    scripted: tuple[ScriptedControlPlane, str],
) -> None:
    servicer, target = scripted
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1))
    blocked = threading.Event()
    original = servicer.ReportState

    def slow_report(request: Any, context: Any) -> pb.ReportStateResponse:
        blocked.wait(1.0)  # the control plane is very slow to answer reports
        return original(request, context)

    servicer.ReportState = slow_report  # type: ignore[method-assign]
    with MeshAgent(target, "transaction", registry, report_interval=60.0):
        breaker = registry.get(METHOD)
        started = time.perf_counter()
        breaker.acquire().failure()  # CLOSED -> OPEN: triggers a report
        elapsed = time.perf_counter() - started
        blocked.set()
    assert breaker.state is State.OPEN
    assert elapsed < 0.05
