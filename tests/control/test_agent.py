"""MeshAgent against a real control plane (and, for version skew, a newer-server stand-in)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker.config import BreakerConfig, State
from meshbreaker.control.agent import AgentError, MeshAgent
from meshbreaker.control.convert import config_to_proto
from meshbreaker.control.layers import ResolvedPolicies
from meshbreaker.errors import ConfigError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import (
    METHOD,
    AdminStub,
    ControlPlaneThread,
    StartControlPlane,
    method_policy,
    wait_until,
)

SERVICE = "bank.v1.AccountService"


# ---------------------------------------------------------------------------------------------
# A stand-in for a *newer* control plane, which may send values this agent does not know.


class ScriptedControlPlane(pb_grpc.ControlPlaneServicer):
    """Streams the snapshots put in `snapshots` to one watcher and records reports."""

    def __init__(self) -> None:
        self.snapshots: queue.Queue[pb.ConfigSnapshot] = queue.Queue()
        self.reports: list[pb.ReportStateRequest] = []
        self.watchers = 0

    def WatchConfig(
        self, request: pb.WatchConfigRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ConfigSnapshot]:
        self.watchers += 1
        while context.is_active():
            try:
                yield self.snapshots.get(timeout=0.02)
            except queue.Empty:
                continue

    def ReportState(
        self, request: pb.ReportStateRequest, context: grpc.ServicerContext
    ) -> pb.ReportStateResponse:
        self.reports.append(request)
        return pb.ReportStateResponse()


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedControlPlane, str]]:
    # Only the two RPCs the agent makes are implemented: the generated base class answers the
    # others UNIMPLEMENTED, though mypy-protobuf's stub declares them abstract.
    servicer = ScriptedControlPlane()  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))  # watches hold a worker
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
        newer.override = pb.Override.ValueType(7)  # an Override this agent predates
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
        assert agent.snapshots_received == 3  # applied, rejected, applied
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
    # A coalescing delay far longer than the burst takes, even on a loaded machine.
    with MeshAgent(target, "transaction", registry, report_interval=60.0, report_coalesce=0.5):
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
    answered = threading.Event()
    original = servicer.ReportState

    def slow_report(
        request: pb.ReportStateRequest, context: grpc.ServicerContext
    ) -> pb.ReportStateResponse:
        blocked.wait(5.0)  # the control plane is very slow to answer reports
        answered.set()
        return original(request, context)

    servicer.ReportState = slow_report  # type: ignore[method-assign]
    with MeshAgent(target, "transaction", registry, report_interval=60.0):
        breaker = registry.get(METHOD)
        breaker.acquire().failure()  # CLOSED -> OPEN: triggers a report
        # The report cannot finish before `blocked` is set: had the transition waited for it,
        # the control plane would have answered first. No clock is read.
        answered_before_returning = answered.is_set()
        blocked.set()
    assert breaker.state is State.OPEN
    assert not answered_before_returning


# ---------------------------------------------------------------------------------------------
# Against the real control plane (tests/control/conftest.py starts it on 127.0.0.1:0).


def put(stub: pb_grpc.ControlPlaneStub, *policies: pb.Policy) -> int:
    return int(stub.PutPolicy(pb.PutPolicyRequest(policies=policies), timeout=5).revision)


def start_agents(target: str, count: int, **options: Any) -> list[MeshAgent]:
    options.setdefault("report_interval", 60.0)  # only event-driven reports, unless asked
    options.setdefault("backoff_max", 0.2)
    agents = [
        MeshAgent(target, "transaction", BreakerRegistry(), instance_id=f"tx-{index}", **options)
        for index in range(count)
    ]
    for agent in agents:
        agent.start()
    assert wait_until(lambda: all(agent.connected for agent in agents))
    return agents


def instances(
    stub: pb_grpc.ControlPlaneStub, service: str = "transaction"
) -> dict[str, pb.InstanceStatus]:
    response = stub.ListBreakers(pb.ListBreakersRequest(service=service), timeout=5)
    return {item.instance_id: item for item in response.instances}


def test_a_put_policy_reaches_five_agents_and_is_acked(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    agents = start_agents(cp.target, 5)
    try:
        breakers = [agent.registry.get(METHOD) for agent in agents]
        for breaker in breakers:
            breaker.acquire().failure()
            breaker.acquire().failure()
            assert breaker.state is State.CLOSED  # the default needs 5 in a row

        tight = BreakerConfig(consecutive_failures=3, open_duration=30.0, open_duration_max=30.0)
        revision = put(stub, method_policy("tight-get-balance", tight))
        # How fast it spreads is bench/control_plane.py's to measure; here only that it does.
        for agent in agents:
            assert agent.wait_for_revision(revision, timeout=30)
        for breaker in breakers:
            assert breaker.config == tight
            # Same window type and size: the two failures before the update still count.
            breaker.acquire().failure()
            assert breaker.state is State.OPEN

        assert wait_until(
            lambda: (
                {i: s.applied_revision for i, s in instances(stub).items()}
                == {agent.instance_id: revision for agent in agents}
            ),
            timeout=1.0,
        )
        assert all(not s.HasField("nack") for s in instances(stub).values())
    finally:
        for agent in agents:
            agent.stop()


def refuse_forcing_critical_methods_open(resolved: ResolvedPolicies) -> None:
    """The application's own rule: the mesh may never force its audit calls open."""
    for selector, state in resolved.overrides.items():
        if state is State.FORCED_OPEN and selector.startswith(
            ("bank.v1.AuditService", "/bank.v1.AuditService/")
        ):
            raise ConfigError(selector, "audit calls must never be forced open (local rule)")


def test_a_snapshot_the_agent_refuses_is_nacked_visible_and_previous_policies_kept(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    events = stub.WatchEvents(pb.WatchEventsRequest(service="transaction"), timeout=5)
    events.initial_metadata()  # subscribed before anything happens
    agents = start_agents(cp.target, 2, validate=refuse_forcing_critical_methods_open)
    try:
        tight = BreakerConfig(consecutive_failures=2)
        good = put(stub, method_policy("tight", tight))
        assert all(agent.wait_for_revision(good, timeout=10) for agent in agents)
        audit = agents[0].registry.get("/bank.v1.AuditService/Record")

        forced = stub.ForceState(
            pb.ForceStateRequest(
                selector=pb.Selector(service="bank.v1.AuditService"),
                override=pb.OVERRIDE_FORCED_OPEN,
            ),
            timeout=5,
        ).revision
        reason = "bank.v1.AuditService: audit calls must never be forced open (local rule)"
        assert wait_until(lambda: all(agent.last_nack == (forced, reason) for agent in agents))
        for agent in agents:
            assert agent.applied_revision == good
            assert agent.registry.policies() == {METHOD: tight}
            assert agent.registry.overrides() == {}
        assert audit.state is State.CLOSED
        audit.acquire().success()  # still permitted: the forced state was not applied

        def nacks_visible() -> bool:
            seen = instances(stub)
            return all(
                agent.instance_id in seen
                and seen[agent.instance_id].applied_revision == good
                and seen[agent.instance_id].nack.revision == forced
                and seen[agent.instance_id].nack.reason == reason
                for agent in agents
            )

        assert wait_until(nacks_visible, timeout=10)
        nack_events = []
        for event in events:
            if event.WhichOneof("kind") == "nack":
                nack_events.append(event.nack)
            if len(nack_events) == len(agents):
                break
        events.cancel()
        assert {n.instance_id for n in nack_events} == {a.instance_id for a in agents}
        assert all(n.nack.revision == forced and n.nack.reason == reason for n in nack_events)

        # Back to automatic: the next snapshot is acceptable again, and the NACK clears.
        cleared = stub.ForceState(
            pb.ForceStateRequest(
                selector=pb.Selector(service="bank.v1.AuditService"), override=pb.OVERRIDE_NONE
            ),
            timeout=5,
        ).revision
        assert all(agent.wait_for_revision(cleared, timeout=10) for agent in agents)
        assert all(agent.last_nack is None for agent in agents)
        assert wait_until(lambda: all(not s.HasField("nack") for s in instances(stub).values()))
    finally:
        for agent in agents:
            agent.stop()


def test_force_state_reaches_the_breakers_and_auto_releases_them(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    (agent,) = start_agents(cp.target, 1)
    try:
        breaker = agent.registry.get(METHOD)
        selector = pb.Selector(caller="transaction", service=SERVICE)
        revision = stub.ForceState(
            pb.ForceStateRequest(selector=selector, override=pb.OVERRIDE_FORCED_OPEN), timeout=5
        ).revision
        assert agent.wait_for_revision(revision, timeout=10)
        assert breaker.state is State.FORCED_OPEN
        assert breaker.try_acquire() is None
        # The report after the transition shows it across the mesh.
        assert wait_until(
            lambda: any(
                g.name == METHOD and g.forced_open == 1
                for g in stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).groups
            )
        )
        revision = stub.ForceState(
            pb.ForceStateRequest(selector=selector, override=pb.OVERRIDE_NONE), timeout=5
        ).revision
        assert agent.wait_for_revision(revision, timeout=10)
        assert breaker.state is State.CLOSED
        assert breaker.try_acquire() is not None
    finally:
        agent.stop()


def test_policies_for_other_callers_are_ignored_and_a_removed_default_restores_the_app_default(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    app_default = BreakerConfig(consecutive_failures=7)
    registry = BreakerRegistry(app_default)
    with MeshAgent(cp.target, "transaction", registry, report_interval=60.0) as agent:
        everyone = BreakerConfig(consecutive_failures=4)
        message = config_to_proto(everyone)
        revision = put(
            stub,
            pb.Policy(id="everyone", selector=pb.Selector(), config=message),
            method_policy("audit-only", BreakerConfig(consecutive_failures=1)),
        )
        other = pb.Policy()
        other.CopyFrom(method_policy("audit-only", BreakerConfig(consecutive_failures=1)))
        other.selector.caller = "audit"
        revision = put(stub, other)
        assert agent.wait_for_revision(revision, timeout=10)
        assert registry.resolve(METHOD) == everyone  # the audit caller's policy is not ours
        assert registry.default == everyone

        deleted = stub.DeletePolicy(pb.DeletePolicyRequest(id="everyone"), timeout=5).revision
        assert agent.wait_for_revision(deleted, timeout=10)
        assert registry.default == app_default
        assert registry.resolve(METHOD) == app_default


def test_periodic_reports_keep_the_instance_listed(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    (agent,) = start_agents(cp.target, 1, report_interval=0.05)
    try:
        agent.registry.get(METHOD).acquire().success()
        sent = agent.reports_sent
        assert wait_until(lambda: agent.reports_sent >= sent + 3, timeout=10)
        groups = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).groups
        assert [(g.service, g.name, g.closed, g.total) for g in groups] == [
            ("transaction", METHOD, 1, 1)
        ]
    finally:
        agent.stop()


def test_stop_cancels_an_open_watch_promptly(control_plane_thread: ControlPlaneThread) -> None:
    cp = control_plane_thread()
    (agent,) = start_agents(cp.target, 1)
    started = time.monotonic()
    agent.stop()
    # Prompt: a stop that waited out the watch or the 60 s report interval would take far longer.
    assert time.monotonic() - started < 10.0
    assert not agent.connected
    agent.stop()
    with pytest.raises(AgentError):
        agent.start()


async def test_an_asyncio_application_embeds_agent_and_control_plane(
    start_control_plane: StartControlPlane,
) -> None:
    server = await start_control_plane()  # on this test's own event loop
    registry = BreakerRegistry()
    agent = MeshAgent(server.target, "transaction", registry, report_interval=60.0)
    agent.start()  # never blocks on the network: the agent runs on its own loop
    try:
        channel = grpc.aio.insecure_channel(server.target)
        stub = pb_grpc.ControlPlaneStub(channel)
        tight = BreakerConfig(consecutive_failures=2)
        response = await stub.PutPolicy(
            pb.PutPolicyRequest(policies=[method_policy("tight", tight)]), timeout=5
        )
        assert await asyncio.to_thread(agent.wait_for_revision, response.revision, 1.0)
        assert registry.resolve(METHOD) == tight
        await channel.close()
    finally:
        await asyncio.to_thread(agent.stop)


def test_a_validate_hook_that_crashes_is_a_nack_not_a_reconnect(
    scripted: tuple[ScriptedControlPlane, str],
) -> None:
    servicer, target = scripted

    def buggy(resolved: ResolvedPolicies) -> None:
        raise KeyError("oops")

    with MeshAgent(target, "transaction", BreakerRegistry(), validate=buggy) as agent:
        servicer.snapshots.put(pb.ConfigSnapshot(revision=5, service="transaction"))
        assert wait_until(lambda: agent.last_nack is not None)
        assert agent.last_nack == (5, "KeyError: 'oops'")
        assert agent.connected and servicer.watchers == 1


def test_after_stop_nothing_runs_on(scripted: tuple[ScriptedControlPlane, str]) -> None:
    servicer, target = scripted
    agents = [
        MeshAgent(target, "transaction", BreakerRegistry(), report_interval=0.01, report_coalesce=0)
        for _ in range(5)
    ]
    for agent in agents:
        agent.start()
    assert wait_until(lambda: all(agent.reports_sent >= 2 for agent in agents))
    for agent in agents:
        agent.stop()
    sent = [agent.reports_sent for agent in agents]
    after = len(servicer.reports)
    time.sleep(0.1)
    assert [agent.reports_sent for agent in agents] == sent  # no orphaned reporter keeps going
    # A report already on the wire when stop() cancelled it may still land: one per agent at most.
    assert len(servicer.reports) <= after + len(agents)
    assert all(agent._done is not None and agent._done.done() for agent in agents)


def test_a_report_interval_longer_than_the_server_ttl_is_warned_about(
    control_plane_thread: ControlPlaneThread, caplog: pytest.LogCaptureFixture
) -> None:
    cp = control_plane_thread(report_ttl=1.0)
    with MeshAgent(cp.target, "transaction", BreakerRegistry(), report_interval=2.0) as agent:
        assert wait_until(lambda: agent.reports_sent >= 1)  # the ACK of the first snapshot
    warnings = [r.getMessage() for r in caplog.records if "report TTL" in r.getMessage()]
    assert warnings == [
        "meshbreaker agent: report_interval 2.0s >= the server's report TTL 1.0s: "
        "this instance will drop out of ListBreakers between reports"
    ]


def test_a_process_with_more_breakers_than_one_report_holds_reports_them_all(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meshbreaker.control.agent.MAX_BREAKERS_PER_REPORT", 4)
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    registry = BreakerRegistry()
    for index in range(10):
        registry.get(f"/bank.v1.AccountService/M{index}")
    with MeshAgent(cp.target, "transaction", registry, instance_id="big") as agent:
        assert wait_until(lambda: agent.reports_sent >= 1)
        assert agent.report_now()
        (instance,) = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).instances
        assert instance.breakers == 10
        registry.remove("/bank.v1.AccountService/M0")
        assert agent.report_now()
        (instance,) = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).instances
        assert instance.breakers == 9  # the first part is `full`: forgotten breakers go


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_a_report_interval_that_is_not_positive_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="report_interval must be > 0"):
        MeshAgent("127.0.0.1:1", "transaction", BreakerRegistry(), report_interval=interval)
