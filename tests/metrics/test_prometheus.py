"""The in-process exporter, scraped over HTTP after scripted calls on a fake clock."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import REGISTRY

from meshbreaker import BreakerConfig, BreakerRegistry, ConfigError, Mode
from meshbreaker.metrics.prometheus import (
    MetricsServer,
    PrometheusExporter,
    start_metrics_server,
)
from meshbreaker.testing import FakeClock
from tests.scrape_support import Scrape

TARGET = "accounts"
METHOD = "/bank.v1.AccountService/GetBalance"
NAME = TARGET + METHOD
SHADOW = "/bank.v1.AuditService/Log"
CONFIG = BreakerConfig(
    consecutive_failures=2,
    minimum_calls=100,
    slow_call_duration=1.0,
    open_duration=10.0,
    open_jitter=0.0,
    half_open_max_calls=1,
    half_open_success_threshold=1,
)
STATES = ("CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "FORCED_CLOSED")


@pytest.fixture
def prometheus() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def server(prometheus: CollectorRegistry) -> Iterator[MetricsServer]:
    with start_metrics_server(0, registry=prometheus) as metrics:
        yield metrics


def script(registry: BreakerRegistry, clock: FakeClock) -> None:
    """Open, reject, probe back to CLOSED, then fill the window; durations given explicitly."""
    cb = registry.get(NAME)
    cb.acquire().failure(0.02)
    cb.acquire().failure(0.2)  # second in a row: OPEN
    assert [cb.try_acquire() for _ in range(3)] == [None, None, None]
    clock.advance(10.0)
    cb.acquire().success(0.004)  # the probe: HALF_OPEN -> CLOSED
    cb.acquire().success(0.003)
    cb.acquire().success(0.0004)
    cb.acquire().success(1.5)  # slow
    cb.acquire().ignore()
    cb.acquire().failure(0.05)  # bounds are inclusive: counted in le="0.05"


def test_every_family_after_a_scripted_sequence(
    clock: FakeClock,
    prometheus: CollectorRegistry,
    server: MetricsServer,
) -> None:
    registry = BreakerRegistry(default=CONFIG, clock=clock)
    registry.set_policy(SHADOW, CONFIG.replace(mode=Mode.SHADOW))
    PrometheusExporter(registry, prometheus_registry=prometheus)
    script(registry, clock)
    shadow = registry.get(SHADOW)
    shadow.acquire().failure(0.01)
    shadow.acquire().failure(0.01)  # would be OPEN
    shadow.acquire().success(0.01)  # admitted only in the shadow
    registry.get("payments")

    page = Scrape(server.url)
    labels = {"breaker": NAME, "target": TARGET, "service": "bank.v1.AccountService"}
    labels["method"] = METHOD
    assert page.label_sets("meshbreaker_state", "breaker", "target", "service", "method") == {
        (NAME, TARGET, "bank.v1.AccountService", METHOD),
        (SHADOW, "", "bank.v1.AuditService", SHADOW),
        ("payments", "", "", ""),
    }
    assert page.by("meshbreaker_state", "state", **labels) == dict.fromkeys(STATES, 0.0) | {
        "CLOSED": 1.0
    }
    assert page.by("meshbreaker_calls_total", "outcome", **labels) == {
        "successful": 4.0,
        "failed": 3.0,
        "ignored": 1.0,
        "not_permitted": 3.0,
        "shadow_rejected": 0.0,
        "throttled": 0.0,
    }
    assert page.one("meshbreaker_slow_calls_total", **labels) == 1.0
    assert page.by("meshbreaker_call_duration_seconds_bucket", "le", **labels) == {
        "0.0005": 1.0,
        "0.001": 1.0,
        "0.0025": 1.0,
        "0.005": 3.0,
        "0.01": 3.0,
        "0.025": 4.0,
        "0.05": 5.0,
        "0.1": 5.0,
        "0.25": 6.0,
        "0.5": 6.0,
        "1.0": 6.0,
        "2.5": 7.0,
        "5.0": 7.0,
        "10.0": 7.0,
        "+Inf": 7.0,
    }
    assert page.one("meshbreaker_call_duration_seconds_count", **labels) == 7.0
    assert page.one("meshbreaker_call_duration_seconds_sum", **labels) == pytest.approx(1.7774)
    # The window holds the four calls since the probe closed the breaker (ignored ones excluded).
    assert page.one("meshbreaker_failure_rate", **labels) == 0.25
    assert page.one("meshbreaker_slow_call_rate", **labels) == 0.25
    assert page.one("meshbreaker_window_calls", **labels) == 4.0
    assert page.one("meshbreaker_mean_duration_seconds", **labels) == pytest.approx(1.5534 / 4)
    assert page.by("meshbreaker_state_transitions_total", ("from", "to"), **labels) == {
        ("CLOSED", "OPEN"): 1.0,
        ("OPEN", "HALF_OPEN"): 1.0,
        ("HALF_OPEN", "CLOSED"): 1.0,
    }
    assert page.one("meshbreaker_times_opened_total", **labels) == 1.0

    # Shadow mode: reports the state it would be in, counts what it would have rejected.
    assert page.one("meshbreaker_state", breaker=SHADOW, state="OPEN") == 1.0
    assert page.by("meshbreaker_calls_total", "outcome", breaker=SHADOW) == {
        "successful": 1.0,
        "failed": 2.0,
        "ignored": 0.0,
        "not_permitted": 0.0,
        "shadow_rejected": 1.0,
        "throttled": 0.0,
    }
    assert page.by("meshbreaker_state_transitions_total", ("from", "to"), breaker=SHADOW) == {
        ("CLOSED", "OPEN"): 1.0
    }
    # A breaker that has done nothing yet: zeros, an empty histogram, no transitions.
    assert page.one("meshbreaker_call_duration_seconds_count", breaker="payments") == 0.0
    assert page.by("meshbreaker_state_transitions_total", "to", breaker="payments") == {}


def test_breakers_created_after_attaching_are_exported_and_removed_ones_disappear(
    clock: FakeClock,
    prometheus: CollectorRegistry,
    server: MetricsServer,
) -> None:
    registry = BreakerRegistry(default=CONFIG, clock=clock)
    PrometheusExporter(registry, prometheus_registry=prometheus)
    page = Scrape(server.url)
    assert page.label_sets("meshbreaker_state", "breaker") == set()
    assert "meshbreaker_call_duration_seconds" in page.families  # declared, no samples yet

    registry.get(METHOD).acquire().success(0.3)
    page = Scrape(server.url)
    assert page.label_sets("meshbreaker_state", "breaker") == {(METHOD,)}
    assert page.one("meshbreaker_calls_total", breaker=METHOD, outcome="successful") == 1.0
    assert page.one("meshbreaker_call_duration_seconds_bucket", breaker=METHOD, le="0.25") == 0.0
    assert page.one("meshbreaker_call_duration_seconds_bucket", breaker=METHOD, le="0.5") == 1.0

    registry.remove(METHOD)
    page = Scrape(server.url)
    for family in page.families.values():
        assert family.samples == [], family.name


def test_durations_off_exports_no_histogram_and_starts_none(
    clock: FakeClock,
    prometheus: CollectorRegistry,
    server: MetricsServer,
) -> None:
    registry = BreakerRegistry(default=CONFIG, clock=clock)
    PrometheusExporter(registry, prometheus_registry=prometheus, durations=False)
    registry.get(METHOD).acquire().success(0.3)
    page = Scrape(server.url)
    assert "meshbreaker_call_duration_seconds" not in page.families
    assert "meshbreaker_call_duration_seconds_bucket" not in page.text
    assert registry.duration_buckets is None
    assert registry.get(METHOD).duration_histogram() is None
    assert page.one("meshbreaker_calls_total", breaker=METHOD, outcome="successful") == 1.0


def test_durations_off_leaves_a_histogram_kept_for_other_readers_alone(
    clock: FakeClock,
    prometheus: CollectorRegistry,
    server: MetricsServer,
) -> None:
    registry = BreakerRegistry(default=CONFIG, clock=clock)
    registry.track_durations((0.1, 1.0))  # e.g. for the mesh agent's reports
    PrometheusExporter(registry, prometheus_registry=prometheus, durations=False)
    registry.get(METHOD).acquire().success(0.3)
    assert "meshbreaker_call_duration_seconds" not in Scrape(server.url).families
    histogram = registry.get(METHOD).duration_histogram()
    assert histogram is not None and histogram.count == 1


def test_custom_buckets_and_bad_ones(
    clock: FakeClock,
    prometheus: CollectorRegistry,
    server: MetricsServer,
) -> None:
    registry = BreakerRegistry(default=CONFIG, clock=clock)
    with pytest.raises(ConfigError, match="buckets"):
        PrometheusExporter(registry, prometheus_registry=prometheus, buckets=(1.0, 0.5))
    assert registry.duration_buckets is None
    PrometheusExporter(registry, prometheus_registry=prometheus, buckets=(0.1, 1.0))
    registry.get(METHOD).acquire().success(0.3)
    page = Scrape(server.url)
    assert page.by("meshbreaker_call_duration_seconds_bucket", "le", breaker=METHOD) == {
        "0.1": 0.0,
        "1.0": 1.0,
        "+Inf": 1.0,
    }


def test_close_unregisters_and_one_registry_takes_one_exporter(
    clock: FakeClock,
    prometheus: CollectorRegistry,
    server: MetricsServer,
) -> None:
    registry = BreakerRegistry(default=CONFIG, clock=clock)
    registry.get(METHOD)
    exporter = PrometheusExporter(registry, prometheus_registry=prometheus)
    other = BreakerRegistry(clock=clock)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusExporter(other, prometheus_registry=prometheus)
    assert other.duration_buckets is None  # refused before it started anything
    assert Scrape(server.url).label_sets("meshbreaker_state", "breaker") == {(METHOD,)}
    exporter.close()
    exporter.close()
    assert not any(name.startswith("meshbreaker") for name in Scrape(server.url).families)


def test_default_prometheus_registry(clock: FakeClock) -> None:
    registry = BreakerRegistry(default=CONFIG, clock=clock)
    exporter = PrometheusExporter(registry)
    try:
        registry.get(METHOD).acquire().failure(0.01)
        value = REGISTRY.get_sample_value(
            "meshbreaker_calls_total",
            {"breaker": METHOD, "target": "", "service": "bank.v1.AccountService"}
            | {"method": METHOD, "outcome": "failed"},
        )
        assert value == 1.0
    finally:
        exporter.close()
    assert REGISTRY.get_sample_value("meshbreaker_window_calls", {"breaker": METHOD}) is None


def test_metrics_server_binds_port_zero_and_releases_it(prometheus: CollectorRegistry) -> None:
    server = start_metrics_server(0, registry=prometheus)
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200
    server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)


def test_without_the_extra_the_import_error_names_it() -> None:
    blocked = "import sys; sys.modules['prometheus_client'] = None; "
    result = subprocess.run(
        [sys.executable, "-c", blocked + "import meshbreaker.metrics.prometheus"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "ImportError: meshbreaker.metrics.prometheus needs the prometheus_client package: "
        "pip install 'meshbreaker[prometheus]'"
    )
