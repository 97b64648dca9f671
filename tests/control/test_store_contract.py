"""The PolicyStore contract, run against every store (SQLite file, real etcd).

CAS revisions, atomic puts, selector uniqueness, the audit log, the store id, and the change feed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from meshbreaker.control.store import (
    AuditEntry,
    ChangeFeed,
    ClusterNotFoundError,
    CompactedError,
    EndpointLimitError,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    SqliteStore,
    StoreError,
    StoreUnavailableError,
    etcd_feed,
)
from meshbreaker.control.store import sqlite as sqlite_store
from meshbreaker.control.store.etcd_server import EtcdServer, free_port
from meshbreaker.control.store.url import STORE_URL_FORMS, open_store, parse_etcd_url
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2
from tests.control.store_support import OpenStore, etcd_json
from tests.scrape_support import Scrape
from tests.server_support import wait_until

if TYPE_CHECKING:
    from meshbreaker.control.store.etcd import EtcdStore


def policy(policy_id: str, service: str = "", caller: str = "", rate: float = 0.5) -> pb.Policy:
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, service=service),
        config=pb.BreakerConfig(failure_rate_threshold=rate),
    )


def test_is_a_policy_store(store: PolicyStore) -> None:
    assert isinstance(store, PolicyStore)
    assert store.revision() == 0
    assert store.list() == (0, [])


def test_put_stamps_one_new_revision_for_all_policies(store: PolicyStore) -> None:
    entries = store.put([policy("b", "s.B"), policy("a", "s.A")], actor="admin@peer")
    assert [e.revision for e in entries] == [1, 1]
    revision, policies = store.list()
    assert revision == 1
    assert [p.id for p in policies] == ["a", "b"]
    stored = store.get("a")
    assert stored is not None
    assert stored.revision == 1
    assert stored.updated_by == "admin@peer"
    assert stored.updated_at.seconds == 1_700_000_000
    assert stored.config.failure_rate_threshold == 0.5
    store.put([policy("a", "s.A", rate=0.3)])
    assert store.revision() == 2
    stored = store.get("a")
    assert stored is not None and stored.revision == 2
    assert stored.config.failure_rate_threshold == pytest.approx(0.3)
    untouched = store.get("b")
    assert untouched is not None and untouched.revision == 1


def test_compare_and_set(store: PolicyStore) -> None:
    store.put([policy("a", "s.A")], expected_revision=0)
    with pytest.raises(RevisionMismatchError) as caught:
        store.put([policy("b", "s.B")], expected_revision=0)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    with pytest.raises(RevisionMismatchError):
        store.delete("a", expected_revision=7)
    assert store.list() == (1, [store.get("a")])
    store.delete("a", expected_revision=1)
    assert store.list() == (2, [])


def test_delete_unknown_is_not_found_and_changes_nothing(store: PolicyStore) -> None:
    with pytest.raises(PolicyNotFoundError):
        store.delete("nope")
    assert store.revision() == 0
    assert store.audit_log() == []


def test_a_selector_belongs_to_one_policy(store: PolicyStore) -> None:
    store.put([policy("a", "s.A")])
    with pytest.raises(SelectorConflictError) as caught:
        store.put([policy("ok", "s.OK"), policy("b", "s.A")])
    assert (caught.value.policy_id, caught.value.other_id) == ("b", "a")
    # All or nothing: "ok" was not stored either, and the revision did not move.
    assert store.get("ok") is None and store.revision() == 1
    # The same selector with another caller is another selector.
    store.put([policy("b", "s.A", caller="tx")])
    # Moving a selector between policies in one put is fine.
    store.put([policy("a", "s.Moved"), policy("c", "s.A")])
    assert store.revision() == 3


def test_bad_put_arguments(store: PolicyStore) -> None:
    for bad in ([], [policy("a"), policy("a", "s.X")], [policy("")]):
        with pytest.raises(StoreError):
            store.put(bad)
    assert store.revision() == 0


def test_audit_log_records_who_when_before_after(store: PolicyStore) -> None:
    store.put([policy("a", "s.A", rate=0.5)], actor="admin@1")
    store.put([policy("a", "s.A", rate=0.25)], actor="admin@2")
    store.delete("a", actor="admin@3")
    log = store.audit_log()
    assert [(e.revision, e.action, e.actor) for e in log] == [
        (1, "put", "admin@1"),
        (2, "put", "admin@2"),
        (3, "delete", "admin@3"),
    ]
    assert all(e.time == pytest.approx(1_700_000_000.5) for e in log)
    assert log[0].before is None and log[0].after is not None
    assert log[1].before is not None and log[1].before.config.failure_rate_threshold == 0.5
    assert log[1].after is not None and log[1].after.config.failure_rate_threshold == 0.25
    assert log[2].after is None and log[2].before is not None
    assert [e.revision for e in store.audit_log(since_revision=1, limit=1)] == [2]


def test_reopening_keeps_policies_revision_audit_and_id(open_store: OpenStore) -> None:
    first = open_store()
    first.put([policy("a", "s.A"), policy("b", "s.B")])
    first.delete("a")
    created = first.store_id
    first.close()
    second = open_store()
    assert second.revision() == 2
    assert [p.id for p in second.list()[1]] == ["b"]
    assert len(second.audit_log()) == 3
    assert second.store_id == created
    assert len(created) == 36  # a UUID: two stores never share one by accident
    # The revision keeps growing after a restart; it never reuses a number.
    assert second.put([policy("c", "s.C")])[0].revision == 3


def test_two_handles_on_one_store_do_not_lose_writes(open_store: OpenStore) -> None:
    one, two = open_store(), open_store()
    assert one.store_id == two.store_id
    one.put([policy("a", "s.A")])
    with pytest.raises(RevisionMismatchError):
        two.put([policy("b", "s.B")], expected_revision=0)
    two.put([policy("b", "s.B")], expected_revision=1)
    assert one.list()[0] == 2 and [p.id for p in one.list()[1]] == ["a", "b"]
    # Without an expected revision, racing writers both land, at distinct revisions.
    revisions = {one.put([policy("c", "s.C")])[0].revision, two.delete("c").revision}
    assert revisions == {3, 4}


# -- the change feed ---------------------------------------------------------------------------


def test_the_feed_replays_history_then_follows_every_writer(open_store: OpenStore) -> None:
    store, other = open_store(), open_store()
    store.put([policy("a", "s.A"), policy("b", "s.B")], actor="one")
    store.delete("a")
    with store.watch(0) as feed:
        replayed = feed.next(timeout=5)
        assert [(e.revision, e.policy_id, e.action) for e in replayed] == [
            (1, "a", "put"),
            (1, "b", "put"),
            (2, "a", "delete"),
        ]
        assert replayed[0].actor == "one" and replayed[0].after is not None
        assert feed.next(timeout=0.05) == []
        other.put([policy("c", "s.C")], actor="two")  # another handle: another replica
        followed = _next_nonempty(feed)
        assert [(e.revision, e.policy_id, e.actor) for e in followed] == [(3, "c", "two")]
        assert followed[0].after == store.get("c")


def test_a_feed_from_a_revision_starts_after_it(store: PolicyStore) -> None:
    for name in ("a", "b", "c"):
        store.put([policy(name, f"s.{name.upper()}")])
    with store.watch(2) as feed:
        assert [e.revision for e in _next_nonempty(feed)] == [3]


def test_compaction_makes_an_older_feed_relist(store: PolicyStore) -> None:
    for name in ("a", "b", "c", "d"):
        store.put([policy(name, f"s.{name.upper()}")])
    store.compact(2)
    with pytest.raises(CompactedError) as caught:
        store.watch(1)
    assert (caught.value.since_revision, caught.value.compacted_revision) == (1, 2)
    assert "re-list" in str(caught.value)
    with store.watch(2) as feed:
        assert [e.revision for e in _next_nonempty(feed)] == [3, 4]
    assert [e.revision for e in store.audit_log()] == [3, 4]
    assert store.list()[0] == 4 and len(store.list()[1]) == 4  # policies are not history


def test_a_feed_follows_a_healthy_store_without_a_warning(
    open_store: OpenStore, caplog: pytest.LogCaptureFixture
) -> None:
    store, other = open_store(), open_store()
    with caplog.at_level(logging.WARNING, logger="meshbreaker"), store.watch(0) as feed:
        for name in ("a", "b"):
            other.put([policy(name, f"s.{name.upper()}")])
            assert [e.policy_id for e in _next_nonempty(feed)] == [name]
    # Warnings are for outages (a retry of the watch is one). Only meshbreaker's own records
    # count: a grpc.aio poller left by an earlier test may log from asyncio when it is collected.
    assert not [record for record in caplog.records if record.name.startswith("meshbreaker")]


def test_a_feed_far_behind_reads_in_steps_then_follows(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 4 revisions: 10 behind is three range reads, the last one short.
    monkeypatch.setattr(sqlite_store, "FEED_BATCH_REVISIONS", 4)
    monkeypatch.setattr(etcd_feed, "FEED_BATCH_REVISIONS", 4)
    store, other = open_store(), open_store()
    for index in range(10):
        store.put([policy("a", "s.A", rate=(index + 1) / 20)])
    with store.watch(0) as feed:
        seen: list[int] = []
        while len(seen) < 10:
            seen += [entry.revision for entry in _next_nonempty(feed)]
        assert seen == list(range(1, 11))
        other.put([policy("b", "s.B")])
        assert [entry.revision for entry in _next_nonempty(feed)] == [11]


def test_on_etcd_a_feed_that_caught_up_follows_by_a_watch_not_by_reading_again(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its last short range read the feed holds one etcd watch (the etcd is the test's
    own: it serves nothing else), instead of range-reading again and again; closed, it lets the
    watch go (not only when the next change arrives, or the store closes)."""
    from meshbreaker.control.store.etcd import EtcdStore

    monkeypatch.setattr(etcd_feed, "FEED_BATCH_REVISIONS", 4)
    store = EtcdStore([etcd.endpoint], prefix="/feed/")
    try:
        for index in range(10):
            store.put([policy("a", "s.A", rate=(index + 1) / 20)])
        metrics = f"http://127.0.0.1:{etcd.client_port}/metrics"

        def watchers() -> float:
            return Scrape(metrics).one("etcd_debugging_mvcc_watcher_total")

        assert watchers() == 0
        with store.watch(0) as feed:
            assert wait_until(lambda: watchers() == 1)
            assert [entry.revision for entry in _next_nonempty(feed)][-1] == 10
        assert wait_until(lambda: watchers() == 0)  # closing the feed ends its watch at once
    finally:
        store.close()


def test_a_closed_feed_returns_nothing(store: PolicyStore) -> None:
    feed = store.watch(0)
    feed.close()
    store.put([policy("a", "s.A")])
    assert feed.next(timeout=0.05) == []


def _next_nonempty(feed: ChangeFeed, timeout: float = 5.0) -> list[AuditEntry]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = feed.next(timeout=0.1)
        if entries:
            return entries
    raise AssertionError("the feed delivered nothing")


# -- the xDS cluster registry ------------------------------------------------------------------


def xds_cluster(name: str, port: int, *services: str) -> xds_pb2.XdsCluster:
    return xds_pb2.XdsCluster(
        name=name,
        endpoints=[xds_pb2.XdsEndpoint(host="127.0.0.1", port=port)],
        services=list(services),
    )


def test_the_cluster_registry_has_its_own_revision(store: PolicyStore) -> None:
    assert store.xds_clusters() == (0, [])
    stored = store.put_xds_cluster(xds_cluster("b", 2, "s.B"), actor="admin@peer")
    assert (stored.revision, stored.updated_by) == (1, "admin@peer")
    assert stored.updated_at.seconds == 1_700_000_000
    store.put_xds_cluster(xds_cluster("a", 1))
    store.put_xds_cluster(xds_cluster("b", 3, "s.B", "s.C"))
    revision, clusters = store.xds_clusters()
    assert revision == 3
    assert [(c.name, c.endpoints[0].port, list(c.services)) for c in clusters] == [
        ("a", 1, []),
        ("b", 3, ["s.B", "s.C"]),
    ]
    # Policies keep their own contiguous revisions and audit log.
    assert store.revision() == 0 and store.audit_log() == []
    assert store.delete_xds_cluster("a") == 4
    with pytest.raises(ClusterNotFoundError):
        store.delete_xds_cluster("a")
    assert [c.name for c in store.xds_clusters()[1]] == ["b"]


def test_replicas_share_the_cluster_registry(open_store: OpenStore) -> None:
    one, two = open_store(), open_store()
    one.put_xds_cluster(xds_cluster("a", 1))
    two.put_xds_cluster(xds_cluster("b", 2))
    one.close()
    assert [(c.name, c.revision) for c in open_store().xds_clusters()[1]] == [("a", 1), ("b", 2)]
    assert two.xds_clusters()[0] == 2


# Long enough that nothing runs out during a test, however loaded the machine.
TTL = 60


def endpoint(port: int, weight: int = 0) -> xds_pb2.XdsEndpoint:
    return xds_pb2.XdsEndpoint(host="127.0.0.1", port=port, weight=weight)


def registered(store: PolicyStore, name: str = "a") -> list[tuple[int, int]]:
    (cluster,) = [c for c in store.xds_clusters()[1] if c.name == name]
    return [(e.port, e.weight) for e in cluster.registered_endpoints]


def test_servers_register_renew_and_deregister_their_endpoints(store: PolicyStore) -> None:
    with pytest.raises(ClusterNotFoundError):
        store.register_xds_endpoint("a", endpoint(6000), TTL, max_endpoints=10)
    store.put_xds_cluster(xds_cluster("a", 5000))
    assert store.register_xds_endpoint("a", endpoint(6001), TTL, max_endpoints=10) == (True, 2)
    assert store.register_xds_endpoint("a", endpoint(6000), TTL, max_endpoints=10) == (True, 3)
    # A renewal is no change; a new weight is.
    assert store.register_xds_endpoint("a", endpoint(6000), TTL, max_endpoints=10) == (False, 3)
    assert store.register_xds_endpoint("a", endpoint(6000, 5), TTL, max_endpoints=10) == (True, 4)
    assert registered(store) == [(6000, 5), (6001, 0)]
    (cluster,) = store.xds_clusters()[1]
    assert [e.port for e in cluster.endpoints] == [5000]  # the listed ones stay apart
    # Nothing ran out (SQLite's wall clock stands still here; etcd's leases last a minute).
    assert store.sweep_xds_endpoints() == 0
    assert store.deregister_xds_endpoint("a", "127.0.0.1", 6001) == 5
    assert store.deregister_xds_endpoint("a", "127.0.0.1", 6001) is None
    assert registered(store) == [(6000, 5)]
    # An admin's put keeps the registrations; a delete takes them along.
    store.put_xds_cluster(xds_cluster("a", 5001))
    assert registered(store) == [(6000, 5)]
    store.delete_xds_cluster("a")
    store.put_xds_cluster(xds_cluster("a", 5000))
    assert registered(store) == []


@pytest.fixture
def etcd_registry(etcd_server: EtcdServer) -> Iterator[EtcdStore]:
    """An etcd store under a prefix of its own: cluster "a", endpoint 6000 registered for TTL."""
    from meshbreaker.control.store.etcd import EtcdStore

    store = EtcdStore([etcd_server.endpoint], prefix=f"/test-{uuid.uuid4().hex}/")
    try:
        store.put_xds_cluster(xds_cluster("a", 5000))
        store.register_xds_endpoint("a", endpoint(6000), TTL, max_endpoints=10)
        yield store
    finally:
        store.close()


def test_on_etcd_a_sweep_drops_what_outlived_its_lease_at_one_new_registry_revision(
    etcd_registry: EtcdStore,
) -> None:
    store = etcd_registry
    store.register_xds_endpoint("a", endpoint(6001), 2, max_endpoints=10)  # 2 s lease
    before = store.xds_clusters()[0]
    deadline = time.monotonic() + 30
    while not store.sweep_xds_endpoints():  # until etcd has ended the short lease
        assert time.monotonic() < deadline, "the 2 s lease did not end within 30 s"
        time.sleep(0.2)
    assert registered(store) == [(6000, 0)]
    assert store.xds_clusters()[0] == before + 1


def test_on_etcd_two_sweeps_at_once_drop_a_registration_once_and_count_it_once(
    etcd_registry: EtcdStore,
) -> None:
    """Two sweeps (two replicas) read the same orphan; the one whose commit lost counts none."""
    store = etcd_registry
    alive = store.key("xds", "alive", "a", "127.0.0.1", "6000")  # as if its lease ended:
    delete = [store.transactions.delete(alive)]
    store.run(store.call(lambda c: c.transaction(compare=[], success=delete, failure=[])))
    before = store.xds_clusters()[0]

    async def both() -> list[int]:
        # Each reads before either commits: their first steps run before any answer comes.
        sweeps = (store._sweep_xds_endpoints(), store._sweep_xds_endpoints())
        return list(await asyncio.gather(*sweeps))

    assert sorted(store.run(both())) == [0, 1]
    assert registered(store) == []
    assert store.xds_clusters()[0] == before + 1


def test_on_etcd_registering_again_with_another_ttl_takes_a_lease_of_that_ttl(
    etcd: EtcdServer,
) -> None:
    """A server restarted with a longer TTL: its registration is not kept on the old lease (a
    refresh renews a lease for the TTL it was granted)."""
    from meshbreaker.control.store.etcd import EtcdStore

    store = EtcdStore([etcd.endpoint], prefix="/xds-ttl/")
    try:
        store.put_xds_cluster(xds_cluster("a", 5000))
        assert store.register_xds_endpoint("a", endpoint(6000), 5, max_endpoints=10)[0] is True
        assert store.register_xds_endpoint("a", endpoint(6000), 600, max_endpoints=10)[0] is False

        def granted() -> list[int]:
            """The granted TTL of each lease that holds a key."""
            leases = etcd_json(etcd, "/v3/lease/leases", {}).get("leases", [])
            lives = [
                etcd_json(etcd, "/v3/lease/timetolive", {"ID": lease["ID"], "keys": True})
                for lease in leases
            ]
            return [int(life["grantedTTL"]) for life in lives if life.get("keys")]

        assert granted() == [600]
        assert registered(store) == [(6000, 0)]
    finally:
        store.close()


def test_a_cluster_takes_registrations_up_to_its_endpoint_bound(store: PolicyStore) -> None:
    store.put_xds_cluster(xds_cluster("a", 5000))
    store.put_xds_cluster(xds_cluster("b", 5000))
    store.register_xds_endpoint("a", endpoint(6000), TTL, max_endpoints=3)
    store.register_xds_endpoint("a", endpoint(6001), TTL, max_endpoints=3)
    with pytest.raises(EndpointLimitError, match="holds 3 endpoints"):
        store.register_xds_endpoint("a", endpoint(6002), TTL, max_endpoints=3)
    # Renewing one that is in is fine at the bound; other clusters have bounds of their own.
    assert store.register_xds_endpoint("a", endpoint(6001), TTL, max_endpoints=3)[0] is False
    assert store.register_xds_endpoint("b", endpoint(6002), TTL, max_endpoints=3)[0] is True
    assert registered(store) == [(6000, 0), (6001, 0)]


# -- stores named by URL -----------------------------------------------------------------------


def test_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_etcd_url("etcd://10.0.0.1:2379,etcd-b:2379/prod") == (
        [("10.0.0.1", 2379), ("etcd-b", 2379)],
        "/prod/",
    )
    assert parse_etcd_url("etcd://[::1]:2379") == ([("::1", 2379)], "/meshbreaker/")
    for empty in ("etcd://h:2379/", "etcd://h:2379//"):  # an empty prefix is the default one
        assert parse_etcd_url(empty) == ([("h", 2379)], "/meshbreaker/")
    for bad in ("etcd://host", "etcd://:2379", "etcd://h:99999", "redis://x", "sqlite:///"):
        with pytest.raises(ConfigError, match="store"):
            open_store(bad)
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///relative.db")
    absolute = open_store(f"sqlite:///{tmp_path / 'absolute.db'}")
    try:
        assert isinstance(relative, SqliteStore) and relative.path == "relative.db"
        assert isinstance(absolute, SqliteStore) and absolute.path == str(tmp_path / "absolute.db")
    finally:
        relative.close()
        absolute.close()


def test_a_store_url_of_no_known_form_is_quoted_up_to_200_characters() -> None:
    """The refusal quotes what was given, cut at 200 characters, and names the forms taken."""
    url = "redis://" + "x" * 300
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert str(caught.value) == f"store: {url[:200]!r} is not {STORE_URL_FORMS}"


def test_an_unreachable_etcd_is_a_clear_error() -> None:
    """The error names the endpoint and why the last try failed (here: refused)."""
    from meshbreaker.control.store.etcd import EtcdStore

    with pytest.raises(
        StoreUnavailableError, match=r"etcd at 127\.0\.0\.1:\d+ is unavailable: "
    ) as caught:
        EtcdStore([("127.0.0.1", free_port())], timeout=1.0)
    assert "Connection refused" in str(caught.value)


def test_an_etcd_store_refuses_a_prefix_without_both_slashes_and_no_endpoints() -> None:
    from meshbreaker.control.store.etcd import EtcdStore

    nowhere = [("127.0.0.1", free_port())]  # refused before any connection is tried
    for prefix in ("prod", "/prod", "prod/"):
        with pytest.raises(ConfigError, match="prefix must start and end with '/'"):
            EtcdStore(nowhere, prefix=prefix, timeout=1.0)
    with pytest.raises(ConfigError, match="at least one HOST:PORT"):
        EtcdStore([], timeout=1.0)
