"""Circuit breakers for databases: any DB-API 2 connection, and SQLAlchemy engines by events.

One rule for both (`classify_error`): the database failing or out of reach is a failure; an
error about the statement itself (a constraint, bad SQL, bad data) means the database answered,
so it is a success; anything that never reached the database is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

from meshbreaker.breaker import CircuitBreaker, Outcome, Permit
from meshbreaker.config import Mode, State
from meshbreaker.errors import CallNotPermittedError, ConfigError
from meshbreaker.registry import BreakerRegistry

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Dialect, Engine, ExceptionContext
    from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import ConnectionPoolEntry

__all__ = [
    "EngineGuard",
    "ErrorClassifier",
    "GuardedConnection",
    "GuardedCursor",
    "classify_error",
    "engine_name",
    "guard_connection",
    "guard_engine",
]

_T = TypeVar("_T")
ErrorClassifier = Callable[[BaseException], Outcome]

_SUCCESS, _FAILURE, _IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED
# DB-API 2 names every driver's exceptions by; the most specific one in an error's MRO decides.
# A bare DatabaseError is the database itself failing (sqlite3: "file is not a database").
_DBAPI_OUTCOMES: Final[dict[str, Outcome]] = {
    "OperationalError": _FAILURE,
    "InterfaceError": _FAILURE,
    "InternalError": _FAILURE,
    "DatabaseError": _FAILURE,
    "IntegrityError": _SUCCESS,
    "ProgrammingError": _SUCCESS,
    "DataError": _SUCCESS,
    "NotSupportedError": _SUCCESS,
}
_SQLITE_ERROR: Final = 1  # sqlite3 raises bad SQL ("no such table", syntax) as OperationalError
_SQLSTATE_TRANSACTION_ROLLBACK: Final = "40"  # serialization failure, deadlock: retry, not down
_MAX_NAME_LENGTH: Final = 256
_REFUSING: Final = (State.OPEN, State.FORCED_OPEN)
_PERMIT: Final = "_meshbreaker_permit"  # where a statement's permit waits on its execution context


def classify_error(error: BaseException) -> Outcome:
    """How a database call that raised `error` counts for its breaker."""
    if not isinstance(error, Exception) or isinstance(error, CallNotPermittedError):
        return _IGNORED
    for kind in type(error).__mro__:
        outcome = _DBAPI_OUTCOMES.get(kind.__name__)
        if outcome is None:
            continue
        if outcome is _FAILURE and kind.__name__ == "OperationalError" and _answered(error):
            return _SUCCESS
        return outcome
    return _IGNORED


def _answered(error: BaseException) -> bool:
    """Whether an OperationalError is about the statement, as a driver's own codes say."""
    code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
    if isinstance(code, int):
        return code & 0xFF == _SQLITE_ERROR
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)  # psycopg 3, 2
    return isinstance(state, str) and state.startswith(_SQLSTATE_TRANSACTION_ROLLBACK)


def _run(
    breaker: CircuitBreaker, classify: ErrorClassifier, call: Callable[..., _T], *args: Any
) -> _T:
    """`call(*args)` under a permit of `breaker`; CallNotPermittedError when refused."""
    permit = breaker.acquire()
    try:
        result = call(*args)
    except BaseException as error:
        permit.record(classify(error))
        raise
    permit.success()
    return result


def _count_late(breaker: CircuitBreaker, outcome: Outcome) -> None:
    """Count a failure of work no permit covered (a fetch, a rollback) as one more failed call."""
    if outcome is _FAILURE:
        permit = breaker.try_acquire()
        if permit is not None:
            permit.failure(0.0)


class GuardedCursor:
    """A DB-API cursor whose executions go through the breaker; the rest is the cursor's own."""

    def __init__(self, cursor: Any, breaker: CircuitBreaker, classify: ErrorClassifier) -> None:
        self._cursor = cursor
        self._breaker = breaker
        self._classify = classify

    @property
    def cursor(self) -> Any:
        """The driver's own cursor."""
        return self._cursor

    def _execute(self, method: str, *args: Any) -> Any:
        result = _run(self._breaker, self._classify, getattr(self._cursor, method), *args)
        return self if result is self._cursor else result

    def execute(self, operation: Any, *args: Any) -> Any:
        return self._execute("execute", operation, *args)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        return self._execute("executemany", operation, seq_of_parameters)

    def executescript(self, script: str) -> Any:
        return self._execute("executescript", script)

    def callproc(self, procname: str, *args: Any) -> Any:
        return self._execute("callproc", procname, *args)

    def _fetch(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._cursor, method)(*args)
        except BaseException as error:
            _count_late(self._breaker, self._classify(error))
            raise

    def fetchone(self) -> Any:
        return self._fetch("fetchone")

    def fetchmany(self, *args: Any) -> Any:
        return self._fetch("fetchmany", *args)

    def fetchall(self) -> Any:
        return self._fetch("fetchall")

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def __enter__(self) -> GuardedCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class GuardedConnection:
    """A DB-API 2 connection whose statements and commits go through a breaker.

    Statements (`execute`, `executemany`, `executescript`, `callproc`) and `commit` take a permit
    and are refused with CallNotPermittedError while the breaker is open. `rollback` and `close`
    are never refused (they release what the database holds); their failures, like a fetch's,
    count as failed calls.
    """

    def __init__(self, connection: Any, breaker: CircuitBreaker, classify: ErrorClassifier):
        self._connection = connection
        self._breaker = breaker
        self._classify = classify

    @property
    def connection(self) -> Any:
        """The driver's own connection."""
        return self._connection

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker every call goes through."""
        return self._breaker

    def _unrefused(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._connection, method)(*args)
        except BaseException as error:
            _count_late(self._breaker, self._classify(error))
            raise

    def cursor(self, *args: Any, **kwargs: Any) -> GuardedCursor:
        try:
            cursor = self._connection.cursor(*args, **kwargs)
        except BaseException as error:
            _count_late(self._breaker, self._classify(error))
            raise
        return GuardedCursor(cursor, self._breaker, self._classify)

    def _shortcut(self, method: str, *args: Any) -> GuardedCursor:
        # One permit covers opening the cursor too: a driver whose connection broke fails
        # there, and an open breaker must refuse before that.
        def run() -> Any:
            cursor = self._connection.cursor()
            getattr(cursor, method)(*args)
            return cursor

        cursor = _run(self._breaker, self._classify, run)
        return GuardedCursor(cursor, self._breaker, self._classify)

    def execute(self, operation: Any, *args: Any) -> GuardedCursor:
        """The sqlite3 (and psycopg 3) shortcut: a new cursor that executes `operation`."""
        return self._shortcut("execute", operation, *args)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> GuardedCursor:
        return self._shortcut("executemany", operation, seq_of_parameters)

    def executescript(self, script: str) -> GuardedCursor:
        return self._shortcut("executescript", script)

    def commit(self) -> None:
        _run(self._breaker, self._classify, self._connection.commit)

    def rollback(self) -> None:
        self._unrefused("rollback")

    def close(self) -> None:
        self._unrefused("close")

    def __enter__(self) -> GuardedConnection:
        self._connection.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._unrefused("__exit__", *exc_info)  # commits or rolls back: never refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def guard_connection(
    connection: Any, breaker: CircuitBreaker, *, classify: ErrorClassifier = classify_error
) -> GuardedConnection:
    """Wrap a DB-API 2 connection (sqlite3, psycopg, ...) so its calls go through `breaker`."""
    if not isinstance(breaker, CircuitBreaker):
        raise TypeError(f"breaker must be a CircuitBreaker, got {type(breaker).__name__}")
    if not callable(getattr(connection, "cursor", None)):
        raise TypeError(f"{type(connection).__name__} is not a DB-API 2 connection (no cursor())")
    return GuardedConnection(connection, breaker, classify)


class EngineGuard:
    """The event listeners that put one SQLAlchemy engine behind one breaker."""

    def __init__(self, engine: Engine, breaker: CircuitBreaker, classify: ErrorClassifier):
        self.engine = engine
        self.breaker = breaker
        self._classify = classify
        self._listeners: list[tuple[str, Callable[..., Any]]] = [
            ("do_connect", self._do_connect),
            ("engine_connect", self._engine_connect),
            ("before_cursor_execute", self._before_cursor_execute),
            ("after_cursor_execute", self._after_cursor_execute),
            ("handle_error", self._handle_error),
        ]

    def install(self) -> EngineGuard:
        from sqlalchemy import event

        for name, listener in self._listeners:
            event.listen(self.engine, name, listener)
        return self

    def remove(self) -> None:
        """Take the listeners off the engine: calls no longer go through the breaker."""
        from sqlalchemy import event

        for name, listener in self._listeners:
            event.remove(self.engine, name, listener)

    def _do_connect(
        self, dialect: Dialect, record: ConnectionPoolEntry, cargs: Any, cparams: Any
    ) -> Any:
        # Opening a connection is a call: refused before any network I/O while the breaker is
        # open, and its failure counts. Listeners added after this one do not run.
        return _run(self.breaker, self._classify, lambda: dialect.connect(*cargs, **cparams))

    def _engine_connect(self, connection: Connection) -> None:
        # An idle pooled connection goes back at once while the breaker refuses.
        breaker = self.breaker
        if breaker.state not in _REFUSING or breaker.config.mode is Mode.SHADOW:
            return
        try:
            breaker.acquire().ignore()  # it moved on (half-open) since: let the connection be
        except CallNotPermittedError:
            connection.close()
            raise

    def _before_cursor_execute(
        self,
        connection: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        permit = self.breaker.acquire()
        if context is not None:
            setattr(context, _PERMIT, permit)
        else:  # no context to carry it to the outcome: count the statement as allowed
            permit.ignore()

    def _after_cursor_execute(
        self,
        connection: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        permit = _take_permit(context)
        if permit is not None:
            permit.success()

    def _handle_error(self, context: ExceptionContext) -> None:
        error = context.original_exception
        outcome = _FAILURE if context.is_disconnect else self._classify(error)
        permit = _take_permit(context.execution_context)
        if permit is not None:
            permit.record(outcome)
        elif context.connection is not None and not context.is_pre_ping:
            _count_late(self.breaker, outcome)  # a commit, a fetch; connecting is do_connect's


def _take_permit(context: ExecutionContext | None) -> Permit | None:
    if context is None:
        return None
    permit: Permit | None = getattr(context, _PERMIT, None)
    if permit is not None:
        setattr(context, _PERMIT, None)
    return permit


def guard_engine(
    engine: Engine | AsyncEngine,
    registry: BreakerRegistry,
    *,
    name: str | None = None,
    classify: ErrorClassifier = classify_error,
) -> EngineGuard:
    """Put a SQLAlchemy engine (sync or asyncio) behind the breaker `name` of `registry`.

    `name` defaults to the engine's URL without driver, user or password, e.g.
    "postgresql://db.internal:5432/ledger". Needs the extra `meshbreaker[sqlalchemy]`.
    """
    try:
        from sqlalchemy.engine import Engine
    except ImportError as error:
        raise ImportError(
            "guard_engine needs SQLAlchemy: pip install 'meshbreaker[sqlalchemy]'"
        ) from error
    sync_engine = getattr(engine, "sync_engine", engine)
    if not isinstance(sync_engine, Engine):
        raise TypeError(f"engine must be a SQLAlchemy Engine, got {type(engine).__name__}")
    if not isinstance(registry, BreakerRegistry):
        raise TypeError(f"registry must be a BreakerRegistry, got {type(registry).__name__}")
    if name is None:
        name = engine_name(sync_engine)
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME_LENGTH:
        raise ConfigError("name", f"must be 1..{_MAX_NAME_LENGTH} characters, got {name!r}")
    return EngineGuard(sync_engine, registry.get(name), classify).install()


def engine_name(engine: Engine) -> str:
    """The default breaker name of `engine`: backend://host[:port]/database."""
    url = engine.url
    port = f":{url.port}" if url.port else ""
    return f"{url.get_backend_name()}://{url.host or ''}{port}/{url.database or ''}"
