"""The control-plane server: one options object, `ControlPlaneServer`, `serve` and `run`.

`serve(...)` starts a server in the running event loop and returns it; `run(...)` blocks (the CLI).
The RPCs themselves live in `servicer`; this module binds ports, TLS, health, reflection, metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import logging
import math
import os
import signal
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
from meshbreaker.control.servicer import ControlPlaneServicer
from meshbreaker.control.store import PolicyStore, SqliteStore
from meshbreaker.control.store.url import open_store
from meshbreaker.errors import ConfigError
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
    "run",
    "serve",
]

logger = logging.getLogger(__name__)

PemSource = str | os.PathLike[str] | bytes


def _check_port(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(name, "must be an integer in 0..65535")


@dataclass(frozen=True)
class ServerOptions:
    """How a control-plane server listens, authenticates and bounds itself; checked when made.

    TLS material is a file path or PEM bytes; `tls_client_ca` turns on mutual TLS. Port 0 picks a
    free port. `metrics_port` serves Prometheus metrics on http://metrics_host:metrics_port/metrics
    (`metrics_host` defaults to `host`; needs the `prometheus` extra): per instance while the
    mesh reports at most `metrics_instance_breakers` breakers, summed per caller service (with
    instance="*") past that, so a scrape stays cheap at any size. A connection older than
    `max_connection_age` seconds is asked to go (GOAWAY) and closed `max_connection_age_grace`
    later, so agents of a fleet spread over the replicas again after one comes back. `xds` also
    serves the policies and the cluster registry over xDS (ADS) on the same port (the `xds` extra).
    `console_port` serves the web console on http(s)://console_host:console_port/ (`console_host`
    defaults to `host`; HTTPS with the server's own certificate when it has TLS).

    `agent_token_file` holds agent tokens limited to caller services (see auth.load_token_file);
    `tls_client_names_service` (with mutual TLS) makes an agent's client certificate name its
    service in a SAN (DNS name, or a URI ending in /<service>). A non-loopback `host` needs
    tokens and TLS unless `insecure` is set. The server pings every connection after
    `keepalive_time` seconds without traffic and drops it when no answer comes within
    `keepalive_timeout`, so a frozen client's streams are reclaimed. The fleet decider (expiring
    overrides, quorum opens, probe periods) looks at the mesh every `decider_tick` seconds.

    Replicas on a shared store (etcd) show each other's instances: each shares what changed of
    its instances every `replica_publish_interval` seconds (sooner for transitions, NACKs and
    instances come or gone), on a store lease of `replica_lease_ttl` seconds (whole seconds, at
    least 2) that expires when the replica dies, taking its instances out of every view.
    """

    host: str = "127.0.0.1"
    port: int = 7070
    admin_token: str | None = None
    agent_token: str | None = None
    tls_cert: PemSource | None = None
    tls_key: PemSource | None = None
    tls_client_ca: PemSource | None = None
    report_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    limits: Limits = field(default_factory=Limits)
    metrics_port: int | None = None
    metrics_host: str | None = None
    max_connection_age: float = 300.0
    max_connection_age_grace: float = 10.0
    xds: bool = False
    agent_token_file: str | os.PathLike[str] | None = None
    tls_client_names_service: bool = False
    insecure: bool = False
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    decider_tick: float = 1.0
    replica_lease_ttl: float = 10.0
    replica_publish_interval: float = 5.0
    metrics_instance_breakers: int = 2_000
    console_port: int | None = None
    console_host: str | None = None

    def __post_init__(self) -> None:
        report_ttl = self.report_ttl
        if isinstance(report_ttl, bool) or not isinstance(report_ttl, (int, float)):
            raise ConfigError("report_ttl", "must be a number of seconds")
        if not math.isfinite(report_ttl) or report_ttl <= 0:
            raise ConfigError("report_ttl", "must be > 0")
        _check_port("port", self.port)
        for name in (
            "max_connection_age",
            "max_connection_age_grace",
            "keepalive_time",
            "keepalive_timeout",
            "decider_tick",
            "replica_lease_ttl",
            "replica_publish_interval",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(name, "must be a number of seconds")
            if not 0 < value < math.inf:
                raise ConfigError(name, "must be > 0 and finite")
        limit = self.metrics_instance_breakers
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError("metrics_instance_breakers", "must be an integer >= 0")
        if self.console_port is not None:
            _check_port("console_port", self.console_port)
        if self.metrics_port is not None:
            _check_port("metrics_port", self.metrics_port)
            if importlib.util.find_spec("prometheus_client") is None:
                raise ConfigError(
                    "metrics_port", "needs prometheus_client: install meshbreaker[prometheus]"
                )
        if self.xds and importlib.util.find_spec("envoy") is None:
            raise ConfigError("xds", "needs xds-protos: install meshbreaker[xds]")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_key", "tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca", "needs tls_cert and tls_key (mutual TLS is TLS)")
        if self.tls_client_names_service and self.tls_client_ca is None:
            raise ConfigError("tls_client_names_service", "needs mutual TLS (tls_client_ca)")
        console_host = self.console_host or self.host
        if (
            self.console_port is not None
            and not self.insecure
            and self.insecurities
            and not is_loopback(console_host)
        ):
            raise ConfigError(
                "console_host",
                f"{console_host!r} is reachable from other machines, and this console would "
                f"run {' and '.join(self.insecurities)}: give --admin-token and "
                "--tls-cert/--tls-key, or --insecure to run so anyway",
            )
        if not self.insecure and self.insecurities and not is_loopback(self.host):
            raise ConfigError(
                "host",
                f"{self.host!r} is reachable from other machines, and this control plane would "
                f"run {' and '.join(self.insecurities)}: give --admin-token (and agent tokens) "
                "and --tls-cert/--tls-key, or --insecure to run so anyway",
            )

    @property
    def insecurities(self) -> list[str]:
        """What this server would run without: ["without tokens", "without TLS"] or less."""
        missing = []
        if self.admin_token is None:
            missing.append("without tokens")
        if self.tls_cert is None:
            missing.append("without TLS")
        return missing


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or a wildcard: assume the network can reach it


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
    """The generated handlers, but WatchConfig's snapshots serialized through their cache."""
    capture = _HandlerCapture()
    pb_grpc.add_ControlPlaneServicer_to_server(servicer, capture)  # type: ignore[arg-type]
    handlers = capture.handlers
    handlers["WatchConfig"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchConfig,
        request_deserializer=pb.WatchConfigRequest.FromString,
        response_serializer=servicer.config_streams.serialize,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(CONTROL_PLANE_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(CONTROL_PLANE_SERVICE, handlers)


def _read_pem(source: PemSource | None, name: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as file:
                data = file.read()
        except OSError as error:
            raise ConfigError(
                name, f"cannot read {os.fspath(source)!r}: {error.strerror}"
            ) from None
    if b"-----BEGIN " not in data:
        raise ConfigError(name, "is not PEM data")
    return data


def _check_tls(cert: bytes | None, key: bytes | None, client_ca: bytes | None) -> None:
    """Refuse TLS material gRPC would refuse, naming which part and why (grpc only says that
    it could not bind)."""
    if client_ca is not None:
        try:
            ssl.create_default_context(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise ConfigError("tls_client_ca", "holds no readable PEM certificate") from None
    if cert is None or key is None:
        return
    try:
        ssl.create_default_context(cadata=cert.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        raise ConfigError("tls_cert", "holds no readable PEM certificate") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # ssl loads a chain only from files: the PEM goes to a private temporary directory.
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        try:
            context.load_cert_chain(cert_path, key_path, password=b"")
        except ssl.SSLError as error:
            if "KEY_VALUES_MISMATCH" in str(error):
                raise ConfigError(
                    "tls_key", "does not match tls_cert: give the key the certificate was made for"
                ) from None
            raise ConfigError("tls_key", "is not a readable, unencrypted PEM private key") from None


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
        self._cert = _read_pem(options.tls_cert, "tls_cert")
        self._key = _read_pem(options.tls_key, "tls_key")
        self._client_ca = _read_pem(options.tls_client_ca, "tls_client_ca")
        _check_tls(self._cert, self._key, self._client_ca)
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
