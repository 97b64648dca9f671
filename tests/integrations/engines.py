"""One face for a sync SQLAlchemy engine and an asyncio one, so guard_engine is tested on both."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from sqlalchemy import CursorResult, Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_T = TypeVar("_T")


def _rows(result: CursorResult[Any]) -> list[Any]:
    return [tuple(row) for row in result] if result.returns_rows else []


class OpenConnection(Protocol):
    def execute(self, sql: str) -> list[Any]: ...

    def close(self) -> None: ...


class EngineFace(Protocol):
    @property
    def engine(self) -> Engine | AsyncEngine: ...

    def execute(self, sql: str) -> list[Any]:
        """Connect, run `sql`, commit, give the connection back; the rows."""
        ...

    def connect(self) -> OpenConnection: ...

    def dispose(self) -> None: ...


class _SyncConnection:
    def __init__(self, engine: Engine) -> None:
        self._connection = engine.connect()

    def execute(self, sql: str) -> list[Any]:
        return _rows(self._connection.execute(text(sql)))

    def close(self) -> None:
        self._connection.close()


class SyncEngine:
    def __init__(self, url: str, **options: Any) -> None:
        self.engine: Engine = create_engine(url, **options)

    def execute(self, sql: str) -> list[Any]:
        with self.engine.connect() as connection:
            rows = _rows(connection.execute(text(sql)))
            connection.commit()
            return rows

    def connect(self) -> OpenConnection:
        return _SyncConnection(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


class _AsyncConnection:
    def __init__(self, face: AsyncioEngine, connection: AsyncConnection) -> None:
        self._face = face
        self._connection = connection

    def execute(self, sql: str) -> list[Any]:
        async def run() -> list[Any]:
            return _rows(await self._connection.execute(text(sql)))

        return self._face.run(run())

    def close(self) -> None:
        self._face.run(self._connection.close())


class AsyncioEngine:
    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self.engine: AsyncEngine = create_async_engine(
            url.replace("sqlite://", "sqlite+aiosqlite://", 1), **options
        )

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self._loop.run_until_complete(coroutine)

    def execute(self, sql: str) -> list[Any]:
        async def run() -> list[Any]:
            async with self.engine.connect() as connection:
                rows = _rows(await connection.execute(text(sql)))
                await connection.commit()
                return rows

        return self.run(run())

    def connect(self) -> OpenConnection:
        return _AsyncConnection(self, self.run(self.engine.connect().start()))

    def dispose(self) -> None:
        self.run(self.engine.dispose())
        # aiosqlite stops the worker of a failed connect without awaiting it; the worker then
        # hands its result to this loop, which must still be open.
        for thread in threading.enumerate():
            if thread.name.endswith("(_connection_worker_thread)"):
                thread.join(timeout=5.0)
        self._loop.close()
