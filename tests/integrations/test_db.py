"""guard_connection on real SQLite files, and the one rule that classifies database errors."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshbreaker import CallNotPermittedError, CircuitBreaker, Outcome, State
from meshbreaker.db import GuardedConnection, classify_error, guard_connection
from meshbreaker.testing import FakeClock
from tests.integrations.conftest import CONFIG
from tests.integrations.sqlite_faults import locked, make_ledger, statements_seen


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return make_ledger(tmp_path / "ledger.db")


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("sqlite:///ledger.db", CONFIG, clock=clock)


@pytest.fixture
def raw(ledger: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(ledger, timeout=0)  # a lock fails at once instead of waiting
    yield connection
    connection.close()


@pytest.fixture
def db(raw: sqlite3.Connection, breaker: CircuitBreaker) -> GuardedConnection:
    return guard_connection(raw, breaker)


def test_statements_and_commits_go_through_the_breaker(
    db: GuardedConnection, breaker: CircuitBreaker
) -> None:
    db.execute("INSERT INTO ledger VALUES (2, 50)")
    db.commit()
    cursor = db.cursor()
    cursor.execute("SELECT id, amount FROM ledger WHERE amount >= ? ORDER BY id", (50,))
    assert cursor.fetchall() == [(1, 100), (2, 50)]
    assert [row for row in db.execute("SELECT id FROM ledger ORDER BY id")] == [(1,), (2,)]

    snapshot = breaker.snapshot()
    assert (snapshot.successful, snapshot.failed) == (4, 0)  # 3 statements and a commit
    assert db.total_changes == 1  # everything else is the driver's own


def test_a_locked_database_is_a_failure_and_an_open_breaker_refuses_before_sqlite_runs(
    db: GuardedConnection, raw: sqlite3.Connection, ledger: Path, breaker: CircuitBreaker
) -> None:
    with locked(ledger):
        for _ in range(3):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                db.execute("INSERT INTO ledger VALUES (NULL, 1)")
    assert breaker.state is State.OPEN

    seen = statements_seen(raw)
    with pytest.raises(CallNotPermittedError):
        db.execute("SELECT 1")
    with pytest.raises(CallNotPermittedError):
        db.commit()
    db.rollback()  # never refused: it releases what the database holds
    assert seen == []  # neither statement reached SQLite
    assert breaker.snapshot().rejected == 2


def test_the_database_answering_with_an_error_is_a_success(
    db: GuardedConnection, breaker: CircuitBreaker
) -> None:
    for _ in range(5):
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO ledger VALUES (1, 5)")
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO ledger VALUES (9, NULL)")
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.successful, snapshot.failed) == (State.CLOSED, 10, 0)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3 error codes need Python 3.11")
def test_bad_sql_reported_by_sqlite_as_operational_error_is_a_success(
    db: GuardedConnection, breaker: CircuitBreaker
) -> None:
    for sql in ("SELECT * FROM no_such_table", "SELEC 1", "SELECT missing FROM ledger"):
        with pytest.raises(sqlite3.OperationalError):
            db.execute(sql)
    assert (breaker.snapshot().successful, breaker.snapshot().failed) == (3, 0)


def test_a_file_that_is_not_a_database_is_a_failure(
    tmp_path: Path, breaker: CircuitBreaker
) -> None:
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database file, it is text" * 200)
    connection = sqlite3.connect(path)
    try:
        db = guard_connection(connection, breaker)
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            db.execute("SELECT * FROM ledger")
    finally:
        connection.close()
    assert breaker.snapshot().failed == 1


def test_a_good_probe_closes_the_breaker_once_the_lock_is_gone(
    db: GuardedConnection, ledger: Path, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    with locked(ledger):
        for _ in range(3):
            with pytest.raises(sqlite3.OperationalError):
                db.execute("UPDATE ledger SET amount = 0")
    clock.advance(10.0)
    db.execute("UPDATE ledger SET amount = 1")
    assert breaker.state is State.CLOSED


def test_a_failing_fetch_counts_as_a_failed_call(ledger: Path, breaker: CircuitBreaker) -> None:
    connection = sqlite3.connect(ledger, timeout=0)
    db = guard_connection(connection, breaker)
    db.executemany("INSERT INTO ledger VALUES (?, 1)", [(n,) for n in range(10, 200)])
    cursor = db.execute("SELECT id FROM ledger")
    cursor.fetchone()
    connection.interrupt()  # the running statement is killed, as an operator's kill would
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        cursor.fetchall()
    connection.close()
    snapshot = breaker.snapshot()
    assert (snapshot.successful, snapshot.failed) == (2, 1)


def test_classify_error_follows_db_api_names_and_driver_codes() -> None:
    class OperationalError(Exception):
        sqlstate: str | None = None

    class SerializationFailure(OperationalError):
        sqlstate = "40001"

    class AdminShutdown(OperationalError):
        sqlstate = "57P01"

    class IntegrityError(Exception):
        pass

    assert classify_error(OperationalError("server closed the connection")) is Outcome.FAILURE
    assert classify_error(AdminShutdown()) is Outcome.FAILURE
    assert classify_error(SerializationFailure()) is Outcome.SUCCESS  # retry it, it is not down
    assert classify_error(IntegrityError()) is Outcome.SUCCESS
    assert classify_error(TypeError("bad parameter")) is Outcome.IGNORED
    assert classify_error(KeyboardInterrupt()) is Outcome.IGNORED
    assert classify_error(CallNotPermittedError("x", State.OPEN, 1.0)) is Outcome.IGNORED


def test_guard_connection_refuses_what_is_not_a_connection(breaker: CircuitBreaker) -> None:
    with pytest.raises(TypeError, match="not a DB-API 2 connection"):
        guard_connection(object(), breaker)
    with pytest.raises(TypeError, match="breaker must be a CircuitBreaker"):
        guard_connection(sqlite3.connect(":memory:"), "payments")  # type: ignore[arg-type]
