"""An agent says what is wrong: connected / denied / unreachable / stale, as logs and a metric."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from meshbreaker.config import BreakerConfig
from meshbreaker.control import AgentStatus
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.agent_cache import FailStaticCache
from meshbreaker.metrics.prometheus import AgentExporter
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import AdminStub, ControlPlaneThread, method_policy, wait_until

UNREACHABLE = "127.0.0.1:1"
AGENT_TOKEN = "agent-secret"


def _agent(target: str, **options: object) -> MeshAgent:
    options.setdefault("backoff_initial", 0.02)
    options.setdefault("backoff_max", 0.1)
    return MeshAgent(target, "transaction", BreakerRegistry(), report_interval=60.0, **options)  # type: ignore[arg-type]


def test_a_wrong_token_is_an_authentication_problem_naming_its_source(
    control_plane_thread: ControlPlaneThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = control_plane_thread(admin_token="admin-secret", agent_token=AGENT_TOKEN)
    token_file = tmp_path / "agent.token"
    token_file.write_text("not-the-token\n")
    metrics = CollectorRegistry()
    with caplog.at_level(logging.DEBUG, logger="meshbreaker.control.agent"):
        agent = _agent(cp.target, token_file=token_file).start()
        exporter = AgentExporter(agent, prometheus_registry=metrics)
        try:
            assert wait_until(lambda: agent.status is AgentStatus.DENIED)
            labels = {"service": "transaction", "instance": agent.instance_id}
            assert (
                metrics.get_sample_value("meshbreaker_agent_status", {**labels, "status": "denied"})
                == 1.0
            )
            assert (
                metrics.get_sample_value(
                    "meshbreaker_agent_status", {**labels, "status": "connected"}
                )
                == 0.0
            )
            assert wait_until(lambda: agent._backoff.attempt >= 2)  # retried with backoff
            # Rotating the token file is picked up at the next retry.
            token_file.write_text(AGENT_TOKEN)
            assert wait_until(lambda: agent.status is AgentStatus.CONNECTED)
            assert (
                metrics.get_sample_value(
                    "meshbreaker_agent_status", {**labels, "status": "connected"}
                )
                == 1.0
            )
        finally:
            exporter.close()
            agent.stop()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    denied = [m for m in messages if "refused this agent's credentials" in m]
    assert len(denied) == 1, messages
    assert "authentication problem" in denied[0] and f"token file {token_file}" in denied[0]
    assert "UNAUTHENTICATED" in denied[0] and "not-the-token" not in denied[0]
    assert not any("unreachable" in m for m in messages)


def test_a_missing_token_says_none_is_configured(
    control_plane_thread: ControlPlaneThread, caplog: pytest.LogCaptureFixture
) -> None:
    cp = control_plane_thread(admin_token="admin-secret", agent_token=AGENT_TOKEN)
    with caplog.at_level(logging.WARNING), _agent(cp.target) as agent:
        assert wait_until(lambda: agent.status is AgentStatus.DENIED)
    assert any("no token configured" in r.getMessage() for r in caplog.records)


def test_token_source_names_where_the_token_comes_from_never_the_token(tmp_path: Path) -> None:
    """MeshAgent.token_source: the token file, a token given, or none; never the token itself."""
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN)
    assert _agent(UNREACHABLE, token_file=token_file).token_source == f"token file {token_file}"
    given = _agent(UNREACHABLE, token=AGENT_TOKEN).token_source
    assert given == "the token given to MeshAgent(token=...)"
    assert _agent(UNREACHABLE).token_source == "no token configured"


def test_unreachable_then_stale_with_cached_policies(tmp_path: Path) -> None:
    agent = _agent(UNREACHABLE)
    assert agent.status is AgentStatus.CONNECTING
    with agent:
        assert wait_until(lambda: agent.status is AgentStatus.UNREACHABLE)
    cache = tmp_path / "cache.json"
    snapshot = pb.ConfigSnapshot(
        revision=3, service="transaction", policies=[method_policy("p", BreakerConfig())]
    )
    FailStaticCache(cache, "transaction").save(snapshot, "")
    with _agent(UNREACHABLE, cache_path=cache) as agent:
        assert wait_until(lambda: agent.status is AgentStatus.STALE)
        assert agent.applied_revision == 3


def test_connected_goes_stale_when_the_control_plane_goes(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    with _agent(cp.target) as agent:
        assert wait_until(lambda: agent.status is AgentStatus.CONNECTED)
        revision = stub.PutPolicy(
            pb.PutPolicyRequest(policies=[method_policy("p", BreakerConfig())]), timeout=5
        ).revision
        assert agent.wait_for_revision(revision, timeout=30)
        cp.stop()
        assert wait_until(lambda: agent.status is AgentStatus.STALE)
