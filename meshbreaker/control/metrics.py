"""The control plane's /metrics: every live instance's breakers as last reported, and its health.

Needs the `prometheus` extra; the server imports this module only when a metrics port is set.
Scrapes run on prometheus_client's HTTP threads while the server's state lives on its asyncio
loop, so a scrape asks the loop for a `MeshView` (one short, await-free call there) and builds
the families from that copy on its own thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from meshbreaker._names import split_breaker_name
from meshbreaker.control.convert import (
    histogram_from_proto,
    state_from_proto,
    transitions_from_proto,
)
from meshbreaker.metrics.prometheus import (
    BreakerRow,
    MetricsServer,
    breaker_families,
    start_metrics_server,
)
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

# The caller service and instance come first; "service" is the caller here (as everywhere in the
# control plane), so the called gRPC service parsed from the breaker name is "grpc_service".
MESH_LABELS = ("service", "instance", "breaker", "target", "grpc_service", "method")


class ControlPlaneCollector:
    """A prometheus_client collector over a running ControlPlaneServicer."""

    def __init__(
        self,
        servicer: ControlPlaneServicer,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = 5.0,
        xds_clients: XdsStatuses | None = None,
    ) -> None:
        self._servicer = servicer
        self._loop = loop
        self._timeout = timeout
        self._xds_clients = xds_clients

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
        """The meshbreaker_* families per instance, then the control plane's own gauges."""
        view, xds_clients = self._read()
        rows = []
        for instance in view.instances:
            for name, snapshot in sorted(instance.breakers.items()):
                state = state_from_proto(snapshot.state)
                if state is None:  # refused when reported; kept out all the same
                    continue
                rows.append(
                    BreakerRow(
                        (instance.service, instance.instance_id, name, *split_breaker_name(name)),
                        state,
                        snapshot,
                        transitions_from_proto(snapshot.transitions),
                        histogram_from_proto(snapshot),
                    )
                )
        durations = any(row.histogram is not None for row in rows)
        yield from breaker_families(MESH_LABELS, rows, durations=durations)
        yield from _health_families(view)
        if xds_clients is not None:
            yield from _xds_families(xds_clients)


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
    ]


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


def start_control_plane_metrics(
    servicer: ControlPlaneServicer,
    loop: asyncio.AbstractEventLoop,
    port: int,
    host: str,
    *,
    xds_clients: XdsStatuses | None = None,
) -> MetricsServer:
    """Serve the control plane's metrics on http://host:port/metrics (own registry)."""
    registry = CollectorRegistry()
    registry.register(ControlPlaneCollector(servicer, loop, xds_clients=xds_clients))
    return start_metrics_server(port, host, registry)
