"""The control plane's /metrics: every live instance's breakers as last reported, and its health.

Needs the `prometheus` extra; the server imports this module only when a metrics port is set.
Scrapes run on the metrics server's HTTP threads while the server's state lives on its asyncio
loop, so a scrape asks the loop for a `MeshView` (one short, await-free call there) and writes
the text from that copy on its own thread (control/exposition). The breaker series are kept
from one scrape to the next while no report changed them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import http.server
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meshbreaker.control.exposition import MESH_LABELS, mesh_rows, render_metrics, render_rows
from meshbreaker.metrics.prometheus import breaker_families
from meshbreaker.v1 import xds_pb2

if TYPE_CHECKING:
    from meshbreaker.control.instances import MeshView
    from meshbreaker.control.servicer import ControlPlaneServicer


@dataclass(frozen=True)
class XdsView:
    """The xDS clients' status and the NACKs received, read on the server's loop."""

    clients: list[xds_pb2.XdsClientStatus]
    nacks: int


# Called on the server's loop; None while the server serves no xDS.
XdsStatuses = Callable[[], XdsView | None]

# Reported breakers up to which /metrics has series per instance (then per service): the default.
METRICS_INSTANCE_BREAKERS = 2_000


class ControlPlaneCollector:
    """A prometheus_client collector over a running ControlPlaneServicer."""

    def __init__(
        self,
        servicer: ControlPlaneServicer,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = 5.0,
        xds_clients: XdsStatuses | None = None,
        max_instance_breakers: int = METRICS_INSTANCE_BREAKERS,
    ) -> None:
        self._servicer = servicer
        self._loop = loop
        self._timeout = timeout
        self._xds_clients = xds_clients
        self._max_instance_breakers = max_instance_breakers
        self._lock = threading.Lock()
        # Whole mesh (False) or this replica's instances (True) -> (view version, breaker text).
        self._cached: dict[bool, tuple[int, str]] = {}

    def _read(self) -> tuple[MeshView, XdsView | None]:
        xds = self._xds_clients

        def read_now() -> tuple[MeshView, XdsView | None]:
            return self._servicer.mesh_view(), (None if xds is None else xds())

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return read_now()  # called on the loop itself: waiting would deadlock

        async def read() -> tuple[MeshView, XdsView | None]:
            return read_now()

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(self._timeout)

    def collect(self) -> Iterator[Metric]:
        """The meshbreaker_* families, then the control plane's own gauges (prometheus_client)."""
        view, xds_clients = self._read()
        rows = mesh_rows(view.instances, self._max_instance_breakers)
        durations = any(row.histogram is not None for row in rows)
        yield from breaker_families(MESH_LABELS, rows, durations=durations)
        yield from _health_families(view)
        if xds_clients is not None:
            yield from _xds_families(xds_clients)

    def render(self, *, local: bool = False) -> str:
        """What collect() yields, as exposition text; the breaker series cached per view version.

        With `local`, only the instances reporting to this replica: the scope for a Prometheus
        that scrapes every replica (each would otherwise export the whole mesh again).
        """
        view, xds_clients = self._read()
        if local:
            mine = tuple(instance for instance in view.instances if not instance.replica)
            view = dataclasses.replace(view, instances=mine)
        with self._lock:  # one scrape renders; a concurrent one waits and takes its text
            cached = self._cached.get(local)
            if cached is None or cached[0] != view.version:
                rows = mesh_rows(view.instances, self._max_instance_breakers)
                durations = any(row.histogram is not None for row in rows)
                cached = (view.version, render_rows(rows, durations=durations))
                self._cached[local] = cached
        own = _health_families(view)
        if xds_clients is not None:
            own += _xds_families(xds_clients)
        return cached[1] + render_metrics(own)


def _health_families(view: MeshView) -> list[Metric]:
    prefix = "meshbreaker_control_plane"
    watch_streams = GaugeMetricFamily(
        f"{prefix}_watch_streams", "Open WatchConfig streams (connected agents)"
    )
    watch_streams.add_metric([], view.watch_streams)
    revision = GaugeMetricFamily(f"{prefix}_revision", "The policy store revision")
    revision.add_metric([], view.revision)
    replicas = GaugeMetricFamily(
        f"{prefix}_replicas", "Control-plane replicas alive on the store (this one included)"
    )
    replicas.add_metric([], view.replicas)
    reports = CounterMetricFamily(f"{prefix}_reports", "ReportState calls accepted")
    reports.add_metric([], view.reports_received)
    nacks = CounterMetricFamily(
        f"{prefix}_nacks", "Config snapshots rejected by an instance (each NACK counted once)"
    )
    nacks.add_metric([], view.nacks_received)
    instances = GaugeMetricFamily(
        f"{prefix}_instances", "Live (reporting) instances per caller service", labels=["service"]
    )
    nacking = GaugeMetricFamily(
        f"{prefix}_instances_nacking",
        "Live instances whose latest config snapshot was rejected, per caller service",
        labels=["service"],
    )
    report_age = GaugeMetricFamily(
        f"{prefix}_report_age_seconds",
        "Seconds since the instance last reported",
        labels=["service", "instance"],
    )
    applied = GaugeMetricFamily(
        f"{prefix}_applied_revision",
        "The store revision of the policies the instance has applied (0 = none)",
        labels=["service", "instance"],
    )
    per_service: dict[str, list[int]] = {}
    for instance in view.instances:
        counts = per_service.setdefault(instance.service, [0, 0])
        counts[0] += 1
        counts[1] += instance.nacking
        report_age.add_metric([instance.service, instance.instance_id], instance.report_age)
        applied.add_metric([instance.service, instance.instance_id], instance.applied_revision)
    for service, (live, nacks_now) in sorted(per_service.items()):
        instances.add_metric([service], live)
        nacking.add_metric([service], nacks_now)
    return [
        watch_streams,
        revision,
        replicas,
        reports,
        nacks,
        instances,
        nacking,
        report_age,
        applied,
        *_fleet_families(view),
    ]


def _fleet_families(view: MeshView) -> list[Metric]:
    decisions = CounterMetricFamily(
        "meshbreaker_fleet_decisions",
        "Fleet decisions this control plane took: opened (a quorum), reopened (a probe failed),"
        " reassigned (no probe came), closed (the probes passed)",
        labels=["service", "method", "action"],
    )
    for (service, method, action), count in sorted(view.fleet_decisions.items()):
        decisions.add_metric([service, method, action], count)
    active = GaugeMetricFamily(
        "meshbreaker_fleet_decisions_active",
        "Fleet decisions in force (the store's, so every replica shows them): 1 per caller"
        " service and method held open fleet-wide",
        labels=["service", "method"],
    )
    period = GaugeMetricFamily(
        "meshbreaker_fleet_decision_open_period",
        "The open period a fleet decision in force is in: 1 at first, +1 per failed probe",
        labels=["service", "method"],
    )
    for (service, method), number in sorted(view.fleet_decisions_active.items()):
        active.add_metric([service, method], 1)
        period.add_metric([service, method], number)
    leading = GaugeMetricFamily(
        "meshbreaker_fleet_decider_leading",
        "1 while this replica is the one that takes fleet decisions (exactly one should be)",
    )
    leading.add_metric([], 1 if view.decider_leading else 0)
    return [decisions, active, period, leading]


def _xds_families(view: XdsView) -> list[Metric]:
    prefix = "meshbreaker_control_plane_xds"
    clients = GaugeMetricFamily(f"{prefix}_clients", "Connected xDS (ADS) clients")
    clients.add_metric([], len(view.clients))
    nacks = CounterMetricFamily(f"{prefix}_nacks", "Resources NACKed by xDS clients")
    nacks.add_metric([], view.nacks)
    labels = ["node_id", "caller", "type"]
    nacking = GaugeMetricFamily(
        f"{prefix}_nacking",
        "1 while the client's latest answer for the type is a NACK",
        labels=labels,
    )
    policy = GaugeMetricFamily(
        f"{prefix}_acked_policy_revision",
        "The policy store revision of the resources the client ACKed last (0 = none)",
        labels=labels,
    )
    registry = GaugeMetricFamily(
        f"{prefix}_acked_cluster_revision",
        "The cluster registry revision of the resources the client ACKed last (0 = none)",
        labels=labels,
    )
    for client in view.clients:
        for resource in client.resources:
            key = [client.node_id, client.node_cluster, resource.type]
            nacking.add_metric(key, 1 if resource.nacked_version else 0)
            policy_revision, _, cluster_revision = resource.acked_version.partition(".")
            policy.add_metric(key, int(policy_revision) if policy_revision.isdigit() else 0)
            registry.add_metric(key, int(cluster_revision) if cluster_revision.isdigit() else 0)
    return [clients, nacks, nacking, policy, registry]


class ExpositionServer:
    """GET /metrics over HTTP from `render`, gzipped when the scraper accepts it (own threads).

    /metrics is the whole mesh; /metrics?scope=local the instances reporting to this replica.
    """

    def __init__(self, render: Callable[[bool], str], port: int, host: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                scope = urllib.parse.parse_qs(query).get("scope", ["mesh"])[-1]
                if path not in ("/metrics", "/") or scope not in ("mesh", "local"):
                    self.send_error(404, "the control plane serves /metrics[?scope=local]")
                    return
                body = render(scope == "local").encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body = gzip.compress(body, compresslevel=1)
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Scrapes are not logged."""

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meshbreaker-metrics", daemon=True
        )
        self._thread.start()
        self.host = host
        self.port: int = self._server.server_address[1]

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (takes up to 0.5 s: the server's poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def start_control_plane_metrics(
    servicer: ControlPlaneServicer,
    loop: asyncio.AbstractEventLoop,
    port: int,
    host: str,
    *,
    xds_clients: XdsStatuses | None = None,
    max_instance_breakers: int = METRICS_INSTANCE_BREAKERS,
) -> ExpositionServer:
    """Serve the control plane's metrics on http://host:port/metrics."""
    collector = ControlPlaneCollector(
        servicer, loop, xds_clients=xds_clients, max_instance_breakers=max_instance_breakers
    )
    return ExpositionServer(lambda local: collector.render(local=local), port, host)
