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
import json
import logging
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import json_format

from meshbreaker._backoff import Backoff as Backoff  # re-exported: the agent's retry backoff
from meshbreaker.config import State
from meshbreaker.control.convert import breaker_to_proto, check_caller
from meshbreaker.control.layers import ResolvedPolicies, policies_for
from meshbreaker.errors import AgentError as AgentError  # re-exported: users catch it here
from meshbreaker.errors import ConfigError, MeshbreakerError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

CACHE_FORMAT = 1
# Breakers per ReportState call (the server refuses more than its limit, 2000 by default); a
# process with more sends its report in several parts.
MAX_BREAKERS_PER_REPORT = 1000


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON so a reader (or a crash) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def default_instance_id() -> str:
    """host-pid-random: unique per process even when pids repeat across containers."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# What a missing, truncated, hand-edited or foreign cache file can raise while loading.
_CACHE_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, MeshbreakerError)


PolicyCheck = Callable[[ResolvedPolicies], None]


class _AgentLoop:
    """The asyncio loop, in one daemon thread, that runs every MeshAgent of the process."""

    _shared: _AgentLoop | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="meshbreaker-agents", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def shared(cls) -> _AgentLoop:
        """The process-wide loop, started on first use."""
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def submit(self, coroutine: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run `coroutine` on the loop; a concurrent future for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def in_loop(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self.thread


class MeshAgent:
    """Applies the control plane's policies to `registry` live and reports its breakers back.

    `target` is one control plane ("host:port", or a DNS name whose addresses gRPC tries in
    turn), several replicas ("cp-a:7070,cp-b:7070" or a list): the agent starts on a random one,
    moves to the next as soon as its stream breaks, and backs off only once every one has failed.
    `clock` must be the registry's clock (breaker snapshots hold its readings). `validate`, if
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
        credentials: grpc.ChannelCredentials | None = None,
        report_interval: float = 5.0,
        cache_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._credentials = credentials
        self.report_interval = report_interval
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._clock = clock
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
        self._loop: _AgentLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._done: concurrent.futures.Future[None] | None = None
        self._report_event: asyncio.Event | None = None
        self._report_pending = False
        self._unsubscribe: Callable[[], None] | None = None
        self._stub: pb_grpc.ControlPlaneAsyncStub | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._applied_policies: Sequence[pb.Policy] = ()

        self._applied_revision = 0
        self._applied_at: float | None = None
        self._applied_from_cache = False
        self._last_nack: pb.Nack | None = None
        self._last_error: str | None = None
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
    def last_error(self) -> str | None:
        """The latest connection or RPC error, cleared when the watch stream delivers again."""
        return self._last_error

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
        self._loop = _AgentLoop.shared()
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
        request = pb.WatchConfigRequest(service=self.service, instance_id=self.instance_id)
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
                    self._backoff.reset()
                    await self._handle_snapshot(snapshot)
                self._last_error = "the control plane closed the watch stream"
            except grpc.RpcError as error:
                self._last_error = _describe(error)
            except Exception as error:  # a bug must not kill the agent silently
                logger.exception("meshbreaker agent: watch loop error")
                self._last_error = f"{type(error).__name__}: {error}"
            finally:
                self._connected = False
            if self._stopped:
                return
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

    async def _handle_snapshot(self, snapshot: pb.ConfigSnapshot) -> None:
        self._snapshots_received += 1
        if (
            snapshot.revision == self._applied_revision
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
            if self.cache_path is not None:
                await asyncio.to_thread(self._save_cache, snapshot)

    def _apply(self, snapshot: pb.ConfigSnapshot, *, from_cache: bool = False) -> None:
        """Validate, then apply atomically; raises (with nothing applied) when it cannot."""
        if snapshot.service and snapshot.service != self.service:
            raise ConfigError(
                "snapshot.service", f"is for {snapshot.service!r}, this agent is {self.service!r}"
            )
        resolved = policies_for(
            self.service, snapshot.policies, "snapshot.policies", self._base_default
        )
        if self._validate is not None:
            self._validate(resolved)
        self.registry.replace_policies(
            resolved.policies,
            default=resolved.default or self._base_default,
            overrides=resolved.overrides,
        )
        with self._applied:
            self._applied_revision = snapshot.revision
            self._applied_at = self._clock()
            self._applied_from_cache = from_cache
            self._applied_policies = tuple(snapshot.policies)
            if not from_cache:
                self._last_nack = None
            self._applied.notify_all()

    # ----- cache -----------------------------------------------------------------------

    def _save_cache(self, snapshot: pb.ConfigSnapshot) -> None:
        if self.cache_path is None:
            return
        data = {
            "format": CACHE_FORMAT,
            "service": self.service,
            "revision": snapshot.revision,
            "snapshot": json_format.MessageToDict(snapshot, preserving_proto_field_name=True),
        }
        try:
            write_json_atomic(self.cache_path, data)
        except OSError as error:
            logger.warning("meshbreaker agent: cannot write cache %s: %s", self.cache_path, error)

    def _load_cache(self) -> None:
        path = self.cache_path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != CACHE_FORMAT:
                raise ValueError(f"unknown cache format {data.get('format')!r}")
            if data.get("service") != self.service:
                raise ValueError(f"cache is for service {data.get('service')!r}")
            snapshot = json_format.ParseDict(
                data["snapshot"], pb.ConfigSnapshot(), ignore_unknown_fields=True
            )
            self._apply(snapshot, from_cache=True)
        except _CACHE_ERRORS as error:
            logger.warning("meshbreaker agent: ignoring cache %s: %s", path, error)
            return
        logger.info(
            "meshbreaker agent: applied cached config revision %d from %s",
            self._applied_revision,
            path,
        )

    # ----- reporting -------------------------------------------------------------------

    def _on_transition(self, name: str, old: State, new: State) -> None:
        # Runs in the caller's thread right after a transition: never blocks. Only the first
        # transition of a burst schedules a wake-up; the rest find one pending.
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
        try:
            for request in self._build_reports():
                response = await stub.ReportState(
                    request, timeout=self._rpc_timeout, metadata=self._metadata
                )
        except grpc.RpcError as error:
            logger.debug("meshbreaker agent: report failed: %s", _describe(error))
            return False
        assert response is not None
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

    def _build_reports(self) -> list[pb.ReportStateRequest]:
        """One report; beyond MAX_BREAKERS_PER_REPORT breakers, a full one and merged parts."""
        now = self._clock()
        breakers = sorted(self.registry, key=lambda breaker: breaker.name)
        snapshots = [breaker_to_proto(breaker, now) for breaker in breakers]
        requests = []
        for start in range(0, max(1, len(snapshots)), MAX_BREAKERS_PER_REPORT):
            request = pb.ReportStateRequest(
                instance_id=self.instance_id,
                service=self.service,
                applied_revision=self._applied_revision,
                breakers=snapshots[start : start + MAX_BREAKERS_PER_REPORT],
                full=start == 0,  # the first part replaces what the server knew; the rest merge
            )
            nack = self._last_nack
            if nack is not None:
                request.nack.CopyFrom(nack)
            requests.append(request)
        return requests


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


def _describe(error: grpc.RpcError) -> str:
    """'CODE: details' on one line for a grpc.RpcError (sync or aio)."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    status = code() if callable(code) else None
    text = details() if callable(details) else str(error)
    name = status.name if isinstance(status, grpc.StatusCode) else "ERROR"
    return f"{name}: {' '.join((text or '').split())}"
