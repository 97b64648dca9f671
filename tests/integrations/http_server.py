"""A tiny threaded HTTP/1.1 server on 127.0.0.1 whose faults the tests choose, path by path.

`FaultyServer().start()` serves every path with 200 "ok" until `server.fault(path, Fault(...))`
says otherwise; `.hits(path)` counts the requests that reached it; `.url(path)` builds URLs.
"""

from __future__ import annotations

import http.server
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

# A hung response waits at most this long for the test to release it (the tests time out first).
_HANG_LIMIT = 5.0


@dataclass(frozen=True)
class Fault:
    """How the server answers a path: a status, or one of the ways a server breaks."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False  # hold the response until the server is stopped or released
    drop: bool = False  # close the connection without answering
    truncate: bool = False  # promise more body than is sent, then close


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no delayed-ACK stall
    server: _Server

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self._answer()

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0]
        fault = self.server.owner.hit(path)
        if fault.hang:
            self.server.owner.released.wait(_HANG_LIMIT)
        if fault.drop:
            self.close_connection = True
            return
        self.send_response(fault.status)
        for name, value in fault.headers.items():
            self.send_header(name, value)
        if fault.truncate:
            self.send_header("Content-Length", str(len(fault.body) + 100))
            self.end_headers()
            self.wfile.write(fault.body)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_header("Content-Length", str(len(fault.body)))
        self.end_headers()
        self.wfile.write(fault.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests read hits(), not a log


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultyServer


class FaultyServer:
    """The server, its faults by path and the requests that reached it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._hits: dict[str, int] = {}
        self.released = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        # A short poll interval: shutdown() waits up to one interval for the serving loop.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fault(self, path: str, fault: Fault | None) -> None:
        """Answer `path` with `fault` from now on; None restores 200 "ok"."""
        with self._lock:
            if fault is None:
                self._faults.pop(path, None)
            else:
                self._faults[path] = fault

    def hit(self, path: str) -> Fault:
        with self._lock:
            self._hits[path] = self._hits.get(path, 0) + 1
            return self._faults.get(path, Fault())

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits.get(path, 0)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
