"""MeshAgent: keeps a process's BreakerRegistry in step with the control plane and reports back.

Design: every MeshAgent of a process runs as two tasks (watch, report) on ONE shared asyncio
loop in a daemon thread, over a grpc.aio channel. The application may be sync or async: it never
sees the loop, and `start()`/`stop()`/`wait_for_revision()` are plain blocking calls. Measured
first with a sync channel and two threads per agent (plus grpc's channel thread): 200 agents in
one process meant 600 threads fighting for the GIL, and a policy took up to ~0.8 s to reach the
last of them (bench/control_plane.py); on one loop the p99 is about five times lower, and a lone
agent costs one shared thread instead of three.

A breaker transition (the caller's thread) only sets a flag and, when none is pending, schedules
a wake-up on the loop (`call_soon_threadsafe`); the reporter then waits a few milliseconds so a
burst of transitions coalesces into one report. Cache writes (fsync) run in a worker thread so
they never stall the shared loop.
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
from meshbreaker.config import BreakerConfig, State
from meshbreaker.control.agent_cache import FailStaticCache
from meshbreaker.control.agent_link import AUTH_CODES, AgentToken, describe, status_code
from meshbreaker.control.agent_link import AgentStatus as AgentStatus  # re-exported
from meshbreaker.control.agent_loop import AgentLoop
from meshbreaker.control.agent_overrides import OverrideClock
from meshbreaker.control.convert import breaker_to_proto, check_caller
from meshbreaker.control.layers import ResolvedPolicies, policies_for
from meshbreaker.control.transition_log import TransitionLog
from meshbreaker.errors import AgentError as AgentError  # re-exported: users catch it here
from meshbreaker.errors import ConfigError, MeshbreakerError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Breakers per ReportState call (the server refuses more than its limit, 2000 by default); a
# process with more sends its report in several parts.
MAX_BREAKERS_PER_REPORT = 1000


def default_instance_id() -> str:
    """host-pid-random: unique per process even when pids repeat across containers."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


PolicyCheck = Callable[[ResolvedPolicies], None]


class MeshAgent:
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

    async def _handle_snapshot(self, snapshot: pb.ConfigSnapshot) -> None:
        self._snapshots_received += 1
        mismatch = self._mismatch_with(snapshot)
        if mismatch is not None:
            if self._store_mismatch != mismatch:
                logger.warning(
                    "meshbreaker agent: keeping revision %d of store %s: the control plane "
                    "offers %s (store %s, revision %d); an operator decides with "
                    "`meshbreaker store adopt %s`",
                    mismatch.held_revision,
                    mismatch.held_store_id,
                    mismatch.reason,
                    mismatch.offered_store_id,
                    mismatch.offered_revision,
                    mismatch.held_store_id,
                )
            self._store_mismatch = mismatch
            self._acknowledge()
            return
        self._store_mismatch = None
        if (
            snapshot.revision == self._applied_revision
            and snapshot.store_id == self._applied_store_id
            and not self._applied_from_cache
            and self._last_nack is None
            and list(snapshot.policies) == list(self._applied_policies)
        ):
            # The same policies again (a reconnect, another replica): resume, nothing to apply.
            self._acknowledge()
            return
        try:
            self._apply(snapshot)
        except Exception as error:  # whatever the cause (a `validate` hook's bug too): NACK
            reason = str(error) if isinstance(error, (MeshbreakerError, ValueError)) else ""
            reason = reason or f"{type(error).__name__}: {error}"
            logger.warning(
                "meshbreaker agent: rejected config revision %d: %s (keeping revision %d)",
                snapshot.revision,
                reason,
                self._applied_revision,
            )
            self._last_nack = pb.Nack(revision=snapshot.revision, reason=reason)
            self._acknowledge()
        else:
            self._acknowledge()
            if self._cache is not None:
                await asyncio.to_thread(self._cache.save, snapshot, snapshot.store_id)

    def _mismatch_with(self, snapshot: pb.ConfigSnapshot) -> pb.StoreMismatch | None:
        """Why `snapshot` must not replace the policies in force, or None when it may."""
        held, held_revision = self._applied_store_id, self._applied_revision
        offered = snapshot.store_id
        if not held or not offered or held_revision == 0 or held in snapshot.adopted_store_ids:
            return None  # nothing from a store in force, an old server, or an operator's word
        if offered != held:
            reason = "another store"
        elif snapshot.revision < held_revision:
            reason = "a lower revision of the same store"
        else:
            return None
        return pb.StoreMismatch(
            held_store_id=held,
            held_revision=held_revision,
            offered_store_id=offered,
            offered_revision=snapshot.revision,
            reason=reason,
        )

    def _apply(
        self, snapshot: pb.ConfigSnapshot, *, from_cache: bool = False, store_id: str | None = None
    ) -> None:
        """Validate, then apply atomically; raises (with nothing applied) when it cannot."""
        if snapshot.service and snapshot.service != self.service:
            raise ConfigError(
                "snapshot.service", f"is for {snapshot.service!r}, this agent is {self.service!r}"
            )
        resolved = policies_for(
            self.service,
            snapshot.policies,
            "snapshot.policies",
            self._base_default,
            now=self._wall_clock(),
            instance_id=self.instance_id,
        )
        if self._validate is not None:
            self._validate(resolved)
        self.registry.replace_policies(
            resolved.policies,
            default=resolved.default or self._base_default,
            overrides=resolved.overrides,
        )
        self._overrides.applied(resolved)
        with self._applied:
            self._applied_snapshot = snapshot
            self._applied_revision = snapshot.revision
            self._applied_at = self._clock()
            self._applied_from_cache = from_cache
            self._applied_policies = tuple(snapshot.policies)
            self._applied_store_id = snapshot.store_id if store_id is None else store_id
            if not from_cache:
                self._last_nack = None
            self._applied.notify_all()

    async def _expiry_loop(self) -> None:
        """Resolve the policies in force again whenever an override of theirs expires.

        Runs whether or not a control plane answers: a forgotten or orphaned override ends on
        time everywhere.
        """
        while not self._stopped:
            await asyncio.sleep(self._overrides.wait(min(self.report_interval, 1.0)))
            snapshot = self._applied_snapshot
            if snapshot is None or not self._overrides.due():
                continue
            nack = self._last_nack  # a NACK of a later snapshot still stands
            try:
                self._apply(
                    snapshot, from_cache=self._applied_from_cache, store_id=self._applied_store_id
                )
                self._last_nack = nack
            except Exception:  # applied once already: only a `validate` hook can refuse now
                logger.exception("meshbreaker agent: an override expired but could not be dropped")
                self._overrides.next_expiry = None
            else:
                logger.info("meshbreaker agent: an override expired; policies resolved again")

    # ----- cache -----------------------------------------------------------------------

    def _load_cache(self) -> None:
        if self._cache is None:
            return
        cached = self._cache.load()
        if cached is None:
            return
        try:
            self._apply(cached.snapshot, from_cache=True, store_id=cached.store_id)
        except Exception as error:  # the cache must never stop the application
            self._cache.warn_ignored(error)
            return
        logger.info(
            "meshbreaker agent: applied cached config revision %d from %s",
            self._applied_revision,
            self._cache.path,
        )

    # ----- reporting -------------------------------------------------------------------

    def _on_transition(self, name: str, old: State, new: State) -> None:
        # Runs in the caller's thread right after a transition: never blocks (one short lock to
        # log it). Only the first transition of a burst schedules a wake-up; the rest find one
        # pending.
        self._overrides.transition(name, old, new)
        self._transitions.append(name, old, new)
        if self._report_pending or self._loop is None:
            return
        self._report_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is gone at interpreter exit
            self._loop.loop.call_soon_threadsafe(self._wake_reporter)

    def _acknowledge(self) -> None:
        """Report the ACK/NACK soon, at a random moment within `ack_spread` seconds."""
        # Every agent of the fleet gets the same snapshot at the same instant: spread their
        # ACKs so they do not hit the control plane (nor, in one process, the loop) at once.
        delay = self._rng.uniform(0.0, self._ack_spread)
        asyncio.get_running_loop().call_later(delay, self._wake_reporter)

    def _wake_reporter(self) -> None:
        self._report_pending = True
        if self._report_event is not None:
            self._report_event.set()

    async def _report_loop(self) -> None:
        assert self._report_event is not None
        event = self._report_event
        while not self._stopped:
            try:
                await asyncio.wait_for(event.wait(), self.report_interval)
            except asyncio.TimeoutError:
                pass  # the periodic report
            else:
                if self._report_coalesce > 0 and not self._stopped:
                    await asyncio.sleep(self._report_coalesce)  # let a burst settle
            if self._stopped:
                return
            event.clear()
            self._report_pending = False
            try:
                if self._stub is not None:
                    await self._report_once(self._stub)
            except Exception:  # a bug must not stop the reports (nor the watch with them)
                logger.exception("meshbreaker agent: report failed")

    async def _report_once(self, stub: pb_grpc.ControlPlaneAsyncStub) -> bool:
        response = None
        acknowledged = sent = 0
        requests, configs = self._build_reports()
        try:
            for request in requests:
                if request.transition_log:
                    sent = request.transition_log[-1].sequence
                response = await stub.ReportState(
                    request, timeout=self._rpc_timeout, metadata=self._metadata
                )
                acknowledged = max(acknowledged, response.transitions_acknowledged)
        except grpc.RpcError as error:
            if status_code(error) in AUTH_CODES:
                if self._report_denied is None:
                    logger.warning(
                        "meshbreaker agent: the control plane refused a report of instance %s "
                        "(%s): authentication problem with %s",
                        self.instance_id,
                        describe(error),
                        self._token.source,
                    )
                self._report_denied = describe(error)
            else:
                logger.debug("meshbreaker agent: report failed: %s", describe(error))
            return False
        assert response is not None
        self._report_denied = None
        if response.resend_configs:
            self._reported_configs = {}
            self._wake_reporter()
        else:
            self._reported_configs.update(configs)
        self._transitions.acknowledge(acknowledged)
        if sent and acknowledged >= sent and len(self._transitions):
            # The server took all this report carried and more is logged: send the rest now.
            # (A server that acknowledges nothing, an older one, gets them with each report.)
            self._wake_reporter()
        self._reports_sent += 1
        ttl = response.report_ttl.ToTimedelta().total_seconds()
        if ttl and self.report_interval >= ttl and not self._warned_ttl:
            self._warned_ttl = True
            logger.warning(
                "meshbreaker agent: report_interval %.1fs >= the server's report TTL %.1fs: "
                "this instance will drop out of ListBreakers between reports",
                self.report_interval,
                ttl,
            )
        return True

    def report_now(self, timeout: float = 10.0) -> bool:
        """Send one report and wait for it; False (logged) when it was not accepted."""
        if self._loop is None or self._stub is None or self._stopped:
            return False
        if self._loop.in_loop():
            raise AgentError("report_now() blocks: call it from another thread")
        return self._loop.submit(self._report_once(self._stub)).result(timeout)

    def _build_reports(
        self,
    ) -> tuple[list[pb.ReportStateRequest], dict[str, BreakerConfig]]:
        """One report (beyond MAX_BREAKERS_PER_REPORT breakers, a full one and merged parts),
        and the configs it carries."""
        now = self._clock()
        breakers = sorted(self.registry, key=lambda breaker: breaker.name)
        reported = self._reported_configs
        configs = {
            breaker.name: breaker.config
            for breaker in breakers
            if reported.get(breaker.name) is not breaker.config
        }
        snapshots = [
            breaker_to_proto(breaker, now, with_config=breaker.name in configs)
            for breaker in breakers
        ]
        requests = []
        for start in range(0, max(1, len(snapshots)), MAX_BREAKERS_PER_REPORT):
            request = pb.ReportStateRequest(
                instance_id=self.instance_id,
                service=self.service,
                applied_revision=self._applied_revision,
                breakers=snapshots[start : start + MAX_BREAKERS_PER_REPORT],
                full=start == 0,  # the first part replaces what the server knew; the rest merge
                instance_key=self._instance_key,
                applied_store_id=self._applied_store_id,
                transitions_dropped=self._transitions.dropped,
            )
            if start == 0:
                request.transition_log.extend(self._transitions.pending(now))
            if self._store_mismatch is not None:
                request.store_mismatch.CopyFrom(self._store_mismatch)
            nack = self._last_nack
            if nack is not None:
                request.nack.CopyFrom(nack)
            requests.append(request)
        return requests, configs


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
