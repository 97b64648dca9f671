"""Helpers shared across test directories (import them as `tests.server_support`).

* `ServerThread(db, port=0, **serve_options)` — a real control plane on 127.0.0.1 in a daemon
  thread with its own event loop: `.start()`, `.stop()` (the server only: `.start()` again binds
  the same port with the same SQLite file), `.close()` (the loop too), `.target`, `.port`,
  `.server` (None while stopped; `.running` asserts it is not), `.call(coroutine)` runs a
  coroutine on the server's loop.
* `ControlPlane(db, **serve_options)` — a started ServerThread with `.channel` and `.stub` for
  the test's own calls; `.close()` closes them too.
* `wait_until(predicate, timeout)` — poll background work until it is done.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from meshbreaker.control.server import ControlPlaneServer, serve
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

_T = TypeVar("_T")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll `predicate` every 20 ms (I/O waiting on background threads) until true or timeout."""
    # The deadline only catches a hang: a wait ends on its condition, and a machine loaded with
    # other work may take seconds to get there (a 2 s default ran out beside a CPU hog).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


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

    @property
    def running(self) -> ControlPlaneServer:
        """The started server."""
        assert self.server is not None, "not started"
        return self.server

    def call(self, coroutine: Awaitable[_T], timeout: float = 10.0) -> _T:
        assert self._loop is not None, "not started"

        async def wrapper() -> _T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def start(self) -> ServerThread:
        # A restart reuses the loop: a grpc.aio server started on a fresh loop in a fresh thread,
        # once every earlier loop of the process is closed, hangs in serve().
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=loop.run_forever, name="control-plane", daemon=True
            )
            self._thread.start()
        self.server = self.call(serve(self.port, self.db, **self.options))
        self.port = self.server.port
        return self

    def stop(self) -> None:
        """Stop the server (its streams end at once); the loop stays for a restart."""
        if self.server is not None:
            self.call(self.server.stop(grace=0))
            self.server = None

    def close(self) -> None:
        """Stop the server and its loop."""
        self.stop()
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self._loop.close()
        self._loop = None


class ControlPlane(ServerThread):
    """A started ServerThread with a channel and stub for the test's own calls."""

    def __init__(self, db: Path, **options: Any) -> None:
        super().__init__(db, **options)
        self.start()
        # After a restart the channel must find the server again within the test's patience
        # (grpc's default reconnect backoff starts at 1 s).
        self.channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.initial_reconnect_backoff_ms", 20),
                ("grpc.max_reconnect_backoff_ms", 100),
            ],
        )
        self.stub = pb_grpc.ControlPlaneStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        super().close()
