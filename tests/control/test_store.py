"""SqliteStore: CAS revisions, atomic puts, selector uniqueness, audit log, durability settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshbreaker.control.store import (
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    SqliteStore,
    StoreError,
)
from meshbreaker.v1 import control_plane_pb2 as pb


def policy(policy_id: str, service: str = "", caller: str = "", rate: float = 0.5) -> pb.Policy:
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, service=service),
        config=pb.BreakerConfig(failure_rate_threshold=rate),
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "store.db", wall_clock=lambda: 1_700_000_000.5)


def test_is_a_policy_store(store: SqliteStore) -> None:
    assert isinstance(store, PolicyStore)
    assert store.revision() == 0
    assert store.list() == (0, [])


def test_put_stamps_one_new_revision_for_all_policies(store: SqliteStore) -> None:
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


def test_compare_and_set(store: SqliteStore) -> None:
    store.put([policy("a", "s.A")], expected_revision=0)
    with pytest.raises(RevisionMismatchError) as caught:
        store.put([policy("b", "s.B")], expected_revision=0)
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    with pytest.raises(RevisionMismatchError):
        store.delete("a", expected_revision=7)
    assert store.list() == (1, [store.get("a")])
    store.delete("a", expected_revision=1)
    assert store.list() == (2, [])


def test_delete_unknown_is_not_found_and_changes_nothing(store: SqliteStore) -> None:
    with pytest.raises(PolicyNotFoundError):
        store.delete("nope")
    assert store.revision() == 0
    assert store.audit_log() == []


def test_a_selector_belongs_to_one_policy(store: SqliteStore) -> None:
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


def test_bad_put_arguments(store: SqliteStore) -> None:
    for bad in ([], [policy("a"), policy("a", "s.X")], [policy("")]):
        with pytest.raises(StoreError):
            store.put(bad)
    assert store.revision() == 0


def test_audit_log_records_who_when_before_after(store: SqliteStore) -> None:
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


def test_reopening_keeps_policies_revision_and_audit(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = SqliteStore(path)
    first.put([policy("a", "s.A"), policy("b", "s.B")])
    first.delete("a")
    first.close()
    second = SqliteStore(path)
    assert second.revision() == 2
    assert [p.id for p in second.list()[1]] == ["b"]
    assert len(second.audit_log()) == 3
    # The revision keeps growing after a restart; it never reuses a number.
    assert second.put([policy("c", "s.C")])[0].revision == 3
    second.close()


def test_a_store_keeps_the_id_it_was_created_with(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "one.db")
    other = SqliteStore(tmp_path / "other.db")
    created = first.store_id
    first.close()
    reopened = SqliteStore(tmp_path / "one.db")
    assert reopened.store_id == created != other.store_id
    assert len(created) == 36  # a UUID: two stores never share one by accident
    reopened.close()
    other.close()


def test_durability_settings(store: SqliteStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "store.db") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is per connection: FULL (2) fsyncs the WAL on every commit.
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(path)


def test_two_stores_on_one_file_do_not_lose_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    one, two = SqliteStore(path), SqliteStore(path)
    one.put([policy("a", "s.A")])
    with pytest.raises(RevisionMismatchError):
        two.put([policy("b", "s.B")], expected_revision=0)
    two.put([policy("b", "s.B")], expected_revision=1)
    assert one.list()[0] == 2 and [p.id for p in one.list()[1]] == ["a", "b"]
