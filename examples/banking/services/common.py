"""What every banking service shares: SQLite access, the gRPC server, the process entry point."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from examples.banking.chaos import Chaos, ChaosInterceptor, ChaosServicer
from examples.banking.gen import chaos_pb2_grpc
from meshbreaker.breaker import CircuitBreaker
from meshbreaker.db import guard_connection

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 0.5


class Loop:
    """A daemon thread that runs one round every `interval` seconds (sooner when woken)."""

    name = "loop"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self) -> int:
        """One pass over the work; returns how many items it finished."""
        raise NotImplementedError

    def start(self) -> None:
        """Run rounds in the background until stop()."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next round now rather than at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the current round and end the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception:  # the loop must outlive any one bad round
                log.exception("%s round failed", self.name)
            self._wake.wait(self.interval)
            self._wake.clear()


class Database:
    """One SQLite connection shared by the server's threads, serialised by a lock.

    With a `breaker`, every statement and commit goes through it (meshbreaker.db): while the
    database fails, the breaker opens and work is refused with CallNotPermittedError before it
    reaches SQLite.
    """

    def __init__(
        self, path: str | os.PathLike[str], schema: str, breaker: CircuitBreaker | None = None
    ) -> None:
        self.path = str(path)
        raw = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn: Any = raw if breaker is None else guard_connection(raw, breaker)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of this process without an fsync per commit.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        # A checkpoint fsyncs; run inline it stalls whichever request commits at that moment
        # (tens to hundreds of ms on a busy disk), so a background thread does it instead.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn.executescript(schema)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            while not self._closed.wait(CHECKPOINT_INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.warning("checkpoint of %s failed", self.path, exc_info=True)
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), holding the lock throughout."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.commit()
            except BaseException:
                # rollback(), not a ROLLBACK statement: a guarded connection never refuses it.
                self._conn.rollback()
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement and return all rows."""
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def close(self) -> None:
        """Stop checkpointing and close the connection."""
        self._closed.set()
        self._checkpointer.join(timeout=5)
        with self._lock:
            self._conn.close()


@dataclass
class RunningService:
    """A started in-process banking server and the things tests and processes need from it."""

    name: str
    server: grpc.Server
    port: int
    chaos: Chaos
    health: health.HealthServicer
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving, then release databases and channels."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        for close in reversed(self.closers):
            close()


def start_server(
    name: str,
    register: Callable[[grpc.Server, Chaos], list[Callable[[], None]]],
    *,
    port: int = 0,
    max_workers: int = 32,
) -> RunningService:
    """Build a server with health, chaos and the business servicers; bind 127.0.0.1:port; start."""
    health_servicer = health.HealthServicer()
    chaos = Chaos(health_servicer)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name),
        interceptors=[ChaosInterceptor(chaos)],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    chaos_pb2_grpc.add_ChaosServiceServicer_to_server(ChaosServicer(chaos), server)
    closers = register(server, chaos)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise RuntimeError(f"{name}: could not bind 127.0.0.1:{port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningService(name, server, bound, chaos, health_servicer, closers)


def base_parser(name: str, breaks: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The flags every service process takes; `breaks` names its test-only broken variants."""
    parser = argparse.ArgumentParser(prog=f"python -m examples.banking.services.{name}")
    if breaks:
        parser.add_argument(
            "--break",
            dest="breaks",
            action="append",
            choices=breaks,
            default=[],
            help="TEST ONLY: run a deliberately broken variant, to show an invariant catch it",
        )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument("--db", required=True, help="SQLite file for this service's data")
    parser.add_argument("--port-file", help="write the bound port here (atomically) once serving")
    parser.add_argument("--control-plane", help="control plane host:port; runs a MeshAgent")
    parser.add_argument(
        "--token",
        default=os.environ.get("BANKING_AGENT_TOKEN"),
        help="agent bearer token for the control plane (env BANKING_AGENT_TOKEN)",
    )
    parser.add_argument("--instance-id", help="instance id reported to the control plane")
    return parser


def transfer_problem(from_account: str, to_account: str, amount_cents: int) -> str:
    """What is wrong with a transfer request's accounts and amount ('' if nothing)."""
    if not from_account or not to_account:
        return "from_account and to_account are required"
    if from_account == to_account:
        return "from_account and to_account must differ"
    if amount_cents <= 0:
        return "amount_cents must be > 0"
    return ""


def write_port_file(path: str, port: int) -> None:
    """Write `port` to `path` atomically, so a reader never sees a half-written number."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def exit_with_parent(parent: int) -> None:
    """SIGTERM ourselves once `parent` is gone (run in a daemon thread)."""
    # A demo killed with SIGKILL cannot clean up; its children notice and leave on their own.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def run_process(
    name: str,
    args: argparse.Namespace,
    register: Callable[[grpc.Server, Chaos], list[Callable[[], None]]],
    start_agent: Callable[[], Callable[[], None] | None] | None = None,
    register_endpoint: Callable[[int], Callable[[], None]] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT: print and write the port, run the agent, stop gracefully.

    `register_endpoint(port)` puts the server into an xDS cluster before its port is announced
    and returns what takes it out again, first thing on the way down.
    """
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    running = start_server(name, register, port=args.port)
    stop_agent = deregister = None
    try:
        stop_agent = start_agent() if start_agent is not None else None
        if register_endpoint is not None:
            deregister = register_endpoint(running.port)
    except BaseException:
        if stop_agent is not None:
            stop_agent()
        running.stop(0)  # or the server's threads keep a process that cannot serve alive
        raise
    if args.port_file:
        write_port_file(args.port_file, running.port)
    print(f"PORT {running.port}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        if deregister is not None:
            deregister()  # out of EDS before the server stops answering
        if stop_agent is not None:
            stop_agent()
        running.stop(0.5)
    sys.exit(0)
