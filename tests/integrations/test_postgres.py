"""guard_connection and guard_engine on a real PostgreSQL server, faults injected at the server.

The server comes from the pgserver wheel in the dev extra (tests/integrations/postgres_server.py);
where none can be had, every test here is skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshbreaker import BreakerRegistry, CallNotPermittedError, CircuitBreaker, State
from meshbreaker.db import guard_connection, guard_engine
from meshbreaker.testing import FakeClock
from tests.integrations.conftest import CONFIG
from tests.integrations.postgres_server import PostgresUnavailable, postgres_server


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None:
        cache_dir = Path(cache.mkdir("meshbreaker-postgres"))
    else:
        cache_dir = Path(tempfile.gettempdir()) / f"meshbreaker-postgres-{os.getuid()}"
    try:
        with postgres_server(cache_dir) as url:
            yield url
    except PostgresUnavailable as why:
        pytest.skip(f"no PostgreSQL server: {why}")


@pytest.fixture
def admin(postgres_url: str) -> Iterator[Any]:
    """An autocommit connection for what the server does to the tests' connections."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def database(admin: Any, postgres_url: str) -> Iterator[tuple[str, str]]:
    """A fresh database with a ledger table: its URL and name."""
    name = f"ledger_{secrets.token_hex(4)}"
    admin.execute(f"CREATE DATABASE {name}")
    url = postgres_url.replace("/postgres?", f"/{name}?")
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE ledger (id integer PRIMARY KEY, amount integer NOT NULL)")
        connection.execute("INSERT INTO ledger VALUES (1, 100)")
    yield url, name
    admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_psycopg_errors_are_classified_and_a_killed_backend_opens_the_breaker(
    database: tuple[str, str], admin: Any, clock: FakeClock
) -> None:
    import psycopg

    url, _ = database
    breaker = CircuitBreaker("postgresql:///ledger", CONFIG, clock=clock)
    raw = psycopg.connect(url)
    db = guard_connection(raw, breaker)
    try:
        db.execute("INSERT INTO ledger VALUES (2, 50)")
        db.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):  # the database answered
            db.execute("INSERT INTO ledger VALUES (1, 5)")
        db.rollback()
        with pytest.raises(psycopg.errors.SerializationFailure):  # retry it: not an outage
            db.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        db.rollback()
        assert (breaker.snapshot().successful, breaker.snapshot().failed) == (4, 0)

        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s",
            (raw.info.backend_pid,),
        )
        for _ in range(3):  # the server killed the session: the connection is gone
            with pytest.raises((psycopg.OperationalError, psycopg.InterfaceError)):
                db.execute("SELECT amount FROM ledger")
        assert breaker.state is State.OPEN
        with pytest.raises(CallNotPermittedError):
            db.execute("SELECT 1")
    finally:
        raw.close()


def test_an_engine_whose_server_refuses_connections_stops_dialling(
    database: tuple[str, str], admin: Any, clock: FakeClock
) -> None:
    from sqlalchemy import create_engine, text

    url, name = database
    registry = BreakerRegistry(CONFIG, clock=clock)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    guard = guard_engine(engine, registry)
    assert guard.breaker.name == f"postgresql:///{name}"
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT amount FROM ledger")).scalar() == 100
        engine.dispose()

        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        for _ in range(3):
            with pytest.raises(Exception, match="not currently accepting connections"):
                engine.connect()
        assert guard.breaker.state is State.OPEN
        attempts = admin.execute("SELECT count(*) FROM pg_stat_activity").fetchone()
        with pytest.raises(CallNotPermittedError):
            engine.connect()  # refused before any connection is dialled
        assert admin.execute("SELECT count(*) FROM pg_stat_activity").fetchone() == attempts

        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        clock.advance(10.0)
        with engine.connect() as connection:  # the probe reaches the server again and closes it
            assert connection.execute(text("SELECT 1")).scalar() == 1
        assert guard.breaker.snapshot().state is State.CLOSED
    finally:
        engine.dispose()
