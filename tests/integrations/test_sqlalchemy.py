"""guard_engine on real SQLite files through sync and asyncio SQLAlchemy engines."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import event

from meshbreaker import CallNotPermittedError, ConfigError, State
from meshbreaker.db import guard_engine
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from tests.integrations.engines import AsyncioEngine, EngineFace, SyncEngine
from tests.integrations.sqlite_faults import locked, make_ledger

MakeEngine = Callable[..., EngineFace]


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return make_ledger(tmp_path / "ledger.db")


@pytest.fixture(params=["sync", "asyncio"])
def make_engine(request: pytest.FixtureRequest) -> Iterator[MakeEngine]:
    """`make_engine(url)`: an engine whose SQLite connections fail at once on a lock."""
    kind = SyncEngine if request.param == "sync" else AsyncioEngine
    made: list[EngineFace] = []

    def make(url: str) -> EngineFace:
        face = kind(url, connect_args={"timeout": 0})
        made.append(face)
        return face

    yield make
    for face in made:
        face.dispose()


def new_connections(face: EngineFace) -> list[object]:
    """The DB-API connections the engine's pool opens from now on."""
    opened: list[object] = []
    sync_engine = getattr(face.engine, "sync_engine", face.engine)
    event.listen(sync_engine, "connect", lambda dbapi_connection, record: opened.append(record))
    return opened


def test_statements_go_through_the_breaker_named_after_the_database(
    ledger: Path, registry: BreakerRegistry, make_engine: MakeEngine
) -> None:
    face = make_engine(f"sqlite:///{ledger}")
    guard = guard_engine(face.engine, registry)
    assert guard.breaker.name == f"sqlite:///{ledger}"
    before = guard.breaker.snapshot().successful

    assert face.execute("SELECT amount FROM ledger") == [(100,)]
    face.execute("UPDATE ledger SET amount = 101")
    assert guard.breaker.snapshot().successful - before == 3  # a new connection, 2 statements


def test_constraint_errors_are_successes_a_locked_database_failures(
    ledger: Path, registry: BreakerRegistry, make_engine: MakeEngine
) -> None:
    face = make_engine(f"sqlite:///{ledger}")
    breaker = guard_engine(face.engine, registry, name="ledger").breaker
    for _ in range(4):
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            face.execute("INSERT INTO ledger VALUES (1, 1)")
    assert (breaker.snapshot().failed, breaker.state) == (0, State.CLOSED)

    with locked(ledger):
        for _ in range(3):
            with pytest.raises(sqlalchemy.exc.OperationalError, match="locked"):
                face.execute("UPDATE ledger SET amount = 0")
    assert (breaker.snapshot().failed, breaker.state) == (3, State.OPEN)


def test_an_open_breaker_refuses_connections_and_statements_before_the_database(
    ledger: Path, registry: BreakerRegistry, make_engine: MakeEngine
) -> None:
    face = make_engine(f"sqlite:///{ledger}")
    breaker = guard_engine(face.engine, registry, name="ledger").breaker
    held = face.connect()  # checked out while the breaker was closed
    with locked(ledger):
        for _ in range(3):
            with pytest.raises(sqlalchemy.exc.OperationalError):
                face.execute("UPDATE ledger SET amount = 0")
    opened = new_connections(face)

    with pytest.raises(CallNotPermittedError):
        face.execute("SELECT 1")
    with pytest.raises(CallNotPermittedError):
        held.execute("SELECT 1")
    held.close()
    assert opened == []
    assert breaker.snapshot().rejected == 2


def test_a_database_out_of_reach_fails_the_connection_and_then_is_not_dialled(
    tmp_path: Path, registry: BreakerRegistry, make_engine: MakeEngine
) -> None:
    face = make_engine(f"sqlite:///{tmp_path}/no/such/dir/ledger.db")
    breaker = guard_engine(face.engine, registry, name="ledger").breaker
    for _ in range(3):
        with pytest.raises(sqlalchemy.exc.OperationalError, match="unable to open"):
            face.execute("SELECT 1")
    assert (breaker.snapshot().failed, breaker.state) == (3, State.OPEN)

    with pytest.raises(CallNotPermittedError):
        face.execute("SELECT 1")
    assert breaker.snapshot().failed == 3


def test_a_good_probe_closes_the_breaker(
    ledger: Path, registry: BreakerRegistry, clock: FakeClock, make_engine: MakeEngine
) -> None:
    face = make_engine(f"sqlite:///{ledger}")
    breaker = guard_engine(face.engine, registry, name="ledger").breaker
    with locked(ledger):
        for _ in range(3):
            with pytest.raises(sqlalchemy.exc.OperationalError):
                face.execute("UPDATE ledger SET amount = 0")
    clock.advance(10.0)
    assert face.execute("SELECT amount FROM ledger") == [(100,)]
    assert breaker.state is State.CLOSED


def test_shadow_mode_never_refuses(ledger: Path, clock: FakeClock, make_engine: MakeEngine) -> None:
    from tests.integrations.conftest import CONFIG

    registry = BreakerRegistry(CONFIG.replace(mode="shadow"), clock=clock)
    face = make_engine(f"sqlite:///{ledger}")
    breaker = guard_engine(face.engine, registry, name="ledger").breaker
    with locked(ledger):
        for _ in range(3):
            with pytest.raises(sqlalchemy.exc.OperationalError):
                face.execute("UPDATE ledger SET amount = 0")
    assert breaker.state is State.OPEN
    assert face.execute("SELECT amount FROM ledger") == [(100,)]
    assert breaker.snapshot().shadow_rejected >= 1


def test_remove_takes_the_engine_out_of_the_breaker(
    ledger: Path, registry: BreakerRegistry, make_engine: MakeEngine
) -> None:
    face = make_engine(f"sqlite:///{ledger}")
    guard = guard_engine(face.engine, registry, name="ledger")
    face.execute("SELECT 1")
    counted = guard.breaker.snapshot().total
    guard.remove()
    face.execute("SELECT 1")
    assert guard.breaker.snapshot().total == counted


def test_bad_arguments_are_refused(ledger: Path, registry: BreakerRegistry) -> None:
    face = SyncEngine(f"sqlite:///{ledger}")
    try:
        with pytest.raises(ConfigError, match="name"):
            guard_engine(face.engine, registry, name="x" * 300)
        with pytest.raises(TypeError, match="SQLAlchemy Engine"):
            guard_engine(object(), registry)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="BreakerRegistry"):
            guard_engine(face.engine, object())  # type: ignore[arg-type]
    finally:
        face.dispose()


def test_without_sqlalchemy_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, registry: BreakerRegistry
) -> None:
    engine: Any = object()
    monkeypatch.setitem(sys.modules, "sqlalchemy.engine", None)
    with pytest.raises(ImportError, match=r"pip install 'meshbreaker\[sqlalchemy\]'"):
        guard_engine(engine, registry)
