"""The ControlPlane RPCs: policies, config streams, reports, mesh views and events.

Store writes run on one worker thread so a store's fsync or network round trip never blocks the
event loop; the servicer keeps a copy of every policy in memory, so reads and watch pushes never
touch the store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc.aio

from meshbreaker.control import convert, validate
from meshbreaker.control.auth import TokenAuthenticator
from meshbreaker.control.events import EventBus, concerns
from meshbreaker.control.instances import InstanceTable, MeshView
from meshbreaker.control.limits import Limits
from meshbreaker.control.store import (
    AuditEntry,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
    selector_key,
)
from meshbreaker.control.validate import Refused
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_S = TypeVar("_S")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Context = grpc.aio.ServicerContext[Any, Any]


def abort_on_refusal(
    handler: Callable[[_S, _Request, _Context], Awaitable[_Response]],
) -> Callable[[_S, _Request, _Context], Coroutine[Any, Any, _Response]]:
    """Wrap a unary handler: its ConfigError aborts INVALID_ARGUMENT, its Refused its code."""

    @functools.wraps(handler)
    async def guarded(self: _S, request: _Request, context: _Context) -> _Response:
        try:
            return await handler(self, request, context)
        except ConfigError as error:
            refusal = Refused(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except Refused as error:
            refusal = error
        await context.abort(refusal.code, refusal.details)

    return guarded


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
        san_names_service: bool = False,
    ) -> None:
        self._store = store
        self._store_id = store.store_id
        self._adopted: set[str] = set()  # stores whose agents may take this one's (AdoptStore)
        self._san_names_service = san_names_service
        self._authenticator = authenticator
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
        self._watch_streams = 0
        self.events = EventBus(limits.event_queue_size, wall_clock, limits.event_history)
        self._instances = InstanceTable(
            report_ttl=report_ttl, limits=limits, publish=self.events.publish
        )

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
            store_id=self._store_id,
            adopted_store_ids=sorted(self._adopted),
        )

    def _check_speaker(self, context: _Context, service: str) -> None:
        """Refuse (PERMISSION_DENIED) credentials limited to other caller services."""
        allowed = self._authenticator.services(context.invocation_metadata())
        if allowed is not None and service not in allowed:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"service: this agent token may speak only for {', '.join(sorted(allowed))}",
            )
        if self._san_names_service:
            names = certificate_names(context.auth_context())
            if not any(name == service or name.endswith("/" + service) for name in names):
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"service: the client certificate does not name {service!r} in its SAN",
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
            raise Refused(grpc.StatusCode.ABORTED, str(error)) from None
        except SelectorConflictError as error:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, str(error)) from None
        except PolicyNotFoundError as error:
            raise Refused(grpc.StatusCode.NOT_FOUND, str(error)) from None
        except StoreError as error:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from None
        except Exception as error:  # disk full, I/O error...: nothing was committed
            logger.exception("policy store write failed")
            raise Refused(
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

    # -- config ----------------------------------------------------------------------------

    @abort_on_refusal
    async def GetConfig(self, request: pb.GetConfigRequest, context: _Context) -> pb.ConfigSnapshot:
        """The policies that apply to the caller service, with the store revision."""
        caller = convert.check_caller(request.service, "service", required=True)
        self._check_speaker(context, caller)
        return self._snapshot(caller)

    async def WatchConfig(
        self, request: pb.WatchConfigRequest, context: _Context
    ) -> AsyncIterator[pb.ConfigSnapshot]:
        """A snapshot at once, then one per change that affects the caller."""
        release: Callable[[], None] = _nothing
        try:
            caller = convert.check_caller(request.service, "service", required=True)
            self._check_speaker(context, caller)
            if request.instance_id and request.instance_key:
                release = self._instances.watch(request.instance_id, request.instance_key, caller)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except Refused as refusal:
            await context.abort(refusal.code, refusal.details)
        seen_change = -1
        last_sent: tuple[object, ...] | None = None
        self._watch_streams += 1
        try:
            while True:
                async with self._changed:
                    while self._changes == seen_change:
                        await self._changed.wait()
                    seen_change = self._changes
                    snapshot = self._snapshot(caller)
                key = (
                    *((policy.id, policy.revision) for policy in snapshot.policies),
                    tuple(snapshot.adopted_store_ids),
                )
                if key != last_sent:
                    last_sent = key
                    yield snapshot
        finally:
            self._watch_streams -= 1
            release()

    # -- reports ---------------------------------------------------------------------------

    @abort_on_refusal
    async def ReportState(
        self, request: pb.ReportStateRequest, context: _Context
    ) -> pb.ReportStateResponse:
        """Record one instance's breakers, applied revision and ACK/NACK."""
        validate.check_report(request, self._limits)
        self._check_speaker(context, request.service)
        acknowledged, resend_configs = self._instances.record(request, self._clock())
        return pb.ReportStateResponse(
            revision=self._revision,
            report_ttl=self._report_ttl_message,
            transitions_acknowledged=acknowledged,
            resend_configs=resend_configs,
        )

    @abort_on_refusal
    async def ListBreakers(
        self, request: pb.ListBreakersRequest, context: _Context
    ) -> pb.ListBreakersResponse:
        """Breakers across live instances, aggregated per (caller service, breaker name)."""
        validate.check_list_breakers(request)
        response = pb.ListBreakersResponse(revision=self._revision, store_id=self._store_id)
        self._instances.list_breakers(request, self._clock(), response)
        return response

    def mesh_view(self) -> MeshView:
        """What the control plane knows now, for its /metrics (call it on the server's loop).

        Live instances only (expired ones are swept first). Every handler that changes this
        state runs on the loop, so a call there reads it whole; the breaker maps handed out are
        never mutated afterwards (a report installs a new one).
        """
        instances = self._instances.views(self._clock())
        return MeshView(
            revision=self._revision,
            watch_streams=self._watch_streams,
            reports_received=self._instances.reports_received,
            nacks_received=self._instances.nacks_received,
            instances=instances,
        )

    # -- policies --------------------------------------------------------------------------

    @abort_on_refusal
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

    @abort_on_refusal
    async def PutPolicy(
        self, request: pb.PutPolicyRequest, context: _Context
    ) -> pb.PutPolicyResponse:
        """Create or replace policies atomically (compare-and-set on the store revision)."""
        policies = validate.check_put(request, self._limits)
        expected = validate.expected_revision(request)
        actor = self._actor(context)

        async def work() -> list[AuditEntry]:
            new_ids = {policy.id for policy in policies} - self._policies.keys()
            if len(self._policies) + len(new_ids) > self._limits.max_policies:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"policies: the store holds at most {self._limits.max_policies} policies",
                )
            return await self._put(policies, expected, actor)

        entries = await self._serialized(work)
        return pb.PutPolicyResponse(
            policies=[entry.after for entry in entries if entry.after is not None],
            revision=entries[0].revision,
        )

    @abort_on_refusal
    async def DeletePolicy(
        self, request: pb.DeletePolicyRequest, context: _Context
    ) -> pb.DeletePolicyResponse:
        """Delete one policy (compare-and-set on the store revision)."""
        convert.check_policy_id(request.id, "id")
        expected = validate.expected_revision(request)
        actor = self._actor(context)
        entry = await self._serialized(lambda: self._delete(request.id, expected, actor))
        return pb.DeletePolicyResponse(revision=entry.revision)

    @abort_on_refusal
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
        expected = validate.expected_revision(request)
        actor = self._actor(context)
        wanted = (selector.caller, selector.service, selector.method)

        async def work() -> pb.ForceStateResponse:
            existing = next((p for p in self._policies.values() if selector_key(p) == wanted), None)
            if existing is None and override is None:
                if expected is not None and expected != self._revision:
                    mismatch = RevisionMismatchError(expected, self._revision)
                    raise Refused(grpc.StatusCode.ABORTED, str(mismatch))
                return pb.ForceStateResponse(revision=self._revision)
            if existing is not None and override is None and not existing.HasField("config"):
                # An override-only policy without its override does nothing: remove it.
                entry = await self._delete(existing.id, expected, actor)
                return pb.ForceStateResponse(revision=entry.revision)
            if existing is not None:
                policy = validate.without_output_only(existing)
            else:
                policy = pb.Policy(
                    id=request.policy_id or _forced_policy_id(selector), selector=request.selector
                )
                if policy.id in self._policies:
                    raise Refused(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"policy_id: {policy.id!r} is taken by a policy with another selector",
                    )
            policy.override = convert.override_to_proto(override)
            entries = await self._put([policy], expected, actor)
            return pb.ForceStateResponse(policy=entries[0].after, revision=entries[0].revision)

        return await self._serialized(work)

    # -- stores ----------------------------------------------------------------------------

    @abort_on_refusal
    async def AdoptStore(
        self, request: pb.AdoptStoreRequest, context: _Context
    ) -> pb.AdoptStoreResponse:
        """Let agents holding the policies of `store_id` take this control plane's."""
        if not request.store_id:
            raise ConfigError("store_id", "must not be empty")
        validate.check_store_id(request.store_id, "store_id")
        if request.store_id not in self._adopted:
            self._adopted.add(request.store_id)
            logger.warning(
                "%s let agents holding store %s take store %s (revision %d)",
                self._actor(context),
                request.store_id,
                self._store_id,
                self._revision,
            )
            async with self._changed:
                self._changes += 1
                self._changed.notify_all()
        return pb.AdoptStoreResponse(
            store_id=self._store_id, adopted_store_ids=sorted(self._adopted)
        )

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
                if concerns(event, request.service):
                    yield event

    @abort_on_refusal
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: _Context
    ) -> pb.ListEventsResponse:
        """The most recent events kept (transitions and NACKs filtered by service), oldest first."""
        convert.check_caller(request.service, "service", required=False)
        if request.limit < 0:
            raise ConfigError("limit", "must be >= 0 (0 = every event kept)")
        return pb.ListEventsResponse(events=self.events.recent(request.service, request.limit))


def _forced_policy_id(selector: convert.Selector) -> str:
    target = selector.method.lstrip("/").replace("/", ".") or selector.service
    caller = selector.caller or "all"
    return f"force.{caller}.{target}"[:128]


def _nothing() -> None:
    """A release for a watch that holds no instance."""


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The subject alternative names of a verified client certificate (empty without one)."""
    return [
        value.decode("utf-8", "replace")
        for value in auth_context.get("x509_subject_alternative_name", ())
    ]
