"""Bearer-token auth: every RPC without/with a wrong token, the admin/agent split, open health."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from meshbreaker.control.auth import Role, TokenAuthenticator, bearer_token
from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.aio_stubs import health_stub, read, reflection_stub


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


ADMIN = "admin-secret-token"
AGENT = "agent-secret-token"
Start = Callable[..., Awaitable[ControlPlaneServer]]
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def server(start_control_plane: Start) -> ControlPlaneServer:
    return await start_control_plane(admin_token=ADMIN, agent_token=AGENT)


@pytest.fixture
async def stub(server: ControlPlaneServer) -> AsyncIterator[pb_grpc.ControlPlaneAsyncStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.ControlPlaneStub(channel)


def _policy(policy_id: str) -> pb.Policy:
    return pb.Policy(id=policy_id, selector=pb.Selector(service=f"auth.{policy_id}"))


async def _unary(call: Awaitable[object]) -> None:
    await call


def _calls(
    stub: pb_grpc.ControlPlaneAsyncStub, metadata: Metadata
) -> dict[str, Callable[[], Awaitable[None]]]:
    return {
        "GetConfig": lambda: _unary(
            stub.GetConfig(pb.GetConfigRequest(service="tx"), metadata=metadata)
        ),
        "WatchConfig": lambda: _first(
            stub.WatchConfig(pb.WatchConfigRequest(service="tx"), metadata=metadata)
        ),
        "ReportState": lambda: _unary(
            stub.ReportState(
                pb.ReportStateRequest(instance_id="i", service="tx"), metadata=metadata
            )
        ),
        "ListBreakers": lambda: _unary(
            stub.ListBreakers(pb.ListBreakersRequest(), metadata=metadata)
        ),
        "ListEvents": lambda: _unary(stub.ListEvents(pb.ListEventsRequest(), metadata=metadata)),
        "ListPolicies": lambda: _unary(
            stub.ListPolicies(pb.ListPoliciesRequest(), metadata=metadata)
        ),
        "WatchEvents": lambda: _event(
            stub, stub.WatchEvents(pb.WatchEventsRequest(), metadata=metadata)
        ),
        "PutPolicy": lambda: _unary(
            stub.PutPolicy(pb.PutPolicyRequest(policies=[_policy("p")]), metadata=metadata)
        ),
        "DeletePolicy": lambda: _unary(
            stub.DeletePolicy(pb.DeletePolicyRequest(id="p"), metadata=metadata)
        ),
        "ForceState": lambda: _unary(
            stub.ForceState(
                pb.ForceStateRequest(
                    selector=pb.Selector(service="auth.q"), override=pb.OVERRIDE_FORCED_OPEN
                ),
                metadata=metadata,
            )
        ),
        "AdoptStore": lambda: _unary(
            stub.AdoptStore(pb.AdoptStoreRequest(store_id="old-store"), metadata=metadata)
        ),
    }


async def _first(call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
    try:
        await call.read()
    finally:
        call.cancel()


async def _event(
    stub: pb_grpc.ControlPlaneAsyncStub, call: grpc.aio.UnaryStreamCall[Any, Any]
) -> None:
    # A refused stream fails at its first read. An accepted one sends headers once subscribed;
    # then an event is caused (with the admin token) so the read has something to return.
    try:
        await call.initial_metadata()
        if not call.done():
            report = pb.ReportStateRequest(
                instance_id="event-maker",
                service="tx",
                breakers=[pb.BreakerSnapshot(name="/a.A/M", state=pb.BREAKER_STATE_OPEN)],
            )
            await stub.ReportState(report, metadata=bearer(ADMIN))
        await asyncio.wait_for(call.read(), 2)
    finally:
        call.cancel()


MUTATIONS = {"PutPolicy", "DeletePolicy", "ForceState", "AdoptStore"}
ALL_RPCS = sorted(pb.DESCRIPTOR.services_by_name["ControlPlane"].methods_by_name)


async def _code(call: Callable[[], Awaitable[None]]) -> grpc.StatusCode:
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("rpc", ALL_RPCS)
@pytest.mark.parametrize(
    "metadata",
    [(), bearer("wrong-token"), (("authorization", f"Basic {ADMIN}"),), (("authorization", ""),)],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
async def test_without_a_valid_token_every_rpc_is_unauthenticated(
    stub: pb_grpc.ControlPlaneAsyncStub, rpc: str, metadata: Metadata
) -> None:
    assert await _code(_calls(stub, metadata)[rpc]) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_the_agent_token_may_not_mutate(
    stub: pb_grpc.ControlPlaneAsyncStub, rpc: str
) -> None:
    if rpc == "DeletePolicy":  # something to delete, so success would really be OK
        await stub.PutPolicy(pb.PutPolicyRequest(policies=[_policy("p")]), metadata=bearer(ADMIN))
    expected = grpc.StatusCode.PERMISSION_DENIED if rpc in MUTATIONS else grpc.StatusCode.OK
    assert await _code(_calls(stub, bearer(AGENT))[rpc]) == expected


@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_the_admin_token_may_do_everything(
    stub: pb_grpc.ControlPlaneAsyncStub, rpc: str
) -> None:
    if rpc == "DeletePolicy":
        await stub.PutPolicy(pb.PutPolicyRequest(policies=[_policy("p")]), metadata=bearer(ADMIN))
    assert await _code(_calls(stub, bearer(ADMIN))[rpc]) == grpc.StatusCode.OK


async def test_refused_mutations_store_nothing(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    for metadata in ((), bearer(AGENT), bearer("wrong")):
        await _code(_calls(stub, metadata)["PutPolicy"])
        await _code(_calls(stub, metadata)["ForceState"])
    listed = await stub.ListPolicies(pb.ListPoliciesRequest(), metadata=bearer(AGENT))
    assert listed.revision == 0 and not listed.policies


async def test_the_audit_names_the_role_and_peer(stub: pb_grpc.ControlPlaneAsyncStub) -> None:
    put = await stub.PutPolicy(pb.PutPolicyRequest(policies=[_policy("p")]), metadata=bearer(ADMIN))
    assert put.policies[0].updated_by.startswith("admin@")
    assert "127.0.0.1" in put.policies[0].updated_by


async def test_health_is_open_reflection_is_not(server: ControlPlaneServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_stub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_stub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        # The refusal through grpc's sync client: the aio one reports INTERNAL ("Failed
        # execute_batch") instead of the server's status when its write loses the race with the
        # server's answer (grpc/grpc#36066), a client bug other gRPC clients do not have.
        refused = await asyncio.to_thread(_reflect_without_token, server.target, request)
        assert refused == grpc.StatusCode.UNAUTHENTICATED
        call = reflection.ServerReflectionInfo(iter([request]), metadata=bearer(AGENT))
        listed = await read(call)
        assert listed.list_services_response.service
        call.cancel()


def _reflect_without_token(
    target: str, request: reflection_pb2.ServerReflectionRequest
) -> grpc.StatusCode:
    """The status of a reflection call made without a token by grpc's sync client."""
    with grpc.insecure_channel(target) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            for _ in info(iter([request]), timeout=10):
                pass
        except grpc.RpcError as error:
            return cast(grpc.Call, error).code()
    return grpc.StatusCode.OK


async def test_only_an_admin_token_locks_everything(start_control_plane: Start) -> None:
    server = await start_control_plane(admin_token=ADMIN)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        assert await _code(_calls(stub, ())["ListPolicies"]) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(_calls(stub, bearer(ADMIN))["ListPolicies"]) == grpc.StatusCode.OK


# -- unit level ---------------------------------------------------------------------------------


def test_roles_and_bearer_parsing() -> None:
    authenticator = TokenAuthenticator(ADMIN, AGENT)
    assert authenticator.enabled
    assert authenticator.role(bearer(ADMIN)) is Role.ADMIN
    assert authenticator.role(bearer(AGENT)) is Role.AGENT
    assert authenticator.role((("Authorization", f"bearer  {AGENT} "),)) is Role.AGENT
    assert authenticator.role((("authorization", f"Bearer {ADMIN}x"),)) is None
    assert authenticator.role(()) is None
    assert bearer_token((("x-other", "1"), ("authorization", b"Bearer abc"))) == "abc"
    assert bearer_token((("authorization", "Bearer"),)) is None
    assert not TokenAuthenticator().enabled
    assert TokenAuthenticator().check("/meshbreaker.v1.ControlPlane/PutPolicy", ()) is None


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    authenticator = TokenAuthenticator(ADMIN, AGENT)
    assert authenticator.role(bearer(ADMIN)) is Role.ADMIN
    # Both tokens are always compared (no early exit), as fixed-size digests.
    assert len(calls) == 2
    assert all(len(a) == len(b) == 32 for a, b in calls)


@pytest.mark.parametrize(
    ("admin", "agent", "field"),
    [
        (None, AGENT, "agent_token"),
        ("", None, "admin_token"),
        (" padded ", None, "admin_token"),
        (ADMIN, ADMIN, "agent_token"),
    ],
)
def test_bad_token_configuration(admin: str | None, agent: str | None, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TokenAuthenticator(admin, agent)
    assert caught.value.field == field
