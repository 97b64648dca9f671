"""The console's HTTP side: static files, the JSON API and the live feed (server-sent events).

Requests run on the HTTP server's threads; everything they ask of the control plane runs on its
event loop (see `api`). Every answer carries a strict Content-Security-Policy: the page's own
scripts and styles only, nothing inline, no other origin.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import grpc

from meshbreaker.control.console.api import ConsoleApi
from meshbreaker.control.console.bridge import HttpCallContext, http_status, refusal_body
from meshbreaker.control.console.feed import EventPump, MeshCache
from meshbreaker.control.events import EventBus
from meshbreaker.control.validate import Refused

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
MAX_BODY_BYTES = 256 * 1024
# Seconds a request waits for the control plane's loop before it answers 504.
LOOP_TIMEOUT = 10.0


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files shipped in the package, by URL path: (content, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("meshbreaker.control.console") / "static"
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in _CONTENT_TYPES:
            files[f"/static/{item.name}"] = (item.read_bytes(), _CONTENT_TYPES[suffix])
    files["/"] = files["/static/index.html"]
    return files


class ConsoleHttpServer(ThreadingHTTPServer):
    """A threading HTTP(S) server that bounds its connections and knows the console's parts."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        api: ConsoleApi,
        bus: EventBus,
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext | None,
        open_access: bool,
        refresh: float,
        boot: str,
        max_connections: int = 64,
        max_streams: int = 32,
    ) -> None:
        self.api = api
        self.bus = bus
        self.loop = loop
        self.tls = tls
        self.open_access = open_access  # no tokens: a loopback console must fend off rebinding
        self.refresh = refresh
        self.boot = boot
        self.files = static_files()
        self.mesh = MeshCache(api.mesh, loop, max_age=refresh / 2, timeout=LOOP_TIMEOUT)
        self.closing = threading.Event()
        self._max_streams = max_streams
        self._streams = 0
        self._streams_changed = threading.Condition()
        self._connections = threading.BoundedSemaphore(max_connections)
        super().__init__(address, ConsoleHandler)

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """Hold one of the `max_streams` feeds for the block (Refused when all are taken)."""
        with self._streams_changed:
            if self._streams >= self._max_streams:
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many console pages are open")
            self._streams += 1
        try:
            yield
        finally:
            with self._streams_changed:
                self._streams -= 1
                self._streams_changed.notify_all()

    def wait_for_streams(self, timeout: float) -> bool:
        """After `closing` is set: whether every feed ended within `timeout` seconds."""
        with self._streams_changed:
            return self._streams_changed.wait_for(lambda: self._streams == 0, timeout)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            # The handshake runs on the request's own thread (ConsoleHandler.setup), so a client
            # that never completes it holds no one else up.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: refused, not queued
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("console request from %s failed", client_address, exc_info=True)

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the control plane's loop and wait for it (Refused passes through)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(LOOP_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the control plane did not answer in time"
            ) from None


class ConsoleHandler(BaseHTTPRequestHandler):
    """One connection: GET static files and reads, POST writes, GET /api/stream the live feed."""

    server: ConsoleHttpServer
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # seconds a read or write may stall before the connection is closed
    server_version = "meshbreaker-console"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("console %s: " + format, self.address_string(), *args)

    # -- dispatch --------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not self._host_allowed():
            return
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path in self.server.files:
            body, content_type = self.server.files[url.path]
            self._send(200, body, content_type, cache="no-cache")
            return
        reads: dict[str, Callable[[HttpCallContext], Awaitable[Any]]] = {
            "/api/session": self.server.api.session,
            "/api/schema": self.server.api.schema,
            "/api/mesh": self.server.api.mesh_view,
            "/api/policies": self.server.api.policies,
            "/api/explain": lambda context: self.server.api.explain(
                context, query.get("caller", ""), query.get("method", "")
            ),
        }
        if url.path == "/api/stream":
            self._answer(lambda context: self._stream(context, query))
        elif url.path in reads:
            read = reads[url.path]
            self._answer(lambda context: self.server.run(_awaited(read(context))))
        else:
            self._send_json(404, {"code": "NOT_FOUND", "message": f"no such page: {url.path}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if not self._host_allowed() or not self._same_origin():
            return
        writes = {
            "/api/policies/put": self.server.api.put_policy,
            "/api/policies/delete": self.server.api.delete_policy,
            "/api/force": self.server.api.force,
        }
        write = writes.get(url.path)
        if write is None:
            self._send_json(404, {"code": "NOT_FOUND", "message": f"no such action: {url.path}"})
            return
        try:
            body = self._json_body()
        except Refused as error:
            self.close_connection = True  # the unread body would be taken for the next request
            self._send_json(http_status(error), refusal_body(error))
            return
        self._answer(lambda context: self.server.run(write(context, body)))

    def _answer(self, work: Callable[[HttpCallContext], Any]) -> None:
        """Run `work` for this caller; send its JSON, or the refusal in the server's words."""
        host, port = self.client_address[:2]
        context = HttpCallContext(self.headers.get("Authorization"), f"console:{host}:{port}")
        try:
            result = work(context)
        except Refused as error:
            self._send_json(http_status(error), refusal_body(error))
            return
        except (OSError, ssl.SSLError):
            self.close_connection = True  # the client went away mid-answer
            return
        if result is not None:
            self._send_json(200, result)

    # -- checks ----------------------------------------------------------------------------

    def _host_allowed(self) -> bool:
        """Without tokens, only a Host that is an address or localhost (no DNS rebinding)."""
        if not self.server.open_access:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        if host == "localhost" or _is_address(host):
            return True
        self._send_json(
            421, {"code": "PERMISSION_DENIED", "message": "open console: use its address"}
        )
        return False

    def _same_origin(self) -> bool:
        """Refuse a write another site's page sends (its Origin is not this console's)."""
        origin = self.headers.get("Origin")
        scheme = "https" if self.server.tls is not None else "http"
        if origin is None or origin == f"{scheme}://{self.headers.get('Host', '')}":
            return True
        self._send_json(403, {"code": "PERMISSION_DENIED", "message": "cross-origin write refused"})
        return False

    def _json_body(self) -> dict[str, Any]:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "send the body as application/json")
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "Content-Length is needed") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"the body is over {MAX_BODY_BYTES} bytes"
            )
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the body must be a JSON object")
        return body

    # -- answers ---------------------------------------------------------------------------

    def _headers(self, status: int, content_type: str, cache: str) -> None:
        self.send_response(status)
        for name, value in _SECURITY_HEADERS:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", cache)

    def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
        self._headers(status, content_type, cache)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    # -- the live feed ---------------------------------------------------------------------

    def _stream(self, context: HttpCallContext, query: dict[str, str]) -> None:
        """Server-sent events: hello, the recent events, then every event and the mesh, live.

        A page that reconnects to the same server (`boot`) gets the events after the last one it
        saw (`since`); after a restart it gets the recent history whole.
        """
        server = self.server
        session = server.run(server.api.session(context))  # refused here like any read
        with server.stream_slot():
            pump = EventPump(server.loop, server.bus, size=1_000)
            try:
                self._open_stream(pump, context, session, query)
            finally:
                pump.close()

    def _open_stream(
        self,
        pump: EventPump,
        context: HttpCallContext,
        session: dict[str, Any],
        query: dict[str, str],
    ) -> None:
        """Subscribed first, then the history read: no event falls between the two."""
        server = self.server
        if not pump.wait_subscribed(LOOP_TIMEOUT):
            raise Refused(grpc.StatusCode.UNAVAILABLE, "the event stream did not open")
        since = _integer(query.get("since")) if query.get("boot") == server.boot else 0
        recent = server.run(server.api.events(context, since))
        self._headers(200, "text/event-stream", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        hello = {**session, "boot": server.boot, "refresh": server.refresh, "since": since}
        self._event("hello", json.dumps(hello).encode())
        seen = since
        for item in recent:
            seen = max(seen, item["sequence"])
            self._event("event", json.dumps(item).encode())
        self._follow(pump, context, seen)

    def _follow(self, pump: EventPump, context: HttpCallContext, seen: int) -> None:
        """Forward events as they come; the mesh after each burst and every `refresh` seconds."""
        server = self.server
        last_mesh = -float("inf")
        dirty = True
        lost = 0
        while not server.closing.is_set():
            try:
                item = pump.events.get(timeout=0.1 if dirty else 0.25)
            except queue.Empty:
                item = None
            if item is not None:
                seen = max(seen, item["sequence"])
                self._event("event", json.dumps(item).encode())
                dirty = True
            if pump.lost != lost:
                lost = pump.lost
                self._event("lost", json.dumps({"events": lost}).encode())
            now = time.monotonic()
            if (dirty and pump.events.empty()) or now - last_mesh >= server.refresh:
                try:
                    mesh = server.mesh.get(seen, context)
                except Refused as error:
                    mesh = json.dumps({"error": refusal_body(error)}).encode()
                self._event("mesh", mesh)
                last_mesh, dirty = now, False

    def _event(self, name: str, data: bytes) -> None:
        self.wfile.write(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _integer(text: str | None) -> int:
    try:
        return max(0, int(text or "0"))
    except ValueError:
        return 0


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
