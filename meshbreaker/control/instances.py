"""The instance table: what the control plane knows of every reporting process, and views of it.

Reports, reads and the /metrics view all run on the server's event loop, so the table needs no
lock; the breaker maps it hands out are never mutated afterwards (a report installs a new one).
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc

from meshbreaker.control import convert
from meshbreaker.control.limits import Limits
from meshbreaker.control.validate import STATE_FIELDS, Refused
from meshbreaker.registry import split_breaker_name
from meshbreaker.v1 import control_plane_pb2 as pb

# A filter on OPEN (CLOSED) also finds breakers forced open (closed): they refuse (let through)
# calls alike. FORCED_OPEN and FORCED_CLOSED find the forced ones only.
_FILTERED_STATES = {
    pb.BREAKER_STATE_OPEN: ("open", "forced_open"),
    pb.BREAKER_STATE_CLOSED: ("closed", "forced_closed"),
}

logger = logging.getLogger(__name__)


@dataclass
class Instance:
    """What the server knows about one reporting process."""

    instance_id: str
    service: str
    last_seen: float
    applied_revision: int = 0
    nack: pb.Nack | None = None
    breakers: dict[str, pb.BreakerSnapshot] = field(default_factory=dict)
    key: str = ""  # the instance_key of its first report: only that process may speak for it
    # A watch stream of its process was open here: once none is, the process's link is gone and
    # a new process may take the id over (a restart); a process that only reports holds its id
    # until its reports stop for `report_ttl`.
    linked: bool = False
    last_sequence: int = 0  # the newest transition of its log published
    applied_store_id: str = ""
    store_mismatch: pb.StoreMismatch | None = None
    # Breaker name -> its effective config as last reported (sent only when it changes).
    configs: dict[str, pb.BreakerConfig] = field(default_factory=dict)
    replica: str = ""  # the other replica it reports to ("" = this one)
    # Another replica's instance: the clock() time its breakers' ages are as of (its record is
    # rewritten only when something but the ages changed); None: as of `last_seen`.
    ages_as_of: float | None = None


@dataclass(frozen=True)
class InstanceView:
    """One live instance in a MeshView."""

    instance_id: str
    service: str
    report_age: float
    applied_revision: int
    nacking: bool
    breakers: Mapping[str, pb.BreakerSnapshot]
    replica: str = ""  # the other replica it reports to ("" = this one)


@dataclass(frozen=True)
class MeshView:
    """The control plane's state at one instant, for its metrics."""

    revision: int
    watch_streams: int  # open WatchConfig streams: connected agents
    reports_received: int  # ReportState calls accepted
    nacks_received: int  # NACKs, each counted once however often an instance repeats it
    instances: tuple[InstanceView, ...]
    replicas: int = 1  # replicas known alive on the store, this one included
    version: int = 0  # changes whenever a breaker of `instances` may have changed
    # (caller service, method, action) -> fleet decisions taken here (fleet.FleetDecider).
    fleet_decisions: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    # (caller service, method) -> the open period of the fleet decision in force (the store's).
    fleet_decisions_active: Mapping[tuple[str, str], int] = field(default_factory=dict)
    decider_leading: bool = True  # whether this replica decided at its latest look


class InstanceTable:
    """Live instances keyed by id; an instance that stops reporting expires after `report_ttl`."""

    def __init__(
        self,
        *,
        report_ttl: float,
        limits: Limits,
        publish: Callable[[pb.Event], None],
    ) -> None:
        self._report_ttl = report_ttl
        self._limits = limits
        self._publish = publish
        self._instances: dict[str, Instance] = {}
        self._per_service: dict[str, int] = {}  # live instances per service
        self.reported_breakers = 0  # breakers held across every live instance
        # instance id -> (key, service, open watch streams): a watching agent keeps its claim
        # even while its reports are late.
        self._watch_claims: dict[str, tuple[str, str, int]] = {}
        self._last_sweep = -math.inf
        self.reports_received = 0
        self.nacks_received = 0
        # Instances other replicas serve, by (replica id, instance id): kept by replica_mesh.
        self.remote: dict[tuple[str, str], Instance] = {}
        # What changed since replica_mesh last shared it (ids), and what it must share soon.
        self.changed: set[str] = set()
        self.removed: set[str] = set()
        self.on_urgent_change: Callable[[], None] = _nothing
        self.version = 0  # moves on with every change of what the table holds

    def acknowledged(self, instance_id: str, revision: int) -> bool:
        """True once the instance has applied `revision` (or a later one) or rejected it."""
        instance = self._instances.get(instance_id)
        if instance is None:
            return False
        nack = instance.nack
        return instance.applied_revision >= revision or (
            nack is not None and nack.revision >= revision
        )

    def expire(self, now: float, *, throttled: bool = False) -> None:
        """Drop the instances whose last report is older than the report TTL."""
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
            instance = self._drop(key)
            logger.info("instance %s of %s stopped reporting", key, instance.service)
        if expired:
            self.version += 1
            self.on_urgent_change()

    def local(self) -> Mapping[str, Instance]:
        """The instances reporting to this replica, by id (do not change the mapping)."""
        return self._instances

    def live(self, now: float) -> list[Instance]:
        """Every live instance, this replica's and the other replicas', sorted by id.

        An instance reporting here hides any other replica's record of it (it failed over);
        of two other replicas' records, the fresher one is shown.
        """
        live = dict(self._instances)
        for instance in self.remote.values():
            if now - instance.last_seen > self._report_ttl:
                continue  # its replica stopped vouching for it
            held = live.get(instance.instance_id)
            if held is None or (held.replica and held.last_seen < instance.last_seen):
                live[instance.instance_id] = instance
        return [live[key] for key in sorted(live)]

    def _drop(self, instance_id: str) -> Instance:
        """Take a local instance out of the table (the replicas learn it is gone); returns it."""
        instance = self._instances.pop(instance_id)
        self.reported_breakers -= len(instance.breakers)
        left = self._per_service[instance.service] - 1
        if left:
            self._per_service[instance.service] = left
        else:
            del self._per_service[instance.service]
        self.changed.discard(instance_id)
        self.removed.add(instance_id)
        return instance

    def _check_bounds(self, request: pb.ReportStateRequest, instance: Instance | None) -> None:
        """Refuse (RESOURCE_EXHAUSTED) a report that would pass a bound; nothing is applied."""
        limits = self._limits
        previous = {} if instance is None else instance.breakers
        names = {breaker.name for breaker in request.breakers}
        held = len(names) if request.full else len(previous) + len(names - previous.keys())
        if held > limits.max_breakers_per_instance:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"breakers: this instance would hold {held} breakers, over"
                f" limits.max_breakers_per_instance ({limits.max_breakers_per_instance})",
            )
        if self.reported_breakers + held - len(previous) > limits.max_reported_breakers:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "breakers: this control plane holds limits.max_reported_breakers"
                f" ({limits.max_reported_breakers}) reported breakers; try another replica",
            )
        if instance is None:
            count = self._per_service.get(request.service, 0)
            if count >= limits.max_instances_per_service:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"instance_id: service {request.service} has"
                    f" limits.max_instances_per_service ({limits.max_instances_per_service})"
                    " live instances",
                )

    def check_claim(self, instance_id: str, key: str, service: str) -> None:
        """Refuse (PERMISSION_DENIED) a caller speaking for an instance another process holds.

        An id belongs to the process whose watch stream holds it while that stream lives; after
        that, to a new process (a restart with the same id takes over at once). An instance that
        never watched here belongs to its reporter until its reports stop for `report_ttl`.
        """
        instance = self._instances.get(instance_id)
        claim = self._watch_claims.get(instance_id)
        owner: tuple[str, str] | None = None
        if claim is not None:
            owner = (claim[0], claim[1])
        elif instance is not None and not (instance.linked and instance.key != key):
            owner = (instance.key, instance.service)
        if owner is None:
            return
        if not hmac.compare_digest(owner[0], key):
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"instance_id: {instance_id!r} belongs to another live agent process "
                "(a different instance_key); pick a unique instance id",
            )
        if owner[1] != service:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"service: instance {instance_id!r} reports as {owner[1]!r}; an instance "
                "cannot change service (restart it with a new instance id)",
            )

    def watch(self, instance_id: str, key: str, service: str) -> Callable[[], None]:
        """Hold `instance_id` for this watch stream; returns the release to call when it ends."""
        self.check_claim(instance_id, key, service)
        _, _, streams = self._watch_claims.get(instance_id, (key, service, 0))
        self._watch_claims[instance_id] = (key, service, streams + 1)
        instance = self._instances.get(instance_id)
        if instance is not None and instance.key == key:
            instance.linked = True

        def release() -> None:
            held = self._watch_claims.get(instance_id)
            if held is None:
                return
            if held[2] <= 1:
                del self._watch_claims[instance_id]
            else:
                self._watch_claims[instance_id] = (held[0], held[1], held[2] - 1)

        return release

    def record(self, request: pb.ReportStateRequest, now: float) -> tuple[int, bool]:
        """Apply one validated report; publish its new transitions and a NACK that is new.

        Returns the newest transition sequence of this instance published (the report's ack),
        and whether the instance should send every breaker's config again (it is new here and
        left some out).
        """
        self.expire(now, throttled=True)
        self.check_claim(request.instance_id, request.instance_key, request.service)
        instance = self._instances.get(request.instance_id)
        if instance is not None and instance.key != request.instance_key:
            # check_claim let a new process take the id over: what the old one said is void.
            logger.info(
                "instance %s of %s: a new agent process took it over (restarted)",
                instance.instance_id,
                instance.service,
            )
            self._drop(request.instance_id)
            self.version += 1
            instance = None
        _check_reported_configs(request, instance)
        self._check_bounds(request, instance)
        new = instance is None
        if instance is None or _changes(instance, request):
            self.changed.add(request.instance_id)
            self.version += 1
        if instance is None:
            if len(self._instances) >= self._limits.max_instances:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"instance_id: more than {self._limits.max_instances} live instances",
                )
            claim = self._watch_claims.get(request.instance_id)
            instance = Instance(
                request.instance_id,
                request.service,
                now,
                key=request.instance_key,
                linked=claim is not None and claim[0] == request.instance_key,
            )
            self._instances[request.instance_id] = instance
            self._per_service[instance.service] = self._per_service.get(instance.service, 0) + 1
            self.removed.discard(request.instance_id)
            self.on_urgent_change()
        instance.last_seen = now
        instance.applied_revision = request.applied_revision
        instance.applied_store_id = request.applied_store_id
        instance.store_mismatch = (
            request.store_mismatch if request.HasField("store_mismatch") else None
        )
        # An agent with an instance key sends its transitions as a log: publish each one once.
        # Without one (an older agent) transitions are derived by diffing its reports.
        logged = bool(request.instance_key)
        for record in request.transition_log:
            if record.sequence <= instance.last_sequence:
                continue  # resent: published already
            instance.last_sequence = record.sequence
            self._publish(
                pb.Event(
                    transition=pb.BreakerTransition(
                        instance_id=instance.instance_id,
                        service=instance.service,
                        name=record.name,
                        from_state=record.from_state,
                        to_state=record.to_state,
                        sequence=record.sequence,
                    )
                )
            )
        previous = instance.breakers
        current = {} if request.full else dict(previous)
        configs = dict(instance.configs)
        closed = pb.BREAKER_STATE_CLOSED  # a breaker first seen CLOSED is no transition
        for breaker in request.breakers:
            name, state = breaker.name, breaker.state
            old = previous.get(name)
            old_state = pb.BREAKER_STATE_UNSPECIFIED if old is None else old.state
            if not logged and old_state != state and (old is not None or state != closed):
                self._publish(
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
            if breaker.HasField("config"):
                configs[name] = breaker.config
        self.reported_breakers += len(current) - len(previous)
        instance.breakers = current  # never mutated once set: views hand it out
        instance.configs = (
            {name: config for name, config in configs.items() if name in current}
            if request.full
            else configs
        )
        if request.HasField("nack"):
            if instance.nack != request.nack:
                self.nacks_received += 1
                self._publish(
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
        self.reports_received += 1
        missing = any(not breaker.HasField("config") for breaker in request.breakers)
        return instance.last_sequence, new and missing

    def list_breakers(
        self, request: pb.ListBreakersRequest, now: float, response: pb.ListBreakersResponse
    ) -> None:
        """Fill `response` with the live instances and breaker groups that match `request`."""
        self.expire(now)
        groups: dict[tuple[str, str], pb.BreakerGroup] = {}
        for instance in self.live(now):
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
                    applied_store_id=instance.applied_store_id,
                    store_mismatch=instance.store_mismatch,
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
                state_field = STATE_FIELDS[snapshot.state]
                setattr(group, state_field, getattr(group, state_field) + 1)
                group.failure_rate += snapshot.failure_rate
                group.slow_call_rate += snapshot.slow_call_rate
                group.total += snapshot.total
                group.failed += snapshot.failed
                group.rejected += snapshot.rejected
                group.throttled += snapshot.throttled
                if snapshot.HasField("concurrency_limit"):
                    group.concurrency_limit += snapshot.concurrency_limit
                config = instance.configs.get(name)
                if config is not None and config.mode == pb.MODE_SHADOW:
                    group.shadow += 1
                if request.include_instances:
                    item = pb.InstanceBreaker(
                        instance_id=instance.instance_id,
                        applied_revision=instance.applied_revision,
                        snapshot=snapshot,
                        report_age=now - instance.last_seen,
                    )
                    if instance.ages_as_of is not None:
                        _age(item.snapshot, instance.last_seen - instance.ages_as_of)
                    if config is not None:
                        item.snapshot.config.CopyFrom(config)
                    group.instance_breakers.append(item)
        wanted = _FILTERED_STATES.get(request.state, (STATE_FIELDS.get(request.state, ""),))
        for key in sorted(groups):
            group = groups[key]
            if request.state and not any(getattr(group, field) for field in wanted):
                continue
            group.failure_rate /= group.instances
            group.slow_call_rate /= group.instances
            response.groups.append(group)

    def views(self, now: float) -> tuple[InstanceView, ...]:
        """Every live instance, other replicas' too (expired ones are swept first), sorted by id."""
        self.expire(now)
        return tuple(
            InstanceView(
                instance_id=instance.instance_id,
                service=instance.service,
                report_age=now - instance.last_seen,
                applied_revision=instance.applied_revision,
                nacking=instance.nack is not None,
                breakers=instance.breakers,
                replica=instance.replica,
            )
            for instance in self.live(now)
        )


def _changes(instance: Instance, request: pb.ReportStateRequest) -> bool:
    """Whether a report tells anything new of an instance beyond the time that passed.

    A breaker through which no call went, whose state and window stayed the same, is the same:
    only its ages moved (state_age, open_remaining), and those are not worth sharing.
    """
    if (
        instance.applied_revision != request.applied_revision
        or instance.applied_store_id != request.applied_store_id
        or (request.nack if request.HasField("nack") else None) != instance.nack
        or (request.store_mismatch if request.HasField("store_mismatch") else None)
        != instance.store_mismatch
        or request.transition_log
        or (request.full and len(request.breakers) != len(instance.breakers))
    ):
        return True
    previous = instance.breakers
    for breaker in request.breakers:
        old = previous.get(breaker.name)
        if (
            old is None
            or breaker.HasField("config")
            or old.state != breaker.state
            or old.total != breaker.total
            or old.rejected != breaker.rejected
            or old.throttled != breaker.throttled
            or old.window_calls != breaker.window_calls
            or old.failure_rate != breaker.failure_rate
        ):
            return True
    return False


def _age(snapshot: pb.BreakerSnapshot, seconds: float) -> None:
    """Tell a snapshot's ages `seconds` later (its state unchanged meanwhile)."""
    if seconds <= 0:
        return
    snapshot.state_age += seconds
    if snapshot.HasField("open_remaining"):
        snapshot.open_remaining = max(0.0, snapshot.open_remaining - seconds)


def _nothing() -> None:
    """No one to tell."""


def _check_reported_configs(request: pb.ReportStateRequest, instance: Instance | None) -> None:
    """Refuse a report whose effective configs do not parse (only those that changed are read).

    A report's configs reach operators' terminals through `status --instances`: they are read
    as strictly as a policy, but a config equal to the one already held is not read again.
    """
    previous = instance.configs if instance is not None else {}
    for index, breaker in enumerate(request.breakers):
        if not breaker.HasField("config"):
            continue
        if previous.get(breaker.name) == breaker.config:
            continue
        convert.config_from_proto(breaker.config, f"breakers[{index}].config")
