"""The control-plane server: one options object, `ControlPlaneServer`, `serve` and `run`.

`serve(...)` starts a server in the running event loop and returns it; `run(...)` blocks (the CLI).
The RPCs themselves live in `servicer`, the options in `server_options`; this module binds ports,
TLS, health, reflection, metrics, xDS and the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from meshbreaker.control.auth import (
    CONTROL_PLANE_SERVICE,
    AuthInterceptor,
    TokenAuthenticator,
    load_token_file,
)
from meshbreaker.control.instances import MeshView
from meshbreaker.control.limits import Limits
from meshbreaker.control.policies import encode_snapshot
from meshbreaker.control.server_options import (
    PemSource,
    ServerOptions,
    check_tls,
    is_loopback,
    read_pem,
)
from meshbreaker.control.servicer import ControlPlaneServicer
from meshbreaker.control.store import PolicyStore, SqliteStore
from meshbreaker.control.store.url import open_store
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from meshbreaker.control.console import ConsoleServer
    from meshbreaker.control.metrics import ExpositionServer, XdsView
    from meshbreaker.control.xds.server import XdsServer

__all__ = [
    "ControlPlaneServer",
    "ControlPlaneServicer",
    "Limits",
    "MeshView",
    "PemSource",
    "ServerOptions",
    "is_loopback",
    "run",
    "serve",
]

logger = logging.getLogger(__name__)


class _HandlerCapture:
    """Stands in for a server to capture the generated method handlers of a servicer."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers = dict(handlers)


def _add_servicer(servicer: ControlPlaneServicer, server: grpc.aio.Server) -> None:
    """The generated handlers, but config snapshots sent as the bytes encoded once."""
    capture = _HandlerCapture()
    pb_grpc.add_ControlPlaneServicer_to_server(servicer, capture)  # type: ignore[arg-type]
    handlers = capture.handlers
    handlers["GetConfig"] = grpc.unary_unary_rpc_method_handler(
        servicer.GetConfig,
        request_deserializer=pb.GetConfigRequest.FromString,
        response_serializer=encode_snapshot,
    )
    handlers["WatchConfig"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchConfig,
        request_deserializer=pb.WatchConfigRequest.FromString,
        response_serializer=encode_snapshot,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(CONTROL_PLANE_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(CONTROL_PLANE_SERVICE, handlers)


class ControlPlaneServer:
    """A control-plane server: `await start()`, `.port`, `await stop()`; or `async with`.

    With `metrics_port` set, it also serves Prometheus metrics over HTTP on `metrics_host`
    (default: `host`), port 0 picking one (see `.metrics_port`); needs the `prometheus` extra.
    """

    def __init__(
        self,
        store: PolicyStore,
        options: ServerOptions | None = None,
        *,
        close_store: bool = False,
    ) -> None:
        self.options = options = options or ServerOptions()
        service_tokens = (
            None if options.agent_token_file is None else load_token_file(options.agent_token_file)
        )
        self._authenticator = TokenAuthenticator(
            options.admin_token, options.agent_token, service_tokens
        )
        self._cert = read_pem(options.tls_cert, "tls_cert")
        self._key = read_pem(options.tls_key, "tls_key")
        self._client_ca = read_pem(options.tls_client_ca, "tls_client_ca")
        check_tls(self._cert, self._key, self._client_ca)
        self.store = store
        self.host = options.host
        self.limits = options.limits
        self.metrics_host = options.metrics_host or options.host
        self.console_host = options.console_host or options.host
        self._close_store = close_store
        self._server: grpc.aio.Server | None = None
        self._health: HealthServicer | None = None
        self._servicer: ControlPlaneServicer | None = None
        self._port = 0
        self._metrics: ExpositionServer | None = None
        self._xds: XdsServer | None = None
        self._console: ConsoleServer | None = None

    @property
    def xds(self) -> XdsServer | None:
        """The xDS server (ADS and the cluster registry) when started with `xds`, else None."""
        return self._xds

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def target(self) -> str:
        """ "host:port" to dial."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port, or None when metrics are off."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return None if self._metrics is None else self._metrics.port

    @property
    def console_port(self) -> int | None:
        """The bound console port, or None when the console is off."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return None if self._console is None else self._console.port

    @property
    def console_url(self) -> str | None:
        """The web console's address, or None when the console is off."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return None if self._console is None else self._console.url

    @property
    def servicer(self) -> ControlPlaneServicer:
        """The ControlPlane implementation (its in-memory state, for tests and embedding)."""
        if self._servicer is None:
            raise RuntimeError("the server is not started")
        return self._servicer

    async def start(self) -> None:
        """Bind and start serving; raises OSError if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        limit = self.limits.max_message_bytes
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(self._authenticator)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # Agents may ping idle watch streams; dead peers are found by our own pings.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_time_ms", int(self.options.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.options.keepalive_timeout * 1000)),
                # Recent gRPC times a ping out by this one (default one minute), not the above.
                ("grpc.http2.ping_timeout_ms", int(self.options.keepalive_timeout * 1000)),
                # Without this, gRPC stops pinging after two pings on a connection without data
                # (an idle watch stream), and a frozen client's streams linger for minutes.
                ("grpc.http2.max_pings_without_data", 0),
                # gRPC adds +-10% jitter, so a fleet's connections do not all age out at once.
                ("grpc.max_connection_age_ms", int(self.options.max_connection_age * 1000)),
                (
                    "grpc.max_connection_age_grace_ms",
                    int(self.options.max_connection_age_grace * 1000),
                ),
            ],
        )
        servicer = ControlPlaneServicer(
            self.store,
            authenticator=self._authenticator,
            report_ttl=float(self.options.report_ttl),
            clock=self.options.clock,
            wall_clock=self.options.wall_clock,
            limits=self.limits,
            san_names_service=self.options.tls_client_names_service,
            decider_tick=self.options.decider_tick,
            replica_lease_ttl=self.options.replica_lease_ttl,
            replica_publish_interval=self.options.replica_publish_interval,
        )
        if self.options.metrics_port is not None:
            # Bound before the gRPC port, so failing here leaves no gRPC port to release.
            from meshbreaker.control.metrics import start_control_plane_metrics

            try:
                self._metrics = start_control_plane_metrics(
                    servicer,
                    asyncio.get_running_loop(),
                    self.options.metrics_port,
                    self.metrics_host,
                    xds_clients=self._xds_statuses,
                    max_instance_breakers=self.options.metrics_instance_breakers,
                )
            except OSError as error:
                servicer.close()
                metrics_address = f"{self.metrics_host}:{self.options.metrics_port}"
                raise OSError(
                    f"cannot bind the metrics endpoint to {metrics_address}: {error.strerror}"
                ) from error
        if self.options.console_port is not None:
            try:
                self._console = self._start_console(servicer)
            except OSError as error:
                servicer.close()
                await self._close_metrics()
                console_address = f"{self.console_host}:{self.options.console_port}"
                raise OSError(
                    f"cannot bind the console to {console_address}: {error.strerror}"
                ) from error
        _add_servicer(servicer, server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        services = [CONTROL_PLANE_SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME]
        if self.options.xds:
            from meshbreaker.control.xds.server import start_xds

            self._xds = await start_xds(
                self.store,
                server,
                events=servicer.events,
                authenticator=self._authenticator,
                clock=self.options.clock,
                max_clients=self.limits.max_instances,
                allow_anonymous=self.options.xds_allow_anonymous,
            )
            services += self._xds.service_names
        reflection.enable_server_reflection(services, server)
        address = f"{self.host}:{self.options.port}"
        try:
            if self._cert is not None and self._key is not None:
                credentials = grpc.ssl_server_credentials(
                    [(self._key, self._cert)],
                    root_certificates=self._client_ca,
                    require_client_auth=self._client_ca is not None,
                )
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            # grpc's "Failed to bind" carries no reason; the usual one is EADDRINUSE.
            port = 0
        if port == 0:
            await self._close_console()
            servicer.close()
            await self._close_metrics()
            await self._close_xds()
            raise OSError(f"cannot bind the control plane to {address} (address in use?)")
        await server.start()
        servicer.start_sharing()
        if self.options.insecurities and not is_loopback(self.host):
            logger.warning(
                "control plane on %s runs %s (--insecure): anyone who can reach it can read "
                "and change the mesh's breakers",
                address,
                " and ".join(self.options.insecurities),
            )
        if self.options.xds_allow_anonymous and not is_loopback(self.host):
            logger.warning(
                "xDS on %s takes streams without a token (--xds-allow-anonymous): anyone who can "
                "reach it can read the clusters' endpoints and the policies that shape them",
                address,
            )
        serving = health_pb2.HealthCheckResponse.SERVING
        await health.set("", serving)
        await health.set(CONTROL_PLANE_SERVICE, serving)
        self._server, self._health, self._servicer, self._port = server, health, servicer, port
        logger.info(
            "control plane serving on %s:%d (revision %d)", self.host, port, servicer.revision
        )
        if self._metrics is not None:
            logger.info("control plane metrics on %s", self._metrics.url)
        if self._console is not None:
            logger.info("control plane console on %s", self._console.url)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (open streams are cancelled after `grace` seconds); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._close_console()
        await self._close_metrics()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await server.stop(grace)
        await self._close_xds()
        if self._servicer is not None:
            await self._servicer.drain()
            await asyncio.get_running_loop().run_in_executor(None, self._servicer.close)
        if self._close_store:
            self.store.close()
        logger.info("control plane on port %d stopped", self._port)

    def _xds_statuses(self) -> XdsView | None:
        """The xDS clients' status for /metrics (None without xDS); called on the loop."""
        if self._xds is None:
            return None
        from meshbreaker.control.metrics import XdsView

        return XdsView(self._xds.statuses(), self._xds.nacks)

    def _start_console(self, servicer: ControlPlaneServicer) -> ConsoleServer:
        """The web console, HTTPS with this server's certificate (and client CA) when it has TLS."""
        from meshbreaker.control.console import ConsoleServer, tls_context

        tls = None
        if self._cert is not None and self._key is not None:
            tls = tls_context(self._cert, self._key, self._client_ca)
        console = ConsoleServer(
            servicer,
            self._authenticator,
            self.console_host,
            self.options.console_port or 0,
            tls=tls,
        )
        console.start()
        return console

    async def _close_console(self) -> None:
        console, self._console = self._console, None
        if console is not None:
            await console.stop()

    async def _close_xds(self) -> None:
        xds, self._xds = self._xds, None
        if xds is not None:
            await xds.stop()

    async def _close_metrics(self) -> None:
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            # Its shutdown waits out the HTTP server's poll interval (up to 0.5 s): not on the loop.
            await asyncio.get_running_loop().run_in_executor(None, metrics.close)

    async def wait_for_termination(self) -> None:
        """Return when the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> ControlPlaneServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve(
    port: int = 7070,
    db: str | os.PathLike[str] = "meshbreaker.db",
    *,
    store: PolicyStore | str | None = None,
    **options: Any,
) -> ControlPlaneServer:
    """Start a control plane in the running event loop and return it (stop it with `.stop()`).

    `db` is the SQLite file, used unless a `store` is given: a PolicyStore (the caller closes
    it) or a URL, sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (opened and closed
    here). `options` are ServerOptions fields (host, tokens, TLS, report_ttl, clock, limits,
    metrics_port...). Port 0 picks a free port.
    """
    server_options = ServerOptions(port=port, **options)
    own_store = not isinstance(store, PolicyStore)
    if isinstance(store, PolicyStore):
        the_store = store
    elif store is not None:
        # Opening an etcd store dials it: off the loop.
        the_store = await asyncio.get_running_loop().run_in_executor(None, open_store, store)
    else:
        the_store = SqliteStore(db)
    try:
        server = ControlPlaneServer(the_store, server_options, close_store=own_store)
        await server.start()
    except BaseException:
        if own_store:
            the_store.close()
        raise
    return server


def run(
    port: int = 7070,
    db: str | os.PathLike[str] = "meshbreaker.db",
    *,
    ready: Callable[[ControlPlaneServer], None] | None = None,
    **options: Any,
) -> None:
    """Serve until SIGINT/SIGTERM (blocking); `ready(server)` is called once it listens."""

    async def main() -> None:
        server = await serve(port, db, **options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        try:
            if ready is not None:
                ready(server)
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())
