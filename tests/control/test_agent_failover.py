"""MeshAgent over several control-plane replicas: target parsing, failover, no re-apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent, parse_targets
from meshbreaker.control.server import ServerOptions
from meshbreaker.errors import ConfigError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import METHOD, AdminStub, ControlPlaneThread, method_policy
from tests.server_support import wait_until


def test_targets_come_from_a_comma_list_or_a_sequence_and_uris_stay_whole() -> None:
    assert parse_targets("cp-a:7070, cp-b:7070") == ("cp-a:7070", "cp-b:7070")
    assert parse_targets(["cp-a:7070", "cp-b:7070,cp-c:7070"]) == (
        "cp-a:7070",
        "cp-b:7070",
        "cp-c:7070",
    )
    # gRPC resolves these itself (every address of a DNS name, or a literal address list).
    assert parse_targets("ipv4:10.0.0.1:7070,10.0.0.2:7070") == (
        "ipv4:10.0.0.1:7070,10.0.0.2:7070",
    )
    assert parse_targets("dns:///control-plane:7070") == ("dns:///control-plane:7070",)
    bad: str | list[str]
    for bad in ("", "a:1,,b:2", []):
        with pytest.raises(ConfigError, match="target"):
            parse_targets(bad)


def test_max_connection_age_is_validated() -> None:
    for bad in (0, -1.0, float("inf"), True, "5"):
        with pytest.raises(ConfigError, match="max_connection_age"):
            ServerOptions(max_connection_age=bad)  # type: ignore[arg-type]


def test_an_agent_moves_to_another_replica_when_its_own_dies_without_reapplying(
    tmp_path: Path, control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    db = tmp_path / "shared.db"
    # Both replicas load the store when they start, so the policy is put before.
    seed = control_plane_thread(db=db)
    put = admin_stub(seed.target).PutPolicy(
        pb.PutPolicyRequest(policies=[method_policy("p", BreakerConfig(consecutive_failures=4))])
    )
    seed.close()
    replicas = [control_plane_thread(db=db), control_plane_thread(db=db)]
    registry = BreakerRegistry()
    agent = MeshAgent(
        ",".join(replica.target for replica in replicas),
        "transaction",
        registry,
        report_interval=0.2,
    ).start()
    try:
        assert agent.wait_for_revision(put.revision, timeout=5)
        applied_at = agent.applied_at
        first = next(replica for replica in replicas if replica.target == agent.target)
        other = next(replica for replica in replicas if replica is not first)
        first.close()
        # On the other replica within 2 s (its stream delivered), the policy never re-applied.
        assert wait_until(lambda: agent.connected and agent.target == other.target, timeout=2)
        assert agent.applied_revision == put.revision
        assert agent.applied_at == applied_at
        assert registry.get(METHOD).config.consecutive_failures == 4
        assert wait_until(
            lambda: any(
                i.instance_id == agent.instance_id
                for i in admin_stub(other.target).ListBreakers(pb.ListBreakersRequest()).instances
            ),
            timeout=2,
        )
    finally:
        agent.stop()


def test_an_aged_out_connection_moves_the_agent_on(
    tmp_path: Path, control_plane_thread: ControlPlaneThread
) -> None:
    db = tmp_path / "shared.db"
    replicas = [
        control_plane_thread(db=db, max_connection_age=0.3, max_connection_age_grace=0.1)
        for _ in range(2)
    ]
    agent = MeshAgent(
        [replica.target for replica in replicas], "transaction", BreakerRegistry()
    ).start()
    try:
        assert wait_until(lambda: agent.connected, timeout=2)
        seen = {agent.target}

        def served_by_both() -> bool:
            seen.add(agent.target)
            return len(seen) == 2

        assert wait_until(served_by_both, timeout=3)
    finally:
        agent.stop()
