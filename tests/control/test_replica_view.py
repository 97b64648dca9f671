"""Any replica shows the whole mesh: instances, breakers and events of agents on other replicas.

Replicas on one real etcd share their instances through records on leases (replica_mesh); a
replica that stops takes its instances out of every view, and they come back through the
replica their agents fail over to. Publishing is fast here (0.1 s) so the tests wait little.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from meshbreaker.config import BreakerConfig, State
from meshbreaker.control import replica_mesh
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.instances import Instance, InstanceTable, MeshView
from meshbreaker.control.limits import Limits
from meshbreaker.control.store.etcd import EtcdStore
from meshbreaker.control.store.etcd_presence import EtcdPresence
from meshbreaker.control.store.etcd_server import EtcdServer
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from meshbreaker.v1 import mesh_pb2
from tests.control.agent_support import METHOD, AdminStub, ControlPlaneThread
from tests.control.store_support import etcd_json
from tests.scrape_support import Scrape
from tests.server_support import ServerThread, wait_until


@pytest.fixture
def replicas(
    etcd: EtcdServer, control_plane_thread: ControlPlaneThread
) -> Callable[..., list[ServerThread]]:
    def start(count: int, **options: Any) -> list[ServerThread]:
        """`count` replicas on the etcd store; `options` override the short test defaults."""
        settings = {"report_ttl": 5.0, "replica_publish_interval": 0.1, "replica_lease_ttl": 2}
        return [
            control_plane_thread(store=etcd.url, **{**settings, **options}) for _ in range(count)
        ]

    return start


@pytest.fixture
def agents() -> Iterator[Callable[..., MeshAgent]]:
    started: list[MeshAgent] = []

    def start(target: str | list[str], service: str) -> MeshAgent:
        registry = BreakerRegistry(BreakerConfig(consecutive_failures=1, open_duration=60.0))
        agent = MeshAgent(target, service, registry, report_interval=0.2).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture
def across(
    replicas: Callable[..., list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> tuple[MeshAgent, pb_grpc.ControlPlaneStub]:
    """Two replicas: an agent of transaction on the first, and an admin stub of the second."""
    planes = replicas(2)
    return agents(planes[0].target, "transaction"), admin_stub(planes[1].target)


def listed(stub: pb_grpc.ControlPlaneStub, **request: object) -> pb.ListBreakersResponse:
    return stub.ListBreakers(pb.ListBreakersRequest(**request), timeout=10)  # type: ignore[arg-type]


def shows_only(stub: pb_grpc.ControlPlaneStub, agent: MeshAgent) -> bool:
    """Whether the replica behind `stub` lists exactly `agent`'s instance."""
    return [i.instance_id for i in listed(stub).instances] == [agent.instance_id]


def test_every_replica_lists_every_instance_with_its_breakers_and_configs(
    replicas: Callable[..., list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tiny record parts: an instance's breakers are spread over several records and reassembled.
    monkeypatch.setattr(replica_mesh, "PART_BYTES", 200)
    planes = replicas(2)
    near = agents(planes[0].target, "transaction")
    far = agents(planes[1].target, "gateway")
    for index in range(5):
        far.registry.get(f"/bank.v1.AccountService/M{index}").acquire().success()
    near.registry.get(METHOD).acquire().success()
    stubs = [admin_stub(plane.target) for plane in planes]
    everyone = {near.instance_id, far.instance_id}

    def whole(stub: pb_grpc.ControlPlaneStub) -> bool:
        answer = listed(stub, include_instances=True)
        breakers = {(group.service, group.name): group.total for group in answer.groups}
        return {i.instance_id for i in answer.instances} == everyone and len(breakers) == 6

    for stub in stubs:
        assert wait_until(functools.partial(whole, stub), timeout=10)
    answer = listed(stubs[0], service="gateway", include_instances=True)
    assert [instance.instance_id for instance in answer.instances] == [far.instance_id]
    assert [group.name for group in answer.groups] == [
        f"/bank.v1.AccountService/M{index}" for index in range(5)
    ]
    for group in answer.groups:
        assert group.total == 1 and group.closed == 1
        # The effective config an instance reported travels with its breaker.
        (item,) = group.instance_breakers
        assert item.instance_id == far.instance_id
        assert item.snapshot.config.consecutive_failures == 1
    # The replica's own view for /metrics counts both instances and both replicas.
    view = planes[0].call(_mesh_view(planes[0]))
    assert {instance.instance_id for instance in view.instances} == everyone
    assert view.replicas == 2


def test_a_lasting_state_shows_its_real_age_on_every_replica(
    across: tuple[MeshAgent, pb_grpc.ControlPlaneStub],
) -> None:
    agent, elsewhere = across
    breaker = agent.registry.get(METHOD)
    breaker.acquire().failure()  # one failure opens it (open for 60 s)

    def age_elsewhere() -> float:
        return _open_age(elsewhere)

    assert wait_until(lambda: age_elsewhere() >= 0, timeout=10)
    first = age_elsewhere()
    # The agent keeps reporting the same state: its record is not rewritten (only the replica's
    # heartbeat is), yet the age the other replica tells keeps growing with the real one.
    assert wait_until(lambda: age_elsewhere() >= first + 1.0, timeout=10)
    assert breaker.state is State.OPEN


def test_a_breakers_age_on_another_replica_counts_from_its_report_not_from_its_reading(
    replicas: Callable[..., list[ServerThread]], admin_stub: AdminStub
) -> None:
    clock, wall = FakeClock(1000.0), FakeClock(1_700_000_000.0)
    options = {"report_ttl": 600.0, "clock": clock, "wall_clock": wall}
    planes = replicas(2, **options)
    opened = pb.BreakerSnapshot(name=METHOD, state=pb.BREAKER_STATE_OPEN, state_age=5.0)
    report = pb.ReportStateRequest(instance_id="tx-1", service="transaction", breakers=[opened])
    admin_stub(planes[0].target).ReportState(report, timeout=10)  # once: the record never changes
    assert wait_until(lambda: _open_age(admin_stub(planes[1].target)) == 5.0, timeout=10)
    # 100 s later (a heartbeat stamped then is in etcd: the second replica ages the state by it)
    # a replica starts and reads the record: the state is 100 s older than it was reported.
    clock.advance(100)
    wall.advance(100)
    assert wait_until(lambda: _open_age(admin_stub(planes[1].target)) == 105.0, timeout=10)
    (late,) = replicas(1, **options)
    stub = admin_stub(late.target)
    assert wait_until(lambda: _open_age(stub) == pytest.approx(105.0), timeout=10)


def _open_age(stub: pb_grpc.ControlPlaneStub) -> float:
    """An OPEN breaker's state_age as the replica behind `stub` tells it (-1: none OPEN there)."""
    for group in listed(stub, include_instances=True).groups:
        for item in group.instance_breakers:
            if item.snapshot.state == pb.BREAKER_STATE_OPEN:
                return item.snapshot.state_age
    return -1.0


def test_another_replica_keeps_showing_a_config_the_agent_reported_only_once(
    across: tuple[MeshAgent, pb_grpc.ControlPlaneStub],
) -> None:
    agent, elsewhere = across
    breaker = agent.registry.get(METHOD)

    def seen_elsewhere(total: int) -> pb.BreakerSnapshot | None:
        for group in listed(elsewhere, include_instances=True).groups:
            for item in group.instance_breakers:
                if item.snapshot.total == total:
                    return item.snapshot
        return None

    breaker.acquire().success()
    assert wait_until(lambda: seen_elsewhere(1) is not None, timeout=10)
    # The agent sends a config once; later reports of the breaker carry only its numbers.
    breaker.acquire().success()
    assert wait_until(lambda: seen_elsewhere(2) is not None, timeout=10)
    snapshot = seen_elsewhere(2)
    assert snapshot is not None and snapshot.HasField("config")
    assert snapshot.config.consecutive_failures == 1


async def _mesh_view(plane: ServerThread) -> MeshView:
    return plane.running.servicer.mesh_view()


def test_a_transition_on_one_replica_is_an_event_on_every_other(
    across: tuple[MeshAgent, pb_grpc.ControlPlaneStub],
) -> None:
    agent, remote = across
    assert wait_until(
        lambda: any(i.instance_id == agent.instance_id for i in listed(remote).instances),
        timeout=10,
    )
    events = remote.WatchEvents(pb.WatchEventsRequest(service="transaction"), timeout=10)
    agent.registry.get(METHOD).acquire().failure()  # consecutive_failures=1: it opens
    transitions = []
    for event in events:
        if event.HasField("transition"):
            transitions.append(event.transition)
            break
    events.cancel()
    (transition,) = transitions
    assert transition.instance_id == agent.instance_id
    assert transition.name == METHOD
    assert transition.to_state == pb.BREAKER_STATE_OPEN
    # The group's state on the other replica follows within a publish.
    assert wait_until(
        lambda: [g.open for g in listed(remote, state=pb.BREAKER_STATE_OPEN).groups] == [1],
        timeout=10,
    )


def test_a_nack_on_one_replica_is_one_event_on_every_other(
    replicas: Callable[..., list[ServerThread]], admin_stub: AdminStub
) -> None:
    planes = replicas(2)
    near, remote = (admin_stub(plane.target) for plane in planes)
    nack = pb.Nack(revision=1, reason="policies[0]: bad")

    def report(total: int, **fields: Any) -> None:
        breaker = pb.BreakerSnapshot(name=METHOD, state=pb.BREAKER_STATE_CLOSED, total=total)
        request = pb.ReportStateRequest(
            instance_id="tx-1", service="transaction", breakers=[breaker], **fields
        )
        near.ReportState(request, timeout=10)

    def nacks() -> list[pb.ConfigNack]:
        events = remote.ListEvents(pb.ListEventsRequest(), timeout=10).events
        return [event.nack for event in events if event.HasField("nack")]

    def shown(total: int) -> bool:
        groups = listed(remote, include_instances=True).groups
        return any(i.snapshot.total == total for g in groups for i in g.instance_breakers)

    report(1, nack=nack)
    assert wait_until(lambda: len(nacks()) == 1, timeout=10)
    (seen,) = nacks()
    assert (seen.instance_id, seen.service, seen.nack) == ("tx-1", "transaction", nack)
    # The record is written again (the same NACK, then none): no event repeats it.
    report(2, nack=nack)
    assert wait_until(lambda: shown(2), timeout=10)
    report(3, applied_revision=1)
    assert wait_until(lambda: shown(3), timeout=10)
    assert len(nacks()) == 1


def test_a_stopped_replicas_instances_leave_every_view_and_come_back_by_failover(
    replicas: Callable[..., list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> None:
    planes = replicas(3)
    agent = agents([planes[0].target, planes[1].target], "transaction")
    assert wait_until(lambda: agent.connected, timeout=10)
    home, other = (planes[0], planes[1]) if agent.target == planes[0].target else planes[1::-1]
    watcher = admin_stub(planes[2].target)

    def seen_on(target: str | None) -> bool:
        answer = listed(watcher)
        return [i.instance_id for i in answer.instances] == [agent.instance_id] and (
            target is None or agent.target == target
        )

    assert wait_until(lambda: seen_on(None), timeout=10)
    home.stop()  # gives its lease back: its records go at once
    # The agent is on the other replica, and replica 2 shows it once, served from there.
    assert wait_until(lambda: seen_on(other.target), timeout=10)
    assert len(listed(watcher).instances) == 1


def test_a_new_instance_is_shared_at_once_not_at_the_next_publish(
    replicas: Callable[..., list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> None:
    """A new instance is urgent: the other replicas list it long before the publish interval."""
    planes = replicas(2, report_ttl=600.0, replica_publish_interval=3600.0, replica_lease_ttl=600)
    agent = agents(planes[0].target, "transaction")
    remote = admin_stub(planes[1].target)
    assert wait_until(lambda: shows_only(remote, agent), timeout=30)


def test_a_stopping_replica_gives_its_lease_back_so_its_instances_go_long_before_the_ttl(
    replicas: Callable[..., list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> None:
    # Neither the lease nor a report TTL runs out during the test: only the revoke removes them.
    planes = replicas(2, report_ttl=600.0, replica_lease_ttl=600)
    # Two instances: the revoke takes both records in one change, and both leave the view.
    served = {
        agents(planes[0].target, service).instance_id for service in ("transaction", "gateway")
    }
    remote = admin_stub(planes[1].target)
    assert wait_until(lambda: {i.instance_id for i in listed(remote).instances} == served)
    planes[0].stop()
    assert wait_until(lambda: not listed(remote).instances, timeout=30)


def test_a_heartbeat_keeps_another_replicas_unchanged_instances_fresh(
    replicas: Callable[..., list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
) -> None:
    clock, wall = FakeClock(1000.0), FakeClock(1_700_000_000.0)
    planes = replicas(2, report_ttl=30.0, clock=clock, wall_clock=wall)
    agent = agents(planes[0].target, "transaction")
    remote = admin_stub(planes[1].target)

    def report_age() -> float:
        """Seconds since the agent's last report as the second replica tells it (inf: not seen)."""
        found = [i for i in listed(remote).instances if i.instance_id == agent.instance_id]
        return found[0].report_age if found else math.inf

    assert wait_until(lambda: report_age() < 10, timeout=10)
    # The agent's reports tell nothing new, so its record is never rewritten: only the first
    # replica's heartbeats, stamped with the new time, vouch for it on the second.
    clock.advance(20)
    wall.advance(20)
    assert wait_until(lambda: report_age() < 10, timeout=10)
    clock.advance(20)
    wall.advance(20)
    assert wait_until(lambda: report_age() < 10, timeout=10)


def test_a_healthy_replica_shares_its_instances_without_a_word_of_an_outage(
    replicas: Callable[..., list[ServerThread]],
    admin_stub: AdminStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = pb.BreakerSnapshot(name=METHOD, state=pb.BREAKER_STATE_CLOSED, total=1)
    report = pb.ReportStateRequest(instance_id="tx-1", service="transaction", breakers=[breaker])
    with caplog.at_level(logging.INFO, logger="meshbreaker.control.replica_mesh"):
        planes = replicas(2)
        admin_stub(planes[0].target).ReportState(report, timeout=10)
        remote = admin_stub(planes[1].target)
        assert wait_until(lambda: [i.instance_id for i in listed(remote).instances] == ["tx-1"])
    said = [r.getMessage() for r in caplog.records if "sharing this replica" in r.getMessage()]
    assert said == []  # neither a failure nor "again" after one that never happened


def test_an_instance_that_came_while_etcd_was_away_is_shared_once_it_is_back(
    etcd: EtcdServer,
    replicas: Callable[..., list[ServerThread]],
    admin_stub: AdminStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The lease outlives the outage: only the failed publish's changes, kept, bring it over.
    planes = replicas(2, report_ttl=600.0, replica_lease_ttl=600)
    near, remote = (admin_stub(plane.target) for plane in planes)
    etcd.stop()
    breaker = pb.BreakerSnapshot(name=METHOD, state=pb.BREAKER_STATE_CLOSED, total=1)
    report = pb.ReportStateRequest(instance_id="tx-1", service="transaction", breakers=[breaker])
    with caplog.at_level(logging.WARNING, logger="meshbreaker.control.replica_mesh"):
        near.ReportState(report, timeout=10)  # reported once, never again

        def publish_failed() -> bool:
            return any("sharing this replica's instances" in r.getMessage() for r in caplog.records)

        assert wait_until(publish_failed, timeout=10)
    etcd.start()
    assert wait_until(lambda: [i.instance_id for i in listed(remote).instances] == ["tx-1"])


def test_a_crashed_replicas_records_expire_with_its_lease(etcd: EtcdServer) -> None:
    crashed = EtcdStore([etcd.endpoint], prefix="/lease/")
    watching = EtcdStore([etcd.endpoint], prefix="/lease/")
    try:
        presence = crashed.presence("crashed", ttl=2)
        assert presence is not None
        heartbeat = mesh_pb2.ReplicaHeartbeat(replica_id="crashed", instances=1)
        assert presence.publish({"heartbeat": heartbeat.SerializeToString(), "instance/x/0": b""})
        for stray in (b"/lease/mesh/stray", b"/lease/mesh/stray/"):  # no replica's record: unseen
            etcd_json(etcd, "/v3/kv/put", {"key": base64.b64encode(stray).decode(), "value": ""})
        observer = watching.presence("observer", ttl=2)
        assert observer is not None
        feed = observer.feed()
        try:
            reset, changes = feed.next(timeout=5)
            assert reset
            assert {(c.replica_id, c.name) for c in changes} == {
                ("crashed", "heartbeat"),
                ("crashed", "instance/x/0"),
            }
            # The process dies: its etcd connections go, its lease is never given back.
            crashed.close()
            gone: set[str] = set()

            def all_gone() -> bool:
                gone.update(c.name for c in feed.next(timeout=0.1)[1] if c.value is None)
                return gone == {"heartbeat", "instance/x/0"}

            assert wait_until(all_gone, timeout=10)
        finally:
            feed.close()
            observer.close()
    finally:
        crashed.close()
        watching.close()


def test_a_replica_renews_its_lease_twice_within_a_ttl_so_one_failed_renewal_loses_nothing(
    etcd: EtcdServer,
) -> None:
    """The keepalive on a fake clock: two renewals reach etcd before one TTL has passed."""
    ttl = 30
    clock, leased = FakeClock(0.0), threading.Event()

    async def sleep(seconds: float) -> None:
        """The keepalive's waits: on the fake clock once leased, until one TTL has passed."""
        while not leased.is_set():
            await asyncio.sleep(0.01)
        clock.advance(seconds)
        if clock() >= ttl:
            await asyncio.Event().wait()  # the keepalive rests here until the replica closes

    with _presence(etcd, ttl, sleep) as presence:
        assert presence.publish({"heartbeat": b""})  # on a lease from now
        leased.set()
        assert wait_until(lambda: clock() >= ttl, timeout=30)
        metrics = Scrape(f"http://127.0.0.1:{etcd.client_port}/metrics")  # read now
        assert metrics.one("etcd_debugging_lease_renewed_total") == 2


def test_a_publish_that_finds_its_lease_gone_says_so_and_the_next_takes_a_new_one(
    etcd: EtcdServer,
) -> None:
    """Without the keepalive's help: a lost lease is dropped by the publish that finds it."""

    async def never(seconds: float) -> None:
        await asyncio.Event().wait()  # a keepalive that never comes round

    with _presence(etcd, 600, never) as presence:
        assert presence.publish({"heartbeat": b"1"})
        for lease in etcd_json(etcd, "/v3/lease/leases", {}).get("leases", []):
            etcd_json(etcd, "/v3/lease/revoke", {"ID": lease["ID"]})  # as a long outage would
        assert presence.publish({"heartbeat": b"2"}) is False  # every record went with it
        assert presence.publish({"heartbeat": b"3"}) is True
        stored = etcd_json(
            etcd, "/v3/kv/range", {"key": base64.b64encode(b"/p/mesh/r1/heartbeat").decode()}
        )
        assert [base64.b64decode(kv["value"]) for kv in stored["kvs"]] == [b"3"]


@contextlib.contextmanager
def _presence(
    etcd: EtcdServer, ttl: int, sleep: Callable[[float], Awaitable[None]]
) -> Iterator[EtcdPresence]:
    """Replica r1's presence on `etcd` (prefix /p/), its keepalive waiting with `sleep`."""
    store = EtcdStore([etcd.endpoint], prefix="/p/")
    presence = EtcdPresence(store, "r1", ttl, sleep=sleep)
    try:
        yield presence
    finally:
        presence.close()
        store.close()


def test_only_reports_that_tell_something_new_are_shared() -> None:
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)

    def report(
        total: int, state: pb.BreakerState.ValueType = pb.BREAKER_STATE_CLOSED, **more: Any
    ) -> None:
        breaker = pb.BreakerSnapshot(
            name=METHOD, state=state, total=total, successful=total, state_age=total * 0.5
        )
        table.record(
            pb.ReportStateRequest(
                instance_id="i-1", service="transaction", breakers=[breaker], full=True, **more
            ),
            now=float(total),
        )

    def shared() -> set[str]:
        changed, table.changed = table.changed, set()
        return changed

    report(1)
    assert shared() == {"i-1"}  # new here
    version = table.version
    report(1)  # the same numbers, only its ages moved: nothing to write to the store
    assert shared() == set() and table.version == version
    report(2)  # a call went through
    assert shared() == {"i-1"} and table.version > version
    report(2, pb.BREAKER_STATE_OPEN)
    assert shared() == {"i-1"}
    report(2, pb.BREAKER_STATE_OPEN, applied_revision=7)  # only the policies in force moved
    assert shared() == {"i-1"}
    report(2, pb.BREAKER_STATE_OPEN, applied_revision=7, applied_store_id="store-b")
    assert shared() == {"i-1"}


def test_reports_sweep_out_silent_instances_at_most_once_a_second() -> None:
    """A report drops the instances past the report TTL, but sweeps at most once per second."""
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)

    def report(instance_id: str, now: float) -> None:
        request = pb.ReportStateRequest(instance_id=instance_id, service="transaction")
        table.record(request, now=now)

    report("i-1", 0.0)
    report("i-2", 29.5)  # a sweep: nothing is old yet
    report("i-2", 30.25)  # i-1 is past the TTL, but the last sweep was under a second ago
    assert sorted(table.local()) == ["i-1", "i-2"]
    report("i-2", 30.5)  # a second after the last sweep: the next one
    assert sorted(table.local()) == ["i-2"]


def test_a_feed_that_lists_again_forgets_the_replicas_gone_meanwhile() -> None:
    """After a reset (the feed listed mesh/ again), a replica without a heartbeat now is gone."""
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)
    clock = FakeClock(1_700_000_000.0)
    remote = replica_mesh._RemoteRecords("r-1", table, lambda event: None, clock, clock)
    beats = {name: mesh_pb2.ReplicaHeartbeat(replica_id=name) for name in ("r-2", "r-3")}
    remote.apply(False, [(name, replica_mesh.HEARTBEAT, beat) for name, beat in beats.items()])
    assert remote.replicas == 2
    remote.apply(True, [("r-3", replica_mesh.HEARTBEAT, beats["r-3"])])  # r-2 left while away
    assert remote.replicas == 1


def test_a_feed_that_lists_again_keeps_nothing_of_the_records_gone_meanwhile() -> None:
    """A reset drops every record known before (memory stays bounded by what is listed)."""
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)
    clock = FakeClock(1_700_000_000.0)
    remote = replica_mesh._RemoteRecords("r-1", table, lambda event: None, clock, clock)
    instance = Instance("i-9", "transaction", last_seen=0.0)
    (encoded,) = replica_mesh.encode_instance(replica_mesh._Shared(instance, {}, {}, [], 0.0), 1)
    record = mesh_pb2.ReplicaInstance.FromString(encoded)
    remote.apply(False, [("r-2", replica_mesh._instance_name("i-9", 0), record)])
    assert list(table.remote) == [("r-2", "i-9")]
    remote.apply(True, [])  # r-2 and its records went while the feed was away
    assert table.remote == {}
    assert (remote._parts, remote._instance_ids) == ({}, {})


def test_another_replicas_record_is_live_until_it_is_a_report_ttl_old() -> None:
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)
    table.remote[("r-2", "i-9")] = Instance("i-9", "transaction", last_seen=100.0, replica="r-2")
    assert [instance.instance_id for instance in table.live(now=130.0)] == ["i-9"]
    assert table.live(now=130.5) == []  # its replica stopped vouching for it


@pytest.mark.parametrize("publish_interval", [0.1, 1.0], ids=["publish finds", "keepalive finds"])
def test_a_replica_whose_lease_was_lost_writes_its_instances_again(
    etcd: EtcdServer,
    replicas: Callable[..., list[ServerThread]],
    agents: Callable[..., MeshAgent],
    admin_stub: AdminStub,
    publish_interval: float,
) -> None:
    # A publish more often than the keepalive (every ttl/3) finds the lease gone first, or not.
    planes = replicas(2, replica_publish_interval=publish_interval)
    agent = agents(planes[0].target, "transaction")
    remote = admin_stub(planes[1].target)
    assert wait_until(lambda: shows_only(remote, agent), timeout=10)
    start = base64.b64encode(b"/meshbreaker/mesh/").decode()
    end = base64.b64encode(b"/meshbreaker/mesh0").decode()

    def records() -> list[str]:
        found = etcd_json(etcd, "/v3/kv/range", {"key": start, "range_end": end})
        return [base64.b64decode(kv["key"]).decode() for kv in found.get("kvs", [])]

    assert any("/instance/" in key for key in records())
    # etcd drops every lease (as when they expire during a long outage): the records go too.
    for lease in etcd_json(etcd, "/v3/lease/leases", {}).get("leases", []):
        etcd_json(etcd, "/v3/lease/revoke", {"ID": lease["ID"]})
    # The replica notices, takes a new lease and writes its instance again.
    assert wait_until(lambda: any("/instance/" in key for key in records()), timeout=10)
    assert wait_until(lambda: shows_only(remote, agent), timeout=10)


async def test_a_refused_publish_puts_its_transitions_back_ahead_of_newer_ones_keeping_1000(
    etcd: EtcdServer,
) -> None:
    """The transitions a failed publish took go back before those noted during its write."""
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)
    table.record(pb.ReportStateRequest(instance_id="i-1", service="transaction"), now=0.0)
    clock = FakeClock(1_700_000_000.0)

    def note(mesh: replica_mesh.ReplicaMesh, sequences: range) -> None:
        for sequence in sequences:
            transition = pb.BreakerTransition(
                instance_id="i-1", service="transaction", name=METHOD, sequence=sequence
            )
            mesh.note_event(pb.Event(transition=transition))

    with _presence(etcd, 600, asyncio.sleep) as presence:
        mesh = replica_mesh.ReplicaMesh(
            presence, table, lambda event: None, clock=clock, wall_clock=clock, interval=3600.0
        )
        try:
            await mesh._publish_once()  # the instance is written, on a lease from now
            for lease in etcd_json(etcd, "/v3/lease/leases", {}).get("leases", []):
                etcd_json(etcd, "/v3/lease/revoke", {"ID": lease["ID"]})
            note(mesh, range(1, 601))
            publishing = asyncio.ensure_future(mesh._publish_once())
            await asyncio.sleep(0)  # it has taken 1..600 and awaits its write (the loop is ours)
            note(mesh, range(601, 1002))  # noted while that write is out
            await publishing  # it finds the lease gone: what it took waits for the next one
            await mesh._publish_once()
        finally:
            mesh._executor.shutdown()
        key = base64.b64encode(b"/p/mesh/r1/instance/").decode()
        end = base64.b64encode(b"/p/mesh/r1/instance0").decode()
        (stored,) = etcd_json(etcd, "/v3/kv/range", {"key": key, "range_end": end})["kvs"]
    record = mesh_pb2.ReplicaInstance.FromString(base64.b64decode(stored["value"]))
    # In the order they happened; of the 1001, the oldest is dropped (MAX_PENDING_TRANSITIONS).
    assert [r.sequence for r in record.report.transition_log] == list(range(2, 1002))
