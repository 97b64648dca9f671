"""Servers that register themselves: RegisterEndpoint / DeregisterEndpoint and their liveness.

A registration lives `ttl` seconds past its last renewal: on SQLite an expiry time the control
plane sweeps (timed here by a fake wall clock), on etcd a lease (real seconds: etcd keeps the
time). gRPC's own xDS client, with no meshbreaker code, sees the endpoint appear and disappear.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker.control.server import ControlPlaneServer, serve
from meshbreaker.control.store import SqliteStore
from meshbreaker.control.store.etcd_server import EtcdServer
from meshbreaker.control.xds.registration import EndpointRegistration
from meshbreaker.errors import ConfigError
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc
from tests.xds.support import Backend, XdsClientProcess, wait_for

ADMIN, AGENT = "admin-secret", "agent-secret"
WHO = "/test.Echo/Who"
Backends = Callable[[int], Awaitable[list[Backend]]]


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def register_request(
    port: int, *, cluster: str = "accounts", host: str = "127.0.0.1", ttl: float | None = 10
) -> xds_pb2.RegisterEndpointRequest:
    request = xds_pb2.RegisterEndpointRequest(
        cluster=cluster, endpoint=xds_pb2.XdsEndpoint(host=host, port=port)
    )
    if ttl is not None:
        request.ttl.FromNanoseconds(int(ttl * 1e9))
    return request


class Plane:
    """A control plane with tokens and --xds-allow-anonymous, and an XdsAdmin stub to it."""

    def __init__(self, server: ControlPlaneServer) -> None:
        self.server = server
        self.channel = grpc.aio.insecure_channel(server.target)
        self.stub = xds_pb2_grpc.XdsAdminStub(self.channel)

    async def put_cluster(self, name: str = "accounts") -> None:
        cluster = xds_pb2.XdsCluster(name=name, services=["bank.v1.AccountService"])
        request = xds_pb2.PutClusterRequest(cluster=cluster)
        await self.stub.PutCluster(request, metadata=bearer(ADMIN))

    async def clusters(self) -> xds_pb2.ListClustersResponse:
        request = xds_pb2.ListClustersRequest()
        response: xds_pb2.ListClustersResponse = await self.stub.ListClusters(
            request, metadata=bearer(AGENT)
        )
        return response

    async def registered(self, name: str = "accounts") -> list[tuple[str, int]]:
        for cluster in (await self.clusters()).clusters:
            if cluster.name == name:
                return [(e.host, e.port) for e in cluster.registered_endpoints]
        return []

    async def sweep(self) -> int:
        return await asyncio.to_thread(self.server.store.sweep_xds_endpoints)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
async def plane(tmp_path: Path, wall: FakeClock) -> AsyncIterator[Plane]:
    store = SqliteStore(tmp_path / "cp.db", wall_clock=wall)
    server = await serve(
        0,
        store=store,
        xds=True,
        xds_allow_anonymous=True,
        admin_token=ADMIN,
        agent_token=AGENT,
    )
    plane = Plane(server)
    await plane.put_cluster()
    yield plane
    await plane.channel.close()
    await server.stop(grace=0)
    store.close()


async def calls(client: XdsClientProcess, n: int = 2) -> list[str]:
    reply = await client.ask({"op": "call", "n": n, "method": WHO, "wait": False})
    return list(reply["results"])


async def test_a_server_registers_itself_and_leaves_eds_when_it_stops_renewing(
    plane: Plane, wall: FakeClock, backends: Backends, tmp_path: Path
) -> None:
    (backend,) = await backends(1)
    registration = EndpointRegistration(
        plane.server.target, "accounts", f"127.0.0.1:{backend.port}", token=AGENT, ttl=10
    )
    await asyncio.to_thread(registration.start)
    client = await XdsClientProcess.start("xds:///accounts", plane.server, tmp_path, caller="gw")
    try:
        assert await plane.registered() == [("127.0.0.1", backend.port)]
        await wait_for(lambda: _all(calls(client), "backend-0"))
        # As a crashed server would: no more renewals, no deregistration.
        await asyncio.to_thread(registration.stop, deregister=False)
        wall.advance(11)
        await wait_for(lambda: _all(calls(client), "UNAVAILABLE"))
        assert await plane.registered() == []
    finally:
        await client.close()


async def _all(results: Awaitable[list[str]], prefix: str) -> bool:
    return all(result.startswith(prefix) for result in await results)


async def test_a_renewal_keeps_it_a_deregistration_removes_it_at_once(
    plane: Plane, wall: FakeClock, backends: Backends, tmp_path: Path
) -> None:
    (backend,) = await backends(1)
    first = await plane.stub.RegisterEndpoint(
        register_request(backend.port), metadata=bearer(AGENT)
    )
    assert first.changed and first.ttl.seconds == 10
    wall.advance(8)
    renewed = await plane.stub.RegisterEndpoint(
        register_request(backend.port), metadata=bearer(AGENT)
    )
    # A renewal moves no revision: xDS clients are sent nothing for it.
    assert (renewed.changed, renewed.revision) == (False, first.revision)
    wall.advance(8)  # 16 s after the first, 8 after the renewal
    assert await plane.sweep() == 0
    assert await plane.registered() == [("127.0.0.1", backend.port)]
    wall.advance(3)
    # The control plane's own sweep (every second) or this one, whichever comes first.
    await plane.sweep()
    assert await plane.registered() == []
    assert (await plane.clusters()).revision == first.revision + 1

    # The helper deregisters on stop; gRPC's xDS client sees the endpoint come and go.
    client = await XdsClientProcess.start("xds:///accounts", plane.server, tmp_path, caller="gw")
    try:
        registration = EndpointRegistration(
            plane.server.target, "accounts", f"127.0.0.1:{backend.port}", token=AGENT
        )
        await asyncio.to_thread(registration.start)  # off the loop the control plane runs on
        await wait_for(lambda: _all(calls(client), "backend-0"))
        await asyncio.to_thread(registration.stop)
        assert await plane.registered() == []
        await wait_for(lambda: _all(calls(client), "UNAVAILABLE"))
    finally:
        await client.close()
    request = xds_pb2.DeregisterEndpointRequest(
        cluster="accounts", endpoint=xds_pb2.XdsEndpoint(host="127.0.0.1", port=backend.port)
    )
    gone = await plane.stub.DeregisterEndpoint(request, metadata=bearer(AGENT))
    assert not gone.removed


async def test_registered_endpoints_join_the_static_ones_and_go_with_their_cluster(
    plane: Plane,
) -> None:
    cluster = xds_pb2.XdsCluster(
        name="accounts", endpoints=[xds_pb2.XdsEndpoint(host="127.0.0.1", port=5000)]
    )
    await plane.stub.PutCluster(xds_pb2.PutClusterRequest(cluster=cluster), metadata=bearer(ADMIN))
    await plane.stub.RegisterEndpoint(register_request(6000), metadata=bearer(AGENT))
    # An IPv6 address is kept in its canonical form, so one address is one registration.
    await plane.stub.RegisterEndpoint(
        register_request(6001, host="0:0:0:0:0:0:0:1"), metadata=bearer(AGENT)
    )
    renewed = await plane.stub.RegisterEndpoint(
        register_request(6001, host="::1"), metadata=bearer(AGENT)
    )
    assert not renewed.changed
    (listed,) = (await plane.clusters()).clusters
    assert [(e.host, e.port) for e in listed.endpoints] == [("127.0.0.1", 5000)]
    assert [(e.host, e.port) for e in listed.registered_endpoints] == [
        ("127.0.0.1", 6000),
        ("::1", 6001),
    ]
    # An admin's put replaces the static endpoints and leaves the registrations alone...
    await plane.stub.PutCluster(xds_pb2.PutClusterRequest(cluster=listed), metadata=bearer(ADMIN))
    assert len((await plane.clusters()).clusters[0].registered_endpoints) == 2
    # ...and a deleted cluster takes its registrations with it.
    await plane.stub.DeleteCluster(
        xds_pb2.DeleteClusterRequest(name="accounts"), metadata=bearer(ADMIN)
    )
    await plane.put_cluster()
    assert await plane.registered() == []


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (register_request(1, cluster="no such"), "INVALID_ARGUMENT", "cluster: 'no such'"),
        (register_request(1, cluster="payments"), "NOT_FOUND", "xds cluster put payments"),
        (register_request(1, host="accounts.internal"), "INVALID_ARGUMENT", "not an IP address"),
        (register_request(1, host="0.0.0.0"), "INVALID_ARGUMENT", "the address clients reach"),
        (register_request(1, host="::"), "INVALID_ARGUMENT", "the address clients reach"),
        (register_request(0), "INVALID_ARGUMENT", "endpoint.port: must be in 1..65535"),
        (register_request(70000), "INVALID_ARGUMENT", "endpoint.port: must be in 1..65535"),
        (register_request(1, ttl=1), "INVALID_ARGUMENT", "ttl: must be 2..300 seconds"),
        (register_request(1, ttl=301), "INVALID_ARGUMENT", "ttl: must be 2..300 seconds"),
        (register_request(1, ttl=-5), "INVALID_ARGUMENT", "ttl: must be 2..300 seconds"),
        (
            xds_pb2.RegisterEndpointRequest(
                cluster="accounts",
                endpoint=xds_pb2.XdsEndpoint(host="127.0.0.1", port=1, weight=10**7),
            ),
            "INVALID_ARGUMENT",
            "endpoint.weight: must be in 0..1000000",
        ),
    ],
)
async def test_hostile_registrations_are_refused_and_nothing_is_stored(
    plane: Plane, request_: xds_pb2.RegisterEndpointRequest, code: str, words: str
) -> None:
    before = (await plane.clusters()).revision
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plane.stub.RegisterEndpoint(request_, metadata=bearer(AGENT))
    assert refused.value.code().name == code
    assert words in str(refused.value.details())
    assert (await plane.clusters()).revision == before


async def test_an_invalid_cluster_put_is_refused_and_nothing_is_stored(plane: Plane) -> None:
    before = await plane.clusters()
    endpoint = xds_pb2.XdsEndpoint(host="accounts.internal", port=5000)
    cluster = xds_pb2.XdsCluster(name="payments", endpoints=[endpoint])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plane.stub.PutCluster(
            xds_pb2.PutClusterRequest(cluster=cluster), metadata=bearer(ADMIN)
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "cluster.endpoints[0].host" in str(refused.value.details())
    assert "not an IP address" in str(refused.value.details())
    assert await plane.clusters() == before


async def test_as_a_context_manager_a_registration_is_in_the_cluster_for_the_block(
    plane: Plane,
) -> None:
    """`with EndpointRegistration(...) as r:` registers, gives r back, and deregisters after."""
    registration = EndpointRegistration(
        plane.server.target, "accounts", "127.0.0.1:6001", token=AGENT
    )
    block = contextlib.ExitStack()  # entered and left off the control plane's loop
    try:
        entered = await asyncio.to_thread(block.enter_context, registration)
        assert entered is registration
        assert await plane.registered() == [("127.0.0.1", 6001)]
    finally:
        await asyncio.to_thread(block.close)
    assert await plane.registered() == []


async def test_registering_needs_a_token_even_when_xds_is_anonymous(plane: Plane) -> None:
    for metadata in ((), bearer("wrong")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await plane.stub.RegisterEndpoint(register_request(1), metadata=metadata)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert await plane.registered() == []


def test_the_helper_checks_what_it_is_given_before_it_dials() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"address": "0.0.0.0:50051"}, "the address clients reach"),
        ({"address": "localhost:50051"}, "not an IP address"),
        ({"cluster": "a/b"}, "cluster: 'a/b'"),
        ({"ttl": 0.5}, "ttl: must be 2..300 seconds"),
    ]
    for override, words in cases:
        arguments: dict[str, Any] = {"cluster": "accounts", "address": "127.0.0.1:50051"}
        arguments.update(override)
        with pytest.raises(ConfigError, match=words):
            EndpointRegistration("127.0.0.1:1", **arguments)


async def test_on_etcd_a_registration_lives_on_its_lease(
    etcd_server: EtcdServer, backends: Backends, tmp_path: Path
) -> None:
    url = f"{etcd_server.url}/test-{uuid.uuid4().hex}"
    server = await serve(
        0, store=url, xds=True, xds_allow_anonymous=True, admin_token=ADMIN, agent_token=AGENT
    )
    plane = Plane(server)
    client = None
    try:
        await plane.put_cluster()
        (backend,) = await backends(1)
        registration = EndpointRegistration(
            server.target, "accounts", f"127.0.0.1:{backend.port}", token=AGENT, ttl=2
        )
        await asyncio.to_thread(registration.start)
        client = await XdsClientProcess.start("xds:///accounts", server, tmp_path, caller="gw")
        await wait_for(lambda: _all(calls(client), "backend-0"))
        # The server stops renewing: etcd ends the lease, a sweep drops the registration.
        await asyncio.to_thread(registration.stop, deregister=False)
        await wait_for(lambda: _all(calls(client), "UNAVAILABLE"))
        assert await plane.registered() == []
    finally:
        if client is not None:
            await client.close()
        await plane.channel.close()
        await server.stop(grace=0)


async def test_a_registration_renews_every_third_of_its_ttl(plane: Plane) -> None:
    """The renewals come ttl/3 apart: two more tries before the registration runs out."""
    registration = EndpointRegistration(
        plane.server.target, "accounts", "127.0.0.1:50051", token=AGENT, ttl=30
    )
    waits: list[float | None] = []

    class Watched(threading.Event):
        """The renewal thread's waits, recorded (a wait still ends only with stop())."""

        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return super().wait()

    registration._stopped = Watched()
    await asyncio.to_thread(registration.start)
    try:
        await wait_for(lambda: waits)
        assert await plane.registered() == [("127.0.0.1", 50051)]
    finally:
        await asyncio.to_thread(registration.stop)
    assert waits == [10.0]


async def test_stopping_xds_ends_its_follower_before_it_returns(plane: Plane) -> None:
    """Once XdsServer.stop() returns, its follower has left the event bus: nothing of it runs on."""
    xds, events = plane.server.xds, plane.server.servicer.events
    assert xds is not None
    following = events.subscribers
    await xds.stop()
    assert events.subscribers == following - 1
