"""The control-plane server end to end: a real grpc.aio server on 127.0.0.1:0, a temp SQLite db."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from meshbreaker.control.config_streams import WAKE_BATCH, wake_in_batches
from meshbreaker.control.events import EventBus
from meshbreaker.control.server import ControlPlaneServer, Limits
from meshbreaker.control.servicer import READ_THREADS
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import wait_for
from tests.control.aio_stubs import health_stub, read, reflection_stub

Start = Callable[..., Awaitable[ControlPlaneServer]]


@pytest.fixture
async def server(start_control_plane: Start) -> ControlPlaneServer:
    return await start_control_plane()


@pytest.fixture
async def stub(server: ControlPlaneServer) -> AsyncIterator[pb_grpc.ControlPlaneAsyncStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.ControlPlaneStub(channel)


def policy(policy_id: str, **selector: str) -> pb.Policy:
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(**selector),
        config=pb.BreakerConfig(failure_rate_threshold=0.25),
    )


def snapshot(
    name: str, state: pb.BreakerState.ValueType = pb.BREAKER_STATE_CLOSED, **fields: Any
) -> pb.BreakerSnapshot:
    return pb.BreakerSnapshot(name=name, state=state, **fields)


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


# -- health, reflection -----------------------------------------------------------------------


async def test_health_is_serving(server: ControlPlaneServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_stub(channel)
        for service in ("", "meshbreaker.v1.ControlPlane"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(server: ControlPlaneServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = reflection_stub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names = {service.name for service in reply.list_services_response.service}
            break
    assert "meshbreaker.v1.ControlPlane" in names
    assert "grpc.health.v1.Health" in names


# -- policies ----------------------------------------------------------------------------------


async def test_put_list_delete_and_revisions(
    server: ControlPlaneServer, stub: pb_grpc.ControlPlaneAsyncStub
) -> None:
    put = await stub.PutPolicy(
        pb.PutPolicyRequest(
            policies=[policy("a", service="bank.v1.A"), policy("b", method="/bank.v1.B/Get")]
        )
    )
    assert put.revision == 1
    assert [p.revision for p in put.policies] == [1, 1]
    assert all(p.updated_by.startswith("anonymous@") for p in put.policies)
    listed = await stub.ListPolicies(pb.ListPoliciesRequest())
    assert [p.id for p in listed.policies] == ["a", "b"]
    assert listed.revision == 1
    assert listed.policies[0].config.failure_rate_threshold == 0.25
    deleted = await stub.DeletePolicy(pb.DeletePolicyRequest(id="a"))
    assert deleted.revision == 2
    assert server.servicer.revision == 2  # answered once this server has applied it
    listed = await stub.ListPolicies(pb.ListPoliciesRequest())
    assert [p.id for p in listed.policies] == ["b"]


async def test_output_only_fields_are_ignored_on_put(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    sent = policy("a", service="bank.v1.A")
    sent.revision = 99
    sent.updated_by = "forged"
    put = await stub.PutPolicy(pb.PutPolicyRequest(policies=[sent]))
    assert put.policies[0].revision == 1
    assert put.policies[0].updated_by != "forged"


async def test_compare_and_set_mismatch_is_aborted_and_nothing_changes(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="bank.v1.A")]))
    stale = pb.PutPolicyRequest(policies=[policy("b", service="bank.v1.B")], expected_revision=0)
    assert await code_of(stub.PutPolicy(stale)) == grpc.StatusCode.ABORTED
    delete = pb.DeletePolicyRequest(id="a", expected_revision=5)
    assert await code_of(stub.DeletePolicy(delete)) == grpc.StatusCode.ABORTED
    listed = await stub.ListPolicies(pb.ListPoliciesRequest())
    assert [p.id for p in listed.policies] == ["a"] and listed.revision == 1
    fresh = pb.PutPolicyRequest(policies=[policy("b", service="bank.v1.B")], expected_revision=1)
    assert (await stub.PutPolicy(fresh)).revision == 2


async def test_unknown_id_delete_is_not_found(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    code = await code_of(stub.DeletePolicy(pb.DeletePolicyRequest(id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_two_policies_cannot_share_a_selector(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="bank.v1.A")]))
    other = pb.PutPolicyRequest(policies=[policy("b", service="bank.v1.A")])
    assert await code_of(stub.PutPolicy(other)) == grpc.StatusCode.ALREADY_EXISTS
    # Replacing the same id with the same selector is fine.
    same = pb.PutPolicyRequest(policies=[policy("a", service="bank.v1.A")])
    assert (await stub.PutPolicy(same)).revision == 2


async def test_list_policies_for_a_caller(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    await stub.PutPolicy(
        pb.PutPolicyRequest(
            policies=[
                policy("all", service="bank.v1.A"),
                policy("tx", caller="transaction", service="bank.v1.B"),
                policy("gw", caller="gateway", service="bank.v1.B"),
            ]
        )
    )
    listed = await stub.ListPolicies(pb.ListPoliciesRequest(caller="transaction"))
    assert [p.id for p in listed.policies] == ["all", "tx"]


async def test_restart_keeps_policies_and_revision(start_control_plane: Start) -> None:
    first = await start_control_plane()
    async with grpc.aio.insecure_channel(first.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        for index in range(3):
            request = pb.PutPolicyRequest(policies=[policy(f"p{index}", service=f"s.S{index}")])
            await stub.PutPolicy(request)
        await stub.DeletePolicy(pb.DeletePolicyRequest(id="p0"))
    await first.stop(grace=0)
    second = await start_control_plane()
    async with grpc.aio.insecure_channel(second.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        listed = await stub.ListPolicies(pb.ListPoliciesRequest())
        assert [p.id for p in listed.policies] == ["p1", "p2"]
        assert listed.revision == 4
        put = await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("p3", service="s.S3")]))
        assert put.revision == 5


# -- config distribution -----------------------------------------------------------------------


async def test_get_config_returns_the_policies_of_a_caller(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    await stub.PutPolicy(
        pb.PutPolicyRequest(
            policies=[policy("mine", caller="tx", service="a.A"), policy("other", caller="gw")]
        )
    )
    config = await stub.GetConfig(pb.GetConfigRequest(service="tx"))
    assert config.revision == 1
    assert config.service == "tx"
    assert [p.id for p in config.policies] == ["mine"]


async def test_watch_sends_at_once_then_each_relevant_change(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="a.A")]))
    # No instance_id: a client that never reports, so no ACK pacing (see the test after next).
    watch = stub.WatchConfig(pb.WatchConfigRequest(service="tx"))
    first = await asyncio.wait_for(read(watch), 2)
    assert first.revision == 1 and [p.id for p in first.policies] == ["a"]
    # A change for another caller is not pushed to "tx"...
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("gw", caller="gw", service="b.B")]))
    # ...but the next relevant one is, with the store revision at that time.
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("tx", caller="tx", service="b.B")]))
    second = await asyncio.wait_for(read(watch), 2)
    assert second.revision == 3
    assert [p.id for p in second.policies] == ["a", "tx"]
    await stub.DeletePolicy(pb.DeletePolicyRequest(id="a"))
    third = await asyncio.wait_for(read(watch), 2)
    assert third.revision == 4 and [p.id for p in third.policies] == ["tx"]
    watch.cancel()


async def test_a_caller_whose_last_watch_ends_is_no_longer_followed(
    server: ControlPlaneServer, stub: pb_grpc.ControlPlaneAsyncStub
) -> None:
    streams = server.servicer.config_streams
    watches = [
        stub.WatchConfig(pb.WatchConfigRequest(service="tx", instance_id=f"i{n}")) for n in (1, 2)
    ]
    for watch in watches:
        assert (await asyncio.wait_for(read(watch), 10)).revision == 0
    watches[0].cancel()
    await wait_for(lambda: streams.streams == 1)
    assert streams.current("tx") is not None  # another agent still watches it
    watches[1].cancel()
    await wait_for(lambda: streams.streams == 0)
    assert streams.current("tx") is None  # nor is a snapshot kept (and rebuilt) for nobody


async def test_a_watch_runs_at_most_one_unacknowledged_revision_ahead_and_coalesces(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    watch = stub.WatchConfig(pb.WatchConfigRequest(service="tx", instance_id="i1"))
    assert (await asyncio.wait_for(read(watch), 2)).revision == 0
    for name in ("a", "b"):  # revisions 1 and 2, while the agent has not ACKed revision 0
        await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy(name, service=f"{name}.S")]))
    pending = asyncio.ensure_future(read(watch))
    done, _ = await asyncio.wait([pending], timeout=0.2)
    assert not done  # held back: revision 0 is not acknowledged yet
    await stub.ReportState(pb.ReportStateRequest(instance_id="i1", service="tx"))
    newest = await asyncio.wait_for(pending, 2)
    # Revision 1 was never queued: the agent gets the newest state at once.
    assert newest.revision == 2 and [p.id for p in newest.policies] == ["a", "b"]
    # A NACK acknowledges too.
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("c", service="c.S")]))
    pending = asyncio.ensure_future(read(watch))
    done, _ = await asyncio.wait([pending], timeout=0.2)
    assert not done
    nack = pb.Nack(revision=2, reason="bad")
    await stub.ReportState(pb.ReportStateRequest(instance_id="i1", service="tx", nack=nack))
    assert (await asyncio.wait_for(pending, 2)).revision == 3
    watch.cancel()


async def test_a_put_answers_before_its_snapshots_are_built_and_a_watch_opened_then_waits_for_them(
    stub: pb_grpc.ControlPlaneAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from meshbreaker.control.policies import PolicyIndex

    building, release = threading.Event(), threading.Event()
    build = PolicyIndex.snapshots

    def held(index: PolicyIndex, callers: Any) -> Any:
        building.set()
        release.wait(30)
        return build(index, callers)

    watch = stub.WatchConfig(pb.WatchConfigRequest(service="tx"))
    assert (await asyncio.wait_for(read(watch), 30)).revision == 0
    monkeypatch.setattr(PolicyIndex, "snapshots", held)
    # The put answers once its revision is applied here, while the follower thread still
    # builds the snapshots it changed (held here until released).
    put = await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="a.A")]))
    assert put.revision == 1
    assert await asyncio.to_thread(building.wait, 30)  # and the snapshots are still held
    assert (await stub.GetConfig(pb.GetConfigRequest(service="tx"))).revision == 1
    # A stream of the same caller opened now starts from that write, not the older snapshot.
    late = stub.WatchConfig(pb.WatchConfigRequest(service="tx"))
    first = asyncio.ensure_future(read(late))
    done, _ = await asyncio.wait([first], timeout=0.2)
    assert not done  # it waits for the snapshot being built
    release.set()
    assert (await asyncio.wait_for(first, 30)).revision == 1
    assert (await asyncio.wait_for(read(watch), 30)).revision == 1
    watch.cancel()
    late.cancel()


async def test_a_change_wakes_its_streams_a_batch_per_turn_of_the_loop() -> None:
    wakes = [asyncio.Event() for _ in range(2 * WAKE_BATCH + 1)]
    wake_in_batches(wakes)
    woken = []
    for _ in range(3):  # what else is ready runs between the batches
        woken.append(sum(wake.is_set() for wake in wakes))
        await asyncio.sleep(0)
    assert woken == [WAKE_BATCH, 2 * WAKE_BATCH, 2 * WAKE_BATCH + 1]


async def test_many_watchers_all_get_the_change(server: ControlPlaneServer) -> None:
    import threading

    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        threads_before = threading.active_count()
        watches = [
            stub.WatchConfig(pb.WatchConfigRequest(service=f"svc{index % 5}"))
            for index in range(150)
        ]
        firsts = await asyncio.gather(*(read(w) for w in watches))
        assert all(first.revision == 0 for first in firsts)
        # Watch streams are coroutines on the server's loop, not pool threads (first
        # snapshots are built on the server's few read threads).
        assert threading.active_count() <= threads_before + 2 + READ_THREADS
        await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("all", service="a.A")]))
        seconds = await asyncio.wait_for(asyncio.gather(*(read(w) for w in watches)), 3)
        assert all(s.revision == 1 and s.policies[0].id == "all" for s in seconds)
        # Other RPCs are not starved by 150 open streams.
        listed = await asyncio.wait_for(stub.ListPolicies(pb.ListPoliciesRequest()), 1)
        assert listed.revision == 1
        for watch in watches:
            watch.cancel()


# -- reports and ListBreakers ------------------------------------------------------------------


async def report(
    stub: pb_grpc.ControlPlaneAsyncStub,
    instance: str,
    service: str,
    *breakers: pb.BreakerSnapshot,
    **fields: Any,
) -> pb.ReportStateResponse:
    request = pb.ReportStateRequest(
        instance_id=instance, service=service, breakers=breakers, **fields
    )
    return await stub.ReportState(request)


async def test_list_breakers_aggregates_per_service_and_name(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    get = "/bank.v1.A/Get"
    put = "accounts/bank.v1.A/Put"
    await report(
        stub, "i1", "tx", snapshot(get, failure_rate=0.2, slow_call_rate=0.1, total=10, failed=2)
    )
    await report(
        stub,
        "i2",
        "tx",
        snapshot(get, pb.BREAKER_STATE_OPEN, failure_rate=0.6, slow_call_rate=0.5, total=5),
    )
    await report(stub, "i2", "tx", snapshot(put, pb.BREAKER_STATE_OPEN))
    await report(stub, "i3", "gw", snapshot(get), applied_revision=7)
    listed = await stub.ListBreakers(pb.ListBreakersRequest())
    keys = [(g.service, g.name) for g in listed.groups]
    assert keys == [("gw", get), ("tx", get), ("tx", put)]
    tx_get = listed.groups[1]
    assert (tx_get.instances, tx_get.closed, tx_get.open) == (2, 1, 1)
    assert tx_get.failure_rate == pytest.approx(0.4)  # rates: the mean over the instances
    assert tx_get.slow_call_rate == pytest.approx(0.3)
    assert tx_get.total == 15 and tx_get.failed == 2
    assert not tx_get.instance_breakers
    assert [(i.instance_id, i.applied_revision) for i in listed.instances] == [
        ("i1", 0),
        ("i2", 0),
        ("i3", 7),
    ]
    # Filters: caller service, state, method (whatever the target prefix), gRPC service.
    only_open = await stub.ListBreakers(pb.ListBreakersRequest(state=pb.BREAKER_STATE_OPEN))
    assert [(g.service, g.name) for g in only_open.groups] == [("tx", get), ("tx", put)]
    only_gw = await stub.ListBreakers(pb.ListBreakersRequest(service="gw"))
    assert [g.service for g in only_gw.groups] == ["gw"]
    assert [i.instance_id for i in only_gw.instances] == ["i3"]
    by_method = await stub.ListBreakers(pb.ListBreakersRequest(method="/bank.v1.A/Put"))
    assert [g.name for g in by_method.groups] == [put]
    by_service = await stub.ListBreakers(pb.ListBreakersRequest(method="bank.v1.A"))
    assert len(by_service.groups) == 3
    detail = await stub.ListBreakers(
        pb.ListBreakersRequest(service="tx", method=get, include_instances=True)
    )
    assert [b.instance_id for b in detail.groups[0].instance_breakers] == ["i1", "i2"]
    assert detail.groups[0].instance_breakers[1].snapshot.state == pb.BREAKER_STATE_OPEN


async def test_list_breakers_shows_each_breakers_config_from_the_report_that_last_sent_it(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    config = pb.BreakerConfig(failure_rate_threshold=0.3)
    await report(stub, "i1", "tx", snapshot("/a.A/X", config=config))
    # Agents send a config only when it changed: the next reports leave it out.
    await report(stub, "i1", "tx", snapshot("/a.A/X", pb.BREAKER_STATE_OPEN))
    listed = await stub.ListBreakers(pb.ListBreakersRequest(include_instances=True))
    [item] = listed.groups[0].instance_breakers
    assert item.snapshot.state == pb.BREAKER_STATE_OPEN
    assert item.snapshot.config == config


async def test_reports_merge_unless_full(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    await report(stub, "i1", "tx", snapshot("/a.A/X"), snapshot("/a.A/Y"))
    await report(stub, "i1", "tx", snapshot("/a.A/X", pb.BREAKER_STATE_OPEN))
    listed = await stub.ListBreakers(pb.ListBreakersRequest())
    assert [(g.name, g.open) for g in listed.groups] == [("/a.A/X", 1), ("/a.A/Y", 0)]
    await report(stub, "i1", "tx", snapshot("/a.A/Z"), full=True)
    listed = await stub.ListBreakers(pb.ListBreakersRequest())
    assert [g.name for g in listed.groups] == ["/a.A/Z"]


async def test_instances_expire_after_the_ttl(start_control_plane: Start, clock: FakeClock) -> None:
    server = await start_control_plane(report_ttl=10.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        reply = await report(stub, "old", "tx", snapshot("/a.A/X"))
        assert reply.report_ttl.seconds == 10
        clock.advance(6)
        await report(stub, "new", "tx", snapshot("/a.A/X"))
        clock.advance(5)  # "old" is 11 s silent, "new" 5 s
        listed = await stub.ListBreakers(pb.ListBreakersRequest(include_instances=True))
        assert [i.instance_id for i in listed.instances] == ["new"]
        assert listed.instances[0].report_age == pytest.approx(5)
        assert listed.groups[0].instances == 1


async def test_ack_and_nack_show_up_in_list_breakers(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    await report(stub, "i1", "tx", applied_revision=3)
    await report(
        stub, "i2", "tx", applied_revision=2, nack=pb.Nack(revision=3, reason="policies[0]: bad")
    )
    listed = await stub.ListBreakers(pb.ListBreakersRequest())
    by_id = {i.instance_id: i for i in listed.instances}
    assert by_id["i1"].applied_revision == 3 and not by_id["i1"].HasField("nack")
    assert by_id["i2"].applied_revision == 2
    assert by_id["i2"].nack.revision == 3 and "bad" in by_id["i2"].nack.reason
    # The next report without a NACK clears it.
    await report(stub, "i2", "tx", applied_revision=4)
    listed = await stub.ListBreakers(pb.ListBreakersRequest())
    assert not {i.instance_id: i for i in listed.instances}["i2"].HasField("nack")


# -- force state -------------------------------------------------------------------------------


async def test_force_state_creates_and_removes_an_override_only_policy(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    selector = pb.Selector(method="/bank.v1.A/Get")
    watch = stub.WatchConfig(pb.WatchConfigRequest(service="tx"))
    assert (await read(watch)).revision == 0
    forced = await stub.ForceState(
        pb.ForceStateRequest(selector=selector, override=pb.OVERRIDE_FORCED_OPEN)
    )
    assert forced.revision == 1
    assert forced.policy.override == pb.OVERRIDE_FORCED_OPEN
    assert not forced.policy.HasField("config")
    pushed = await asyncio.wait_for(read(watch), 2)
    assert pushed.policies[0].override == pb.OVERRIDE_FORCED_OPEN
    auto = await stub.ForceState(pb.ForceStateRequest(selector=selector))
    assert auto.revision == 2 and not auto.HasField("policy")
    assert not (await asyncio.wait_for(read(watch), 2)).policies
    watch.cancel()


async def test_force_state_on_an_existing_policy_keeps_its_config(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="bank.v1.A")]))
    selector = pb.Selector(service="bank.v1.A")
    forced = await stub.ForceState(
        pb.ForceStateRequest(selector=selector, override=pb.OVERRIDE_FORCED_CLOSED)
    )
    assert forced.policy.id == "a"
    assert forced.policy.config.failure_rate_threshold == 0.25
    await stub.ForceState(pb.ForceStateRequest(selector=selector))
    listed = await stub.ListPolicies(pb.ListPoliciesRequest())
    assert [(p.id, p.override) for p in listed.policies] == [("a", pb.OVERRIDE_NONE)]
    assert listed.revision == 3


# -- events ------------------------------------------------------------------------------------


async def test_events_report_policy_changes_transitions_and_nacks(
    stub: pb_grpc.ControlPlaneAsyncStub,
) -> None:
    events = stub.WatchEvents(pb.WatchEventsRequest())
    await events.initial_metadata()  # subscribed
    await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy("a", service="bank.v1.A")]))
    await report(stub, "i1", "tx", snapshot("/a.A/X"))  # first seen CLOSED: no event
    await report(stub, "i1", "tx", snapshot("/a.A/X", pb.BREAKER_STATE_OPEN))
    await report(stub, "i1", "tx", snapshot("/a.A/X", pb.BREAKER_STATE_OPEN))  # no change
    await report(stub, "i1", "tx", nack=pb.Nack(revision=1, reason="nope"))
    await report(stub, "i1", "tx", nack=pb.Nack(revision=1, reason="nope"))  # same NACK again
    await stub.DeletePolicy(pb.DeletePolicyRequest(id="a"))
    received = [await asyncio.wait_for(read(events), 2) for _ in range(4)]
    kinds = [event.WhichOneof("kind") for event in received]
    assert kinds == ["policy_change", "transition", "nack", "policy_change"]
    assert [event.sequence for event in received] == [1, 2, 3, 4]
    put, transition, nack, delete = received
    assert put.policy_change.kind == pb.PolicyChange.KIND_PUT
    assert put.policy_change.after.id == "a" and not put.policy_change.HasField("before")
    assert transition.transition.from_state == pb.BREAKER_STATE_CLOSED
    assert transition.transition.to_state == pb.BREAKER_STATE_OPEN
    assert transition.transition.instance_id == "i1"
    assert nack.nack.nack.reason == "nope"
    assert delete.policy_change.kind == pb.PolicyChange.KIND_DELETE
    assert delete.policy_change.before.id == "a"
    events.cancel()


async def test_events_filtered_by_service(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    events = stub.WatchEvents(pb.WatchEventsRequest(service="tx"))
    await events.initial_metadata()
    await report(stub, "g", "gw", snapshot("/a.A/X", pb.BREAKER_STATE_OPEN))
    await report(stub, "t", "tx", snapshot("/a.A/X", pb.BREAKER_STATE_OPEN))
    event = await asyncio.wait_for(read(events), 2)
    assert event.transition.instance_id == "t"
    events.cancel()


# -- bounds ------------------------------------------------------------------------------------


async def test_size_limits_are_enforced(start_control_plane: Start) -> None:
    limits = Limits(max_policies_per_put=2, max_breakers_per_report=3, max_message_bytes=64_000)
    server = await start_control_plane(limits=limits)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        too_many = pb.PutPolicyRequest(
            policies=[policy(f"p{i}", service=f"a.S{i}") for i in range(3)]
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutPolicy(too_many)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "policies: at most 2 per put" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await report(stub, "i", "tx", *(snapshot(f"/a.A/M{i}") for i in range(4)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "breakers: at most 3 per report" in (caught.value.details() or "")
        huge = pb.Policy(id="h", description="x" * 100_000)
        code = await code_of(stub.PutPolicy(pb.PutPolicyRequest(policies=[huge])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.ListPolicies(pb.ListPoliciesRequest())).revision == 0


async def test_max_policies_in_the_store(start_control_plane: Start) -> None:
    server = await start_control_plane(limits=Limits(max_policies=2))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        two = [policy("a", service="a.A"), policy("b", service="b.B")]
        await stub.PutPolicy(pb.PutPolicyRequest(policies=two))
        await stub.PutPolicy(pb.PutPolicyRequest(policies=two[:1]))  # replacing is fine
        third = pb.PutPolicyRequest(policies=[policy("c", service="c.C")])
        assert await code_of(stub.PutPolicy(third)) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_port_in_use_is_an_error(server: ControlPlaneServer, tmp_path: Path) -> None:
    from meshbreaker.control.server import serve

    with pytest.raises(OSError):
        await serve(server.port, tmp_path / "other.db")


# -- durability: SIGKILL in the middle of a burst of puts ---------------------------------------

_SERVER_SCRIPT = """
import asyncio, sys
from meshbreaker.control.server import serve

async def main():
    server = await serve(0, sys.argv[1])
    print(server.port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


async def test_sigkill_during_a_burst_loses_no_acknowledged_put(
    start_control_plane: Start, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    db = tmp_path / "killed.db"
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, str(db)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        target = f"127.0.0.1:{int(line)}"
        acknowledged: list[str] = []
        killed = asyncio.Event()

        async def writer(stub: pb_grpc.ControlPlaneAsyncStub, worker: int) -> None:
            for index in range(10_000):
                policy_id = f"w{worker}-{index}"
                request = pb.PutPolicyRequest(
                    policies=[policy(policy_id, service=f"s.W{worker}x{index}")]
                )
                try:
                    await stub.PutPolicy(request, timeout=10)
                except grpc.aio.AioRpcError as error:
                    # Either way this put may or may not have landed: it is not acknowledged.
                    if killed.is_set() or error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        return  # the server is gone
                    continue  # answered late on a loaded machine: the burst goes on
                acknowledged.append(policy_id)
                if len(acknowledged) == 60 and not killed.is_set():
                    killed.set()
                    process.send_signal(signal.SIGKILL)

        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ControlPlaneStub(channel)
            await asyncio.wait_for(asyncio.gather(*(writer(stub, w) for w in range(4))), 120)
        assert killed.is_set()
        assert process.wait(5) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    restarted = await start_control_plane(db=db)
    async with grpc.aio.insecure_channel(restarted.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        listed = await stub.ListPolicies(pb.ListPoliciesRequest())
    stored_ids = {p.id for p in listed.policies}
    assert len(acknowledged) >= 60
    assert set(acknowledged) <= stored_ids
    assert listed.revision >= len(acknowledged)


_RUN_SCRIPT = """
import sys
from meshbreaker.control.server import run

run(0, sys.argv[1], ready=lambda server: print(server.port, flush=True))
print("stopped", flush=True)
"""


def test_run_serves_until_sigterm_then_stops_cleanly(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", _RUN_SCRIPT, str(tmp_path / "run.db")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ControlPlaneStub(channel)
            assert stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).revision == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
        assert process.stdout.read().strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_failing_store_write_is_unavailable_and_changes_nothing(
    start_control_plane: Start, tmp_path: Path
) -> None:
    import sqlite3

    from meshbreaker.control.store import SqliteStore

    class FullDisk(SqliteStore):
        def put(self, *args: object, **kwargs: object) -> NoReturn:
            raise sqlite3.OperationalError("database or disk is full")

    store = FullDisk(tmp_path / "full.db")
    server = await start_control_plane(store=store)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        request = pb.PutPolicyRequest(policies=[policy("a", service="a.A")])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutPolicy(request)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "disk is full" in (caught.value.details() or "")
        listed = await stub.ListPolicies(pb.ListPoliciesRequest())
        assert listed.revision == 0 and not listed.policies
    store.close()


def test_package_exports() -> None:
    import subprocess
    import sys

    import meshbreaker.control as control
    from meshbreaker.control import MeshAgent, PolicyStore, SqliteStore, serve
    from meshbreaker.control.agent import MeshAgent as AgentClass
    from meshbreaker.control.server import serve as serve_function

    assert MeshAgent is AgentClass and serve is serve_function
    assert issubclass(SqliteStore, PolicyStore)
    assert set(control.__all__) <= set(dir(control)) | set(control._LAZY)
    with pytest.raises(AttributeError):
        _ = control.nothing_here
    # Importing the agent alone does not load the server or sqlite3.
    code = (
        "import sys, meshbreaker.control.agent; "
        "print('meshbreaker.control.server' in sys.modules, 'sqlite3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


async def test_a_put_the_client_gives_up_on_still_reaches_watchers(
    start_control_plane: Start, tmp_path: Path
) -> None:
    import threading

    from meshbreaker.control.store import SqliteStore

    entered, release = threading.Event(), threading.Event()

    class SlowDisk(SqliteStore):
        def put(self, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            release.wait(5)
            return super().put(*args, **kwargs)

    store = SlowDisk(tmp_path / "slow.db")
    server = await start_control_plane(store=store)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        watch = stub.WatchConfig(pb.WatchConfigRequest(service="tx"))
        assert (await read(watch)).revision == 0
        request = pb.PutPolicyRequest(policies=[policy("a", service="a.A")])
        call = stub.PutPolicy(request, timeout=30)
        # The client gives up once the write is in the store (not on a clock: load varies).
        assert await asyncio.to_thread(entered.wait, 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        release.set()  # the write commits after the client left...
        pushed = await asyncio.wait_for(read(watch), 2)  # ...and is still pushed
        assert pushed.revision == 1 and [p.id for p in pushed.policies] == ["a"]
        assert (await stub.ListPolicies(pb.ListPoliciesRequest())).revision == 1
        watch.cancel()
    store.close()


async def test_a_stalled_events_subscriber_keeps_the_newest_and_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(queue_size=2, wall_clock=lambda: 0.0)
    with caplog.at_level("WARNING", logger="meshbreaker.control.events"), bus.subscribe() as queue:
        for _ in range(5):
            bus.publish(pb.Event())
        assert [queue.get_nowait().sequence for _ in range(2)] == [4, 5]
        assert len(caplog.records) == 1
    assert bus.subscribers == 0
    assert [record.getMessage() for record in caplog.records][1:] == [
        "events subscriber left; 3 events were dropped for it"
    ]


def test_the_recent_events_are_all_those_kept_unless_a_limit_is_given() -> None:
    """EventBus.recent(): every kept event by default, the newest `limit` with one."""
    bus = EventBus(queue_size=2, wall_clock=lambda: 0.0, history=4)
    for _ in range(5):
        bus.publish(pb.Event())
    assert [event.sequence for event in bus.recent()] == [2, 3, 4, 5]
    assert [event.sequence for event in bus.recent(limit=2)] == [4, 5]
