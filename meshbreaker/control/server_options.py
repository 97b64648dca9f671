"""What a control-plane server is told: `ServerOptions`, checked when made, and its TLS material.

`read_pem` and `check_tls` read certificates and keys (paths or PEM bytes) and refuse what gRPC
would refuse, naming which part and why.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshbreaker.control.limits import Limits
from meshbreaker.errors import ConfigError

__all__ = ["PemSource", "ServerOptions", "check_tls", "is_loopback", "read_pem"]

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
    serves the policies and the cluster registry over xDS (ADS) on the same port (the `xds` extra);
    with tokens on, an ADS stream needs the agent token or a client certificate verified by mutual
    TLS, unless `xds_allow_anonymous` lets streams without a token in (gRPC's xDS client sends
    none): what they read, endpoints and policies, is then open to anyone who reaches the port.
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
    xds_allow_anonymous: bool = False
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
        if self.xds_allow_anonymous and not self.xds:
            raise ConfigError("xds_allow_anonymous", "needs xds (--xds): it opens the ADS stream")
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


def read_pem(source: PemSource | None, name: str) -> bytes | None:
    """The PEM bytes of `source` (a path or the bytes themselves); None for None."""
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


def check_tls(cert: bytes | None, key: bytes | None, client_ca: bytes | None) -> None:
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
