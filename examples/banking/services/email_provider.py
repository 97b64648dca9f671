"""A third-party email provider over HTTP: one POST per message, deduplicated by its key; chaos.

Not a mesh member (it runs no agent): the notification service reaches it through
meshbreaker.httpx. `POST /v1/messages` with an `Idempotency-Key` header stores the message once
(a repeat only bumps a counter) and answers 202. `PUT /chaos` with `{"failure_rate": 1.0,
"status": 503, "retry_after": 2}` makes that share of messages fail with that status (and
`Retry-After`) before anything is stored; `{}` lifts it.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from examples.banking.services.common import Database, exit_with_parent, write_port_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS emails (
    idempotency_key TEXT PRIMARY KEY,
    body            TEXT NOT NULL,
    deliveries      INTEGER NOT NULL DEFAULT 1,
    received_at     REAL NOT NULL
);
"""
MAX_BODY = 4096
MAX_KEY = 128


@dataclass(frozen=True)
class EmailChaos:
    """The share of messages refused, with which status and Retry-After (seconds, 0: none)."""

    failure_rate: float = 0.0
    status: int = 503
    retry_after: int = 0

    @classmethod
    def from_json(cls, data: Any) -> EmailChaos:
        """Checked settings from a `PUT /chaos` body; ValueError names what is wrong."""
        if not isinstance(data, dict) or set(data) - {"failure_rate", "status", "retry_after"}:
            raise ValueError("expected an object with failure_rate, status, retry_after")
        chaos = cls(**data)
        if not isinstance(chaos.failure_rate, (int, float)) or not 0 <= chaos.failure_rate <= 1:
            raise ValueError("failure_rate must be a number in [0, 1]")
        if not isinstance(chaos.status, int) or not 400 <= chaos.status <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        if not isinstance(chaos.retry_after, int) or not 0 <= chaos.retry_after <= 60:
            raise ValueError("retry_after must be whole seconds in [0, 60]")
        return chaos


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: EmailServer

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        if self.path != "/v1/messages":
            self._answer(404, {"error": "no such resource"})
            return
        key = self.headers.get("idempotency-key", "")
        if not key or len(key) > MAX_KEY:
            self._answer(400, {"error": f"Idempotency-Key: 1..{MAX_KEY} characters"})
            return
        with self.server.lock:
            self.server.hits += 1
        chaos = self.server.chaos
        if chaos.failure_rate and self.server.random.random() < chaos.failure_rate:
            headers = {"Retry-After": str(chaos.retry_after)} if chaos.retry_after else {}
            self._answer(chaos.status, {"error": "provider unavailable"}, headers)
            return
        with self.server.db.transaction() as conn:
            conn.execute(
                "INSERT INTO emails VALUES (?, ?, 1, ?) "
                "ON CONFLICT (idempotency_key) DO UPDATE SET deliveries = deliveries + 1",
                (key, body.decode("utf-8", "replace"), time.time()),
            )
        self._answer(202, {"accepted": key})

    def do_PUT(self) -> None:
        body = self._body()
        if body is None:
            return
        if self.path != "/chaos":
            self._answer(404, {"error": "no such resource"})
            return
        try:
            self.server.chaos = EmailChaos.from_json(json.loads(body or b"{}"))
        except (ValueError, TypeError) as error:
            self._answer(400, {"error": str(error)})
            return
        self._answer(200, {"chaos": self.server.chaos.__dict__})

    def _body(self) -> bytes | None:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self._answer(413, {"error": f"at most {MAX_BODY} bytes"})
            return None
        return self.rfile.read(length)

    def _answer(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the database is the record


class EmailServer(http.server.ThreadingHTTPServer):
    """The provider: messages in `db`, faults in `chaos`."""

    daemon_threads = True

    def __init__(self, db: Database, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.db = db
        self.chaos = EmailChaos()
        self.random = random.Random()
        self.lock = threading.Lock()
        self.hits = 0  # messages posted, refused ones included

    @property
    def url(self) -> str:
        """The provider's base URL."""
        return f"http://127.0.0.1:{self.server_address[1]}"


def main() -> None:
    """Process entry point: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m examples.banking.services.email_provider")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument("--db", required=True, help="SQLite file for the messages received")
    parser.add_argument("--port-file", help="write the bound port here (atomically) once serving")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    db = Database(args.db, SCHEMA)
    server = EmailServer(db, args.port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown).start())
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if args.port_file:
        write_port_file(args.port_file, server.server_address[1])
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        db.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
