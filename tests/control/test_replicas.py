"""Replicas on one real etcd: writes anywhere reach every agent; replicas die; etcd dies.

Each test starts its own etcd (meshbreaker/control/store/etcd_server.py) and replicas as
ServerThreads with `store="etcd://..."`; agents are real MeshAgents.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest

from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.policies import Follower, PolicyIndex, Update
from meshbreaker.control.store.etcd import EtcdStore
from meshbreaker.control.store.etcd_server import EtcdServer
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import METHOD, AdminStub, ControlPlaneThread, method_policy
from tests.control.store_support import etcd_json
from tests.server_support import ServerThread, wait_until


@pytest.fixture
def replicas(
    etcd: EtcdServer, control_plane_thread: ControlPlaneThread
) -> Callable[[int], list[ServerThread]]:
    def start(count: int) -> list[ServerThread]:
        return [control_plane_thread(store=etcd.url, report_ttl=5.0) for _ in range(count)]

    return start


@pytest.fixture
def agents() -> Iterator[Callable[..., MeshAgent]]:
    started: list[MeshAgent] = []

    def start(target: str | list[str], service: str = "transaction") -> MeshAgent:
        agent = MeshAgent(target, service, BreakerRegistry(), report_interval=0.2).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def put(stub: pb_grpc.ControlPlaneStub, policy_id: str, failures: int, method: str = METHOD) -> int:
    policy = method_policy(policy_id, BreakerConfig(consecutive_failures=failures), method)
    return int(stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]), timeout=10).revision)


def test_a_write_on_any_replica_reaches_the_agents_and_views_of_every_replica(
    replicas: Callable[[int], list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> None:
    planes = replicas(3)
    fleet = [agents(plane.target) for plane in planes for _ in range(2)]  # two on each
    assert wait_until(lambda: all(agent.connected for agent in fleet), timeout=5)
    stubs = [admin_stub(plane.target) for plane in planes]
    events = stubs[2].WatchEvents(pb.WatchEventsRequest(), timeout=10)
    for index, stub in enumerate(stubs):
        revision = put(stub, f"p{index}", 3 + index, f"/bank.v1.AccountService/M{index}")
        assert all(agent.wait_for_revision(revision, timeout=5) for agent in fleet)
        assert all(s.ListPolicies(pb.ListPoliciesRequest()).revision >= revision for s in stubs)
    # Every change, wherever it was made, is an event on replica 2.
    changes = []
    for event in events:
        changes.append(event.policy_change.policy_id)
        if len(changes) == 3:
            break
    events.cancel()
    assert changes == ["p0", "p1", "p2"]
    for index in range(3):
        method = f"/bank.v1.AccountService/M{index}"
        assert {agent.registry.get(method).config.consecutive_failures for agent in fleet} == {
            3 + index
        }


def test_a_replica_dies_mid_burst_no_acknowledged_write_is_lost(
    etcd: EtcdServer,
    replicas: Callable[[int], list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> None:
    planes = replicas(3)
    targets = [plane.target for plane in planes]
    fleet = [agents(targets) for _ in range(6)]
    assert wait_until(lambda: all(agent.connected for agent in fleet), timeout=5)
    acknowledged: list[tuple[str, int]] = []
    stop = threading.Event()

    def method_of(policy_id: str) -> str:
        return f"/bank.v1.AccountService/{policy_id.replace('-', 'x').upper()}"

    def writer(slot: int) -> None:
        stubs = [admin_stub(target) for target in targets]
        count = 0
        while not stop.is_set():
            policy_id = f"w{slot}-{count}"
            method = method_of(policy_id)
            for attempt in range(len(stubs)):  # a client that fails over too
                try:
                    revision = put(stubs[(slot + attempt) % len(stubs)], policy_id, 3, method)
                except grpc.RpcError:
                    continue
                acknowledged.append((policy_id, revision))
                count += 1
                break

    writers = [threading.Thread(target=writer, args=(slot,)) for slot in range(2)]
    for thread in writers:
        thread.start()
    try:
        assert wait_until(lambda: len(acknowledged) >= 10, timeout=10)
        victim = planes[1]
        victim.close()
        done = len(acknowledged)
        assert wait_until(lambda: len(acknowledged) >= done + 10, timeout=10)
    finally:
        stop.set()
        for thread in writers:
            thread.join(10)
    survivor = admin_stub(planes[0].target)
    newest = max(revision for _, revision in acknowledged)
    # Replicas converge through the feed: the survivor may be a few revisions behind at first.
    assert wait_until(
        lambda: survivor.ListPolicies(pb.ListPoliciesRequest()).revision >= newest, timeout=5
    )
    listed = survivor.ListPolicies(pb.ListPoliciesRequest())
    stored = {policy.id: policy for policy in listed.policies}
    # Every acknowledged write was made at the revision it was acknowledged with, and its policy
    # is stored. A client whose put failed on the dying replica (UNAVAILABLE: it may or may not
    # have been applied) retries elsewhere, so the dying replica may finish the same put later:
    # then the policy is stored at a later revision, with the same selector and config.
    store = EtcdStore([etcd.endpoint])
    try:
        made = {(entry.policy_id, entry.revision) for entry in store.audit_log(limit=100_000)}
    finally:
        store.close()
    assert set(acknowledged) <= made
    lost = [
        (policy_id, revision)
        for policy_id, revision in acknowledged
        if policy_id not in stored
        or stored[policy_id].revision < revision
        or stored[policy_id].selector.method != method_of(policy_id)
    ]
    assert not lost, f"acknowledged writes (id, revision) not stored: {lost}"
    assert len({revision for _, revision in acknowledged}) == len(acknowledged)
    # Every agent is on a live replica with the newest revision, nothing re-applied backwards.
    assert all(agent.wait_for_revision(listed.revision, timeout=5) for agent in fleet)
    assert wait_until(lambda: all(agent.connected for agent in fleet), timeout=2)
    assert all(agent.target != victim.target for agent in fleet)


def test_while_etcd_is_down_replicas_serve_the_last_policies_and_refuse_writes(
    etcd: EtcdServer,
    replicas: Callable[[int], list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> None:
    planes = replicas(2)
    stubs = [admin_stub(plane.target) for plane in planes]
    first = put(stubs[0], "before", 4, "/bank.v1.AccountService/Before")
    agent = agents([plane.target for plane in planes])
    assert agent.wait_for_revision(first, timeout=5)
    # Each replica learns the write from its own change feed: both know it before etcd goes.
    assert wait_until(
        lambda: all(s.ListPolicies(pb.ListPoliciesRequest()).revision >= first for s in stubs),
        timeout=5,
    )
    etcd.stop()
    with pytest.raises(grpc.RpcError) as refused:
        put(stubs[1], "during", 5, "/bank.v1.AccountService/During")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "policy store unavailable" in (refused.value.details() or "")
    assert "etcd at 127.0.0.1:" in (refused.value.details() or "")
    for stub in stubs:  # reads keep answering from memory
        snapshot = stub.GetConfig(pb.GetConfigRequest(service="transaction"))
        assert snapshot.revision == first and [p.id for p in snapshot.policies] == ["before"]
    assert agent.connected and agent.applied_revision == first
    etcd.start()
    # Writes work again and reach the agent through either replica's feed.
    second = 0

    def written() -> bool:
        nonlocal second
        try:
            second = put(stubs[1], "after", 6, "/bank.v1.AccountService/After")
        except grpc.RpcError:
            return False
        return True

    assert wait_until(written, timeout=10)
    assert second == first + 1
    assert agent.wait_for_revision(second, timeout=10)
    assert agent.registry.get("/bank.v1.AccountService/After").config.consecutive_failures == 6


def test_a_follower_behind_a_compaction_relists(etcd: EtcdServer) -> None:
    store = EtcdStore([etcd.endpoint], prefix="/relist/")
    try:
        for name in ("a", "b", "c"):
            store.put([method_policy(name, BreakerConfig(), method=f"/s.S/{name}")])
        store.delete("a")
        store.compact(3)
        index = PolicyIndex(1, [])  # a replica that last saw revision 1
        index.watch("transaction")
        updates: list[Update] = []
        follower = Follower(store, index, updates.append, poll=0.05)
        follower.start()
        try:
            assert wait_until(lambda: any(update.relisted for update in updates), timeout=5)
        finally:
            follower.stop()
        relisted = next(update for update in updates if update.relisted)
        assert relisted.revision == 4
        snapshot = relisted.snapshots["transaction"].message()
        assert [policy.id for policy in snapshot.policies] == ["b", "c"]
        assert [policy.id for policy in index.policies()] == ["b", "c"]
    finally:
        store.close()


def test_closing_the_store_ends_every_task_on_its_loop(etcd: EtcdServer) -> None:
    # A task the store runs (a feed, a lease keepalive) that needs a few turns of the loop to
    # end once cancelled: close() must let it end, or it is "destroyed but pending" at exit.
    store = EtcdStore([etcd.endpoint], prefix="/closing/")
    started = threading.Event()

    async def cleans_up_slowly() -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.5)  # a goodbye to etcd, say

    task = asyncio.run_coroutine_threadsafe(cleans_up_slowly(), store.loop)
    feed = store.watch(0)  # a feed on a live etcd watch, left open
    assert started.wait(30)
    store.close()
    assert task.done() and task.cancelled()
    assert not asyncio.all_tasks(store.loop)
    feed.close()


def test_a_feed_started_after_etcd_compacted_its_history_up_to_now_follows_the_next_writes(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The feed's watch starts right after the revision its read saw, which etcd still has."""
    store = EtcdStore([etcd.endpoint], prefix="/compacted/")
    try:
        store.put([method_policy("a", BreakerConfig(), method="/s.S/a")])
        revision = store.list()[0]
        # etcd's own history (not the store's audit records) is compacted up to its newest.
        newest = int(etcd_json(etcd, "/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        etcd_json(etcd, "/v3/kv/compaction", {"revision": newest, "physical": True})
        with caplog.at_level(logging.DEBUG, logger="meshbreaker.control.store.etcd_feed"):
            feed = store.watch(revision)
            try:
                store.put([method_policy("b", BreakerConfig(), method="/s.S/b")])
                assert [entry.policy_id for entry in feed.next(timeout=10)] == ["b"]
            finally:
                feed.close()
        feed_said = [r.getMessage() for r in caplog.records if r.name.endswith("etcd_feed")]
        assert feed_said == []  # no failed watch, no retry
    finally:
        store.close()
