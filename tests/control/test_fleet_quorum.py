"""Fleet decisions with real agents and a real control plane: a quorum opens a method on every
instance, one prober at a time sends the fleet's probes, and the fleet closes or reopens on its
outcome. Time (open periods, probe waits, expiries) comes from fake clocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshbreaker import BreakerRegistry, CircuitBreaker, State
from meshbreaker.cli import main
from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.live.text import event_line
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import (
    METHOD,
    AdminStub,
    ControlPlaneThread,
    method_policy,
    settle_decider,
    wait_until,
)
from tests.scrape_support import Scrape
from tests.server_support import ServerThread

START = 1_700_000_000.0
OPEN_DURATION = 10.0
REPORT_TTL = 1.0  # seconds of the server's fake clock; the probe wait too, of the fake wall clock
POLICY = BreakerConfig(
    consecutive_failures=1,
    open_duration=OPEN_DURATION,
    open_jitter=0.0,
    half_open_max_calls=2,
    half_open_success_threshold=1,
    fleet_open_quorum=0.5,
    fleet_min_instances=2,
)


class Fleet:
    """A control plane and agents of one caller service, on shared fake clocks.

    The server's monotonic clock (report TTLs) is its own and moves only in `expire_silent`: an
    instance that reports only on transitions stays live however slowly the test runs.
    """

    def __init__(
        self,
        cp: ServerThread,
        stub: pb_grpc.ControlPlaneStub,
        wall: FakeClock,
        server_clock: FakeClock,
    ) -> None:
        self.cp = cp
        self.stub = stub
        self.wall = wall
        self.server_clock = server_clock
        self.monotonic = FakeClock()
        self.agents: dict[str, MeshAgent] = {}

    def join(self, instance_id: str, *, report_interval: float = 0.05) -> MeshAgent:
        registry = BreakerRegistry(clock=self.monotonic)
        agent = MeshAgent(
            self.cp.target, "transaction", registry, instance_id=instance_id,
            clock=self.monotonic, wall_clock=self.wall, report_interval=report_interval,
            backoff_max=0.2,
        ).start()  # fmt: skip
        self.agents[instance_id] = agent
        assert agent.wait_for_revision(1, timeout=2.0)
        permit = registry.get(METHOD).acquire()  # the breaker exists and has been used
        permit.success()
        assert agent.report_now()  # listed with its breaker before the test goes on
        return agent

    def leave(self, instance_id: str) -> None:
        self.agents.pop(instance_id).stop()

    def expire_silent(self) -> None:
        """Move the server's clock past the report TTL, the agents left reporting halfway, until
        no agent that left is listed: a report in flight as its agent stopped may land late,
        stamped with the clock already moved, and must expire in turn."""

        def step() -> bool:
            self.server_clock.advance(REPORT_TTL * 0.6)
            for agent in self.agents.values():
                assert agent.report_now()
            return not self.listed() - set(self.agents)

        step()  # one step alone never reaches the TTL
        assert wait_until(step)

    def listed(self) -> set[str]:
        """The instances the control plane lists now."""
        response = self.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5)
        return {instance.instance_id for instance in response.instances}

    def breaker(self, instance_id: str) -> CircuitBreaker:
        return self.agents[instance_id].registry.get(METHOD)

    def state(self, instance_id: str) -> State:
        return self.agents[instance_id].registry.get(METHOD).state

    def fail(self, instance_id: str) -> None:
        self.agents[instance_id].registry.get(METHOD).acquire().failure()

    def rejecting(self) -> bool:
        """True when no instance would let a call through now (nothing admitted is left over)."""
        return all(
            agent.registry.get(METHOD).state in (State.OPEN, State.FORCED_OPEN)
            for agent in self.agents.values()
        )

    def decision(self) -> pb.Policy | None:
        listing = self.stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5)
        return next((p for p in listing.policies if p.HasField("fleet")), None)

    def decisions(self) -> dict[tuple[str, str, str], int]:
        async def read() -> dict[tuple[str, str, str], int]:
            servicer = self.cp.running._servicer
            assert servicer is not None
            return dict(servicer.decider.decisions)

        return self.cp.call(read())

    def settle(self) -> None:
        """Let the decider look at least twice at what is reported now."""
        settle_decider(self.cp)

    def advance(self, seconds: float) -> None:
        self.wall.advance(seconds)
        self.monotonic.advance(seconds)


@pytest.fixture
def fleet(control_plane_thread: ControlPlaneThread, admin_stub: AdminStub) -> Iterator[Fleet]:
    wall, server_clock = FakeClock(START), FakeClock()
    cp = control_plane_thread(
        clock=server_clock,
        wall_clock=wall,
        decider_tick=0.05,
        report_ttl=REPORT_TTL,
        metrics_port=0,
    )
    stub = admin_stub(cp.target)
    stub.PutPolicy(pb.PutPolicyRequest(policies=[method_policy("balance", POLICY)]), timeout=5)
    fleet = Fleet(cp, stub, wall, server_clock)
    yield fleet
    for agent in fleet.agents.values():
        agent.stop()


def test_a_quorum_opens_the_method_on_every_instance_and_one_prober_closes_it_for_all(
    fleet: Fleet,
) -> None:
    for index in range(4):
        # Reports only on transitions: the decision cannot wait for a periodic report.
        fleet.join(f"tx-{index}", report_interval=60.0)
    fleet.fail("tx-0")
    fleet.settle()
    assert fleet.decision() is None  # 1 open of 4: under fleet_min_instances

    fleet.fail("tx-1")  # 2 of 4: the quorum
    assert wait_until(fleet.rejecting)
    decision = fleet.decision()
    assert decision is not None
    assert decision.override == pb.OVERRIDE_FORCED_OPEN
    assert decision.selector == pb.Selector(caller="transaction", method=METHOD)
    assert decision.override_reason.startswith("quorum: 2 of 4 live instances of transaction")
    assert list(decision.fleet.probers) == ["tx-0"] and decision.fleet.period == 1
    assert fleet.state("tx-0") is State.OPEN  # the prober: its own breaker, opened until then
    assert all(fleet.state(f"tx-{i}") is State.FORCED_OPEN for i in (1, 2, 3))
    # Counted once the store answered the write (a read may see the decision a moment sooner).
    assert wait_until(lambda: fleet.decisions() == {("transaction", METHOD, "opened"): 1})
    (active,) = fleet.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).overrides
    assert active.remaining == pytest.approx(OPEN_DURATION + 2 * REPORT_TTL)

    # The open period ends: every instance tries five calls; only the prober's probes go.
    fleet.advance(OPEN_DURATION)
    admitted = [
        permit
        for instance_id in sorted(fleet.agents)
        for permit in (fleet.breaker(instance_id).try_acquire() for _ in range(5))
        if permit is not None
    ]
    assert len(admitted) == POLICY.half_open_max_calls  # not 4 x that
    admitted[0].success()  # the probe passes: the prober closes, and the fleet with it
    assert wait_until(lambda: all(fleet.state(i) is State.CLOSED for i in fleet.agents))
    assert wait_until(lambda: fleet.decision() is None)
    assert wait_until(lambda: fleet.decisions().get(("transaction", METHOD, "closed")) == 1)
    events = fleet.stub.ListEvents(pb.ListEventsRequest(), timeout=5).events
    changes = [e.policy_change for e in events if e.policy_change.actor == "control-plane"]
    assert changes[0].after.fleet.probers == ["tx-0"]
    first = next(e for e in events if e.policy_change.after.HasField("fleet"))
    assert "fleet decision, open period 1, probers tx-0; quorum: 2 of 4" in event_line(first).plain
    assert changes[-1].kind == pb.PolicyChange.KIND_DELETE


def test_a_decision_takes_the_next_free_id_when_an_operator_holds_its_name(fleet: Fleet) -> None:
    base = "fleet.transaction." + METHOD.lstrip("/").replace("/", ".")
    for policy_id, service in ((base, "ledger"), (f"{base}.2", "audit")):
        held = pb.Policy(id=policy_id, selector=pb.Selector(service=service))
        held.config.failure_rate_threshold = 0.5
        fleet.stub.PutPolicy(pb.PutPolicyRequest(policies=[held]), timeout=5)
    for index in range(3):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.fail("tx-1")
    assert wait_until(lambda: fleet.decision() is not None)
    decision = fleet.decision()
    assert decision is not None and decision.id == f"{base}.3"


def test_an_operator_sees_the_decision_in_status_events_metrics_and_a_listing_put_back_keeps_it(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def cli(*args: str) -> str:
        status = main(["--target", fleet.cp.target, *args])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        return captured.out

    def scrape() -> Scrape:
        return Scrape(f"http://127.0.0.1:{fleet.cp.running.metrics_port}/metrics")

    assert scrape().one("meshbreaker_fleet_decider_leading") == 1  # the one SQLite server
    for index in range(3):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.fail("tx-1")
    assert wait_until(fleet.rejecting)
    decision = fleet.decision()
    assert decision is not None

    (row,) = [line for line in cli("status").splitlines() if "FORCED_OPEN" in line]
    assert row.split()[:3] == ["FORCED_OPEN", "transaction", METHOD]
    assert " fleet " in row and "quorum: 2 of 3 live instances of transaction" in row
    assert "fleet decision, open period 1, probers tx-0; quorum: 2 of 3" in cli("events")
    assert wait_until(lambda: fleet.decisions().get(("transaction", METHOD, "opened")) == 1)
    page = scrape()
    labels = {"service": "transaction", "method": METHOD}
    assert page.one("meshbreaker_fleet_decisions_total", action="opened", **labels) == 1
    assert page.one("meshbreaker_fleet_decisions_active", **labels) == 1
    assert page.one("meshbreaker_fleet_decision_open_period", **labels) == 1

    # An operator puts a listing back: the decision is the same, and the decider goes on with it.
    listing = tmp_path / "policies.json"
    listing.write_text(cli("policy", "list", "--json"))
    cli("policy", "put", "--file", str(listing))
    kept = fleet.decision()
    assert kept is not None and kept.revision > decision.revision
    for name in ("revision", "updated_at", "updated_by"):
        kept.ClearField(name)
        decision.ClearField(name)
    assert kept == decision
    fleet.advance(OPEN_DURATION)
    probe = fleet.breaker("tx-0").try_acquire()
    assert probe is not None
    probe.success()
    assert wait_until(lambda: all(fleet.state(i) is State.CLOSED for i in fleet.agents))
    assert wait_until(lambda: fleet.decision() is None)
    page = scrape()
    assert page.one("meshbreaker_fleet_decisions_total", action="closed", **labels) == 1
    assert not page.by("meshbreaker_fleet_decisions_active", "method")


def test_a_failed_probe_reopens_the_fleet_and_hands_the_probes_to_another_instance(
    fleet: Fleet,
) -> None:
    for index in range(3):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.fail("tx-1")
    assert wait_until(lambda: fleet.decision() is not None)
    assert wait_until(fleet.rejecting)
    fleet.advance(OPEN_DURATION)
    probe = fleet.breaker("tx-0").try_acquire()
    assert probe is not None
    probe.failure()  # still down: the whole fleet opens again, for a longer period

    def period_two() -> bool:
        decision = fleet.decision()
        return decision is not None and decision.fleet.period == 2

    assert wait_until(period_two)
    decision = fleet.decision()
    assert decision is not None and list(decision.fleet.probers) == ["tx-1"]
    assert wait_until(lambda: fleet.state("tx-0") is State.FORCED_OPEN)
    assert wait_until(lambda: fleet.state("tx-1") is State.OPEN)
    assert wait_until(lambda: fleet.decisions().get(("transaction", METHOD, "reopened")) == 1)


def test_the_instance_taking_its_turn_lets_no_call_through_before_its_probes(
    fleet: Fleet,
) -> None:
    """Its override ends and its own breaker opens in one step: a call in between (the breaker
    briefly CLOSED) would reach the dependency on top of the period's half_open_max_calls."""
    for index in range(3):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.fail("tx-1")
    assert wait_until(lambda: fleet.decision() is not None)
    assert wait_until(lambda: fleet.state("tx-1") is State.FORCED_OPEN)
    taker = fleet.breaker("tx-1")
    seen: list[tuple[State, bool]] = []

    def try_a_call(name: str, old: State, new: State) -> None:
        if name != taker.name:
            return
        permit = taker.try_acquire()  # a call made at this very moment
        if permit is not None:
            permit.ignore()
        seen.append((new, permit is not None))

    fleet.agents["tx-1"].registry.on_state_change(try_a_call)
    fleet.advance(OPEN_DURATION)
    probe = fleet.breaker("tx-0").try_acquire()
    assert probe is not None
    probe.failure()  # the turn passes to tx-1, which waits out the new open period first
    assert wait_until(lambda: fleet.state("tx-1") is State.OPEN)
    assert seen == [(State.OPEN, False)]
    # Its breaker opening (from FORCED_OPEN, not a probe's outcome) leaves the period as it is.
    assert fleet.agents["tx-1"].report_now()
    fleet.settle()
    decision = fleet.decision()
    assert decision is not None
    assert (decision.fleet.period, list(decision.fleet.probers)) == (2, ["tx-1"])


def test_a_prober_that_sends_no_probe_is_replaced_before_the_decision_expires(
    fleet: Fleet,
) -> None:
    for index in range(3):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.fail("tx-1")
    assert wait_until(lambda: fleet.decision() is not None)
    fleet.advance(OPEN_DURATION + REPORT_TTL)  # tx-0 made no call: no probe came

    def reassigned() -> bool:
        decision = fleet.decision()
        return decision is not None and list(decision.fleet.probers) == ["tx-1"]

    assert wait_until(reassigned)
    assert wait_until(lambda: fleet.decisions().get(("transaction", METHOD, "reassigned")) == 1)


def test_a_decision_whose_whole_fleet_left_passes_the_turn_to_no_one_and_goes_on(
    fleet: Fleet,
) -> None:
    """No instance has the method's breaker any more when the period ends: the decider still
    writes the next period (with no prober) instead of failing its pass on the missing count."""
    for index in range(3):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.fail("tx-1")
    assert wait_until(lambda: fleet.decision() is not None)
    for index in range(3):
        fleet.leave(f"tx-{index}")
    fleet.expire_silent()  # their presence expires
    assert not fleet.listed()
    fleet.advance(OPEN_DURATION + REPORT_TTL)  # the period ends and no probe came

    def period_two() -> pb.Policy | None:
        decision = fleet.decision()
        return decision if decision is not None and decision.fleet.period == 2 else None

    assert wait_until(period_two)
    decision = period_two()
    assert decision is not None and list(decision.fleet.probers) == []
    assert wait_until(lambda: fleet.decisions().get(("transaction", METHOD, "reassigned")) == 1)


def test_expired_presence_never_counts_toward_the_quorum_and_a_joining_instance_does(
    fleet: Fleet,
) -> None:
    for index in range(4):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.leave("tx-0")  # its OPEN breaker stays in the table until its presence expires
    fleet.expire_silent()
    assert "tx-0" not in fleet.listed()
    fleet.fail("tx-1")  # 1 open of 3 live: tx-0 would have made it 2 of 4
    fleet.settle()
    assert fleet.decision() is None

    fleet.join("tx-4")
    fleet.fail("tx-4")  # 2 open of 4 live
    assert wait_until(lambda: fleet.decision() is not None)
    decision = fleet.decision()
    assert decision is not None
    assert decision.override_reason.startswith("quorum: 2 of 4 live instances")


def test_instances_fall_back_to_their_own_breakers_when_the_control_plane_dies_mid_decision(
    fleet: Fleet,
) -> None:
    for index in range(3):
        fleet.join(f"tx-{index}")
    fleet.fail("tx-0")
    fleet.fail("tx-1")
    assert wait_until(fleet.rejecting)
    fleet.cp.stop()
    fleet.advance(OPEN_DURATION + 2 * REPORT_TTL)  # the decision's expiry: no one renewed it
    # Never "always open": each instance's own breaker decides again (the prober probes).
    assert wait_until(lambda: all(fleet.state(i) is not State.FORCED_OPEN for i in fleet.agents))
    assert fleet.breaker("tx-2").try_acquire() is not None
