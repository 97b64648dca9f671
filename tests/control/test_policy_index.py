"""PolicyIndex: snapshots built as bytes from each policy's own encoding equal the messages."""

from __future__ import annotations

import threading
from pathlib import Path

from meshbreaker.config import BreakerConfig
from meshbreaker.control.policies import Follower, PolicyIndex, Update, encode_snapshot
from meshbreaker.control.store import AuditEntry, SqliteStore
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import method_policy
from tests.server_support import wait_until


def _policy(policy_id: str, caller: str, failures: int, revision: int = 1) -> pb.Policy:
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, method=f"/bank.v1.S/{policy_id.upper()}"),
        config=pb.BreakerConfig(consecutive_failures=failures),
        revision=revision,
    )


def _expected(
    revision: int, caller: str, policies: list[pb.Policy], adopted: tuple[str, ...] = ()
) -> pb.ConfigSnapshot:
    return pb.ConfigSnapshot(
        revision=revision,
        service=caller,
        policies=sorted(policies, key=lambda policy: policy.id),
        store_id="store-1",
        adopted_store_ids=adopted,
    )


def test_encoded_snapshots_equal_the_messages_through_puts_deletes_and_adoption() -> None:
    every = _policy("z-all", "", 2)
    mine, theirs = _policy("b-tx", "transaction", 3), _policy("a-tx", "transaction", 4)
    other = _policy("c-audit", "audit", 5)
    index = PolicyIndex(1, [every, mine, other], store_id="store-1")
    first = index.watch("transaction")
    assert first.message() == _expected(1, "transaction", [every, mine])
    assert encode_snapshot(first) == first.payload

    # A put for one caller renews its snapshot only; the other caller is not watched.
    changed = index.apply([AuditEntry(2, "a-tx", "put", "t", 0.0, None, theirs)])
    assert set(changed) == {"transaction"}
    assert changed["transaction"].revision == 2
    assert changed["transaction"].message() == _expected(2, "transaction", [every, mine, theirs])
    assert index.apply([AuditEntry(3, "c-audit", "delete", "t", 0.0, other, None)]) == {}

    # A change of a policy for every caller renews every watched caller; a replaced policy's
    # old bytes are gone.
    newer = _policy("z-all", "", 9, revision=4)
    changed = index.apply([AuditEntry(4, "z-all", "put", "t", 0.0, every, newer)])
    assert changed["transaction"].message() == _expected(4, "transaction", [newer, mine, theirs])
    deleted = index.apply([AuditEntry(5, "b-tx", "delete", "t", 0.0, mine, None)])
    assert deleted["transaction"].message() == _expected(5, "transaction", [newer, theirs])

    adopted = index.set_adopted(("old-store",))["transaction"]
    assert adopted.message() == _expected(5, "transaction", [newer, theirs], ("old-store",))
    assert index.snapshot("audit").message() == _expected(5, "audit", [newer], ("old-store",))


def test_encode_snapshot_also_serializes_a_plain_message() -> None:
    message = _expected(3, "audit", [_policy("a", "audit", 2)])
    assert pb.ConfigSnapshot.FromString(encode_snapshot(message)) == message


def test_a_relisting_rebuilds_the_index_under_its_lock() -> None:
    index = PolicyIndex(1, [_policy("a-tx", "transaction", 3)], store_id="store-1")
    index.watch("transaction")
    rebuilt = threading.Event()

    def relist() -> None:
        index.replace(7, [_policy("b-tx", "transaction", 4, revision=7)])
        rebuilt.set()

    relisting = threading.Thread(target=relist)
    with index._lock:  # a reader in the middle of its bookkeeping...
        relisting.start()
        assert not rebuilt.wait(1.0)  # ...sees no half-rebuilt index: the relisting waits
        assert index.revision == 1
    assert rebuilt.wait(10)
    relisting.join(10)
    snapshot = index.snapshot("transaction").message()
    assert snapshot.revision == 7 and [p.id for p in snapshot.policies] == ["b-tx"]


def test_a_relisting_forgets_the_canaries_and_overrides_it_no_longer_holds() -> None:
    canary = _policy("a-tx", "transaction", 3)
    canary.canary.CopyFrom(pb.Canary(percent=30.0, config=pb.BreakerConfig(minimum_calls=5)))
    forced = _policy("b-tx", "transaction", 4)
    forced.override = pb.OVERRIDE_FORCED_OPEN
    index = PolicyIndex(1, [canary, forced], store_id="store-1")
    assert [p.id for p in index.canaries()] == ["a-tx"]
    assert [p.id for p in index.overrides()] == ["b-tx"]
    index.replace(9, [_policy("c-tx", "transaction", 5, revision=9)])  # after a compaction
    assert index.canaries() == [] and index.overrides() == []


def test_a_relisting_forgets_the_policies_deleted_meanwhile() -> None:
    """After a compaction the listing is the whole truth: a policy missing from it is gone."""
    index = PolicyIndex(1, [_policy("a-tx", "transaction", 3), _policy("b-all", "", 4)])
    index.replace(9, [_policy("b-all", "", 4, revision=9)])
    assert [p.id for p in index.policies()] == ["b-all"]
    assert index.by_id("a-tx") is None and not index.has("a-tx")


def test_a_snapshots_size_is_estimated_as_its_policies_plus_1_kib_of_wrapping() -> None:
    index = PolicyIndex(1, [_policy("a-tx", "transaction", 3)], store_id="store-1")
    added = _policy("b-tx", "transaction", 4)
    caller, estimate = index.largest_snapshot_bytes([added])
    policies = [_policy("a-tx", "transaction", 3), added]
    assert caller == "transaction"
    assert estimate == sum(policy.ByteSize() + 8 for policy in policies) + 1024
    index.apply([AuditEntry(2, "b-tx", "put", "test", 0.0, None, added)])
    assert len(index.snapshot("transaction").payload) < estimate  # the estimate holds it
    everyone = _policy("z-all", "", 2)  # a policy for every caller, in an index of no caller's
    only = PolicyIndex(1, [], store_id="store-1").largest_snapshot_bytes([everyone])
    assert only == ("", everyone.ByteSize() + 8 + 1024)


def test_after_a_compaction_the_follower_reopens_its_feed_and_keeps_following(
    tmp_path: Path,
) -> None:
    # The follower's store sees another store's commits only by polling, here never: its feed
    # waits, open, while another store writes and compacts, and fails at its next read.
    store = SqliteStore(tmp_path / "cp.db", poll_interval=3600)
    other = SqliteStore(tmp_path / "cp.db")

    def put(policy_id: str, on: SqliteStore) -> None:
        on.put([method_policy(policy_id, BreakerConfig(), method=f"/s.S/{policy_id}")])

    def ids() -> list[str]:
        return [policy.id for policy in index.policies()]

    try:
        put("a", store)
        index = PolicyIndex(*store.list())
        index.watch("transaction")
        updates: list[Update] = []
        follower = Follower(store, index, updates.append, poll=3600)
        follower.start()
        try:
            assert wait_until(lambda: follower._feed is not None, timeout=10)
            put("b", other)
            other.compact(other.list()[0])
            put("c", store)  # wakes the feed: its history is gone, so the follower relists
            assert wait_until(lambda: any(update.relisted for update in updates), timeout=10)
            assert wait_until(lambda: ids() == ["a", "b", "c"], timeout=10)
            put("d", store)  # followed on a new feed
            assert wait_until(lambda: ids() == ["a", "b", "c", "d"], timeout=10)
        finally:
            follower.stop()
    finally:
        other.close()
        store.close()
