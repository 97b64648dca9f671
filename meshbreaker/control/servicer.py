"""The ControlPlane RPCs: policies, config streams, reports, mesh views and events.

The servicer checks who speaks and wires the parts together; what a policy write does is
`policy_writes.py`'s. Store writes run on one worker thread so a store's fsync or network round
trip never blocks the event loop; the servicer keeps a copy of every policy in memory, so reads
and watch pushes never touch the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc.aio

from meshbreaker.control import convert, overrides, validate
from meshbreaker.control.auth import TokenAuthenticator
from meshbreaker.control.canary import side_by_side
from meshbreaker.control.config_streams import ConfigStreams
from meshbreaker.control.events import EventBus, concerns
from meshbreaker.control.fleet import DEFAULT_TICK, FleetDecider
from meshbreaker.control.instances import InstanceTable, MeshView
from meshbreaker.control.limits import Limits
from meshbreaker.control.policies import EncodedSnapshot, Follower, PolicyIndex, Update
from meshbreaker.control.policy_writes import PolicyWrites
from meshbreaker.control.replica_mesh import ReplicaMesh, new_replica_id
from meshbreaker.control.store import PolicyStore
from meshbreaker.control.store.presence import Presence
from meshbreaker.control.validate import Refused
from meshbreaker.control.writes import StoreWriter
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_S = TypeVar("_S")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Context = grpc.aio.ServicerContext[Any, Any]

READ_THREADS = 2


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
        decider_tick: float = DEFAULT_TICK,
        replica_lease_ttl: float = 10.0,
        replica_publish_interval: float = 5.0,
    ) -> None:
        self._store = store
        self._store_id = store.store_id
        self._adopted: set[str] = set()  # stores whose agents may take this one's (AdoptStore)
        self._san_names_service = san_names_service
        self._authenticator = authenticator
        self._report_ttl_message = convert.seconds_to_duration(report_ttl)  # sent in every reply
        self._clock = clock
        self._wall_clock = wall_clock
        self._limits = limits
        self.events = EventBus(limits.event_queue_size, wall_clock, limits.event_history)
        self._instances = InstanceTable(
            report_ttl=report_ttl, limits=limits, publish=self._publish_local
        )
        # Replicas on a shared store show each other's instances (none on a one-replica store).
        presence = store.presence(new_replica_id(), math.ceil(replica_lease_ttl))
        self._mesh = (
            None
            if presence is None
            else ReplicaMesh(
                presence,
                self._instances,
                self._publish_remote,
                clock=clock,
                wall_clock=wall_clock,
                interval=replica_publish_interval,
            )
        )
        revision, policies = store.list()
        self._revision = revision  # the newest revision applied here (loop side)
        self._index = PolicyIndex(revision, policies, store_id=self._store_id)
        # Reads that build snapshots or sort every policy run here, off the loop, on few threads.
        self._reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="meshbreaker-reads")
        self.config_streams = ConfigStreams(
            self._index, self._instances.acknowledged, executor=self._reads
        )
        self._loop = asyncio.get_running_loop()
        self._writer = StoreWriter(store)
        self._policy_writes = PolicyWrites(
            self._index,
            self._writer,
            limits=limits,
            wall_clock=wall_clock,
            revision=lambda: self._revision,
        )
        self._follower = Follower(store, self._index, self._deliver)
        self._follower.start()
        self.decider = FleetDecider(
            self._index,
            self._writer,
            wall_clock=wall_clock,
            tick=decider_tick,
            live_instances=lambda: self._instances.views(self._clock()),
            probe_wait=report_ttl,
            is_leader=None if presence is None else functools.partial(_campaign, presence),
        )
        self.decider.start()

    def start_sharing(self) -> None:
        """Begin sharing this replica's instances and following the others' (once serving)."""
        if self._mesh is not None:
            self._mesh.start()

    @property
    def revision(self) -> int:
        """The store revision as this server last wrote or loaded it."""
        return self._revision

    async def drain(self) -> None:
        """Stop deciding; wait for writes in progress (their clients may be gone); stop sharing."""
        await self.decider.stop()
        await self._writer.drain()
        if self._mesh is not None:
            await self._mesh.stop()

    def _publish_local(self, event: pb.Event) -> None:
        """An event of an instance reporting here: on the bus, to other replicas, the decider."""
        self._publish_remote(event)
        if self._mesh is not None:
            self._mesh.note_event(event)

    def _publish_remote(self, event: pb.Event) -> None:
        """An event of an instance (here or at another replica): on the bus, to the decider."""
        self.events.publish(event)
        self.decider.observe(event)

    def close(self) -> None:
        """Stop following the store and the store worker thread."""
        self._follower.stop()
        self._writer.close()
        self._reads.shutdown(wait=True)

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await self._loop.run_in_executor(self._reads, functools.partial(fn, *args))

    # -- helpers ---------------------------------------------------------------------------

    def _actor(self, context: _Context) -> str:
        return self._authenticator.actor(context.invocation_metadata(), context.peer())

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

    def _deliver(self, update: Update) -> None:
        """Follower thread: hand the update, its snapshots and events built here, to the loop."""
        changes = []
        for entry in update.entries:
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
            changes.append(pb.Event(policy_change=change))
            logger.info(
                "policy %s %s at revision %d by %s",
                entry.policy_id,
                "deleted" if entry.after is None else "put",
                entry.revision,
                entry.actor,
            )
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self._loop.call_soon_threadsafe(self._apply, update, changes)

    def _apply(self, update: Update, changes: list[pb.Event]) -> None:
        """On the loop: release waiting writes, publish the changes, push the new snapshots."""
        self._revision = max(self._revision, update.revision)
        self._writer.caught_up(self._revision)
        for event in changes:
            self.events.publish(event)
        self.config_streams.coming(update.coming)
        self.config_streams.update(update.snapshots)

    # -- config ----------------------------------------------------------------------------

    @abort_on_refusal
    async def GetConfig(  # type: ignore[override]  # server.py serializes it: encode_snapshot
        self, request: pb.GetConfigRequest, context: _Context
    ) -> EncodedSnapshot:
        """The policies that apply to the caller service, with the store revision."""
        caller = convert.check_caller(request.service, "service", required=True)
        self._check_speaker(context, caller)
        current = self.config_streams.current(caller)
        if current is not None and current.revision == self._revision:
            return current
        return await self._off_loop(self._index.snapshot, caller)

    async def WatchConfig(  # type: ignore[override]  # server.py serializes: encode_snapshot
        self, request: pb.WatchConfigRequest, context: _Context
    ) -> AsyncIterator[EncodedSnapshot]:
        """A snapshot at once, then one per change that affects the caller."""
        release: Callable[[], None] = _nothing
        try:
            caller = convert.check_caller(request.service, "service", required=True)
            self._check_speaker(context, caller)
            if request.instance_id and request.instance_key:
                release = self._instances.watch(request.instance_id, request.instance_key, caller)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, validate.clip(str(error)))
        except Refused as refusal:
            await context.abort(refusal.code, refusal.details)
        try:
            instance_id = request.instance_id[: validate.MAX_INSTANCE_ID_LENGTH]
            async for snapshot in self.config_streams.stream(caller, instance_id):
                yield snapshot
        finally:
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
        self.config_streams.acknowledged(request.instance_id)
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
        canaries = self._index.canaries(request.service)
        if canaries:
            live = self._instances.views(self._clock())
            response.canaries.extend(side_by_side(policy, live) for policy in canaries)
        now = self._wall_clock()
        for policy in self._index.overrides(request.service):
            active = response.overrides.add(policy=policy)
            expires = overrides.expires_at(policy)
            if expires is not None:
                active.remaining = max(0.0, expires - now)
        size = response.ByteSize()
        if size > self._limits.max_message_bytes:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the answer would be {size} bytes, over limits.max_message_bytes"
                f" ({self._limits.max_message_bytes}): filter by service or method,"
                " or leave out include_instances",
            )
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
            watch_streams=self.config_streams.streams,
            reports_received=self._instances.reports_received,
            nacks_received=self._instances.nacks_received,
            instances=instances,
            replicas=1 if self._mesh is None else self._mesh.replicas,
            version=self._instances.version,
            fleet_decisions=dict(self.decider.decisions),
            fleet_decisions_active={
                (policy.selector.caller, policy.selector.method): policy.fleet.period
                for policy in self._index.overrides()
                if policy.HasField("fleet")
            },
            decider_leading=self.decider.leading,
        )

    # -- policies --------------------------------------------------------------------------

    @abort_on_refusal
    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: _Context
    ) -> pb.ListPoliciesResponse:
        """Every policy (or those applying to one caller), sorted by id, with the revision."""
        convert.check_caller(request.caller, "caller", required=False)
        policies = await self._off_loop(self._index.policies, request.caller)
        return pb.ListPoliciesResponse(policies=policies, revision=self._revision)

    @abort_on_refusal
    async def PutPolicy(
        self, request: pb.PutPolicyRequest, context: _Context
    ) -> pb.PutPolicyResponse:
        """Create or replace policies atomically (compare-and-set on the store revision)."""
        return await self._policy_writes.put(request, self._actor(context))

    @abort_on_refusal
    async def DeletePolicy(
        self, request: pb.DeletePolicyRequest, context: _Context
    ) -> pb.DeletePolicyResponse:
        """Delete one policy (compare-and-set on the store revision)."""
        return await self._policy_writes.delete(request, self._actor(context))

    @abort_on_refusal
    async def ForceState(
        self, request: pb.ForceStateRequest, context: _Context
    ) -> pb.ForceStateResponse:
        """Set (or clear) the override of the policy with exactly this selector."""
        return await self._policy_writes.force(request, self._actor(context))

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
            adopted = tuple(sorted(self._adopted))
            snapshots = await self._off_loop(self._index.set_adopted, adopted)
            self.config_streams.update(snapshots)
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
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, validate.clip(str(error)))
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


async def _campaign(presence: Presence) -> bool:
    """Whether this replica decides fleet-wide now (the election runs on the presence lease)."""
    try:
        return await asyncio.to_thread(presence.campaign, "decider")
    except Exception as error:  # the store is away: decide nothing rather than twice
        logger.debug("fleet decider election: %s", error)
        return False


def _nothing() -> None:
    """A release for a watch that holds no instance."""


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The subject alternative names of a verified client certificate (empty without one)."""
    return [
        value.decode("utf-8", "replace")
        for value in auth_context.get("x509_subject_alternative_name", ())
    ]
