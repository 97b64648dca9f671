"""MeshAgent fail-static: backoff, the local cache, and surviving a control-plane outage."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from google.protobuf import json_format

from meshbreaker.config import BreakerConfig, State, WindowType
from meshbreaker.control.agent import Backoff, MeshAgent
from meshbreaker.control.agent_cache import write_json_atomic
from meshbreaker.control.store import SqliteStore
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import (
    METHOD,
    AdminStub,
    ControlPlaneThread,
    method_policy,
    wait_until,
)

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


def test_backoff_grows_exponentially_is_capped_and_fully_jittered() -> None:
    backoff = Backoff(0.1, 2.0, 2.0, rng=random.Random(7))
    ceilings = []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceilings[-1]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    backoff.reset()
    assert backoff.ceiling() == 0.1
    # Full jitter: delays spread over the whole [0, ceiling] range, not around the ceiling.
    capped = Backoff(1.0, 1.0, rng=random.Random(1))
    delays = [capped.next_delay() for _ in range(200)]
    assert min(delays) < 0.1 and max(delays) > 0.9


@pytest.mark.parametrize(
    ("initial", "maximum", "multiplier"), [(0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (0.1, 1.0, 0.99)]
)
def test_a_backoff_that_could_not_grow_to_its_cap_is_refused(
    initial: float, maximum: float, multiplier: float
) -> None:
    """0 < initial <= maximum and multiplier >= 1, or a ValueError."""
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial, maximum, multiplier)


def test_a_backoff_at_the_edges_of_its_bounds_holds_its_one_delay() -> None:
    """initial == maximum and multiplier 1: every ceiling is that one delay."""
    backoff = Backoff(0.5, 0.5, 1.0)
    backoff.next_delay()
    assert backoff.ceiling() == 0.5


def test_backoff_survives_a_very_long_outage() -> None:
    backoff = Backoff(0.1, 30.0)
    backoff.attempt = 10_000
    assert 0.0 <= backoff.next_delay() <= 30.0


def test_write_json_atomic_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["cache.json"]


def _cache_file(path: Path, service: str, revision: int, config: BreakerConfig) -> None:
    snapshot = pb.ConfigSnapshot(
        revision=revision, service=service, policies=[method_policy("tight", config)]
    )
    write_json_atomic(
        path,
        {
            "format": 1,
            "service": service,
            "revision": revision,
            "snapshot": json_format.MessageToDict(snapshot, preserving_proto_field_name=True),
        },
    )


def test_cache_is_applied_on_start_before_any_connection(tmp_path: Path) -> None:
    cache = tmp_path / "agent.json"
    tight = BreakerConfig(consecutive_failures=2, open_duration=30.0, open_duration_max=30.0)
    _cache_file(cache, "transaction", 7, tight)
    registry = BreakerRegistry()
    agent = MeshAgent(UNREACHABLE, "transaction", registry, cache_path=cache, backoff_max=0.2)
    with agent:
        assert agent.applied_revision == 7
        assert agent.applied_from_cache
        assert registry.resolve(METHOD) == tight
        assert not agent.connected
        breaker = registry.get(METHOD)
        breaker.acquire().failure()
        breaker.acquire().failure()
        assert breaker.state is State.OPEN  # the cached policy governs before any server


def test_a_corrupt_or_foreign_cache_is_ignored(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    foreign = tmp_path / "foreign.json"
    _cache_file(foreign, "audit", 3, BreakerConfig(consecutive_failures=1))
    for path in (corrupt, foreign):
        registry = BreakerRegistry()
        with MeshAgent(UNREACHABLE, "transaction", registry, cache_path=path) as agent:
            assert agent.applied_revision == 0
            assert registry.policies() == {}


def test_unreachable_control_plane_keeps_retrying_and_stop_is_prompt() -> None:
    registry = BreakerRegistry()
    agent = MeshAgent(UNREACHABLE, "transaction", registry, backoff_initial=0.01, backoff_max=0.05)
    agent.start()
    assert wait_until(lambda: agent.last_error is not None)
    assert agent.last_error is not None and "UNAVAILABLE" in agent.last_error
    assert wait_until(lambda: agent._backoff.attempt >= 3)  # it keeps retrying
    assert not agent.connected
    started = time.monotonic()
    agent.stop()
    agent.stop()  # idempotent
    assert time.monotonic() - started < 1.0


class _Ceiling(random.Random):
    """Draws every backoff delay at its ceiling (no jitter): the waits are known."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_after_every_target_failed_the_agent_waits_its_backoff_before_trying_again() -> None:
    agent = MeshAgent(UNREACHABLE, "transaction", BreakerRegistry())
    agent._backoff = Backoff(30.0, 30.0, rng=_Ceiling())
    agent.start()
    try:
        assert wait_until(lambda: agent._backoff.attempt >= 1)  # one round failed
        time.sleep(1.0)
        assert agent._backoff.attempt == 1  # and the next waits its 30 s
    finally:
        agent.stop()


# ---------------------------------------------------------------------------------------------
# Against the real control plane (tests/control/conftest.py): outage, restart, cache.


def test_agents_keep_their_policies_through_an_outage_and_resync_on_their_own(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    agents = [
        MeshAgent(
            cp.target,
            "transaction",
            BreakerRegistry(),
            instance_id=f"tx-{index}",
            report_interval=60.0,
            backoff_initial=0.02,
            backoff_max=0.2,
        ).start()
        for index in range(3)
    ]
    try:
        tight = BreakerConfig(consecutive_failures=2)
        revision = stub.PutPolicy(
            pb.PutPolicyRequest(policies=[method_policy("tight", tight)]), timeout=5
        ).revision
        assert all(agent.wait_for_revision(revision, timeout=10) for agent in agents)

        cp.stop()
        assert wait_until(lambda: not any(agent.connected for agent in agents))
        for agent in agents:
            assert agent.registry.policies() == {METHOD: tight}
            assert agent.applied_revision == revision
            breaker = agent.registry.get(METHOD)
            breaker.acquire().failure()
            breaker.acquire().failure()
            assert breaker.state is State.OPEN  # breakers keep working on the last policy
            assert agent.last_error is not None

        # While this server is down the store changes (another replica, an operator's tool).
        store = SqliteStore(cp.db)
        looser = BreakerConfig(consecutive_failures=9)
        changed = store.put([method_policy("tight", looser)], actor="test")[0].revision
        store.close()

        cp.start()  # same port, same database
        for agent in agents:
            assert agent.wait_for_revision(changed, timeout=20.0)  # returns once applied
            assert agent.connected
            assert agent.registry.policies() == {METHOD: looser}
        assert wait_until(
            lambda: (
                {
                    item.instance_id: item.applied_revision
                    for item in stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).instances
                }
                == {agent.instance_id: changed for agent in agents}
            )
        )
    finally:
        for agent in agents:
            agent.stop()


def test_the_cache_written_from_the_server_is_reloaded_when_it_is_away(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub, tmp_path: Path
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    cache = tmp_path / "cache" / "transaction.json"
    tight = BreakerConfig(consecutive_failures=2, window_type=WindowType.COUNT, window_size=20)
    with MeshAgent(cp.target, "transaction", BreakerRegistry(), cache_path=cache) as agent:
        revision = stub.PutPolicy(
            pb.PutPolicyRequest(policies=[method_policy("tight", tight)]), timeout=5
        ).revision
        assert agent.wait_for_revision(revision, timeout=10)
        assert wait_until(lambda: cache.exists() and json.loads(cache.read_text())["revision"])
    assert json.loads(cache.read_text())["revision"] == revision
    cp.stop()

    # A new process starts while the control plane is down: it governs with the cached policy.
    registry = BreakerRegistry()
    restarted = MeshAgent(
        cp.target, "transaction", registry, cache_path=cache, backoff_initial=0.02, backoff_max=0.2
    )
    with restarted:
        assert restarted.applied_revision == revision
        assert restarted.applied_from_cache
        assert registry.policies() == {METHOD: tight}
        cp.start()
        assert wait_until(lambda: restarted.connected and not restarted.applied_from_cache)
        assert restarted.applied_revision == revision
