"""The control plane at its edges: length limits, sums over instances, taken ids, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.control.store import SqliteStore
from meshbreaker.control.validate import MAX_INSTANCE_ID_LENGTH, MAX_STORE_ID_LENGTH
from meshbreaker.control.writes import StoreWriter
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import wait_for

Start = Callable[..., Awaitable[ControlPlaneServer]]
GET = "/bank.v1.A/Get"


def policy(policy_id: str, **selector: str) -> pb.Policy:
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(**selector),
        config=pb.BreakerConfig(failure_rate_threshold=0.25),
    )


async def test_an_instance_id_may_be_as_long_as_the_maximum_and_no_longer(
    start_control_plane: Start,
) -> None:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        longest = "i" * MAX_INSTANCE_ID_LENGTH
        await stub.ReportState(pb.ReportStateRequest(instance_id=longest, service="tx"))
        listed = await stub.ListBreakers(pb.ListBreakersRequest())
        assert [instance.instance_id for instance in listed.instances] == [longest]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ReportState(pb.ReportStateRequest(instance_id=longest + "i", service="tx"))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_INSTANCE_ID_LENGTH}" in (raised.value.details() or "")


async def test_list_breakers_sums_the_counters_of_every_instance(
    start_control_plane: Start,
) -> None:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        for instance, rejected, throttled in (("i1", 3, 1), ("i2", 4, 2)):
            breaker = pb.BreakerSnapshot(
                name=GET, state=pb.BREAKER_STATE_OPEN, rejected=rejected, throttled=throttled
            )
            request = pb.ReportStateRequest(instance_id=instance, service="tx", breakers=[breaker])
            await stub.ReportState(request)
        (group,) = (await stub.ListBreakers(pb.ListBreakersRequest())).groups
        assert (group.instances, group.open, group.rejected, group.throttled) == (2, 2, 7, 3)


async def test_list_breakers_tells_how_old_each_report_is(
    start_control_plane: Start, clock: FakeClock
) -> None:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        clock.advance(100.0)  # not at zero, where now - seen and now + seen agree
        breaker = pb.BreakerSnapshot(name=GET, state=pb.BREAKER_STATE_CLOSED)
        request = pb.ReportStateRequest(instance_id="i1", service="tx", breakers=[breaker])
        await stub.ReportState(request)
        clock.advance(4.0)
        listed = await stub.ListBreakers(pb.ListBreakersRequest(include_instances=True))
        (instance,) = listed.instances
        (item,) = listed.groups[0].instance_breakers
        assert instance.report_age == pytest.approx(4.0) and item.report_age == pytest.approx(4.0)


async def test_list_events_returns_the_events_kept(start_control_plane: Start) -> None:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="bank.v1.A")]))
        for service in ("", "tx"):  # a policy change concerns every caller service
            events = (await stub.ListEvents(pb.ListEventsRequest(service=service))).events
            assert [event.WhichOneof("kind") for event in events] == ["policy_change"]


@pytest.mark.parametrize("store_id", ["s" * (MAX_STORE_ID_LENGTH + 1), "bad\x1bid"])
async def test_adopt_store_refuses_a_store_id_that_is_too_long_or_unprintable(
    start_control_plane: Start, store_id: str
) -> None:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.AdoptStore(pb.AdoptStoreRequest(store_id=store_id))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "store_id" in (raised.value.details() or "")


async def test_force_state_refuses_a_policy_id_another_selector_holds(
    start_control_plane: Start,
) -> None:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="bank.v1.A")]))
        request = pb.ForceStateRequest(
            selector=pb.Selector(method=GET), override=pb.OVERRIDE_FORCED_OPEN, policy_id="a"
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ForceState(request)
        assert raised.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "'a'" in (raised.value.details() or "")
        listed = await stub.ListPolicies(pb.ListPoliciesRequest())
        assert [(p.id, p.selector.service, p.override) for p in listed.policies] == [
            ("a", "bank.v1.A", pb.OVERRIDE_NONE)  # untouched
        ]


async def test_stopping_finishes_the_writes_in_progress(
    start_control_plane: Start, tmp_path: Path
) -> None:
    db = tmp_path / "control-plane.db"
    server = await start_control_plane(db=db)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the first write waits for the database
        writes = [
            asyncio.ensure_future(
                stub.PutPolicy(pb.PutPolicyRequest(policies=[policy(name, service=service)]))
            )
            for name, service in (("first", "bank.v1.A"), ("second", "bank.v1.B"))
        ]
        writer = server.servicer._writer
        await wait_for(lambda: len(writer._writes) == 2)  # one at the store, one queued behind
        stopping = asyncio.ensure_future(server.stop(grace=0))  # the RPCs are cancelled...
        await asyncio.sleep(0.1)
        blocker.execute("ROLLBACK")
        blocker.close()
        await stopping  # ...but what they asked for is written before stop() returns
        await asyncio.gather(*writes, return_exceptions=True)
    restarted = await start_control_plane(db=db)
    async with grpc.aio.insecure_channel(restarted.target) as channel:
        listed = await pb_grpc.ControlPlaneStub(channel).ListPolicies(pb.ListPoliciesRequest())
    assert sorted(p.id for p in listed.policies) == ["first", "second"]


def _policy_feeds() -> int:
    return sum(thread.name == "meshbreaker-policy-feed" for thread in threading.enumerate())


async def test_a_metrics_port_in_use_leaves_no_store_follower_running(
    start_control_plane: Start,
) -> None:
    first = await start_control_plane(metrics_port=0)
    before = _policy_feeds()
    with pytest.raises(OSError, match="metrics endpoint"):
        await start_control_plane(metrics_port=first.metrics_port)
    assert _policy_feeds() == before  # the refused server's servicer was closed


def _xds_workers() -> int:
    return sum(thread.name.startswith("meshbreaker-xds") for thread in threading.enumerate())


async def test_a_grpc_port_in_use_leaves_no_store_follower_nor_xds_worker_running(
    start_control_plane: Start,
) -> None:
    first = await start_control_plane(xds=True)
    assert first.xds is not None  # the xDS server, started with it
    assert (await start_control_plane()).xds is None
    feeds, workers = _policy_feeds(), _xds_workers()
    assert workers >= 1
    with pytest.raises(OSError, match="cannot bind the control plane"):
        await start_control_plane(port=int(first.target.rsplit(":", 1)[1]), xds=True)
    assert (_policy_feeds(), _xds_workers()) == (feeds, workers)  # the refused one's are closed


async def test_a_write_the_feed_brings_back_in_time_is_answered_without_a_warning(
    start_control_plane: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        with caplog.at_level(logging.WARNING, logger="meshbreaker"):
            for name, service in (("first", "bank.v1.A"), ("second", "bank.v1.B")):
                await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy(name, service=service)]))
    # "written but not seen on the change feed yet" is for a feed that fell behind.
    assert [record.getMessage() for record in caplog.records] == []


async def test_closing_the_store_writer_waits_for_the_write_on_its_thread(tmp_path: Path) -> None:
    """close() returns once the store thread is done, so the store may be closed right after."""
    store = SqliteStore(tmp_path / "cp.db")
    writer = StoreWriter(store)
    policy = pb.Policy(id="p", selector=pb.Selector(method="/bank.v1.S/M"))
    policy.config.minimum_calls = 5
    closing = threading.Thread(target=writer.close)
    try:
        with store._lock:  # the store is busy: the write waits for it on the store thread
            put = asyncio.ensure_future(writer.put([policy], None, "test"))
            await asyncio.sleep(0)  # the write is handed to the store thread
            closing.start()
            closing.join(0.5)
            assert closing.is_alive()  # close() waits for that write
        closing.join(10)
        assert not closing.is_alive()
        assert [p.id for p in store.list()[1]] == ["p"]
        put.cancel()  # it would wait for the change feed, which nothing follows here
        with contextlib.suppress(asyncio.CancelledError):
            await put
    finally:
        if not closing.is_alive():
            store.close()
