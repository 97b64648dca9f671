"""The control-plane gRPC server (grpc.aio): policies, config streams, reports, events.

`serve(...)` starts a server in the running event loop and returns it; `run(...)` blocks (the CLI).
Store writes run on one worker thread so SQLite's fsync never blocks the event loop; the server
keeps a copy of every policy in memory, so reads and watch pushes never touch the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import math
import os
import signal
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from meshbreaker.control import convert
from meshbreaker.control.auth import CONTROL_PLANE_SERVICE, AuthInterceptor, TokenAuthenticator
from meshbreaker.control.store import (
    AuditEntry,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    SqliteStore,
    StoreError,
    selector_key,
)
from meshbreaker.errors import ConfigError
from meshbreaker.registry import split_breaker_name
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from meshbreaker.metrics.prometheus import MetricsServer

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_S = TypeVar("_S")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Context = grpc.aio.ServicerContext[Any, Any]
PemSource = str | os.PathLike[str] | bytes

MAX_INSTANCE_ID_LENGTH = 256
_STATE_FIELDS = {
    pb.BREAKER_STATE_CLOSED: "closed",
    pb.BREAKER_STATE_OPEN: "open",
    pb.BREAKER_STATE_HALF_OPEN: "half_open",
    pb.BREAKER_STATE_FORCED_OPEN: "forced_open",
    pb.BREAKER_STATE_FORCED_CLOSED: "forced_closed",
}


@dataclass(frozen=True)
class Limits:
    """Size bounds; requests beyond them fail with a clear error instead of exhausting memory."""

    max_policies_per_put: int = 100
    max_policies: int = 10_000
    max_breakers_per_report: int = 2_000
    max_instances: int = 100_000
    max_message_bytes: int = 4 * 1024 * 1024
    event_queue_size: int = 1_000

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limits.{name}", "must be an integer >= 1")


class _Refused(Exception):
    """A request is refused with a status code; raised inside handlers, turned into an abort."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _abort_on_refusal(
    handler: Callable[[_S, _Request, _Context], Awaitable[_Response]],
) -> Callable[[_S, _Request, _Context], Coroutine[Any, Any, _Response]]:
    """Wrap a unary handler: its ConfigError aborts INVALID_ARGUMENT, its _Refused its code."""

    @functools.wraps(handler)
    async def guarded(self: _S, request: _Request, context: _Context) -> _Response:
        try:
            return await handler(self, request, context)
        except ConfigError as error:
            refusal = _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except _Refused as error:
            refusal = error
        await context.abort(refusal.code, refusal.details)

    return guarded


def _without_output_only(policy: pb.Policy) -> pb.Policy:
    """A copy of `policy` without the fields the store sets."""
    copy = pb.Policy()
    copy.CopyFrom(policy)
    for output_only in ("revision", "updated_at", "updated_by"):
        copy.ClearField(output_only)
    return copy


@dataclass
class _Instance:
    """What the server knows about one reporting process."""

    instance_id: str
    service: str
    last_seen: float
    applied_revision: int = 0
    nack: pb.Nack | None = None
    breakers: dict[str, pb.BreakerSnapshot] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceView:
    """One live instance in a MeshView."""

    instance_id: str
    service: str
    report_age: float
    applied_revision: int
    nacking: bool
    breakers: Mapping[str, pb.BreakerSnapshot]


@dataclass(frozen=True)
class MeshView:
    """The control plane's state at one instant, for its metrics."""

    revision: int
    watch_streams: int  # open WatchConfig streams: connected agents
    reports_received: int  # ReportState calls accepted
    nacks_received: int  # NACKs, each counted once however often an instance repeats it
    instances: tuple[InstanceView, ...]


class _EventBus:
    """Fan-out of events to WatchEvents subscribers; a slow subscriber loses its oldest events."""

    def __init__(self, queue_size: int, wall_clock: Callable[[], float]) -> None:
        self._queue_size = queue_size
        self._wall_clock = wall_clock
        self._sequence = 0
        # Events dropped per subscriber queue, so a stalled reader is logged once, not per event.
        self._subscribers: dict[asyncio.Queue[pb.Event], int] = {}

    def publish(self, event: pb.Event) -> None:
        """Number and timestamp `event`, then queue it for every subscriber."""
        self._sequence += 1
        event.sequence = self._sequence
        event.time.FromNanoseconds(int(self._wall_clock() * 1e9))
        for queue, dropped in self._subscribers.items():
            if queue.full():
                queue.get_nowait()
                if not dropped:
                    logger.warning("events subscriber too slow; dropping its oldest events")
                self._subscribers[queue] = dropped + 1
            queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[pb.Event]]:
        """A queue that receives every event published while the block runs."""
        queue: asyncio.Queue[pb.Event] = asyncio.Queue(self._queue_size)
        self._subscribers[queue] = 0
        try:
            yield queue
        finally:
            dropped = self._subscribers.pop(queue, 0)
            if dropped:
                logger.warning("events subscriber left; %d events were dropped for it", dropped)

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)


class ControlPlaneServicer(pb_grpc.ControlPlaneServicer):
    """The ControlPlane RPCs over a PolicyStore and in-memory instance state."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        authenticator: TokenAuthenticator,
        report_ttl: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        limits: Limits,
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        self._report_ttl = report_ttl
        self._report_ttl_message = convert.seconds_to_duration(report_ttl)  # sent in every reply
        self._clock = clock
        self._limits = limits
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshbreaker-store")
        revision, policies = store.list()
        self._revision = revision
        self._policies: dict[str, pb.Policy] = {policy.id: policy for policy in policies}
        self._changes = 0  # bumps on every write, wakes watchers
        self._changed = asyncio.Condition()
        self._write_lock = asyncio.Lock()
        self._writes: set[asyncio.Future[Any]] = set()
        self._instances: dict[str, _Instance] = {}
        self._last_sweep = -math.inf
        self._watch_streams = 0
        self._reports_received = 0
        self._nacks_received = 0
        self.events = _EventBus(limits.event_queue_size, wall_clock)

    @property
    def revision(self) -> int:
        """The store revision as this server last wrote or loaded it."""
        return self._revision

    async def drain(self) -> None:
        """Wait for writes in progress (their clients may be gone) to finish."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def close(self) -> None:
        """Stop the store worker thread."""
        self._executor.shutdown(wait=True)

    # -- helpers ---------------------------------------------------------------------------

    def _actor(self, context: _Context) -> str:
        return self._authenticator.actor(context.invocation_metadata(), context.peer())

    def _snapshot(self, caller: str) -> pb.ConfigSnapshot:
        return pb.ConfigSnapshot(
            revision=self._revision,
            service=caller,
            policies=convert.applicable(caller, self._policies.values()),
        )

    async def _committed(self, entries: Sequence[AuditEntry]) -> None:
        """Apply written changes to the in-memory copy, wake watchers, publish events."""
        for entry in entries:
            if entry.after is None:
                self._policies.pop(entry.policy_id, None)
            else:
                self._policies[entry.policy_id] = entry.after
            self._revision = max(self._revision, entry.revision)
            change = pb.PolicyChange(
                kind=pb.PolicyChange.KIND_PUT if entry.after else pb.PolicyChange.KIND_DELETE,
                policy_id=entry.policy_id,
                revision=entry.revision,
                actor=entry.actor,
            )
            if entry.before is not None:
                change.before.CopyFrom(entry.before)
            if entry.after is not None:
                change.after.CopyFrom(entry.after)
            self.events.publish(pb.Event(policy_change=change))
            logger.info(
                "policy %s %s at revision %d by %s",
                entry.policy_id,
                "deleted" if entry.after is None else "put",
                entry.revision,
                entry.actor,
            )
        async with self._changed:
            self._changes += 1
            self._changed.notify_all()

    async def _write(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store write on the store thread; a store refusal becomes a status code."""
        call = functools.partial(fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except RevisionMismatchError as error:
            raise _Refused(grpc.StatusCode.ABORTED, str(error)) from None
        except SelectorConflictError as error:
            raise _Refused(grpc.StatusCode.ALREADY_EXISTS, str(error)) from None
        except PolicyNotFoundError as error:
            raise _Refused(grpc.StatusCode.NOT_FOUND, str(error)) from None
        except StoreError as error:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from None
        except Exception as error:  # disk full, I/O error...: nothing was committed
            logger.exception("policy store write failed")
            raise _Refused(
                grpc.StatusCode.UNAVAILABLE, f"policy store write failed: {error}"
            ) from None

    async def _put(
        self, policies: Sequence[pb.Policy], expected: int | None, actor: str
    ) -> list[AuditEntry]:
        """Store `policies`, then bring the in-memory copy and the watchers up to date."""
        entries = await self._write(
            self._store.put, policies, expected_revision=expected, actor=actor
        )
        await self._committed(entries)
        return entries

    async def _delete(self, policy_id: str, expected: int | None, actor: str) -> AuditEntry:
        """Delete a stored policy, then bring the in-memory copy and the watchers up to date."""
        entry = await self._write(
            self._store.delete, policy_id, expected_revision=expected, actor=actor
        )
        await self._committed([entry])
        return entry

    async def _serialized(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """Run `work` under the write lock, to completion even if the calling RPC is cancelled.

        A write the store committed must also reach the in-memory copy and the watchers; a client
        that gives up mid-write (deadline, cancel) must not leave the two apart.
        """

        async def locked() -> _T:
            async with self._write_lock:
                return await work()

        task = asyncio.ensure_future(locked())
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Future[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an abandoned write's refusal is not reported as unhandled.
            logger.debug("write finished with %r", task.exception())

    def _expire(self, now: float, *, throttled: bool = False) -> None:
        # Reports sweep at most once per second of clock time, so a report stays O(1) with many
        # instances; reads sweep every time, so what they show is exact.
        if throttled and now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        expired = [
            key
            for key, instance in self._instances.items()
            if now - instance.last_seen > self._report_ttl
        ]
        for key in expired:
            instance = self._instances.pop(key)
            logger.info("instance %s of %s stopped reporting", key, instance.service)

    @staticmethod
    def _expected(request: Any) -> int | None:
        if not request.HasField("expected_revision"):
            return None
        if request.expected_revision < 0:
            raise ConfigError("expected_revision", "must be >= 0")
        return int(request.expected_revision)

    # -- config ----------------------------------------------------------------------------

    @_abort_on_refusal
    async def GetConfig(self, request: pb.GetConfigRequest, context: _Context) -> pb.ConfigSnapshot:
        """The policies that apply to the caller service, with the store revision."""
        return self._snapshot(convert.check_caller(request.service, "service", required=True))

    async def WatchConfig(
        self, request: pb.WatchConfigRequest, context: _Context
    ) -> AsyncIterator[pb.ConfigSnapshot]:
        """A snapshot at once, then one per change that affects the caller."""
        try:
            caller = convert.check_caller(request.service, "service", required=True)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        seen_change = -1
        last_sent: tuple[tuple[str, int], ...] | None = None
        self._watch_streams += 1
        try:
            while True:
                async with self._changed:
                    while self._changes == seen_change:
                        await self._changed.wait()
                    seen_change = self._changes
                    snapshot = self._snapshot(caller)
                key = tuple((policy.id, policy.revision) for policy in snapshot.policies)
                if key != last_sent:
                    last_sent = key
                    yield snapshot
        finally:
            self._watch_streams -= 1

    # -- reports ---------------------------------------------------------------------------

    def _check_report(self, request: pb.ReportStateRequest) -> None:
        if not request.instance_id:
            raise ConfigError("instance_id", "must not be empty")
        if len(request.instance_id) > MAX_INSTANCE_ID_LENGTH:
            raise ConfigError("instance_id", f"at most {MAX_INSTANCE_ID_LENGTH} characters")
        convert.check_caller(request.service, "service", required=True)
        if request.applied_revision < 0:
            raise ConfigError("applied_revision", "must be >= 0")
        limit = self._limits.max_breakers_per_report
        if len(request.breakers) > limit:
            raise ConfigError(
                "breakers", f"at most {limit} per report, got {len(request.breakers)}"
            )
        max_name = convert.MAX_NAME_LENGTH
        states = _STATE_FIELDS
        # Plain attribute reads and comparisons only: this runs for every breaker of every report.
        for index, breaker in enumerate(request.breakers):
            name = breaker.name
            if not name or len(name) > max_name:
                raise ConfigError(f"breakers[{index}].name", f"must be 1..{max_name} characters")
            if breaker.state not in states:
                raise ConfigError(
                    f"breakers[{index}].state", f"unknown or unset BreakerState {breaker.state}"
                )
            if not 0.0 <= breaker.failure_rate <= 1.0:  # also refuses NaN
                raise ConfigError(f"breakers[{index}].failure_rate", "must be in [0, 1]")
            if not 0.0 <= breaker.slow_call_rate <= 1.0:
                raise ConfigError(f"breakers[{index}].slow_call_rate", "must be in [0, 1]")
            if not 0.0 <= breaker.mean_duration < math.inf:
                raise ConfigError(
                    f"breakers[{index}].mean_duration", "must be a finite number >= 0"
                )
            if breaker.transitions:
                convert.check_transitions(breaker.transitions, f"breakers[{index}].transitions")
            if breaker.HasField("duration_histogram"):
                convert.check_histogram(
                    breaker.duration_histogram, f"breakers[{index}].duration_histogram"
                )
        if request.HasField("nack") and len(request.nack.reason) > 4096:
            raise ConfigError("nack.reason", "at most 4096 characters")

    @_abort_on_refusal
    async def ReportState(
        self, request: pb.ReportStateRequest, context: _Context
    ) -> pb.ReportStateResponse:
        """Record one instance's breakers, applied revision and ACK/NACK."""
        self._check_report(request)
        now = self._clock()
        self._expire(now, throttled=True)
        instance = self._instances.get(request.instance_id)
        if instance is None:
            if len(self._instances) >= self._limits.max_instances:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"instance_id: more than {self._limits.max_instances} live instances",
                )
            instance = _Instance(request.instance_id, request.service, now)
            self._instances[request.instance_id] = instance
        instance.service = request.service
        instance.last_seen = now
        instance.applied_revision = request.applied_revision
        previous = instance.breakers
        current = {} if request.full else dict(previous)
        closed = pb.BREAKER_STATE_CLOSED  # a breaker first seen CLOSED is no transition
        for breaker in request.breakers:
            name, state = breaker.name, breaker.state
            old = previous.get(name)
            old_state = pb.BREAKER_STATE_UNSPECIFIED if old is None else old.state
            if old_state != state and (old is not None or state != closed):
                self.events.publish(
                    pb.Event(
                        transition=pb.BreakerTransition(
                            instance_id=instance.instance_id,
                            service=instance.service,
                            name=name,
                            from_state=old_state,
                            to_state=state,
                        )
                    )
                )
            current[name] = breaker
        instance.breakers = current  # never mutated once set: mesh_view() hands it out
        if request.HasField("nack"):
            if instance.nack != request.nack:
                self._nacks_received += 1
                self.events.publish(
                    pb.Event(
                        nack=pb.ConfigNack(
                            instance_id=instance.instance_id,
                            service=instance.service,
                            nack=request.nack,
                        )
                    )
                )
            instance.nack = request.nack
        else:
            instance.nack = None
        self._reports_received += 1
        return pb.ReportStateResponse(revision=self._revision, report_ttl=self._report_ttl_message)

    @_abort_on_refusal
    async def ListBreakers(
        self, request: pb.ListBreakersRequest, context: _Context
    ) -> pb.ListBreakersResponse:
        """Breakers across live instances, aggregated per (caller service, breaker name)."""
        convert.check_caller(request.service, "service", required=False)
        if request.method.startswith("/"):
            convert.check_method(request.method, "method")
        else:
            convert.check_service(request.method, "method")
        if request.state != pb.BREAKER_STATE_UNSPECIFIED and request.state not in _STATE_FIELDS:
            raise ConfigError("state", f"unknown BreakerState {request.state}")
        now = self._clock()
        self._expire(now)
        groups: dict[tuple[str, str], pb.BreakerGroup] = {}
        response = pb.ListBreakersResponse(revision=self._revision)
        for instance in sorted(self._instances.values(), key=lambda i: i.instance_id):
            if request.service and instance.service != request.service:
                continue
            response.instances.append(
                pb.InstanceStatus(
                    instance_id=instance.instance_id,
                    service=instance.service,
                    applied_revision=instance.applied_revision,
                    nack=instance.nack,
                    report_age=now - instance.last_seen,
                    breakers=len(instance.breakers),
                )
            )
            for name, snapshot in instance.breakers.items():
                if request.method:
                    _, service, method = split_breaker_name(name)
                    if request.method not in (service, method):
                        continue
                key = (instance.service, name)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = pb.BreakerGroup(service=instance.service, name=name)
                group.instances += 1
                state_field = _STATE_FIELDS[snapshot.state]
                setattr(group, state_field, getattr(group, state_field) + 1)
                group.failure_rate += snapshot.failure_rate
                group.slow_call_rate += snapshot.slow_call_rate
                group.total += snapshot.total
                group.failed += snapshot.failed
                group.rejected += snapshot.rejected
                if request.include_instances:
                    group.instance_breakers.append(
                        pb.InstanceBreaker(
                            instance_id=instance.instance_id,
                            applied_revision=instance.applied_revision,
                            snapshot=snapshot,
                            report_age=now - instance.last_seen,
                        )
                    )
        for key in sorted(groups):
            group = groups[key]
            if request.state and not getattr(group, _STATE_FIELDS[request.state]):
                continue
            group.failure_rate /= group.instances
            group.slow_call_rate /= group.instances
            response.groups.append(group)
        return response

    def mesh_view(self) -> MeshView:
        """What the control plane knows now, for its /metrics (call it on the server's loop).

        Live instances only (expired ones are swept first). Every handler that changes this
        state runs on the loop, so a call there reads it whole; the breaker maps handed out are
        never mutated afterwards (a report installs a new one).
        """
        now = self._clock()
        self._expire(now)
        instances = tuple(
            InstanceView(
                instance_id=instance.instance_id,
                service=instance.service,
                report_age=now - instance.last_seen,
                applied_revision=instance.applied_revision,
                nacking=instance.nack is not None,
                breakers=instance.breakers,
            )
            for instance in sorted(self._instances.values(), key=lambda i: i.instance_id)
        )
        return MeshView(
            revision=self._revision,
            watch_streams=self._watch_streams,
            reports_received=self._reports_received,
            nacks_received=self._nacks_received,
            instances=instances,
        )

    # -- policies --------------------------------------------------------------------------

    @_abort_on_refusal
    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: _Context
    ) -> pb.ListPoliciesResponse:
        """Every policy (or those applying to one caller), sorted by id, with the revision."""
        convert.check_caller(request.caller, "caller", required=False)
        if request.caller:
            policies = convert.applicable(request.caller, self._policies.values())
        else:
            policies = sorted(self._policies.values(), key=lambda policy: policy.id)
        return pb.ListPoliciesResponse(policies=policies, revision=self._revision)

    def _check_put(self, request: pb.PutPolicyRequest) -> list[pb.Policy]:
        count = len(request.policies)
        if count == 0:
            raise ConfigError("policies", "at least one policy is needed")
        if count > self._limits.max_policies_per_put:
            raise ConfigError(
                "policies", f"at most {self._limits.max_policies_per_put} per put, got {count}"
            )
        seen_ids: dict[str, int] = {}
        seen_selectors: dict[tuple[str, str, str], int] = {}
        cleaned = []
        for index, policy in enumerate(request.policies):
            path = f"policies[{index}]"
            convert.policy_from_proto(policy, path)
            if policy.id in seen_ids:
                raise ConfigError(f"{path}.id", f"duplicate of policies[{seen_ids[policy.id]}]")
            seen_ids[policy.id] = index
            key = selector_key(policy)
            if key in seen_selectors:
                raise ConfigError(
                    f"{path}.selector", f"same selector as policies[{seen_selectors[key]}]"
                )
            seen_selectors[key] = index
            cleaned.append(_without_output_only(policy))
        return cleaned

    @_abort_on_refusal
    async def PutPolicy(
        self, request: pb.PutPolicyRequest, context: _Context
    ) -> pb.PutPolicyResponse:
        """Create or replace policies atomically (compare-and-set on the store revision)."""
        policies = self._check_put(request)
        expected = self._expected(request)
        actor = self._actor(context)

        async def work() -> list[AuditEntry]:
            new_ids = {policy.id for policy in policies} - self._policies.keys()
            if len(self._policies) + len(new_ids) > self._limits.max_policies:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"policies: the store holds at most {self._limits.max_policies} policies",
                )
            return await self._put(policies, expected, actor)

        entries = await self._serialized(work)
        return pb.PutPolicyResponse(
            policies=[entry.after for entry in entries if entry.after is not None],
            revision=entries[0].revision,
        )

    @_abort_on_refusal
    async def DeletePolicy(
        self, request: pb.DeletePolicyRequest, context: _Context
    ) -> pb.DeletePolicyResponse:
        """Delete one policy (compare-and-set on the store revision)."""
        convert.check_policy_id(request.id, "id")
        expected = self._expected(request)
        actor = self._actor(context)
        entry = await self._serialized(lambda: self._delete(request.id, expected, actor))
        return pb.DeletePolicyResponse(revision=entry.revision)

    @_abort_on_refusal
    async def ForceState(
        self, request: pb.ForceStateRequest, context: _Context
    ) -> pb.ForceStateResponse:
        """Set (or clear) the override of the policy with exactly this selector."""
        selector = convert.selector_from_proto(request.selector, "selector")
        if not selector.registry_selector:
            raise ConfigError("selector", "needs a service or a method")
        override = convert.override_from_proto(request.override, "override")
        if request.policy_id:
            convert.check_policy_id(request.policy_id, "policy_id")
        expected = self._expected(request)
        actor = self._actor(context)
        wanted = (selector.caller, selector.service, selector.method)

        async def work() -> pb.ForceStateResponse:
            existing = next((p for p in self._policies.values() if selector_key(p) == wanted), None)
            if existing is None and override is None:
                if expected is not None and expected != self._revision:
                    mismatch = RevisionMismatchError(expected, self._revision)
                    raise _Refused(grpc.StatusCode.ABORTED, str(mismatch))
                return pb.ForceStateResponse(revision=self._revision)
            if existing is not None and override is None and not existing.HasField("config"):
                # An override-only policy without its override does nothing: remove it.
                entry = await self._delete(existing.id, expected, actor)
                return pb.ForceStateResponse(revision=entry.revision)
            if existing is not None:
                policy = _without_output_only(existing)
            else:
                policy = pb.Policy(
                    id=request.policy_id or _forced_policy_id(selector), selector=request.selector
                )
                if policy.id in self._policies:
                    raise _Refused(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"policy_id: {policy.id!r} is taken by a policy with another selector",
                    )
            policy.override = convert.override_to_proto(override)
            entries = await self._put([policy], expected, actor)
            return pb.ForceStateResponse(policy=entries[0].after, revision=entries[0].revision)

        return await self._serialized(work)

    # -- events ----------------------------------------------------------------------------

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: _Context
    ) -> AsyncIterator[pb.Event]:
        """Every event from now on: transitions, NACKs (filtered by service), policy changes."""
        try:
            convert.check_caller(request.service, "service", required=False)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        with self.events.subscribe() as queue:
            # Headers go out at once so a client knows it is subscribed before the first event.
            await context.send_initial_metadata(())
            while True:
                event = await queue.get()
                if request.service:
                    kind = event.WhichOneof("kind")
                    if kind == "transition" and event.transition.service != request.service:
                        continue
                    if kind == "nack" and event.nack.service != request.service:
                        continue
                yield event


def _forced_policy_id(selector: convert.Selector) -> str:
    target = selector.method.lstrip("/").replace("/", ".") or selector.service
    caller = selector.caller or "all"
    return f"force.{caller}.{target}"[:128]


def _check_port(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(name, "must be an integer in 0..65535")


def _read_pem(source: PemSource | None, name: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as file:
                data = file.read()
        except OSError as error:
            raise ConfigError(
                name, f"cannot read {os.fspath(source)!r}: {error.strerror}"
            ) from None
    if b"-----BEGIN " not in data:
        raise ConfigError(name, "is not PEM data")
    return data


class ControlPlaneServer:
    """A control-plane server: `await start()`, `.port`, `await stop()`; or `async with`.

    With `metrics_port` set, it also serves Prometheus metrics over HTTP on `metrics_host`
    (default: `host`), port 0 picking one (see `.metrics_port`); needs the `prometheus` extra.
    """

    def __init__(
        self,
        store: PolicyStore,
        *,
        host: str = "127.0.0.1",
        port: int = 7070,
        admin_token: str | None = None,
        agent_token: str | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        tls_client_ca: PemSource | None = None,
        report_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
        close_store: bool = False,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
    ) -> None:
        if isinstance(report_ttl, bool) or not isinstance(report_ttl, (int, float)):
            raise ConfigError("report_ttl", "must be a number of seconds")
        if not math.isfinite(report_ttl) or report_ttl <= 0:
            raise ConfigError("report_ttl", "must be > 0")
        _check_port("port", port)
        if metrics_port is not None:
            _check_port("metrics_port", metrics_port)
        if metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
            raise ConfigError(
                "metrics_port", "needs prometheus_client: install meshbreaker[prometheus]"
            )
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("tls_key", "tls_cert and tls_key go together")
        if tls_client_ca is not None and tls_cert is None:
            raise ConfigError("tls_client_ca", "needs tls_cert and tls_key (mutual TLS is TLS)")
        self._authenticator = TokenAuthenticator(admin_token, agent_token)
        self._cert = _read_pem(tls_cert, "tls_cert")
        self._key = _read_pem(tls_key, "tls_key")
        self._client_ca = _read_pem(tls_client_ca, "tls_client_ca")
        self.store = store
        self.host = host
        self._requested_port = port
        self._report_ttl = float(report_ttl)
        self._clock = clock
        self._wall_clock = wall_clock
        self.limits = limits or Limits()
        self._close_store = close_store
        self._server: grpc.aio.Server | None = None
        self._health: HealthServicer | None = None
        self._servicer: ControlPlaneServicer | None = None
        self._port = 0
        self._requested_metrics_port = metrics_port
        self.metrics_host = metrics_host or host
        self._metrics: MetricsServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def target(self) -> str:
        """ "host:port" to dial."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port, or None when metrics are off."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return None if self._metrics is None else self._metrics.port

    @property
    def servicer(self) -> ControlPlaneServicer:
        """The ControlPlane implementation (its in-memory state, for tests and embedding)."""
        if self._servicer is None:
            raise RuntimeError("the server is not started")
        return self._servicer

    async def start(self) -> None:
        """Bind and start serving; raises OSError if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        limit = self.limits.max_message_bytes
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(self._authenticator)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # Agents may ping idle watch streams; dead peers are found by our own pings.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
            ],
        )
        servicer = ControlPlaneServicer(
            self.store,
            authenticator=self._authenticator,
            report_ttl=self._report_ttl,
            clock=self._clock,
            wall_clock=self._wall_clock,
            limits=self.limits,
        )
        if self._requested_metrics_port is not None:
            # Bound before the gRPC port, so failing here leaves no gRPC port to release.
            from meshbreaker.control.metrics import start_control_plane_metrics

            try:
                self._metrics = start_control_plane_metrics(
                    servicer,
                    asyncio.get_running_loop(),
                    self._requested_metrics_port,
                    self.metrics_host,
                )
            except OSError as error:
                servicer.close()
                metrics_address = f"{self.metrics_host}:{self._requested_metrics_port}"
                raise OSError(
                    f"cannot bind the metrics endpoint to {metrics_address}: {error.strerror}"
                ) from error
        pb_grpc.add_ControlPlaneServicer_to_server(servicer, server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (CONTROL_PLANE_SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
        )
        address = f"{self.host}:{self._requested_port}"
        try:
            if self._cert is not None and self._key is not None:
                credentials = grpc.ssl_server_credentials(
                    [(self._key, self._cert)],
                    root_certificates=self._client_ca,
                    require_client_auth=self._client_ca is not None,
                )
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            # grpc's "Failed to bind" carries no reason; the usual one is EADDRINUSE.
            port = 0
        if port == 0:
            servicer.close()
            await self._close_metrics()
            raise OSError(f"cannot bind the control plane to {address} (address in use?)")
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await health.set("", serving)
        await health.set(CONTROL_PLANE_SERVICE, serving)
        self._server, self._health, self._servicer, self._port = server, health, servicer, port
        logger.info(
            "control plane serving on %s:%d (revision %d)", self.host, port, servicer.revision
        )
        if self._metrics is not None:
            logger.info("control plane metrics on %s", self._metrics.url)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (open streams are cancelled after `grace` seconds); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._close_metrics()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await server.stop(grace)
        if self._servicer is not None:
            await self._servicer.drain()
            await asyncio.get_running_loop().run_in_executor(None, self._servicer.close)
        if self._close_store:
            self.store.close()
        logger.info("control plane on port %d stopped", self._port)

    async def _close_metrics(self) -> None:
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            # Its shutdown waits out the HTTP server's poll interval (up to 0.5 s): not on the loop.
            await asyncio.get_running_loop().run_in_executor(None, metrics.close)

    async def wait_for_termination(self) -> None:
        """Return when the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> ControlPlaneServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve(
    port: int = 7070,
    db: str | os.PathLike[str] = "meshbreaker.db",
    *,
    host: str = "127.0.0.1",
    store: PolicyStore | None = None,
    admin_token: str | None = None,
    agent_token: str | None = None,
    tls_cert: PemSource | None = None,
    tls_key: PemSource | None = None,
    tls_client_ca: PemSource | None = None,
    report_ttl: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    limits: Limits | None = None,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
) -> ControlPlaneServer:
    """Start a control plane in the running event loop and return it (stop it with `.stop()`).

    `db` is the SQLite file, used unless a `store` is given. TLS material is a file path or PEM
    bytes; `tls_client_ca` turns on mutual TLS. Port 0 picks a free port (see `.port`).
    `metrics_port` serves Prometheus metrics on http://metrics_host:metrics_port/metrics
    (`metrics_host` defaults to `host`; port 0 picks one, see `.metrics_port`).
    """
    own_store = store is None
    the_store = store if store is not None else SqliteStore(db)
    try:
        server = ControlPlaneServer(
            the_store,
            host=host,
            port=port,
            admin_token=admin_token,
            agent_token=agent_token,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            report_ttl=report_ttl,
            clock=clock,
            limits=limits,
            close_store=own_store,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        await server.start()
    except BaseException:
        if own_store:
            the_store.close()
        raise
    return server


def run(
    port: int = 7070,
    db: str | os.PathLike[str] = "meshbreaker.db",
    *,
    ready: Callable[[ControlPlaneServer], None] | None = None,
    **options: Any,
) -> None:
    """Serve until SIGINT/SIGTERM (blocking); `ready(server)` is called once it listens."""

    async def main() -> None:
        server = await serve(port, db, **options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        try:
            if ready is not None:
                ready(server)
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())
