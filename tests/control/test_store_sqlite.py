"""SqliteStore only: durability settings, schema versions, the id added to an older file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from meshbreaker.control.store import SelectorConflictError, SqliteStore, StoreError
from meshbreaker.v1 import control_plane_pb2 as pb


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "store.db")


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


def test_a_file_from_before_store_ids_gets_one_that_stays(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE identity")
    first = SqliteStore(path)
    given = first.store_id
    first.put([pb.Policy(id="a", selector=pb.Selector(service="s.A"))])
    first.close()
    again = SqliteStore(path)
    assert again.store_id == given and again.revision() == 1
    again.close()


def _policy(policy_id: str, method: str) -> pb.Policy:
    return pb.Policy(id=policy_id, selector=pb.Selector(method=method))


def test_a_schema_1_file_gets_its_selectors_indexed_and_keeps_them_unique(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    old = SqliteStore(path)
    old.put([_policy("a", "/s.S/A"), _policy("b", "/s.S/B")])
    old.close()
    with sqlite3.connect(path) as db:  # as schema version 1 left it: no selectors table
        db.execute("DROP TABLE selectors")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
    store = SqliteStore(path)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
                2,
            )
        with pytest.raises(SelectorConflictError, match="'b'"):
            store.put([_policy("c", "/s.S/B")])  # b's selector, indexed from the old file
        # A policy moves to a free selector; its old one is free again, in one put or two.
        store.put([_policy("b", "/s.S/C")])
        store.put([_policy("c", "/s.S/B")])
        store.put([_policy("a", "/s.S/B2"), _policy("c", "/s.S/A")])  # c takes what a leaves
        store.delete("c")
        store.put([_policy("d", "/s.S/A")])
        assert {p.id: p.selector.method for p in store.list()[1]} == {
            "a": "/s.S/B2",
            "b": "/s.S/C",
            "d": "/s.S/A",
        }
    finally:
        store.close()


def test_a_directory_is_refused_with_what_to_give_instead(tmp_path: Path) -> None:
    expected = r"is a directory: give the path of a file, e\.g\. --db DIR/meshbreaker\.db"
    with pytest.raises(StoreError, match=expected):
        SqliteStore(tmp_path)


def test_closing_a_feed_wakes_a_next_in_progress(tmp_path: Path) -> None:
    # Polling every hour: only the close can end the wait.
    store = SqliteStore(tmp_path / "store.db", poll_interval=3600)
    try:
        feed = store.watch(0)
        answered: list[object] = []
        waiting = threading.Thread(target=lambda: answered.append(feed.next()), daemon=True)
        waiting.start()
        feed.close()
        waiting.join(30)
        assert not waiting.is_alive() and answered == [[]]
    finally:
        store.close()
