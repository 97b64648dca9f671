"""The xDS server on its own, its poll of the store an hour apart: what reaches an ADS stream comes
from the admin RPCs' own reloads, an ended stream leaves nothing behind, and stop() waits for the
store call in flight on its worker thread (the control plane closes the store next)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshbreaker.control.auth import TokenAuthenticator
from meshbreaker.control.events import EventBus
from meshbreaker.control.store import SqliteStore
from meshbreaker.control.xds.resources import CLUSTER
from meshbreaker.control.xds.server import XdsServer
from meshbreaker.v1 import xds_pb2
from tests.xds.support import DEADLINE, Admin, wait_for


class Plane:
    """An XdsServer on a gRPC server of its own, and an admin channel to it."""

    def __init__(self, xds: XdsServer, admin: Admin) -> None:
        self.xds = xds
        self.admin = admin

    async def put_accounts(self) -> None:
        endpoint = xds_pb2.XdsEndpoint(host="127.0.0.1", port=5001)
        await self.admin.put_cluster(xds_pb2.XdsCluster(name="accounts", endpoints=[endpoint]))

    async def subscribe(self) -> tuple[Any, discovery_pb2.DiscoveryResponse]:
        """An ADS stream subscribed to the cluster "accounts", and its first response."""
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.admin.channel)
        stream = stub.StreamAggregatedResources(timeout=DEADLINE)
        request = discovery_pb2.DiscoveryRequest(
            node={"id": "node-1"}, type_url=CLUSTER, resource_names=["accounts"]
        )
        await stream.write(request)
        return stream, await stream.read()


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    store = SqliteStore(tmp_path / "cp.db")
    server = grpc.aio.server()
    xds = XdsServer(
        store,
        events=EventBus(16, time.time),
        authenticator=TokenAuthenticator(),
        clock=time.monotonic,
        max_clients=10,
        poll_interval=3600,  # no poll in the test's time: only the RPCs' reloads
    )
    xds.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await xds.start()
    await server.start()
    admin = Admin(f"127.0.0.1:{port}")
    yield Plane(xds, admin)
    await admin.close()
    await server.stop(grace=0)
    await xds.stop()
    store.close()


async def test_a_put_and_a_delete_reach_an_open_ads_stream_without_waiting_for_a_poll(
    plane: Plane,
) -> None:
    """PutCluster and DeleteCluster push the change to the ADS streams themselves."""
    await plane.put_accounts()
    stream, first = await plane.subscribe()
    try:
        assert len(first.resources) == 1
        await plane.admin.xds.DeleteCluster(xds_pb2.DeleteClusterRequest(name="accounts"))
        gone = await asyncio.wait_for(stream.read(), DEADLINE)
        assert (gone.type_url, len(gone.resources)) == (CLUSTER, 0)
    finally:
        stream.cancel()


async def test_an_ended_ads_stream_is_no_longer_woken_by_updates(plane: Plane) -> None:
    """A stream that ended takes its waker out of the mesh source (nothing piles up)."""
    await plane.put_accounts()
    stream, _ = await plane.subscribe()
    assert plane.xds.source.waiting == 1
    stream.cancel()
    await wait_for(lambda: not plane.xds.clients())
    assert plane.xds.source.waiting == 0


async def test_stop_returns_only_once_the_store_call_on_its_worker_has_ended(
    plane: Plane,
) -> None:
    """stop() waits for the worker's store call in flight, so the store may be closed after."""
    started, release = threading.Event(), threading.Event()
    ended: list[bool] = []

    def store_call() -> None:
        started.set()
        release.wait(DEADLINE)
        ended.append(True)

    call = asyncio.ensure_future(plane.xds.run(store_call))
    assert await asyncio.to_thread(started.wait, DEADLINE)
    stopping = asyncio.ensure_future(plane.xds.stop())
    try:
        await asyncio.wait({stopping}, timeout=1.0)  # a watch, not a wait: it must not end yet
        assert not stopping.done()
    finally:
        release.set()
    await asyncio.wait_for(stopping, DEADLINE)
    assert ended == [True]
    await call
