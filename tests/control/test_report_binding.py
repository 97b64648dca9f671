"""Reports bound to their sender: an instance id, its service and its credentials' services."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from meshbreaker.control.agent import AgentStatus, MeshAgent
from meshbreaker.control.server import ControlPlaneServer, Limits
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import (
    METHOD,
    ControlPlaneThread,
    StartControlPlane,
    wait_for,
    wait_until,
)

OWNER = "owner-key-" + "a" * 16
THIEF = "thief-key-" + "b" * 16
ADMIN = "admin-secret"


def _report(key: str, service: str = "gateway",
            state: pb.BreakerState.ValueType = pb.BREAKER_STATE_CLOSED,
            instance_id: str = "gw-1") -> pb.ReportStateRequest:  # fmt: skip
    return pb.ReportStateRequest(
        instance_id=instance_id,
        service=service,
        instance_key=key,
        breakers=[pb.BreakerSnapshot(name=METHOD, state=state)],
        full=True,
    )


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_another_process_cannot_speak_for_a_live_instance(
    start_control_plane: StartControlPlane, clock: FakeClock
) -> None:
    server: ControlPlaneServer = await start_control_plane(report_ttl=10.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        await stub.ReportState(_report(OWNER))
        # A fake OPEN breaker and a fake NACK under the owner's id: refused, nothing published.
        forged = _report(THIEF, state=pb.BREAKER_STATE_OPEN)
        forged.nack.CopyFrom(pb.Nack(revision=1, reason="forged"))
        with server.servicer.events.subscribe() as queue:
            assert await _code(stub.ReportState(forged)) == grpc.StatusCode.PERMISSION_DENIED
            assert await _code(stub.ReportState(_report(""))) == grpc.StatusCode.PERMISSION_DENIED
            assert queue.empty()
        # Its own process cannot move it to another service either.
        moved = _report(OWNER, service="audit")
        assert await _code(stub.ReportState(moved)) == grpc.StatusCode.PERMISSION_DENIED
        listed = await stub.ListBreakers(pb.ListBreakersRequest(include_instances=True))
        assert [(i.instance_id, i.service, i.HasField("nack")) for i in listed.instances] == [
            ("gw-1", "gateway", False)
        ]
        assert listed.groups[0].closed == 1
        # Once the owner stops reporting and its lease runs out, the id is free again.
        clock.advance(11.0)
        assert await _code(stub.ReportState(_report(THIEF))) == grpc.StatusCode.OK


async def test_an_open_watch_stream_keeps_the_claim(
    start_control_plane: StartControlPlane, clock: FakeClock
) -> None:
    server: ControlPlaneServer = await start_control_plane(report_ttl=10.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        watch = stub.WatchConfig(
            pb.WatchConfigRequest(service="gateway", instance_id="gw-1", instance_key=OWNER)
        )
        await watch.read()
        await stub.ReportState(_report(OWNER))
        clock.advance(60.0)  # no report for longer than the TTL, but the stream is open
        assert await _code(stub.ReportState(_report(THIEF))) == grpc.StatusCode.PERMISSION_DENIED
        stolen = stub.WatchConfig(
            pb.WatchConfigRequest(service="gateway", instance_id="gw-1", instance_key=THIEF)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stolen.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        watch.cancel()


RESTARTED = "restart-key-" + "c" * 16


async def test_a_restarted_process_takes_its_id_over_once_the_old_watch_stream_is_gone(
    start_control_plane: StartControlPlane, clock: FakeClock
) -> None:
    server: ControlPlaneServer = await start_control_plane(report_ttl=10.0)
    table = server.servicer._instances
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        watch = stub.WatchConfig(
            pb.WatchConfigRequest(service="gateway", instance_id="gw-1", instance_key=OWNER)
        )
        await watch.read()
        await stub.ReportState(_report(OWNER, state=pb.BREAKER_STATE_OPEN))
        # While the old process's stream lives, a new key is refused.
        assert (
            await _code(stub.ReportState(_report(RESTARTED))) == grpc.StatusCode.PERMISSION_DENIED
        )
        watch.cancel()  # the old process dies: its stream ends
        await wait_for(lambda: "gw-1" not in table._watch_claims)
        # Its report is still fresh (no clock moved), yet the restarted process takes over...
        restarted = stub.WatchConfig(
            pb.WatchConfigRequest(service="gateway", instance_id="gw-1", instance_key=RESTARTED)
        )
        await restarted.read()
        assert await _code(stub.ReportState(_report(RESTARTED))) == grpc.StatusCode.OK
        listed = await stub.ListBreakers(pb.ListBreakersRequest())
        assert [(i.instance_id, i.breakers) for i in listed.instances] == [("gw-1", 1)]
        assert (listed.groups[0].closed, listed.groups[0].open) == (1, 0)  # the old one is void
        # ...and from then on the old key is the one refused.
        assert await _code(stub.ReportState(_report(OWNER))) == grpc.StatusCode.PERMISSION_DENIED
        restarted.cancel()


async def test_a_restarted_process_is_the_same_instance_for_the_bounds(
    start_control_plane: StartControlPlane,
) -> None:
    limits = Limits(max_instances_per_service=1, max_reported_breakers=1)
    server: ControlPlaneServer = await start_control_plane(limits=limits)
    table = server.servicer._instances
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        old = pb.WatchConfigRequest(service="gateway", instance_id="gw-1", instance_key=OWNER)
        watch = stub.WatchConfig(old)
        await watch.read()
        assert await _code(stub.ReportState(_report(OWNER))) == grpc.StatusCode.OK
        watch.cancel()  # the old process dies
        await wait_for(lambda: "gw-1" not in table._watch_claims)
        # The restarted process takes the id over; what the old one held no longer counts
        # against the service's bound nor the replica's.
        assert await _code(stub.ReportState(_report(RESTARTED))) == grpc.StatusCode.OK
        listed = await stub.ListBreakers(pb.ListBreakersRequest())
        assert [(i.instance_id, i.breakers) for i in listed.instances] == [("gw-1", 1)]
        assert await _code(stub.ReportState(_report(RESTARTED))) == grpc.StatusCode.OK
        other = _report(THIEF, instance_id="gw-2")
        assert await _code(stub.ReportState(other)) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_agent_token_limited_to_a_service_cannot_speak_for_another(
    start_control_plane: StartControlPlane, tmp_path: Path
) -> None:
    tokens = tmp_path / "agent-tokens"
    tokens.write_text("# token services\ngw-token gateway\ntx-token transaction,audit\n")
    server: ControlPlaneServer = await start_control_plane(
        admin_token=ADMIN, agent_token_file=tokens
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        as_gateway = (("authorization", "Bearer gw-token"),)
        ok = stub.ReportState(_report(OWNER), metadata=as_gateway)
        assert await _code(ok) == grpc.StatusCode.OK
        other = stub.ReportState(_report(THIEF, "transaction", instance_id="tx-1"),
                                 metadata=as_gateway)  # fmt: skip
        assert await _code(other) == grpc.StatusCode.PERMISSION_DENIED
        watch = stub.WatchConfig(pb.WatchConfigRequest(service="audit"), metadata=as_gateway)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may speak only for gateway" in (caught.value.details() or "")
        config = stub.GetConfig(pb.GetConfigRequest(service="audit"),
                                metadata=(("authorization", "Bearer tx-token"),))  # fmt: skip
        assert await _code(config) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("lonely-token\n", "line 1"),
        ("t gateway\nt audit\n", "twice"),
        ("t bad/service\n", "line 1"),
        ("# nothing\n", "lists no token"),
    ],
)
async def test_a_bad_token_file_is_refused_naming_the_line(
    start_control_plane: StartControlPlane, tmp_path: Path, content: str, message: str
) -> None:
    tokens = tmp_path / "agent-tokens"
    tokens.write_text(content)
    with pytest.raises(Exception, match=message):
        await start_control_plane(admin_token=ADMIN, agent_token_file=tokens)


def test_a_restarted_agent_with_the_same_instance_id_is_served_at_once(
    control_plane_thread: ControlPlaneThread,
) -> None:
    cp = control_plane_thread(report_ttl=30.0)
    first = MeshAgent(cp.target, "gateway", BreakerRegistry(), instance_id="gw-1").start()
    try:
        assert wait_until(lambda: first.connected and first.reports_sent >= 1, timeout=5)
    finally:
        first.stop()
    # Its report is fresh for 30 s more, but its process (its watch stream) is gone.
    second = MeshAgent(cp.target, "gateway", BreakerRegistry(), instance_id="gw-1").start()
    try:
        assert wait_until(lambda: second.connected, timeout=5)
        assert second.report_now()
        assert second.status is AgentStatus.CONNECTED
    finally:
        second.stop()
