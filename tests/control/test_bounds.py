"""Every size bound of the control plane: enforced, named in the error, nothing half-applied."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker.control.instances import InstanceTable
from meshbreaker.control.server import ControlPlaneServer, Limits
from meshbreaker.control.validate import MAX_DETAILS, Refused
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

Start = Callable[..., Awaitable[ControlPlaneServer]]


@pytest.fixture
async def stub_for(start_control_plane: Start) -> AsyncIterator[Callable[..., Any]]:
    channels: list[grpc.aio.Channel] = []

    async def make(**limits: int) -> pb_grpc.ControlPlaneAsyncStub:
        server = await start_control_plane(limits=Limits(**limits))
        channel = grpc.aio.insecure_channel(
            server.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        channels.append(channel)
        return pb_grpc.ControlPlaneStub(channel)

    yield make
    for channel in channels:
        await channel.close()


def breaker(name: str, **fields: Any) -> pb.BreakerSnapshot:
    return pb.BreakerSnapshot(name=name, state=pb.BREAKER_STATE_CLOSED, **fields)


def report(instance: str, names: list[str], *, full: bool = True, service: str = "tx") -> Any:
    return pb.ReportStateRequest(
        instance_id=instance, service=service, breakers=[breaker(n) for n in names], full=full
    )


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def names(count: int, start: int = 0) -> list[str]:
    return [f"/bank.v1.S/M{index}" for index in range(start, start + count)]


async def test_breakers_per_instance_count_partial_reports_too(stub_for: Any) -> None:
    stub = await stub_for(max_breakers_per_instance=5)
    await stub.ReportState(report("i1", names(3)))
    await stub.ReportState(report("i1", names(2, 3), full=False))  # merged: 5
    error = await refused(stub.ReportState(report("i1", names(1, 5), full=False)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_breakers_per_instance (5)" in (error.details() or "")
    listed = await stub.ListBreakers(pb.ListBreakersRequest())
    assert [i.breakers for i in listed.instances] == [5]  # the refused part changed nothing
    # A full report replaces: five others are fine.
    await stub.ReportState(report("i1", names(5, 10)))


async def test_instances_per_service_and_breakers_per_replica(stub_for: Any) -> None:
    stub = await stub_for(max_instances_per_service=2, max_reported_breakers=6)
    await stub.ReportState(report("a", names(2)))
    await stub.ReportState(report("b", names(2)))
    error = await refused(stub.ReportState(report("c", names(1))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_instances_per_service (2)" in (error.details() or "")
    await stub.ReportState(report("c", names(2), service="gw"))  # another service: fine
    error = await refused(stub.ReportState(report("d", names(1), service="audit")))
    assert "limits.max_reported_breakers (6)" in (error.details() or "")
    # Shrinking a report frees room.
    await stub.ReportState(report("a", names(1)))
    await stub.ReportState(report("d", names(1), service="audit"))


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"total": -1}, "breakers[0].total"),
        ({"rejected": -3}, "breakers[0].rejected"),
        ({"total": 5, "successful": 4, "failed": 2}, "breakers[0].total"),
        ({"state_age": math.inf}, "breakers[0].state_age"),
        ({"state_age": math.nan}, "breakers[0].state_age"),
        ({"open_remaining": -1.0}, "breakers[0].state_age"),
    ],
)
async def test_report_fields_must_be_sane(stub_for: Any, fields: dict[str, Any], path: str) -> None:
    stub = await stub_for()
    request = pb.ReportStateRequest(
        instance_id="i1", service="tx", breakers=[breaker("/bank.v1.S/M", **fields)]
    )
    error = await refused(stub.ReportState(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert path in (error.details() or "")


@pytest.mark.parametrize("name", ["/bank.v1.S/M\x1b[2J", "a/b", "/not a method/x", "bell\x07"])
async def test_breaker_names_follow_the_grammar_without_control_characters(
    stub_for: Any, name: str
) -> None:
    stub = await stub_for()
    error = await refused(stub.ReportState(report("i1", [name])))
    assert "breakers[0].name" in (error.details() or "")
    assert "\x1b" not in (error.details() or "")


async def test_error_details_never_echo_a_huge_input(stub_for: Any) -> None:
    stub = await stub_for()
    huge = "x" * 1_000_000
    error = await refused(stub.DeletePolicy(pb.DeletePolicyRequest(id=huge)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # not a metadata overflow
    assert len(error.details() or "") <= MAX_DETAILS
    policy = pb.Policy(id=huge, selector=pb.Selector(service="a.A"))
    error = await refused(stub.PutPolicy(pb.PutPolicyRequest(policies=[policy])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details() or "") <= MAX_DETAILS


async def test_error_details_of_exactly_300_characters_are_whole_and_longer_ones_are_clipped(
    stub_for: Any,
) -> None:
    stub = await stub_for()

    async def details(length: int) -> str:
        bad = "x" * length + "!"  # not a caller name: the refusal quotes it
        error = await refused(stub.GetConfig(pb.GetConfigRequest(service=bad)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return error.details() or ""

    short = await details(10)
    assert len(short) < 300 and "xxxx!" in short
    # Each extra character of input is one more of the details, up to the documented 300.
    at_bound = await details(10 + 300 - len(short))
    assert len(at_bound) == 300 and at_bound.endswith(short[-20:])
    over = await details(11 + 300 - len(short))
    assert len(over) == 300 and over.endswith("…") and over.startswith(short[:20])


async def test_unknown_fields_of_a_newer_client_are_not_stored(stub_for: Any) -> None:
    stub = await stub_for()
    policy = pb.Policy(id="p", selector=pb.Selector(service="a.A"))
    # Field 999 (varint 7), as a newer client might send it.
    raw = policy.SerializeToString() + b"\xb8\x3e\x07"
    newer = pb.Policy.FromString(raw)
    assert newer.SerializeToString() == raw  # the unknown field is there on the way in
    stored = (await stub.PutPolicy(pb.PutPolicyRequest(policies=[newer]))).policies[0]
    listed = (await stub.ListPolicies(pb.ListPoliciesRequest())).policies[0]
    for message in (stored, listed):
        again = pb.Policy()
        again.CopyFrom(message)
        again.ClearField("revision")
        again.ClearField("updated_at")
        again.ClearField("updated_by")
        assert again.SerializeToString() == policy.SerializeToString()


async def test_a_put_that_would_make_a_snapshot_too_big_is_refused(stub_for: Any) -> None:
    stub = await stub_for(max_message_bytes=64 * 1024)

    def big(policy_id: str, caller: str, method: str) -> pb.Policy:
        return pb.Policy(
            id=policy_id,
            selector=pb.Selector(caller=caller, method=method),
            config=pb.BreakerConfig(failure_rate_threshold=0.5),
            description="d" * 500,
        )

    # Twenty ~600-byte policies for every caller, then twenty more for "tx" alone: fine...
    for batch in range(2):
        policies = [big(f"all-{batch}-{i}", "", f"/a.A/M{batch}x{i}") for i in range(20)]
        await stub.PutPolicy(pb.PutPolicyRequest(policies=policies))
    policies = [big(f"tx-{i}", "tx", f"/b.B/M{i}") for i in range(20)]
    await stub.PutPolicy(pb.PutPolicyRequest(policies=policies))
    # ...but tx's snapshot (40 common + 20 own + 60 more) would pass 64 KiB: refused at write.
    policies = [big(f"tx-more-{i}", "tx", f"/c.C/M{i}") for i in range(60)]
    error = await refused(stub.PutPolicy(pb.PutPolicyRequest(policies=policies)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "config snapshot of tx" in (error.details() or "")
    assert "limits.max_message_bytes (65536)" in (error.details() or "")
    assert (await stub.ListPolicies(pb.ListPoliciesRequest())).revision == 3


async def test_list_breakers_never_exceeds_the_message_size(stub_for: Any) -> None:
    stub = await stub_for(max_message_bytes=16 * 1024)
    for instance in range(10):
        await stub.ReportState(report(f"i{instance}", names(60)))
    error = await refused(stub.ListBreakers(pb.ListBreakersRequest(include_instances=True)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "filter by service or method" in (error.details() or "")
    small = await stub.ListBreakers(pb.ListBreakersRequest(method="/bank.v1.S/M1"))
    assert len(small.groups) == 1 and small.groups[0].instances == 10


async def test_an_override_reason_of_up_to_256_characters_is_kept(stub_for: Any) -> None:
    stub = await stub_for()

    def force(reason: str) -> Any:
        return stub.ForceState(
            pb.ForceStateRequest(
                selector=pb.Selector(method="/bank.v1.S/M"),
                override=pb.OVERRIDE_FORCED_OPEN,
                reason=reason,
            )
        )

    forced = await force("r" * 256)
    assert forced.policy.override_reason == "r" * 256
    error = await refused(force("r" * 257))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "reason: at most 256 characters"


async def test_list_breakers_serves_an_answer_of_exactly_the_message_size(stub_for: Any) -> None:
    """An answer of max_message_bytes is sent; one byte more is refused."""
    listing = pb.ListBreakersRequest(include_instances=True)
    measure = await stub_for()
    await measure.ReportState(report("i1", names(60)))
    size = (await measure.ListBreakers(listing)).ByteSize()
    for limit, served in ((size, True), (size - 1, False)):
        stub = await stub_for(max_message_bytes=limit)
        await stub.ReportState(report("i1", names(60)))
        if served:
            assert (await stub.ListBreakers(listing)).ByteSize() == limit
        else:
            error = await refused(stub.ListBreakers(listing))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"the answer would be {size} bytes" in (error.details() or "")


def test_by_default_a_service_may_have_10000_live_instances() -> None:
    """The default max_instances_per_service: the 10,000th instance is taken, not one more."""
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)
    for number in range(10_000):
        table.record(pb.ReportStateRequest(instance_id=f"tx-{number}", service="tx"), now=0.0)
    with pytest.raises(Refused, match=r"limits\.max_instances_per_service \(10000\)"):
        table.record(pb.ReportStateRequest(instance_id="tx-10000", service="tx"), now=0.0)
    table.record(pb.ReportStateRequest(instance_id="gw-1", service="gw"), now=0.0)  # per service
