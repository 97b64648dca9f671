"""Staged policy rollout with real agents: a deterministic, restart-stable share of the instances
runs the canary config, `status` compares both halves, promote and rollback end it, and the
control plane rolls a canary back on its own when it refuses more calls than the rest."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from meshbreaker import BreakerRegistry, State
from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.canary import in_canary, should_roll_back
from meshbreaker.control.convert import config_to_proto
from meshbreaker.control.fleet import FleetDecider
from meshbreaker.control.instances import Instance
from meshbreaker.control.policies import PolicyIndex
from meshbreaker.control.store import SqliteStore
from meshbreaker.control.writes import StoreWriter
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import (
    METHOD,
    AdminStub,
    ControlPlaneThread,
    settle_decider,
    wait_until,
)

STABLE = BreakerConfig(consecutive_failures=50)
CANDIDATE = BreakerConfig(consecutive_failures=1, open_duration=60.0)


def test_membership_is_deterministic_and_close_to_the_percentage() -> None:
    ids = [f"gateway-{index}" for index in range(2000)]
    members = [i for i in ids if in_canary("timeouts", i, 10.0)]
    assert 150 <= len(members) <= 250  # 10 % of 2000, give or take the hash
    assert members == [i for i in ids if in_canary("timeouts", i, 10.0)]  # same every time
    wider = {i for i in ids if in_canary("timeouts", i, 30.0)}
    assert set(members) <= wider  # growing the canary only adds instances
    assert members != [i for i in ids if in_canary("retries", i, 10.0)]  # per policy


@pytest.mark.parametrize(
    ("canary", "rest", "rolled_back"),
    [
        ((0, 20), (20, 0), True),  # 20 calls each: the canary refuses all, the rest none
        ((0, 20), (19, 0), False),  # the rest's 19 calls are too few to compare with
        ((0, 19), (20, 0), False),  # and so are the canary's 19
    ],
)
def test_a_canary_is_compared_only_when_both_halves_saw_20_calls(
    canary: tuple[int, int], rest: tuple[int, int], rolled_back: bool
) -> None:
    """should_roll_back() judges no half on fewer than MIN_CALLS_TO_COMPARE (20) calls tried."""
    halves = [pb.CanaryHalf(total=total, rejected=rejected) for total, rejected in (canary, rest)]
    status = pb.CanaryStatus(canary=halves[0], rest=halves[1])
    assert should_roll_back(status, margin=0.1) is rolled_back


def _policy(margin: float | None = None) -> pb.Policy:
    policy = pb.Policy(
        id="fast-open",
        selector=pb.Selector(method=METHOD),
        config=config_to_proto(STABLE),
        canary=pb.Canary(percent=30.0, config=config_to_proto(CANDIDATE)),
    )
    if margin is not None:
        policy.canary.max_rejection_margin = margin
    return policy


def _agents(target: str, count: int) -> list[MeshAgent]:
    return [
        MeshAgent(target, "gateway", BreakerRegistry(), instance_id=f"gateway-{index}",
                  report_interval=0.05).start()
        for index in range(count)
    ]  # fmt: skip


def test_the_canary_share_runs_the_candidate_and_keeps_it_across_a_restart(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread()
    stub = admin_stub(cp.target)
    revision = stub.PutPolicy(pb.PutPolicyRequest(policies=[_policy()]), timeout=5).revision
    agents = _agents(cp.target, 10)
    try:
        expected = {a.instance_id for a in agents if in_canary("fast-open", a.instance_id, 30.0)}
        assert 0 < len(expected) < 10

        def running_candidate() -> set[str]:
            return {
                agent.instance_id
                for agent in agents
                if agent.registry.get(METHOD).config.consecutive_failures == 1
            }

        assert all(agent.wait_for_revision(revision, timeout=2.0) for agent in agents)
        assert running_candidate() == expected
        for agent in agents:
            agent.registry.get(METHOD).acquire().success()
            assert agent.report_now()
        (status,) = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).canaries
        assert status.policy_id == "fast-open" and status.percent == 30.0
        assert (status.canary.instances, status.rest.instances) == (
            len(expected),
            10 - len(expected),
        )

        cp.stop()
        cp.start()  # the same store; agents reconnect and resolve the same membership
        stub = admin_stub(cp.target)
        assert wait_until(lambda: all(agent.connected for agent in agents), timeout=5.0)
        assert running_candidate() == expected
    finally:
        for agent in agents:
            agent.stop()


def test_promote_and_rollback_end_the_canary_on_every_instance(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    from meshbreaker.cli.entry import main

    cp = control_plane_thread()
    agents = _agents(cp.target, 6)
    try:

        def configs() -> set[int]:
            return {agent.registry.get(METHOD).config.consecutive_failures for agent in agents}

        put = ["--target", cp.target, "policy", "put", "--id", "fast-open", "--method", METHOD]
        assert main([*put, "--consecutive-failures", "50"]) == 0
        assert wait_until(lambda: configs() == {50})
        assert main([*put, "--consecutive-failures", "1", "--canary", "50%"]) == 0
        assert wait_until(lambda: configs() == {1, 50})
        assert main(["--target", cp.target, "policy", "rollback", "fast-open"]) == 0
        assert wait_until(lambda: configs() == {50})
        assert main([*put, "--consecutive-failures", "1", "--canary", "50%"]) == 0
        assert wait_until(lambda: configs() == {1, 50})
        assert main(["--target", cp.target, "policy", "promote", "fast-open"]) == 0
        assert wait_until(lambda: configs() == {1})
        listing = admin_stub(cp.target).ListPolicies(pb.ListPoliciesRequest(), timeout=5)
        assert not listing.policies[0].HasField("canary")
    finally:
        for agent in agents:
            agent.stop()


def test_a_canary_that_refuses_more_calls_than_the_rest_is_rolled_back_by_the_control_plane(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread(decider_tick=0.05)
    stub = admin_stub(cp.target)
    revision = stub.PutPolicy(pb.PutPolicyRequest(policies=[_policy(0.2)]), timeout=5).revision
    agents = _agents(cp.target, 6)
    try:
        _refuse_about_half_on_the_canary(agents, revision)

        def rolled_back() -> bool:
            listing = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
            return not listing[0].HasField("canary")

        assert wait_until(rolled_back)
        assert wait_until(
            lambda: all(a.registry.get(METHOD).config.consecutive_failures == 50 for a in agents)
        )
        events = stub.ListEvents(pb.ListEventsRequest(), timeout=5).events
        assert events[-1].policy_change.actor == "control-plane"
        assert not any(a.registry.get(METHOD).state is State.FORCED_OPEN for a in agents)
    finally:
        for agent in agents:
            agent.stop()


def test_a_canary_within_its_margin_is_kept(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    cp = control_plane_thread(decider_tick=0.05)
    stub = admin_stub(cp.target)
    revision = stub.PutPolicy(pb.PutPolicyRequest(policies=[_policy(0.9)]), timeout=5).revision
    agents = _agents(cp.target, 6)
    try:
        _refuse_about_half_on_the_canary(agents, revision)  # 49 % more than the rest: < 90 %
        settle_decider(cp)
        (kept,) = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
        assert kept.canary.max_rejection_margin == pytest.approx(0.9)
    finally:
        for agent in agents:
            agent.stop()


def _refuse_about_half_on_the_canary(agents: list[MeshAgent], revision: int) -> None:
    """20 calls pass on every instance, then one fails: the canary's breakers open (one failure
    is enough there) and refuse the next 20, the rest's let them through; all report it."""
    assert all(agent.wait_for_revision(revision, timeout=2.0) for agent in agents)
    for agent in agents:
        breaker = agent.registry.get(METHOD)
        for _ in range(20):
            breaker.acquire().success()
        breaker.acquire().failure()  # opens the canary's breakers only
        for _ in range(20):
            permit = breaker.try_acquire()
            if permit is not None:
                permit.success()
        assert agent.report_now()


async def test_a_rollback_that_loses_to_a_concurrent_write_leaves_the_pass_to_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The refused rollback is the next pass's to try again: this pass is not a failed one."""
    store = SqliteStore(tmp_path / "cp.db")
    writer = StoreWriter(store)
    try:
        store.put([_policy(0.2)])
        index = PolicyIndex(*store.list())
        # Another replica's write, not followed here yet: the rollback's expected revision is old.
        store.put([pb.Policy(id="other", selector=pb.Selector(method="/bank.v1.S/Other"))])

        def instance(instance_id: str) -> Instance:
            """The canary's instances refused 20 calls, the rest's let 20 through."""
            if in_canary("fast-open", instance_id, 30.0):
                snapshot = pb.BreakerSnapshot(name=METHOD, rejected=20)
            else:
                snapshot = pb.BreakerSnapshot(name=METHOD, total=20)
            return Instance(instance_id, "gateway", last_seen=0.0, breakers={METHOD: snapshot})

        live = [instance(f"gateway-{number}") for number in range(20)]
        decider = FleetDecider(index, writer, wall_clock=lambda: 0.0, live_instances=lambda: live)
        with caplog.at_level(logging.DEBUG, logger="meshbreaker.control.fleet"):
            await decider.decide()
        assert any("rolling back fast-open" in r.getMessage() for r in caplog.records)
        assert decider.decisions == {}
        stored = {policy.id: policy for policy in store.list()[1]}
        assert stored["fast-open"].HasField("canary")
    finally:
        writer.close()
        store.close()
