"""The control plane's /metrics text: prometheus_client's, summed past the cap, cached."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from meshbreaker.control.exposition import MESH_LABELS, mesh_rows, render_metrics, render_rows
from meshbreaker.control.instances import InstanceView, MeshView
from meshbreaker.control.metrics import ControlPlaneCollector, ExpositionServer
from meshbreaker.metrics.prometheus import breaker_families
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.scrape_support import Scrape

ACCOUNTS = "accounts/bank.v1.AccountService/GetBalance"
DEBIT = "/bank.v1.AccountService/Debit"


def snapshot(
    name: str,
    state: pb.BreakerState.ValueType,
    *,
    failed: int = 0,
    rate: float = 0.0,
    bounds: tuple[float, ...] = (),
) -> pb.BreakerSnapshot:
    message = pb.BreakerSnapshot(
        name=name,
        state=state,
        total=10 + failed,
        successful=10,
        failed=failed,
        failure_rate=rate,
        slow_call_rate=rate / 2,
        window_calls=10 + failed,
        mean_duration=0.004,
        times_opened=1 if state == pb.BREAKER_STATE_OPEN else 0,
        throttle_probability=0.25,
        concurrency_limit=8,
    )
    if state == pb.BREAKER_STATE_OPEN:
        message.transitions.add(
            from_state=pb.BREAKER_STATE_CLOSED, to_state=pb.BREAKER_STATE_OPEN, count=1
        )
    if bounds:
        message.duration_histogram.bounds.extend(bounds)
        message.duration_histogram.counts.extend([1] * (len(bounds) + 1))
        message.duration_histogram.sum = 1.5
    return message


def instance(instance_id: str, service: str, *snapshots: pb.BreakerSnapshot) -> InstanceView:
    return InstanceView(
        instance_id, service, 1.0, 3, False, {item.name: item for item in snapshots}
    )


MESH = (
    instance(
        'gw-1 "east"\\',  # a label value that needs escaping
        "gateway",
        snapshot(ACCOUNTS, pb.BREAKER_STATE_OPEN, failed=5, rate=0.5, bounds=(0.01, 0.1)),
        snapshot(DEBIT, pb.BREAKER_STATE_CLOSED, bounds=(0.01, 0.1)),
    ),
    instance(
        "gw-2",
        "gateway",
        snapshot(ACCOUNTS, pb.BREAKER_STATE_CLOSED, failed=1, rate=0.1, bounds=(0.01, 0.1)),
        snapshot(DEBIT, pb.BREAKER_STATE_CLOSED, bounds=(0.5,)),  # other bounds: no sum
    ),
    instance("tx-1", "transaction", snapshot(DEBIT, pb.BREAKER_STATE_HALF_OPEN)),
)


class _Families:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def prometheus_text(metrics: list[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metrics))
    return generate_latest(registry).decode()


def same_text(ours: str, theirs: str) -> None:
    """The same families in the same order, and the same samples (labels in any order)."""
    headers = [line for line in ours.splitlines() if line.startswith("#")]
    assert headers == [line for line in theirs.splitlines() if line.startswith("#")]

    def parsed(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return sorted(
            (sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        )

    assert parsed(ours) == parsed(theirs)
    # Every value is written as prometheus_client writes it.
    assert sorted(line.rsplit(" ", 1)[1] for line in ours.splitlines() if line[0] != "#") == (
        sorted(line.rsplit(" ", 1)[1] for line in theirs.splitlines() if line[0] != "#")
    )


@pytest.mark.parametrize("cap", [100, 1], ids=["per instance", "summed"])
def test_the_text_is_the_one_prometheus_client_writes(cap: int) -> None:
    rows = mesh_rows(MESH, cap)
    expected = prometheus_text(breaker_families(MESH_LABELS, rows, durations=True))
    same_text(render_rows(rows, durations=True), expected)
    without = prometheus_text(breaker_families(MESH_LABELS, rows, durations=False))
    same_text(render_rows(rows, durations=False), without)
    gauges = breaker_families(MESH_LABELS, rows[:1], durations=False)[:2]
    same_text(render_metrics(gauges), prometheus_text(gauges))


def test_counts_of_a_million_and_more_are_written_as_prometheus_client_writes_them() -> None:
    """Past 1e6 a value is in Go's float format (1.2345688e+07), as prometheus_client has it."""
    big = snapshot(ACCOUNTS, pb.BREAKER_STATE_OPEN, failed=12_345_678, rate=0.5)
    rows = mesh_rows((instance("gw-9", "gateway", big),), 100)
    expected = prometheus_text(breaker_families(MESH_LABELS, rows, durations=False))
    assert "1.2345688e+07" in expected
    same_text(render_rows(rows, durations=False), expected)


def samples(text: str, name: str, **match: str) -> dict[tuple[str, ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
                key = tuple(sample.labels[label] for label in ("service", "instance", "breaker"))
                extra = tuple(v for k, v in sample.labels.items() if k not in MESH_LABELS)
                found[key + extra] = sample.value
    return found


def test_past_the_cap_series_are_summed_per_caller_service() -> None:
    per_instance = render_rows(mesh_rows(MESH, 5), durations=True)
    assert {key[1] for key in samples(per_instance, "meshbreaker_window_calls")} == {
        'gw-1 "east"\\',
        "gw-2",
        "tx-1",
    }
    text = render_rows(mesh_rows(MESH, 4), durations=True)  # 5 breakers reported, cap 4
    assert samples(text, "meshbreaker_state", breaker=ACCOUNTS) == {
        ("gateway", "*", ACCOUNTS, "CLOSED"): 1.0,
        ("gateway", "*", ACCOUNTS, "OPEN"): 1.0,
        ("gateway", "*", ACCOUNTS, "HALF_OPEN"): 0.0,
        ("gateway", "*", ACCOUNTS, "FORCED_OPEN"): 0.0,
        ("gateway", "*", ACCOUNTS, "FORCED_CLOSED"): 0.0,
    }
    assert samples(text, "meshbreaker_calls_total", breaker=ACCOUNTS, outcome="failed") == {
        ("gateway", "*", ACCOUNTS, "failed"): 6.0
    }
    assert samples(text, "meshbreaker_failure_rate", breaker=ACCOUNTS) == {
        ("gateway", "*", ACCOUNTS): pytest.approx(0.3)  # the mean over instances
    }
    assert samples(text, "meshbreaker_slow_calls_total", breaker=ACCOUNTS) == {
        ("gateway", "*", ACCOUNTS): 0.0  # no instance saw a slow call
    }
    assert samples(text, "meshbreaker_slow_call_rate", breaker=ACCOUNTS) == {
        ("gateway", "*", ACCOUNTS): pytest.approx(0.15)
    }
    assert samples(text, "meshbreaker_concurrency_limit", service="gateway", breaker=DEBIT) == {
        ("gateway", "*", DEBIT): 16.0
    }
    assert samples(text, "meshbreaker_state_transitions_total") == {
        ("gateway", "*", ACCOUNTS, "CLOSED", "OPEN"): 1.0
    }
    # Histograms are summed where the instances share bounds, left out where they do not.
    buckets = samples(text, "meshbreaker_call_duration_seconds_count")
    assert buckets == {("gateway", "*", ACCOUNTS): 6.0}
    assert samples(text, "meshbreaker_state", service="transaction", state="HALF_OPEN") == {
        ("transaction", "*", DEBIT, "HALF_OPEN"): 1.0
    }


@pytest.mark.parametrize("cap", [100, 1], ids=["per instance", "summed"])
def test_a_breaker_in_a_state_this_version_does_not_know_is_left_out(cap: int) -> None:
    # Another replica's record, written by a newer version, may carry a state unknown here.
    newer = instance("gw-3", "gateway", snapshot(ACCOUNTS, 99, failed=5))  # type: ignore[arg-type]
    text = render_rows(mesh_rows((*MESH, newer), cap), durations=True)
    assert text == render_rows(mesh_rows(MESH, cap), durations=True)


class _Servicer:
    def __init__(self, view: MeshView) -> None:
        self.view = view

    def mesh_view(self) -> MeshView:
        return self.view


def test_the_breaker_series_are_written_again_only_when_the_view_changed() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        servicer = _Servicer(MeshView(3, 0, 0, 0, MESH, version=7))
        collector = ControlPlaneCollector(servicer, loop)  # type: ignore[arg-type]
        first = collector.render()
        assert 'instance="gw-2"' in first and "meshbreaker_control_plane_revision 3.0" in first
        # Same version: the breaker series are the cached ones, the health gauges fresh.
        servicer.view = MeshView(4, 0, 0, 0, MESH[:1], version=7)
        second = collector.render()
        assert 'instance="gw-2"' in second and "meshbreaker_control_plane_revision 4.0" in second
        servicer.view = MeshView(4, 0, 0, 0, MESH[:1], version=8)
        assert 'instance="gw-2"' not in collector.render()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_scope_local_leaves_out_the_instances_of_other_replicas() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    elsewhere = dataclasses.replace(MESH[2], replica="replica-b")
    servicer = _Servicer(MeshView(3, 0, 0, 0, (*MESH[:2], elsewhere), version=1))
    collector = ControlPlaneCollector(servicer, loop)  # type: ignore[arg-type]
    server = ExpositionServer(lambda local: collector.render(local=local), 0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        mesh = Scrape(url)
        local = Scrape(url + "?scope=local")
        assert mesh.by("meshbreaker_control_plane_instances", "service") == {
            "gateway": 2.0,
            "transaction": 1.0,
        }
        assert local.by("meshbreaker_control_plane_instances", "service") == {"gateway": 2.0}
        assert ("tx-1",) in mesh.label_sets("meshbreaker_state", "instance")
        assert ("tx-1",) not in local.label_sets("meshbreaker_state", "instance")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "?scope=everything", timeout=5)
        assert refused.value.code == 404
        # The refusal is the whole answer: no page follows it on the connection.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"GET /metrics?scope=everything HTTP/1.0\r\n\r\n")
            received = b""
            while chunk := raw.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.0 404 ") and received.count(b"HTTP/1.") == 1
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
