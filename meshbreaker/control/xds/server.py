"""The xDS part of a control plane: ADS and the XdsAdmin RPCs, fed by the store and the registry.

The MeshState (policies and clusters at their revisions) is read again after every policy change
this control plane publishes, after every cluster write, and whenever a poll sees a revision move
(another replica or process wrote), then every ADS stream is woken to send what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc.aio
from envoy.service.discovery.v3 import ads_pb2_grpc

from meshbreaker.control.auth import TokenAuthenticator
from meshbreaker.control.events import EventBus
from meshbreaker.control.store import ClusterNotFoundError, EndpointLimitError, PolicyStore
from meshbreaker.control.xds.ads import AdsServicer, MeshSource, XdsClient
from meshbreaker.control.xds.model import (
    DEFAULT_REGISTRATION_TTL,
    MAX_CLUSTERS,
    MAX_ENDPOINTS_PER_CLUSTER,
    check_cluster,
    check_cluster_name,
    check_endpoint,
    format_endpoint,
    registered_endpoint,
    registration_ttl,
)
from meshbreaker.control.xds.resources import MeshState
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc

logger = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
XDS_ADMIN_SERVICE = "meshbreaker.v1.XdsAdmin"
_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]


class XdsServer:
    """Serves the mesh over ADS and keeps the cluster registry; `add_to(server)`, start, stop."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        events: EventBus,
        authenticator: TokenAuthenticator,
        clock: Callable[[], float],
        max_clients: int,
        allow_anonymous: bool = False,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self._events = events
        self._authenticator = authenticator
        self.clock = clock
        self._poll_interval = poll_interval
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshbreaker-xds")
        self.source = MeshSource(MeshState({}, []))
        self.ads = AdsServicer(
            self.source,
            clock=clock,
            max_clients=max_clients,
            authenticator=authenticator,
            allow_anonymous=allow_anonymous,
        )
        self._follower: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()

    service_names = (ADS_SERVICE, XDS_ADMIN_SERVICE)

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register ADS and XdsAdmin on `server`."""
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.ads, server)
        xds_pb2_grpc.add_XdsAdminServicer_to_server(XdsAdminServicer(self), server)

    async def start(self) -> None:
        """Read the mesh once, then follow it."""
        await self.reload()
        self._follower = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        """Stop following and release the worker thread."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await asyncio.get_running_loop().run_in_executor(None, self._close)

    def _close(self) -> None:
        self._executor.shutdown(wait=True)

    def clients(self) -> list[XdsClient]:
        """The connected xDS clients."""
        return self.ads.clients()

    def statuses(self) -> list[xds_pb2.XdsClientStatus]:
        """Every connected client as the admin API shows it."""
        now = self.clock()
        return [client.status(now) for client in self.ads.clients()]

    @property
    def nacks(self) -> int:
        """NACKs received since start."""
        return self.ads.nacks

    async def run(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` (store or registry I/O) on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def reload(self) -> None:
        """Read policies and clusters; publish them when either revision moved."""
        async with self._reload_lock:
            current = self.source.state
            policy_revision, policies = await self.run(self.store.list)
            cluster_revision, clusters = await self.run(self.store.xds_clusters)
            if (policy_revision, cluster_revision) == (
                current.policy_revision,
                current.cluster_revision,
            ) and (policy_revision or cluster_revision or current.clusters):
                return
            self.source.update(
                MeshState(
                    {cluster.name: cluster for cluster in clusters},
                    policies,
                    cluster_revision=cluster_revision,
                    policy_revision=policy_revision,
                )
            )

    async def _follow(self) -> None:
        with self._events.subscribe() as queue:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.get(), self._poll_interval)
                while not queue.empty():
                    queue.get_nowait()
                try:
                    swept = await self.run(self.store.sweep_xds_endpoints)
                    if swept:
                        logger.info("%d xDS endpoint registrations ran out unrenewed", swept)
                    await self.reload()
                except Exception:  # a store hiccup must not end the follower; the next poll retries
                    logger.exception("reading the mesh for xDS failed; retrying")

    def actor(self, context: _Context) -> str:
        """Who made an admin call, for `updated_by`."""
        return self._authenticator.actor(context.invocation_metadata(), context.peer())


async def start_xds(
    store: PolicyStore,
    server: grpc.aio.Server,
    *,
    events: EventBus,
    authenticator: TokenAuthenticator,
    clock: Callable[[], float],
    max_clients: int,
    allow_anonymous: bool,
) -> XdsServer:
    """An XdsServer over `store`'s cluster registry, registered on `server` and started."""
    xds = XdsServer(
        store,
        events=events,
        authenticator=authenticator,
        clock=clock,
        max_clients=max_clients,
        allow_anonymous=allow_anonymous,
    )
    xds.add_to(server)
    try:
        await xds.start()
    except BaseException:
        await xds.stop()
        raise
    return xds


class XdsAdminServicer(xds_pb2_grpc.XdsAdminServicer):
    """meshbreaker.v1.XdsAdmin: the cluster registry and the xDS clients' status."""

    def __init__(self, xds: XdsServer) -> None:
        self._xds = xds

    async def PutCluster(
        self, request: xds_pb2.PutClusterRequest, context: _Context
    ) -> xds_pb2.PutClusterResponse:
        """Check and store one cluster, then push it to the xDS clients."""
        cluster = xds_pb2.XdsCluster()
        cluster.CopyFrom(request.cluster)
        for output_only in ("revision", "updated_at", "updated_by", "registered_endpoints"):
            cluster.ClearField(output_only)
        store = self._xds.store
        try:
            check_cluster(cluster)
            _, clusters = await self._xds.run(store.xds_clusters)
            if len(clusters) >= MAX_CLUSTERS and cluster.name not in {c.name for c in clusters}:
                raise ConfigError("cluster", f"the registry holds at most {MAX_CLUSTERS} clusters")
            actor = self._xds.actor(context)
            stored = await self._xds.run(lambda: store.put_xds_cluster(cluster, actor=actor))
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        await self._xds.reload()
        return xds_pb2.PutClusterResponse(cluster=stored, revision=stored.revision)

    async def DeleteCluster(
        self, request: xds_pb2.DeleteClusterRequest, context: _Context
    ) -> xds_pb2.DeleteClusterResponse:
        """Delete one cluster, then push its absence to the xDS clients."""
        try:
            name = check_cluster_name(request.name, "name")
            actor = self._xds.actor(context)
            store = self._xds.store
            revision = await self._xds.run(lambda: store.delete_xds_cluster(name, actor=actor))
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except ClusterNotFoundError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        await self._xds.reload()
        return xds_pb2.DeleteClusterResponse(revision=revision)

    async def ListClusters(
        self, request: xds_pb2.ListClustersRequest, context: _Context
    ) -> xds_pb2.ListClustersResponse:
        """Every registered cluster."""
        revision, clusters = await self._xds.run(self._xds.store.xds_clusters)
        return xds_pb2.ListClustersResponse(clusters=clusters, revision=revision)

    async def RegisterEndpoint(
        self, request: xds_pb2.RegisterEndpointRequest, context: _Context
    ) -> xds_pb2.RegisterEndpointResponse:
        """Add the caller's endpoint to a cluster for `ttl` seconds, or renew it."""
        try:
            name = check_cluster_name(request.cluster, "cluster")
            endpoint = registered_endpoint(request.endpoint, "endpoint")
            seconds = request.ttl.ToNanoseconds() / 1e9 if request.HasField("ttl") else None
            ttl = registration_ttl(DEFAULT_REGISTRATION_TTL if seconds is None else seconds)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        store = self._xds.store
        try:
            changed, revision = await self._xds.run(
                lambda: store.register_xds_endpoint(
                    name, endpoint, ttl, max_endpoints=MAX_ENDPOINTS_PER_CLUSTER
                )
            )
        except ClusterNotFoundError:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no xDS cluster named {name!r}: an admin creates it first "
                f"(meshbreaker xds cluster put {name} --service ...)",
            )
        except EndpointLimitError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        if changed:
            logger.info(
                "%s registered %s in xDS cluster %s for %d s",
                self._xds.actor(context),
                format_endpoint(endpoint),
                name,
                ttl,
            )
            await self._xds.reload()
        response = xds_pb2.RegisterEndpointResponse(changed=changed, revision=revision)
        response.ttl.FromSeconds(ttl)
        return response

    async def DeregisterEndpoint(
        self, request: xds_pb2.DeregisterEndpointRequest, context: _Context
    ) -> xds_pb2.DeregisterEndpointResponse:
        """Remove a registered endpoint now."""
        try:
            name = check_cluster_name(request.cluster, "cluster")
            endpoint = check_endpoint(
                xds_pb2.XdsEndpoint(host=request.endpoint.host, port=request.endpoint.port),
                "endpoint",
            )
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        store = self._xds.store
        revision = await self._xds.run(
            lambda: store.deregister_xds_endpoint(name, endpoint.host, endpoint.port)
        )
        if revision is None:
            return xds_pb2.DeregisterEndpointResponse(
                removed=False, revision=(await self._xds.run(store.xds_clusters))[0]
            )
        logger.info(
            "%s deregistered %s from xDS cluster %s",
            self._xds.actor(context),
            format_endpoint(endpoint),
            name,
        )
        await self._xds.reload()
        return xds_pb2.DeregisterEndpointResponse(removed=True, revision=revision)

    async def ListXdsClients(
        self, request: xds_pb2.ListXdsClientsRequest, context: _Context
    ) -> xds_pb2.ListXdsClientsResponse:
        """Every connected xDS client and what it ACKed or NACKed."""
        return xds_pb2.ListXdsClientsResponse(clients=self._xds.statuses())
