"""The instance table: what the control plane knows of every reporting process, and views of it.

Reports, reads and the /metrics view all run on the server's event loop, so the table needs no
lock; the breaker maps it hands out are never mutated afterwards (a report installs a new one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc

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
        self._last_sweep = -math.inf
        self.reports_received = 0
        self.nacks_received = 0

    def __len__(self) -> int:
        return len(self._instances)

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
            instance = self._instances.pop(key)
            logger.info("instance %s of %s stopped reporting", key, instance.service)

    def record(self, request: pb.ReportStateRequest, now: float) -> None:
        """Apply one validated report; publish its transitions and a NACK that is new."""
        self.expire(now, throttled=True)
        instance = self._instances.get(request.instance_id)
        if instance is None:
            if len(self._instances) >= self._limits.max_instances:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"instance_id: more than {self._limits.max_instances} live instances",
                )
            instance = Instance(request.instance_id, request.service, now)
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
        instance.breakers = current  # never mutated once set: views hand it out
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

    def list_breakers(
        self, request: pb.ListBreakersRequest, now: float, response: pb.ListBreakersResponse
    ) -> None:
        """Fill `response` with the live instances and breaker groups that match `request`."""
        self.expire(now)
        groups: dict[tuple[str, str], pb.BreakerGroup] = {}
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
                state_field = STATE_FIELDS[snapshot.state]
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
        wanted = _FILTERED_STATES.get(request.state, (STATE_FIELDS.get(request.state, ""),))
        for key in sorted(groups):
            group = groups[key]
            if request.state and not any(getattr(group, field) for field in wanted):
                continue
            group.failure_rate /= group.instances
            group.slow_call_rate /= group.instances
            response.groups.append(group)

    def views(self, now: float) -> tuple[InstanceView, ...]:
        """Every live instance (expired ones are swept first), sorted by id."""
        self.expire(now)
        return tuple(
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
