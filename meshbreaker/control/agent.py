"""MeshAgent: keeps a process's BreakerRegistry in step with the control plane and reports back.

Design: every MeshAgent of a process runs as two tasks (watch, report) on ONE shared asyncio
loop in a daemon thread, over a grpc.aio channel. The application may be sync or async: it never
sees the loop, and `start()`/`stop()`/`wait_for_revision()` are plain blocking calls. Measured
first with a sync channel and two threads per agent (plus grpc's channel thread): 200 agents in
one process meant 600 threads fighting for the GIL, and a policy took up to ~0.8 s to reach the
last of them (bench/control_plane.py); on one loop the p99 is about five times lower, and a lone
agent costs one shared thread instead of three.

This module holds the lifecycle, the public state and the watch loop; how a snapshot is applied
is in `agent_apply`, how reports go in `agent_reports`. Cache writes (fsync) run in a worker
thread so they never stall the shared loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from meshbreaker._backoff import Backoff as Backoff  # re-exported: the agent's retry backoff
from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent_apply import AgentConfig, PolicyCheck
from meshbreaker.control.agent_cache import FailStaticCache
from meshbreaker.control.agent_link import AUTH_CODES, AgentToken, describe, status_code
from meshbreaker.control.agent_link import AgentStatus as AgentStatus  # re-exported
from meshbreaker.control.agent_loop import AgentLoop
from meshbreaker.control.agent_overrides import OverrideClock
from meshbreaker.control.agent_reports import MAX_BREAKERS_PER_REPORT as MAX_BREAKERS_PER_REPORT
from meshbreaker.control.convert import check_caller
from meshbreaker.control.transition_log import TransitionLog
from meshbreaker.errors import AgentError as AgentError  # re-exported: users catch it here
from meshbreaker.errors import ConfigError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def default_instance_id() -> str:
    """host-pid-random: unique per process even when pids repeat across containers."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class MeshAgent(AgentConfig):
    """Applies the control plane's policies to `registry` live and reports its breakers back.

    `target` is one control plane ("host:port", or a DNS name whose addresses gRPC tries in
    turn), several replicas ("cp-a:7070,cp-b:7070" or a list): the agent starts on a random one,
    moves to the next as soon as its stream breaks, and backs off only once every one has failed.
    `clock` must be the registry's clock (breaker snapshots hold its readings); `wall_clock` tells
    when an override expires (unix time, as the control plane writes it). `validate`, if
    given, is an application-level admission check run on every resolved snapshot before it is
    applied; raising ConfigError (or ValueError) rejects the snapshot, which is then NACKed.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        service: str,
        registry: BreakerRegistry,
        *,
        instance_id: str | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        report_interval: float = 5.0,
        cache_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        validate: PolicyCheck | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        rpc_timeout: float = 5.0,
        report_coalesce: float = 0.02,
        ack_spread: float = 0.1,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        check_caller(service, "service", required=True)
        if not report_interval > 0:
            raise ValueError("report_interval must be > 0")
        self.targets = parse_targets(target)
        self._rng = random.Random()
        self._target_index = self._rng.randrange(len(self.targets))  # spread a fleet out
        self.service = service
        self.registry = registry
        self.instance_id = instance_id or default_instance_id()
        # Claims the instance id at the control plane: only this process knows it.
        self._instance_key = secrets.token_urlsafe(24)
        self._token = AgentToken(token, token_file)
        self._metadata = self._token.metadata()
        self._credentials = credentials
        self.report_interval = report_interval
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache = None if self.cache_path is None else FailStaticCache(self.cache_path, service)
        self._clock = clock
        self._wall_clock = wall_clock
        self._overrides = OverrideClock(registry, wall_clock)
        self._validate = validate
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._rpc_timeout = rpc_timeout
        self._report_coalesce = report_coalesce
        self._ack_spread = ack_spread
        # grpc's own reconnect backoff (default up to 120 s) would otherwise hold a channel in
        # TRANSIENT_FAILURE long after the server is back, whatever our own backoff says.
        self._channel_options: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", max(1, int(backoff_initial * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(backoff_max * 1000))),
            # Pings find a control plane that vanished without closing the connection (host
            # down, partition); the server permits them every 5 s even without data.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.ping_timeout_ms", 10_000),  # recent gRPC waits on this one (1 min)
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            *channel_options,
        ]
        # The application's default, used whenever no catch-all policy is present.
        self._base_default = registry.default

        self._lock = threading.Lock()
        self._applied = threading.Condition(self._lock)
        self._started = False
        self._stopped = False  # also read by the loop's tasks
        self._loop: AgentLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._done: concurrent.futures.Future[None] | None = None
        self._report_event: asyncio.Event | None = None
        self._report_pending = False
        self._unsubscribe: Callable[[], None] | None = None
        self._stub: pb_grpc.ControlPlaneAsyncStub | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._applied_policies: Sequence[pb.Policy] = ()
        self._applied_snapshot: pb.ConfigSnapshot | None = None
        self._applied_store_id = ""
        self._store_mismatch: pb.StoreMismatch | None = None
        self._transitions = TransitionLog(clock)
        # The effective config of each breaker as the control plane last accepted it: a report
        # carries a breaker's config only when it changed since.
        self._reported_configs: dict[str, BreakerConfig] = {}

        self._applied_revision = 0
        self._applied_at: float | None = None
        self._applied_from_cache = False
        self._last_nack: pb.Nack | None = None
        self._last_error: str | None = None
        self._last_code: grpc.StatusCode | None = None
        self._report_denied: str | None = None
        self._connected = False
        self._reports_sent = 0
        self._snapshots_received = 0
        self._warned_ttl = False

    # ----- public state ----------------------------------------------------------------

    @property
    def target(self) -> str:
        """The control plane this agent uses now (or tries next)."""
        return self.targets[self._target_index]

    @property
    def applied_revision(self) -> int:
        """The store revision of the policies in force (0 = none yet)."""
        return self._applied_revision

    @property
    def applied_at(self) -> float | None:
        """`clock()` when the policies in force were applied (None = never)."""
        return self._applied_at

    @property
    def applied_from_cache(self) -> bool:
        """True while the policies in force came from `cache_path`, not from the server."""
        return self._applied_from_cache

    @property
    def last_nack(self) -> tuple[int, str] | None:
        """(revision, reason) of the latest snapshot rejected, until a later one applies."""
        nack = self._last_nack
        return None if nack is None else (nack.revision, nack.reason)

    @property
    def applied_store_id(self) -> str:
        """The id of the store the policies in force came from ("" = none, or not known)."""
        return self._applied_store_id

    @property
    def store_mismatch(self) -> pb.StoreMismatch | None:
        """Set while the agent keeps its policies instead of the control plane's (another store,
        or a lower revision of the same one) until an operator runs `meshbreaker store adopt`."""
        return self._store_mismatch

    @property
    def transitions_pending(self) -> int:
        """Transitions logged and not yet acknowledged by the control plane."""
        return len(self._transitions)

    @property
    def last_error(self) -> str | None:
        """The latest connection or RPC error, cleared when the watch stream delivers again."""
        return self._last_error

    @property
    def status(self) -> AgentStatus:
        """connected / denied / unreachable / stale (or connecting, before the first answer)."""
        if self._connected and self._report_denied is None:
            return AgentStatus.CONNECTED
        if self._last_code in AUTH_CODES or self._report_denied is not None:
            return AgentStatus.DENIED
        if self._last_error is None:
            return AgentStatus.CONNECTING
        if self._applied_revision > 0 or self._applied_from_cache:
            return AgentStatus.STALE
        return AgentStatus.UNREACHABLE

    @property
    def token_source(self) -> str:
        """Where the agent's bearer token comes from, for messages about it (never the token)."""
        return self._token.source

    @property
    def connected(self) -> bool:
        """True while the watch stream is established and has delivered a snapshot."""
        return self._connected

    @property
    def reports_sent(self) -> int:
        """How many reports the control plane accepted."""
        return self._reports_sent

    @property
    def snapshots_received(self) -> int:
        """How many config snapshots arrived (applied or rejected)."""
        return self._snapshots_received

    def wait_for_revision(self, revision: int, timeout: float | None = None) -> bool:
        """Block until policies of at least `revision` are applied; False on timeout."""
        with self._applied:
            return self._applied.wait_for(lambda: self._applied_revision >= revision, timeout)

    # ----- lifecycle -------------------------------------------------------------------

    def start(self) -> MeshAgent:
        """Load the cache (if any), then connect and report in the background."""
        with self._lock:
            if self._stopped:
                raise AgentError("a stopped MeshAgent cannot be started again")
            if self._started:
                return self
            self._started = True
        self._load_cache()
        self._loop = AgentLoop.shared()
        if self._loop.in_loop():
            raise AgentError("start() must not be called from the agents' own loop thread")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done = self._loop.submit(self._main(ready))
        ready.result(timeout=10)  # the tasks exist, so stop() can always cancel them
        self._unsubscribe = self.registry.on_state_change(self._on_transition)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the watch, stop reporting and close the channel; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        loop, task, done = self._loop, self._task, self._done
        if loop is not None and task is not None:
            loop.loop.call_soon_threadsafe(self._cancel, task)
            if done is not None and not loop.in_loop():
                with contextlib.suppress(
                    concurrent.futures.TimeoutError, concurrent.futures.CancelledError
                ):
                    done.result(timeout)
        self._connected = False

    def __enter__(self) -> MeshAgent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._report_event = asyncio.Event()
        self._task = asyncio.current_task()
        self._stub = self._stub_for(self.target)
        ready.set_result(None)
        children = [
            asyncio.create_task(self._watch_loop()),
            asyncio.create_task(self._report_loop()),
            asyncio.create_task(self._expiry_loop()),
        ]
        try:
            await asyncio.wait(children)  # they only end when stopped
        finally:
            for child in children:
                child.cancel()
            # The channels close only once both are done with them. (gather() would return at
            # the first cancelled child, and wait_for() may swallow a cancellation before
            # Python 3.12, which is why the loops also check `_stopped`.)
            await asyncio.wait(children)
            self._connected = False
            for channel in self._channels.values():
                await channel.close()

    def _stub_for(self, target: str) -> pb_grpc.ControlPlaneAsyncStub:
        """A stub on this target's channel, opened on first use and kept until stop()."""
        # Kept rather than closed on failover: the reporter may still be mid-call on it.
        channel = self._channels.get(target)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials, self._channel_options)
            else:
                channel = grpc.aio.insecure_channel(target, self._channel_options)
            self._channels[target] = channel
        return pb_grpc.ControlPlaneStub(channel)

    def _cancel(self, task: asyncio.Task[None]) -> None:
        """On the loop: wake the reporter so it sees `_stopped`, and cancel everything."""
        if self._report_event is not None:
            self._report_event.set()
        task.cancel()

    # ----- watching --------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        request = pb.WatchConfigRequest(
            service=self.service, instance_id=self.instance_id, instance_key=self._instance_key
        )
        failed_in_a_row = 0  # targets tried since the last stream that delivered
        while not self._stopped:
            target = self.target
            stub = self._stub = self._stub_for(target)
            delivered = False
            try:
                call = stub.WatchConfig(request, metadata=self._metadata)
                async for snapshot in call:
                    if not self._connected:
                        logger.info("control plane %s: watching as %s", target, self.service)
                    self._connected = delivered = True
                    self._last_error = None
                    self._last_code = None
                    self._backoff.reset()
                    await self._handle_snapshot(snapshot)
                self._last_error = "the control plane closed the watch stream"
            except grpc.RpcError as error:
                self._last_error = describe(error)
                self._last_code = status_code(error)
            except Exception as error:  # a bug must not kill the agent silently
                logger.exception("meshbreaker agent: watch loop error")
                self._last_error = f"{type(error).__name__}: {error}"
                self._last_code = None
            finally:
                self._connected = False
            if self._stopped:
                return
            if self._last_code in AUTH_CODES:
                await self._back_off_denied(target)
                continue
            failed_in_a_row = 0 if delivered else failed_in_a_row + 1
            self._target_index = (self._target_index + 1) % len(self.targets)
            if delivered or failed_in_a_row < len(self.targets):
                # A stream that worked ended (replica gone, connection aged out), or another
                # replica is still untried: go on at once, policies stay as they are meanwhile.
                logger.info(
                    "control plane %s: %s; trying %s", target, self._last_error, self.target
                )
                continue
            failed_in_a_row = 0
            delay = self._backoff.next_delay()
            # One warning per outage; the retries themselves are debug noise.
            log = logger.warning if self._backoff.attempt == 1 else logger.debug
            log(
                "control plane %s unreachable (%s); keeping revision %d, retrying in %.2fs",
                ",".join(self.targets),
                self._last_error,
                self._applied_revision,
                delay,
            )
            await asyncio.sleep(delay)

    async def _back_off_denied(self, target: str) -> None:
        """Credentials refused: say so (not "unreachable"), back off, read the token again."""
        delay = self._backoff.next_delay()
        log = logger.warning if self._backoff.attempt == 1 else logger.debug
        log(
            "control plane %s refused this agent's credentials (%s): authentication problem "
            "with %s; keeping revision %d, retrying in %.2fs",
            target,
            self._last_error,
            self._token.source,
            self._applied_revision,
            delay,
        )
        await asyncio.sleep(delay)
        self._metadata = self._token.metadata()


# gRPC target URIs that may hold an address list of their own; such a target is kept whole.
_URI_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "xds:")


def parse_targets(target: str | Sequence[str]) -> tuple[str, ...]:
    """Control-plane targets from "a:7070,b:7070" or a list; refuses an empty one."""
    parts = [target] if isinstance(target, str) else list(target)
    targets = [
        item.strip()
        for part in parts
        for item in ([part] if part.startswith(_URI_SCHEMES) else part.split(","))
    ]
    if not targets or not all(targets):
        raise ConfigError("target", f"needs one or more host:port, got {target!r}")
    return tuple(targets)
