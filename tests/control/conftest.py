"""Control-plane test helpers: real servers on 127.0.0.1:0 with a temp SQLite file.

Fixtures (usable by every test module under tests/control/):

* `start_control_plane` — async factory, for `async def` tests: `server = await
  start_control_plane(**options)` starts a `ControlPlaneServer` in the test's event loop (db in
  tmp_path, report clock = the `clock` FakeClock unless given; any `serve()` keyword works). Every
  server started is stopped at teardown. `server.target` is "127.0.0.1:<port>".
* `control_plane_thread` — sync factory, for sync tests (e.g. a MeshAgent, which runs threads):
  `cp = control_plane_thread(**options)` runs the server in a background thread with its own
  event loop: a `server_support.ServerThread` (`cp.target`, `cp.port`, `cp.running`, `cp.stop()`,
  `cp.start()` again: same port, same db, so agents can reconnect; `cp.call(coroutine)`).
* `etcd_server` — one real etcd per test worker (tests share it under their own key prefixes);
  `etcd` — an etcd of the test's own, started for it and killed after.
* `admin_stub` — sync factory: `stub = admin_stub(target, token=None)` a ControlPlaneStub over
  an insecure channel, sending `authorization: Bearer <token>` when given; closed at teardown.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshbreaker.control.server import ControlPlaneServer, serve
from meshbreaker.control.store import PolicyStore, SqliteStore
from meshbreaker.control.store.etcd_server import EtcdServer
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.store_support import WALL_CLOCK
from tests.server_support import ServerThread


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
        server.close()


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


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd per test worker; tests share it under their own key prefixes."""
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of the test's own: for tests that stop it, or that read what it serves."""
    with EtcdServer(tmp_path / "etcd") as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], PolicyStore]]:
    opened: list[PolicyStore] = []
    prefix = f"/test-{uuid.uuid4().hex}/"

    def open_one() -> PolicyStore:
        store: PolicyStore
        if request.param == "sqlite":
            store = SqliteStore(
                tmp_path / "store.db", wall_clock=lambda: WALL_CLOCK, poll_interval=0.02
            )
        else:
            from meshbreaker.control.store.etcd import EtcdStore

            server: EtcdServer = request.getfixturevalue("etcd_server")
            store = EtcdStore([server.endpoint], prefix=prefix, wall_clock=lambda: WALL_CLOCK)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], PolicyStore]) -> PolicyStore:
    return open_store()
