"""The control plane's /metrics, scraped over HTTP, with real agents reporting to a real server."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.layers import ResolvedPolicies
from meshbreaker.control.metrics import ControlPlaneCollector, ExpositionServer, XdsView
from meshbreaker.control.server import ControlPlaneServer, ServerOptions
from meshbreaker.errors import ConfigError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2
from tests.control.agent_support import AdminStub, ControlPlaneThread, wait_until
from tests.scrape_support import Scrape

ACCOUNTS = "/bank.v1.AccountService/GetBalance"
GATEWAY_BREAKER = "accounts" + ACCOUNTS
AUDIT = "/bank.v1.AuditService/Log"
DEBIT = "/bank.v1.AccountService/Debit"
CONFIG = BreakerConfig(consecutive_failures=2, minimum_calls=100, open_jitter=0.0)
STATES = ("CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "FORCED_CLOSED")


def refuse_policies(resolved: ResolvedPolicies) -> None:
    if resolved.policies:
        raise ConfigError("policies", "this instance refuses every policy")


def test_mesh_metrics_per_instance_and_control_plane_health(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub, clock: FakeClock
) -> None:
    server_clock = FakeClock()
    cp = control_plane_thread(clock=server_clock, report_ttl=10.0, metrics_port=0)
    url = f"http://127.0.0.1:{cp.running.metrics_port}/metrics"

    # Three processes, their calls made before their agents start, so every report says the same.
    gw1, gw2, tx1 = (BreakerRegistry(default=CONFIG, clock=clock) for _ in range(3))
    gw1.track_durations()
    gw2.track_durations((0.001, 0.01))
    accounts = gw1.get(GATEWAY_BREAKER)
    accounts.acquire().failure(0.02)
    accounts.acquire().failure(0.2)  # OPEN
    assert accounts.try_acquire() is None and accounts.try_acquire() is None
    gw1.get(AUDIT).acquire().success(0.003)
    for _ in range(3):
        gw2.get(GATEWAY_BREAKER).acquire().success(0.004)
    tx1.get(DEBIT).acquire().failure(0.5)  # no histogram kept in this process

    options: dict[str, Any] = {"clock": clock, "report_interval": 60.0, "ack_spread": 0.0}
    agents = [
        MeshAgent(cp.target, "gateway", gw1, instance_id="gw-1", **options),
        MeshAgent(cp.target, "gateway", gw2, instance_id="gw-2", **options),
        MeshAgent(
            cp.target, "transaction", tx1, instance_id="tx-1", validate=refuse_policies, **options
        ),
    ]
    try:
        for agent in agents:
            agent.start()
        assert wait_until(lambda: all(agent.connected for agent in agents))
        policy = pb.Policy(
            id="notify",
            selector=pb.Selector(method="/bank.v1.NotificationService/Send"),
            config=pb.BreakerConfig(consecutive_failures=9),
        )
        assert admin_stub(cp.target).PutPolicy(pb.PutPolicyRequest(policies=[policy])).revision == 1
        assert agents[0].wait_for_revision(1, 2.0) and agents[1].wait_for_revision(1, 2.0)
        assert wait_until(lambda: agents[2].last_nack is not None)
        for agent in agents:
            assert agent.report_now()

        # Every report the agents know was accepted, and no other, once none is in flight.
        def reports_match() -> bool:
            sent = sum(agent.reports_sent for agent in agents)
            return Scrape(url).one("meshbreaker_control_plane_reports_total") == sent

        assert wait_until(reports_match)
        page = Scrape(url)

        gw1_accounts = {
            "service": "gateway",
            "instance": "gw-1",
            "breaker": GATEWAY_BREAKER,
            "target": "accounts",
            "grpc_service": "bank.v1.AccountService",
            "method": ACCOUNTS,
        }
        assert page.label_sets("meshbreaker_state", "service", "instance", "breaker") == {
            ("gateway", "gw-1", GATEWAY_BREAKER),
            ("gateway", "gw-1", AUDIT),
            ("gateway", "gw-2", GATEWAY_BREAKER),
            ("transaction", "tx-1", DEBIT),
        }
        assert page.by("meshbreaker_state", "state", **gw1_accounts) == dict.fromkeys(
            STATES, 0.0
        ) | {"OPEN": 1.0}
        assert page.by("meshbreaker_calls_total", "outcome", **gw1_accounts) == {
            "successful": 0.0,
            "failed": 2.0,
            "ignored": 0.0,
            "not_permitted": 2.0,
            "shadow_rejected": 0.0,
            "throttled": 0.0,
        }
        assert page.one("meshbreaker_slow_calls_total", **gw1_accounts) == 0.0
        assert page.one("meshbreaker_failure_rate", **gw1_accounts) == 1.0
        assert page.one("meshbreaker_slow_call_rate", **gw1_accounts) == 0.0
        assert page.by("meshbreaker_state_transitions_total", ("from", "to"), **gw1_accounts) == {
            ("CLOSED", "OPEN"): 1.0
        }
        buckets = page.by("meshbreaker_call_duration_seconds_bucket", "le", **gw1_accounts)
        assert len(buckets) == 15
        assert (buckets["0.01"], buckets["0.025"], buckets["0.1"], buckets["0.25"]) == (0, 1, 1, 2)
        assert buckets["+Inf"] == 2.0
        assert page.one("meshbreaker_call_duration_seconds_sum", **gw1_accounts) == 0.22

        gw2_accounts = {"instance": "gw-2", "breaker": GATEWAY_BREAKER}
        assert page.one("meshbreaker_state", state="CLOSED", **gw2_accounts) == 1.0
        assert page.one("meshbreaker_calls_total", outcome="successful", **gw2_accounts) == 3.0
        assert page.by("meshbreaker_call_duration_seconds_bucket", "le", **gw2_accounts) == {
            "0.001": 0.0,
            "0.01": 3.0,
            "+Inf": 3.0,
        }
        assert page.by("meshbreaker_state_transitions_total", "to", **gw2_accounts) == {}

        assert page.one("meshbreaker_calls_total", instance="tx-1", outcome="failed") == 1.0
        assert page.by("meshbreaker_call_duration_seconds_bucket", "le", instance="tx-1") == {}
        assert page.one("meshbreaker_call_duration_seconds_count", instance="gw-1", breaker=AUDIT)

        # The control plane's own health.
        assert page.one("meshbreaker_control_plane_watch_streams") == 3.0
        assert page.one("meshbreaker_control_plane_revision") == 1.0
        assert page.by("meshbreaker_control_plane_instances", "service") == {
            "gateway": 2.0,
            "transaction": 1.0,
        }
        assert page.one("meshbreaker_control_plane_nacks_total") == 1.0
        assert page.by("meshbreaker_control_plane_instances_nacking", "service") == {
            "gateway": 0.0,
            "transaction": 1.0,
        }
        assert page.by("meshbreaker_control_plane_applied_revision", "instance") == {
            "gw-1": 1.0,
            "gw-2": 1.0,
            "tx-1": 0.0,
        }
        # The server's clock has not moved since the agents connected.
        assert page.by("meshbreaker_control_plane_report_age_seconds", "instance") == {
            "gw-1": 0.0,
            "gw-2": 0.0,
            "tx-1": 0.0,
        }

        # gw-2 stops; 8 s later the others report once more, then stop too (so no late report
        # moves their age); 3 s after that, gw-2's last report is older than the 10 s TTL and
        # it is gone from every family.
        agents[1].stop()
        assert wait_until(lambda: Scrape(url).one("meshbreaker_control_plane_watch_streams") == 2.0)
        server_clock.advance(8.0)
        assert agents[0].report_now() and agents[2].report_now()
        agents[0].stop()
        agents[2].stop()
        server_clock.advance(3.0)
        page = Scrape(url)
        assert page.label_sets("meshbreaker_calls_total", "instance") == {("gw-1",), ("tx-1",)}
        assert ("gw-2",) not in page.label_sets(
            "meshbreaker_call_duration_seconds_bucket", "instance"
        )
        assert page.by("meshbreaker_control_plane_instances", "service") == {
            "gateway": 1.0,
            "transaction": 1.0,
        }
        assert page.by("meshbreaker_control_plane_report_age_seconds", "instance") == {
            "gw-1": 3.0,
            "tx-1": 3.0,
        }
        assert wait_until(lambda: Scrape(url).one("meshbreaker_control_plane_watch_streams") == 0.0)
    finally:
        for agent in agents:
            agent.stop()


Start = Callable[..., Awaitable[ControlPlaneServer]]


async def test_metrics_of_an_empty_control_plane_and_a_scrape_on_its_own_loop(
    start_control_plane: Start,
) -> None:
    server = await start_control_plane(metrics_port=0)
    assert server.metrics_port
    # A scrape waits for the server's loop: from here, it must run in another thread.
    page = await asyncio.to_thread(Scrape, f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert page.one("meshbreaker_control_plane_revision") == 0.0
    assert page.one("meshbreaker_control_plane_watch_streams") == 0.0
    assert page.one("meshbreaker_control_plane_reports_total") == 0.0
    assert page.by("meshbreaker_control_plane_instances", "service") == {}
    assert "meshbreaker_call_duration_seconds" not in page.families  # no histogram reported
    assert page.label_sets("meshbreaker_state", "instance") == set()
    # Collected on the loop itself, the collector reads directly instead of waiting for it.
    collector = ControlPlaneCollector(server.servicer, asyncio.get_running_loop(), timeout=0.1)
    names = {family.name for family in collector.collect()}
    assert {"meshbreaker_state", "meshbreaker_control_plane_revision"} <= names


async def test_xds_clients_read_revision_zero_for_what_they_have_not_acked(
    start_control_plane: Start,
) -> None:
    server = await start_control_plane()
    resources = [
        xds_pb2.XdsResourceState(type="cluster", sent_version="4.2"),  # not ACKed yet
        xds_pb2.XdsResourceState(type="listener", acked_version="4.2"),
        xds_pb2.XdsResourceState(type="route", acked_version="5", nacked_version="6.1"),
    ]
    client = xds_pb2.XdsClientStatus(node_id="n1", node_cluster="gateway", resources=resources)
    view = XdsView([client], nacks=1)
    loop = asyncio.get_running_loop()
    collector = ControlPlaneCollector(server.servicer, loop, xds_clients=lambda: view)
    families = {family.name: family for family in collector.collect()}

    def values(name: str) -> dict[str, float]:
        prefix = "meshbreaker_control_plane_xds_"
        return {sample.labels["type"]: sample.value for sample in families[prefix + name].samples}

    assert values("acked_policy_revision") == {"cluster": 0, "listener": 4, "route": 5}
    assert values("acked_cluster_revision") == {"cluster": 0, "listener": 2, "route": 0}
    assert values("nacking") == {"cluster": 0, "listener": 0, "route": 1}


async def test_metrics_are_off_by_default(start_control_plane: Start) -> None:
    server = await start_control_plane()
    assert server.metrics_port is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_metrics_port_in_use_fails_the_start_and_frees_the_grpc_port(
    start_control_plane: Start,
) -> None:
    first = await start_control_plane(metrics_port=0)
    grpc_port = free_port()
    with pytest.raises(OSError, match=f"metrics endpoint to 127.0.0.1:{first.metrics_port}"):
        await start_control_plane(port=grpc_port, metrics_port=first.metrics_port)
    second = await start_control_plane(port=grpc_port, metrics_port=0)
    assert second.port == grpc_port


def test_metrics_port_is_validated() -> None:
    for bad in (-1, 65536, True, "9090"):
        with pytest.raises(ConfigError, match="metrics_port"):
            ServerOptions(metrics_port=bad)  # type: ignore[arg-type]


def test_metrics_instance_breakers_is_validated() -> None:
    for bad in (-1, True, "5", 1.5):
        with pytest.raises(ConfigError, match="metrics_instance_breakers"):
            ServerOptions(metrics_instance_breakers=bad)  # type: ignore[arg-type]
    assert ServerOptions(metrics_instance_breakers=0).metrics_instance_breakers == 0


def test_the_exposition_server_serves_its_url_and_gives_the_port_back_when_closed() -> None:
    exposition = ExpositionServer(lambda local: f"# local={local}\n", 0, "127.0.0.1")
    try:
        assert exposition.url == f"http://127.0.0.1:{exposition.port}/metrics"
        with urllib.request.urlopen(exposition.url, timeout=10) as answer:
            assert answer.read() == b"# local=False\n"
    finally:
        exposition.close()
    # The listening socket is closed, not only no longer served: a connection is refused.
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.settimeout(10)
        probe.connect(("127.0.0.1", exposition.port))
