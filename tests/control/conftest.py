"""Control-plane test helpers: real servers on 127.0.0.1:0 with a temp SQLite file.

Fixtures (usable by every test module under tests/control/):

* `start_control_plane` — async factory, for `async def` tests: `server = await
  start_control_plane(**options)` starts a `ControlPlaneServer` in the test's event loop (db in
  tmp_path, report clock = the `clock` FakeClock unless given; any `serve()` keyword works). Every
  server started is stopped at teardown. `server.target` is "127.0.0.1:<port>".
* `control_plane_thread` — sync factory, for sync tests (e.g. a MeshAgent, which runs threads):
  `cp = control_plane_thread(**options)` runs the server in a background thread with its own
  event loop. `cp.target`, `cp.port`, `cp.server`, `cp.stop()`, `cp.start()` (again: same port,
  same db, so agents can reconnect), `cp.call(coroutine)` runs a coroutine on the server's loop.
* `admin_stub` — sync factory: `stub = admin_stub(target, token=None)` a ControlPlaneStub over
  an insecure channel, sending `authorization: Bearer <token>` when given; closed at teardown.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from meshbreaker.control.server import ControlPlaneServer, serve
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

_T = TypeVar("_T")


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token to every call on an insecure channel (call credentials need TLS)."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer(token)

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ()) + list(self._metadata)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class ServerThread:
    """A control-plane server on its own event loop in a daemon thread."""

    def __init__(self, db: Path, port: int = 0, **options: Any) -> None:
        self.db = db
        self.port = port
        self.options = options
        self.server: ControlPlaneServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coroutine: Awaitable[_T], timeout: float = 10.0) -> _T:
        assert self._loop is not None, "not started"

        async def wrapper() -> _T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def start(self) -> ServerThread:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="control-plane", daemon=True)
        self._thread.start()
        self.server = self.call(serve(self.port, self.db, **self.options))
        self.port = self.server.port
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self.server is not None:
            self.call(self.server.stop(grace=0))
            self.server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self._loop.close()
        self._loop = None


@pytest.fixture
async def start_control_plane(
    tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Callable[..., Awaitable[ControlPlaneServer]]]:
    servers: list[ControlPlaneServer] = []

    async def start(**options: Any) -> ControlPlaneServer:
        options.setdefault("db", tmp_path / "control-plane.db")
        options.setdefault("clock", clock)
        options.setdefault("port", 0)
        server = await serve(**options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
def control_plane_thread(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        db = options.pop("db", tmp_path / f"control-plane-{len(started)}.db")
        server = ServerThread(db, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def admin_stub() -> Iterator[Callable[..., pb_grpc.ControlPlaneStub]]:
    channels: list[grpc.Channel] = []

    def make(target: str, token: str | None = None) -> pb_grpc.ControlPlaneStub:
        channel: grpc.Channel = grpc.insecure_channel(target)
        channels.append(channel)
        if token is not None:
            channel = grpc.intercept_channel(channel, _TokenInterceptor(token))
        return pb_grpc.ControlPlaneStub(channel)

    yield make
    for channel in channels:
        channel.close()
