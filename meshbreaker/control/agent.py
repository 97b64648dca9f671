"""MeshAgent: keeps a process's BreakerRegistry in step with the control plane and reports back.

Design: a sync gRPC channel and two daemon threads (one iterating the WatchConfig stream, one
sending reports), so the agent works in any program, threaded or asyncio, without owning an
event loop; `stop()` cancels the stream from the caller's thread, which ends the iteration at
once. A breaker transition only sets an Event (never blocks or does I/O in the caller's
thread); the reporter wakes, waits a few milliseconds so a burst coalesces into one report,
and sends it.
"""

from __future__ import annotations

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from meshbreaker.config import State
from meshbreaker.control.convert import (
    ResolvedPolicies,
    check_caller,
    policies_for,
    snapshots_to_proto,
)
from meshbreaker.errors import ConfigError, MeshbreakerError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Reports carry at most this many breakers (the server bounds them too); the rest are dropped.
MAX_BREAKERS_PER_REPORT = 1000


class Backoff:
    """Capped exponential backoff with full jitter: each delay is uniform in [0, ceiling]."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 10.0,
        multiplier: float = 2.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum or multiplier < 1.0:
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper bound of the next delay: initial * multiplier**attempt, capped."""
        # Bounding the exponent keeps a days-long outage from overflowing the float.
        return min(self.maximum, self.initial * self.multiplier ** min(self.attempt, 64))

    def next_delay(self) -> float:
        """A delay drawn uniformly from [0, ceiling]; advances the attempt counter."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the first attempt, after a connection that worked."""
        self.attempt = 0


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


class AgentError(MeshbreakerError):
    """The agent was misused (e.g. started after being stopped)."""


PolicyCheck = Callable[[ResolvedPolicies], None]


class MeshAgent:
    """Applies the control plane's policies to `registry` live and reports its breakers back.

    `clock` must be the registry's clock (breaker snapshots hold its readings). `validate`, if
    given, is an application-level admission check run on every resolved snapshot before it is
    applied; raising ConfigError (or ValueError) rejects the snapshot, which is then NACKed.
    """

    def __init__(
        self,
        target: str,
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
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        check_caller(service, "service", required=True)
        if not report_interval > 0:
            raise ValueError("report_interval must be > 0")
        self.target = target
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
        self._stop = threading.Event()
        self._report_wanted = threading.Event()
        self._started = False
        self._stopped = False
        self._channel: grpc.Channel | None = None
        self._watch_call: Any = None
        self._threads: list[threading.Thread] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._stub: Any = None

        self._applied_revision = 0
        self._applied_at: float | None = None
        self._applied_from_cache = False
        self._last_nack: pb.Nack | None = None
        self._last_error: str | None = None
        self._connected = False
        self._reports_sent = 0
        self._snapshots_received = 0

    # ----- public state ----------------------------------------------------------------

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
        """Load the cache (if any), then connect and report in background threads."""
        with self._lock:
            if self._stopped:
                raise AgentError("a stopped MeshAgent cannot be started again")
            if self._started:
                return self
            self._started = True
        self._load_cache()
        if self._credentials is not None:
            channel = grpc.secure_channel(self.target, self._credentials, self._channel_options)
        else:
            channel = grpc.insecure_channel(self.target, self._channel_options)
        self._channel = channel
        # The generated stub is untyped (no --mypy_grpc_out in `make proto`).
        self._stub = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
        self._unsubscribe = self.registry.on_state_change(self._on_transition)
        name = f"meshbreaker-agent-{self.service}"
        self._threads = [
            threading.Thread(target=self._watch_loop, name=f"{name}-watch", daemon=True),
            threading.Thread(target=self._report_loop, name=f"{name}-report", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the watch, stop reporting and close the channel; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            call = self._watch_call
        self._stop.set()
        self._report_wanted.set()
        if call is not None:
            call.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
        current = threading.current_thread()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._channel is not None:
            self._channel.close()
        self._connected = False

    def __enter__(self) -> MeshAgent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- watching --------------------------------------------------------------------

    def _watch_loop(self) -> None:
        request = pb.WatchConfigRequest(service=self.service, instance_id=self.instance_id)
        while not self._stop.is_set():
            try:
                call = self._stub.WatchConfig(request, metadata=self._metadata)
                with self._lock:
                    if self._stopped:
                        call.cancel()
                        return
                    self._watch_call = call
                for snapshot in call:
                    if not self._connected:
                        logger.info("control plane %s: watching as %s", self.target, self.service)
                    self._connected = True
                    self._last_error = None
                    self._backoff.reset()
                    self._handle_snapshot(snapshot)
                self._last_error = "the control plane closed the watch stream"
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return
                self._last_error = _describe(error)
            except Exception as error:  # a bug must not kill the agent silently
                logger.exception("meshbreaker agent: watch loop error")
                self._last_error = f"{type(error).__name__}: {error}"
            finally:
                with self._lock:
                    self._watch_call = None
                self._connected = False
            delay = self._backoff.next_delay()
            # One warning per outage; the retries themselves are debug noise.
            log = logger.warning if self._backoff.attempt == 1 else logger.debug
            log(
                "control plane %s unreachable (%s); keeping revision %d, retrying in %.2fs",
                self.target,
                self._last_error,
                self._applied_revision,
                delay,
            )
            self._stop.wait(delay)

    def _handle_snapshot(self, snapshot: pb.ConfigSnapshot) -> None:
        self._snapshots_received += 1
        try:
            self._apply(snapshot)
        except (MeshbreakerError, ValueError) as error:
            reason = str(error) or type(error).__name__
            logger.warning(
                "meshbreaker agent: rejected config revision %d: %s (keeping revision %d)",
                snapshot.revision,
                reason,
                self._applied_revision,
            )
            self._last_nack = pb.Nack(revision=snapshot.revision, reason=reason)
        else:
            self._save_cache(snapshot)
        self._report_wanted.set()

    def _apply(self, snapshot: pb.ConfigSnapshot, *, from_cache: bool = False) -> None:
        """Validate, then apply atomically; raises (with nothing applied) when it cannot."""
        if snapshot.service and snapshot.service != self.service:
            raise ConfigError(
                "snapshot.service", f"is for {snapshot.service!r}, this agent is {self.service!r}"
            )
        resolved = policies_for(self.service, snapshot.policies, "snapshot.policies")
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
        except (OSError, ValueError, KeyError, TypeError, MeshbreakerError) as error:
            logger.warning("meshbreaker agent: ignoring cache %s: %s", path, error)
            return
        logger.info(
            "meshbreaker agent: applied cached config revision %d from %s",
            self._applied_revision,
            path,
        )

    # ----- reporting -------------------------------------------------------------------

    def _on_transition(self, name: str, old: State, new: State) -> None:
        # Runs in the caller's thread right after a transition: only flag, never block.
        self._report_wanted.set()

    def _report_loop(self) -> None:
        while not self._stop.is_set():
            if self._report_wanted.wait(self.report_interval) and self._report_coalesce > 0:
                self._stop.wait(self._report_coalesce)  # let a burst of transitions settle
            if self._stop.is_set():
                return
            self._report_wanted.clear()
            self.report_now()

    def report_now(self) -> bool:
        """Send one report synchronously; False (logged) when the control plane refused it."""
        request = self._build_report()
        try:
            self._stub.ReportState(request, timeout=self._rpc_timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            if not self._stop.is_set():
                logger.debug("meshbreaker agent: report failed: %s", _describe(error))
            return False
        self._reports_sent += 1
        return True

    def _build_report(self) -> pb.ReportStateRequest:
        now = self._clock()
        snapshots = self.registry.snapshots()
        request = pb.ReportStateRequest(
            instance_id=self.instance_id,
            service=self.service,
            applied_revision=self._applied_revision,
            breakers=snapshots_to_proto(snapshots[:MAX_BREAKERS_PER_REPORT], now),
            full=True,
        )
        nack = self._last_nack
        if nack is not None:
            request.nack.CopyFrom(nack)
        return request


def _describe(error: grpc.RpcError) -> str:
    """'CODE: details' on one line for a grpc.RpcError."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {' '.join((details or '').split())}"
