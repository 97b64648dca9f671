"""The Aggregated Discovery Service: state-of-the-world LDS, RDS, CDS and EDS over one stream.

Per stream and resource type the server remembers the names subscribed, what it last sent (version,
nonce, each resource's bytes) and the client's answer: an ACK of a version or a NACK with the
error. It sends a type again only when what the client should hold differs from what it was last
sent, so a NACKed answer is not resent until the state behind it changes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshbreaker.control.auth import TokenAuthenticator, bearer_token
from meshbreaker.control.xds.resources import (
    CLUSTER,
    LISTENER,
    TYPE_NAMES,
    MeshState,
    pack,
    resources,
)
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import xds_pb2

logger = logging.getLogger(__name__)

MAX_NODE_ID_LENGTH = 256
MAX_NAMES_PER_TYPE = 1_000
MAX_NAME_LENGTH = 256
MAX_ERROR_LENGTH = 1_024
# Types whose empty subscription means "every resource" (Envoy's wildcard); gRPC always names.
_WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})


@dataclass
class _TypeState:
    """One resource type on one stream."""

    names: tuple[str, ...] = ()
    wildcard: bool = False
    sent_names: tuple[str, ...] | None = None  # None until the first response
    sent_resources: dict[str, bytes] = field(default_factory=dict)
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    error: str = ""


@dataclass(eq=False)
class XdsClient:
    """One ADS stream: who it is and what it holds of each resource type."""

    peer: str
    connected_at: float
    node_id: str = ""
    node_cluster: str = ""
    user_agent: str = ""
    types: dict[str, _TypeState] = field(default_factory=dict)

    def status(self, now: float) -> xds_pb2.XdsClientStatus:
        """This client as the admin API shows it."""
        return xds_pb2.XdsClientStatus(
            node_id=self.node_id,
            node_cluster=self.node_cluster,
            peer=self.peer,
            user_agent=self.user_agent,
            connected_for=max(0.0, now - self.connected_at),
            resources=[
                xds_pb2.XdsResourceState(
                    type=TYPE_NAMES[type_url],
                    names=state.names,
                    sent_version=state.sent_version,
                    acked_version=state.acked_version,
                    nacked_version=state.nacked_version,
                    error=state.error,
                )
                for type_url, state in sorted(self.types.items(), key=lambda i: TYPE_NAMES[i[0]])
            ],
        )


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MeshSource:
    """The current MeshState and a way to wait for the next one (set by the xDS server)."""

    def __init__(self, state: MeshState) -> None:
        self.state = state
        self._wakers: set[asyncio.Event] = set()

    def update(self, state: MeshState) -> None:
        """Publish a new state and wake every stream."""
        self.state = state
        for waker in self._wakers:
            waker.set()

    def add(self, waker: asyncio.Event) -> None:
        """Set `waker` on every update until removed."""
        self._wakers.add(waker)

    def remove(self, waker: asyncio.Event) -> None:
        """Stop setting `waker`."""
        self._wakers.discard(waker)

    @property
    def waiting(self) -> int:
        """How many wakers are set on every update (one per open ADS stream)."""
        return len(self._wakers)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """envoy.service.discovery.v3.AggregatedDiscoveryService, state of the world only."""

    def __init__(
        self,
        source: MeshSource,
        *,
        clock: Callable[[], float],
        max_clients: int,
        authenticator: TokenAuthenticator,
        allow_anonymous: bool = False,
    ) -> None:
        self._source = source
        self._authenticator = authenticator
        self._allow_anonymous = allow_anonymous
        self._clock = clock
        self._max_clients = max_clients
        self._clients: set[XdsClient] = set()
        self._nonces = itertools.count(1)
        self.nacks = 0  # NACKs received since start, for metrics

    def clients(self) -> list[XdsClient]:
        """The connected clients, sorted by node id."""
        return sorted(self._clients, key=lambda client: (client.node_id, client.peer))

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Answer one client's subscriptions, ACKs and NACKs until it goes away."""
        denial = self._denial(context)
        if denial is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, denial)
        if len(self._clients) >= self._max_clients:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self._max_clients} xDS clients"
            )
        client = XdsClient(peer=context.peer(), connected_at=self._clock())
        wake = asyncio.Event()
        failure: list[ConfigError] = []

        async def read() -> None:
            try:
                async for request in request_iterator:
                    self._receive(client, request)
                    wake.set()
            except ConfigError as error:
                failure.append(error)
            finally:
                wake.set()

        self._clients.add(client)
        self._source.add(wake)
        reader = asyncio.ensure_future(read())
        try:
            while True:
                await wake.wait()
                wake.clear()
                if failure:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(failure[0]))
                if reader.done():
                    return
                for response in self._responses(client):
                    await context.write(response)
        finally:
            reader.cancel()
            self._source.remove(wake)
            self._clients.discard(client)

    def _denial(self, context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        """Why this stream may not read the mesh, or None.

        The auth interceptor leaves this method to us: a certificate verified by mutual TLS
        authenticates an xDS client as well as the agent token does, and with `allow_anonymous`
        a stream without any token is let in too (a wrong token never is).
        """
        authenticator = self._authenticator
        if not authenticator.enabled or context.peer_identities() is not None:
            return None
        metadata = context.invocation_metadata()
        if bearer_token(metadata) is None:
            if self._allow_anonymous:
                return None
            return (
                "xDS clients need a client certificate (mutual TLS) or the agent token, or a "
                "control plane started with --xds-allow-anonymous"
            )
        if authenticator.role(metadata) is None:
            return "invalid token: send the agent token, or none (with --xds-allow-anonymous)"
        return None

    def _receive(self, client: XdsClient, request: discovery_pb2.DiscoveryRequest) -> None:
        """Take in one request: identity, subscription, ACK or NACK; ConfigError if malformed."""
        if not client.node_id:
            node_id = request.node.id
            if not node_id or len(node_id) > MAX_NODE_ID_LENGTH:
                raise ConfigError("node.id", f"must be 1..{MAX_NODE_ID_LENGTH} characters")
            client.node_id = node_id
            client.node_cluster = _bounded(request.node.cluster, MAX_NAME_LENGTH)
            agent = request.node.user_agent_name
            version = request.node.user_agent_version
            client.user_agent = _bounded(f"{agent} {version}".strip(), MAX_NAME_LENGTH)
            logger.info("xDS client %s connected from %s", node_id, client.peer)
        type_url = request.type_url
        if type_url not in TYPE_NAMES:
            logger.debug("xDS client %s asked for unknown type %s", client.node_id, type_url[:100])
            return
        names = tuple(request.resource_names)
        if len(names) > MAX_NAMES_PER_TYPE:
            raise ConfigError("resource_names", f"at most {MAX_NAMES_PER_TYPE} per type")
        if any(len(name) > MAX_NAME_LENGTH for name in names):
            raise ConfigError("resource_names", f"a name is longer than {MAX_NAME_LENGTH}")
        state = client.types.setdefault(type_url, _TypeState())
        if request.response_nonce and request.response_nonce != state.sent_nonce:
            return  # answers a response the client has not seen the latest of: stale
        if request.response_nonce:
            if request.HasField("error_detail"):
                state.nacked_version = state.sent_version
                state.error = _bounded(request.error_detail.message, MAX_ERROR_LENGTH)
                self.nacks += 1
                logger.warning(
                    "xDS client %s NACKed %s version %s: %s",
                    client.node_id,
                    TYPE_NAMES[type_url],
                    state.sent_version,
                    state.error,
                )
            else:
                state.acked_version = request.version_info[:MAX_NAME_LENGTH]
                state.nacked_version = state.error = ""
        state.names = tuple(sorted(set(names)))
        state.wildcard = not names and type_url in _WILDCARD_TYPES

    def _responses(self, client: XdsClient) -> list[discovery_pb2.DiscoveryResponse]:
        """A response for every type whose resources for this client differ from those sent."""
        mesh = self._source.state
        out = []
        for type_url, state in client.types.items():
            names = tuple(sorted(mesh.clusters)) if state.wildcard else state.names
            if not names and state.sent_names is None and not state.wildcard:
                continue
            wanted = resources(type_url, names, mesh, client.node_cluster)
            encoded = {
                name: message.SerializeToString(deterministic=True)
                for name, message in wanted.items()
            }
            if state.sent_names == names and encoded == state.sent_resources:
                continue
            state.sent_names = names
            state.sent_resources = encoded
            state.sent_version = mesh.version
            state.sent_nonce = str(next(self._nonces))
            out.append(
                discovery_pb2.DiscoveryResponse(
                    version_info=state.sent_version,
                    type_url=type_url,
                    nonce=state.sent_nonce,
                    resources=[pack(message) for message in wanted.values()],
                )
            )
        return out
