"""A server that registers itself: its HOST:PORT in an xDS cluster while it runs.

`EndpointRegistration(target, cluster, address, token=...)` calls XdsAdmin.RegisterEndpoint at
once (so a refusal is raised where it is made), renews every ttl/3 on a daemon thread, and calls
DeregisterEndpoint on `stop()`. A server that dies without deregistering leaves EDS once `ttl`
seconds pass without a renewal reaching the control plane. Needs nothing beyond grpcio.
"""

from __future__ import annotations

import logging
import os
import threading

import grpc

from meshbreaker.control.agent_link import AgentToken, describe
from meshbreaker.control.xds.model import (
    DEFAULT_REGISTRATION_TTL,
    check_cluster_name,
    parse_endpoint,
    registered_endpoint,
    registration_ttl,
)
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc

__all__ = ["EndpointRegistration"]

logger = logging.getLogger(__name__)


class EndpointRegistration:
    """Keeps `address` ("HOST:PORT[/WEIGHT]", an IP clients reach) in xDS cluster `cluster`.

    `token` or `token_file` is the agent token; `credentials` makes the channel TLS. `start()`
    registers (raising grpc.RpcError when the control plane refuses) and starts renewing;
    `stop()` stops renewing and, unless `deregister=False`, removes the endpoint at once.
    """

    def __init__(
        self,
        target: str,
        cluster: str,
        address: str,
        *,
        ttl: float = DEFAULT_REGISTRATION_TTL,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
    ) -> None:
        endpoint = registered_endpoint(parse_endpoint(address), "address")
        self.cluster = check_cluster_name(cluster, "cluster")
        self.ttl = registration_ttl(ttl)
        self.address = address
        self._request = xds_pb2.RegisterEndpointRequest(cluster=self.cluster, endpoint=endpoint)
        self._request.ttl.FromSeconds(self.ttl)
        self._token = AgentToken(token, token_file)
        self._timeout = timeout
        if credentials is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        self._stub = xds_pb2_grpc.XdsAdminStub(self._channel)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> EndpointRegistration:
        """Register now, then renew every ttl/3 until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("the registration is already started")
        self._register()
        self._thread = threading.Thread(
            target=self._renew, name="meshbreaker-xds-registration", daemon=True
        )
        self._thread.start()
        return self

    def _register(self) -> xds_pb2.RegisterEndpointResponse:
        response: xds_pb2.RegisterEndpointResponse = self._stub.RegisterEndpoint(
            self._request, timeout=self._timeout, metadata=self._token.metadata()
        )
        return response

    def _renew(self) -> None:
        failing = False
        while not self._stopped.wait(self.ttl / 3):
            try:
                self._register()
            except grpc.RpcError as error:
                # Two more tries before the registration runs out; only the first is loud.
                log = logger.debug if failing else logger.warning
                log(
                    "renewing %s in xDS cluster %s: %s", self.address, self.cluster, describe(error)
                )
                failing = True
            else:
                if failing:
                    logger.info("%s renewed in xDS cluster %s again", self.address, self.cluster)
                failing = False

    def stop(self, *, deregister: bool = True) -> None:
        """Stop renewing; remove the endpoint now unless `deregister` is False. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        if deregister and self._thread is not None:
            request = xds_pb2.DeregisterEndpointRequest(
                cluster=self.cluster, endpoint=self._request.endpoint
            )
            try:
                self._stub.DeregisterEndpoint(
                    request, timeout=self._timeout, metadata=self._token.metadata()
                )
            except grpc.RpcError as error:  # it leaves EDS anyway once its ttl runs out
                logger.warning(
                    "deregistering %s from xDS cluster %s: %s",
                    self.address,
                    self.cluster,
                    describe(error),
                )
        self._channel.close()

    def __enter__(self) -> EndpointRegistration:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
