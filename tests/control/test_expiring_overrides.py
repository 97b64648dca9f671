"""Overrides that expire: `ForceState` with a duration ends on every instance on time, with or
without a control plane, survives control-plane restarts, and `status` shows the time left."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from meshbreaker import BreakerRegistry, State
from meshbreaker.config import BreakerConfig
from meshbreaker.control import layers
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.convert import (
    MAX_PROBERS,
    FleetSpec,
    PolicySpec,
    Selector,
    policy_from_proto,
    seconds_to_timestamp,
)
from meshbreaker.errors import ConfigError
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import (
    METHOD,
    AdminStub,
    ControlPlaneThread,
    method_policy,
    settle_decider,
    wait_until,
)

START = 1_700_000_000.0
SERVICE = "bank.v1.AccountService"


def force_for(seconds: int, *, method: str = METHOD, reason: str = "") -> pb.ForceStateRequest:
    """A FORCED_OPEN of `method` for every caller that ends after `seconds`."""
    return pb.ForceStateRequest(
        selector=pb.Selector(method=method),
        override=pb.OVERRIDE_FORCED_OPEN,
        duration=Duration(seconds=seconds),
        reason=reason,
    )


def test_an_override_ends_on_every_instance_while_the_control_plane_is_down(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    wall = FakeClock(START)
    cp = control_plane_thread(wall_clock=wall, decider_tick=0.05)
    stub = admin_stub(cp.target)
    agents = [
        MeshAgent(cp.target, "transaction", BreakerRegistry(), instance_id=f"tx-{index}",
                  wall_clock=wall, report_interval=0.05, backoff_max=0.2).start()
        for index in range(2)
    ]  # fmt: skip
    try:
        breakers = [agent.registry.get(METHOD) for agent in agents]
        revision = stub.ForceState(force_for(600, reason="account deploy"), timeout=5).revision
        assert all(agent.wait_for_revision(revision, timeout=2.0) for agent in agents)
        assert all(breaker.state is State.FORCED_OPEN for breaker in breakers)

        (active,) = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).overrides
        assert active.remaining == pytest.approx(600.0)
        assert active.policy.override_reason == "account deploy"

        cp.stop()
        assert wait_until(lambda: not any(agent.connected for agent in agents))
        wall.advance(599.0)
        assert all(breaker.state is State.FORCED_OPEN for breaker in breakers)
        wall.advance(1.0)  # the expiry, with no control plane to say so
        assert wait_until(lambda: all(breaker.state is State.CLOSED for breaker in breakers))
        assert all(breaker.try_acquire() is not None for breaker in breakers)
    finally:
        for agent in agents:
            agent.stop()


def test_an_expiring_override_survives_a_restart_and_the_store_drops_it_when_due(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    wall = FakeClock(START)
    cp = control_plane_thread(wall_clock=wall, decider_tick=0.05)
    stub = admin_stub(cp.target)
    # One selector holds a config too: only its override goes; the other policy goes whole.
    kept = method_policy("balance", BreakerConfig(consecutive_failures=3))
    stub.PutPolicy(pb.PutPolicyRequest(policies=[kept]), timeout=5)
    stub.ForceState(force_for(60), timeout=5)
    other = "/bank.v1.AccountService/Debit"
    stub.ForceState(force_for(90, method=other), timeout=5)

    cp.stop()
    wall.advance(61.0)
    cp.start()
    stub = admin_stub(cp.target)

    def policies() -> dict[str, pb.Policy]:
        listing = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
        return {policy.id: policy for policy in listing}

    assert wait_until(lambda: policies()["balance"].override == pb.OVERRIDE_NONE)
    balance = policies()["balance"]
    assert balance.config.consecutive_failures == 3
    assert not balance.HasField("override_expires_at")
    assert balance.updated_by == "control-plane"
    forced_other = next(p for p in policies().values() if p.selector.method == other)
    assert forced_other.override == pb.OVERRIDE_FORCED_OPEN  # 29 s left: not touched
    (active,) = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).overrides
    assert active.remaining == pytest.approx(29.0)

    wall.advance(29.0)
    assert wait_until(lambda: forced_other.id not in policies())
    events = stub.ListEvents(pb.ListEventsRequest(), timeout=5).events
    deleted = [e.policy_change for e in events if e.policy_change.policy_id == forced_other.id]
    assert deleted[-1].kind == pb.PolicyChange.KIND_DELETE
    assert deleted[-1].actor == "control-plane"


def test_an_override_set_again_is_not_removed_by_the_expiry_of_the_old_one(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    wall = FakeClock(START)
    cp = control_plane_thread(wall_clock=wall, decider_tick=0.05)
    stub = admin_stub(cp.target)
    stub.ForceState(force_for(60), timeout=5)
    forever = pb.ForceStateRequest(
        selector=pb.Selector(method=METHOD), override=pb.OVERRIDE_FORCED_OPEN
    )
    policy = stub.ForceState(forever, timeout=5).policy
    assert not policy.HasField("override_expires_at")
    wall.advance(120.0)
    settle_decider(cp)
    (listed,) = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
    assert listed.override == pb.OVERRIDE_FORCED_OPEN


@pytest.mark.parametrize(
    ("request_", "field", "message"),
    [
        (force_for(0), "duration", "must be > 0"),
        (force_for(-5), "duration", "must be > 0"),
        (force_for(400 * 86400), "duration", "at most 366 days"),
        (force_for(60, reason="\x1b[2Jgone"), "reason", "printable"),
        (force_for(60, reason="x" * 257), "reason", "at most 256"),
    ],
)
def test_bad_durations_and_reasons_are_refused_naming_the_field(
    control_plane_thread: ControlPlaneThread,
    admin_stub: AdminStub,
    request_: pb.ForceStateRequest,
    field: str,
    message: str,
) -> None:
    import grpc

    stub = admin_stub(control_plane_thread().target)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ForceState(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")
    assert message in (caught.value.details() or "")
    assert not stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies


def test_put_refuses_an_expiry_without_override_and_a_hand_written_fleet_decision(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    import grpc

    stub = admin_stub(control_plane_thread().target)
    lone = pb.Policy(id="lone", selector=pb.Selector(method=METHOD))
    lone.override_expires_at.CopyFrom(seconds_to_timestamp(START))
    forged = pb.Policy(
        id="forged",
        selector=pb.Selector(caller="transaction", method=METHOD),
        override=pb.OVERRIDE_FORCED_OPEN,
        override_expires_at=seconds_to_timestamp(START + 60),
        fleet=pb.FleetDecision(
            probers=["tx-0"], open_until=seconds_to_timestamp(START), period=1,
            decided_at=seconds_to_timestamp(START),
        ),
    )  # fmt: skip
    refusals = (
        (lone, "override_expires_at", grpc.StatusCode.INVALID_ARGUMENT),
        # Only the decider writes one; a put may carry back only the one stored (none here).
        (forged, "fleet", grpc.StatusCode.FAILED_PRECONDITION),
    )
    for policy, field, code in refusals:
        with pytest.raises(grpc.RpcError) as caught:
            stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]), timeout=5)
        assert caught.value.code() == code
        assert (caught.value.details() or "").startswith(f"policies[0].{field}:")
    assert not stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies


def test_a_fleet_decision_names_at_most_max_probers_probers() -> None:
    def decision(probers: int) -> pb.Policy:
        return pb.Policy(
            id="fleet",
            selector=pb.Selector(caller="transaction", method=METHOD),
            override=pb.OVERRIDE_FORCED_OPEN,
            override_expires_at=seconds_to_timestamp(START + 60),
            fleet=pb.FleetDecision(
                probers=[f"tx-{n}" for n in range(probers)], period=1,
                open_until=seconds_to_timestamp(START), decided_at=seconds_to_timestamp(START),
            ),
        )  # fmt: skip

    spec = policy_from_proto(decision(MAX_PROBERS))
    assert spec.fleet is not None and len(spec.fleet.probers) == MAX_PROBERS
    with pytest.raises(ConfigError, match=rf"policy\.fleet\.probers: at most {MAX_PROBERS}"):
        policy_from_proto(decision(MAX_PROBERS + 1))


# ---------------------------------------------------------------------------------------------
# Resolution (what every agent computes from the same policies)


def _spec(
    policy_id: str, selector: Selector, expires: float | None, fleet: FleetSpec | None = None
) -> PolicySpec:
    return PolicySpec(
        policy_id, selector, override=State.FORCED_OPEN, override_expires_at=expires, fleet=fleet
    )


def test_an_expired_override_gives_way_to_a_less_specific_one_still_in_force() -> None:
    caller_only = _spec("mine", Selector(caller="tx", method=METHOD), START + 10)
    everyone = _spec("all", Selector(method=METHOD), START + 50)
    specs = [caller_only, everyone]
    before = layers.policies_for("tx", specs, now=START)
    assert before.overrides == {METHOD: State.FORCED_OPEN}
    assert before.next_expiry == START + 10
    assert layers.policies_for("tx", specs, now=START + 10).next_expiry == START + 50
    after = layers.policies_for("tx", specs, now=START + 50)
    assert after.overrides == {} and after.next_expiry is None


def test_a_fleet_decision_is_a_probe_for_its_probers_and_an_override_for_the_rest() -> None:
    fleet = FleetSpec(frozenset({"tx-1"}), open_until=START + 30, period=1, decided_at=START)
    decision = _spec("fleet", Selector(caller="tx", method=METHOD), START + 60, fleet)
    prober = layers.policies_for("tx", [decision], now=START, instance_id="tx-1")
    assert prober.overrides == {} and prober.probes == {METHOD: fleet}
    other = layers.policies_for("tx", [decision], now=START, instance_id="tx-2")
    assert other.overrides == {METHOD: State.FORCED_OPEN} and other.probes == {}
    assert other.next_expiry == START + 60


def test_a_prober_whose_probe_fails_does_not_probe_again_until_the_decision_moves_on() -> None:
    from meshbreaker.control.agent_overrides import OverrideClock

    monotonic, wall = FakeClock(), FakeClock(START)
    config = BreakerConfig(consecutive_failures=1, open_duration=5.0, open_jitter=0.0)
    registry = BreakerRegistry(config, clock=monotonic)
    breaker = registry.get(METHOD)
    clock = OverrideClock(registry, wall)
    registry.on_state_change(clock.transition)
    fleet = FleetSpec(frozenset({"tx-1"}), open_until=START + 10, period=1, decided_at=START)
    decision = _spec("fleet", Selector(caller="tx", method=METHOD), START + 40, fleet)
    clock.applying(layers.policies_for("tx", [decision], now=START, instance_id="tx-1"))
    assert breaker.state is State.OPEN  # until the fleet's open period ends, not its own
    monotonic.advance(10.0)
    wall.advance(10.0)
    probe = breaker.try_acquire()
    assert probe is not None
    probe.failure()
    # Its own open periods (5 s, then longer by its backoff) would have let it probe again.
    monotonic.advance(25.0)
    wall.advance(25.0)
    assert breaker.try_acquire() is None  # held open until the decision's expiry (START + 40)
    # The decision ends (it expired, or the fleet closed): the prober closes with the rest.
    clock.applying(layers.policies_for("tx", [decision], now=START + 40, instance_id="tx-1"))
    assert registry.get(METHOD).state is State.CLOSED


def test_a_probe_that_fails_within_a_second_of_the_decisions_expiry_is_held_until_it() -> None:
    """Held for what is left of the decision, however little: not for its own shorter period."""
    from meshbreaker.control.agent_overrides import OverrideClock

    monotonic, wall = FakeClock(), FakeClock(START)
    config = BreakerConfig(consecutive_failures=1, open_duration=0.25, open_jitter=0.0)
    registry = BreakerRegistry(config, clock=monotonic)
    breaker = registry.get(METHOD)
    clock = OverrideClock(registry, wall)
    registry.on_state_change(clock.transition)
    fleet = FleetSpec(frozenset({"tx-1"}), open_until=START + 10, period=1, decided_at=START)
    decision = _spec("fleet", Selector(caller="tx", method=METHOD), START + 10.9, fleet)
    clock.applying(layers.policies_for("tx", [decision], now=START, instance_id="tx-1"))
    monotonic.advance(10.0)
    wall.advance(10.0)
    probe = breaker.try_acquire()
    assert probe is not None
    probe.failure()
    monotonic.advance(0.5)  # past its own open period (0.25 s), 0.4 s before the expiry
    wall.advance(0.5)
    assert breaker.try_acquire() is None
    monotonic.advance(0.5)  # past the decision's expiry: the hold is over
    wall.advance(0.5)
    assert breaker.try_acquire() is not None
