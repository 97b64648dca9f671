"""Real SQLite faults for the database tests: a lock held by another connection, a broken file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)"


def make_ledger(path: Path) -> Path:
    """A SQLite file with the ledger table and one row (id 1)."""
    with sqlite3.connect(path) as connection:
        connection.execute(SCHEMA)
        connection.execute("INSERT OR IGNORE INTO ledger VALUES (1, 100)")
    connection.close()
    return path


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the database: other connections get "database is locked"."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def statements_seen(connection: sqlite3.Connection) -> list[str]:
    """The statements SQLite runs on `connection` from now on, as its trace callback sees them."""
    seen: list[str] = []
    connection.set_trace_callback(seen.append)
    return seen
