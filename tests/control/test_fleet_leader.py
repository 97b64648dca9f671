"""One decider: replicas on a real etcd elect one of them on their presence leases; when it stops,
another takes over and continues from the decisions stored (it moves a stored decision on)."""

from __future__ import annotations

import uuid

from meshbreaker import BreakerRegistry, State
from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.store.etcd_server import EtcdServer
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import METHOD, AdminStub, ControlPlaneThread, method_policy
from tests.server_support import ServerThread, wait_until

START = 1_700_000_000.0
POLICY = BreakerConfig(
    consecutive_failures=1,
    open_duration=10.0,
    open_jitter=0.0,
    fleet_open_quorum=0.5,
    fleet_min_instances=2,
)


def _decider_state(cp: ServerThread) -> tuple[bool, dict[tuple[str, str, str], int]]:
    async def read() -> tuple[bool, dict[tuple[str, str, str], int]]:
        servicer = cp.running._servicer
        assert servicer is not None
        return servicer.decider.leading, dict(servicer.decider.decisions)

    return cp.call(read())


def test_one_replica_decides_and_the_next_continues_from_the_stored_decision(
    etcd_server: EtcdServer, control_plane_thread: ControlPlaneThread, admin_stub: AdminStub
) -> None:
    store = f"{etcd_server.url}/test-{uuid.uuid4().hex}/"  # the worker's etcd, a prefix of ours
    wall = FakeClock(START)
    replicas = [
        control_plane_thread(
            store=store, wall_clock=wall, decider_tick=0.05, report_ttl=1.0,
            replica_publish_interval=0.1, replica_lease_ttl=2,
        )
        for _ in range(2)
    ]  # fmt: skip

    def leaders() -> list[ServerThread]:
        return [cp for cp in replicas if _decider_state(cp)[0]]

    assert wait_until(lambda: len(leaders()) == 1, timeout=5.0)
    (leader,) = leaders()
    follower = next(cp for cp in replicas if cp is not leader)
    for _ in range(5):  # and it stays that way
        assert leaders() == [leader]

    stub = admin_stub(follower.target)
    stub.PutPolicy(pb.PutPolicyRequest(policies=[method_policy("quorum", POLICY)]), timeout=5)
    # The agents talk to the follower only: the leader sees them through the replicas' records.
    agents = [
        MeshAgent(follower.target, "transaction", BreakerRegistry(), instance_id=f"tx-{index}",
                  wall_clock=wall, report_interval=0.05).start()
        for index in range(3)
    ]  # fmt: skip
    try:
        for agent in agents:
            assert agent.wait_for_revision(1, timeout=5.0)
            agent.registry.get(METHOD).acquire().success()
            assert agent.report_now()
        for agent in agents[:2]:
            agent.registry.get(METHOD).acquire().failure()

        def decision() -> pb.Policy | None:
            listing = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
            return next((p for p in listing if p.HasField("fleet")), None)

        assert wait_until(lambda: decision() is not None, timeout=5.0)
        # Counted once the store answered the write (a read may see the decision a moment sooner).
        opened = {("transaction", METHOD, "opened"): 1}
        assert wait_until(lambda: _decider_state(leader)[1] == opened)
        assert _decider_state(follower)[1] == {}  # it saw the same quorum and left it alone
        assert wait_until(lambda: agents[2].registry.get(METHOD).state is State.FORCED_OPEN)

        leader.stop()  # its lease goes with it: the follower wins the next election
        assert wait_until(lambda: _decider_state(follower)[0], timeout=5.0)
        # The stored decision's prober sent no probe: the new decider moves it on.
        wall.advance(POLICY.open_duration + 1.0)

        def moved_on() -> bool:
            found = decision()
            return found is not None and found.fleet.period == 2

        assert wait_until(moved_on, timeout=5.0)
        reassigned = {("transaction", METHOD, "reassigned"): 1}
        assert wait_until(lambda: _decider_state(follower)[1] == reassigned)
    finally:
        for agent in agents:
            agent.stop()
