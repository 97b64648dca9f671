"""Quorum open: how much of a caller service's fleet has a method open, and who may probe.

Pure functions over the live instances (an instance whose reports stopped has already expired
from the view, so it never counts): the decider in `fleet.py` acts on what they find.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshbreaker._names import split_breaker_name
from meshbreaker.v1 import control_plane_pb2 as pb

# The states in which an instance's breaker keeps calls off the dependency by its own decision.
OPEN_STATES = frozenset({pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN})


class LiveInstance(Protocol):
    """What the quorum needs of a live instance (instances.InstanceView has it)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def service(self) -> str: ...

    @property
    def breakers(self) -> Mapping[str, pb.BreakerSnapshot]: ...


@dataclass
class FleetCount:
    """One method across one caller service's live instances."""

    service: str
    method: str
    live: int  # live instances of the service
    # Instance id -> the state of its breaker for the method (the most open one, if several).
    states: dict[str, int] = field(default_factory=dict)  # pb.BreakerState values

    @property
    def open(self) -> list[str]:
        """The instances whose breaker for the method is OPEN or HALF_OPEN, sorted."""
        return sorted(i for i, state in self.states.items() if state in OPEN_STATES)

    def reached(self, quorum: float, min_instances: int) -> bool:
        """True when at least `quorum` of the live instances, and `min_instances`, have it open."""
        opened = len(self.open)
        # A hair below the exact fraction still counts: 0.3 * 10 is 3.0000000000000004.
        return opened >= min_instances and opened >= math.ceil(quorum * self.live - 1e-9)

    def reason(self, quorum: float, min_instances: int) -> str:
        """Why the fleet opened, for operators."""
        return (
            f"quorum: {len(self.open)} of {self.live} live instances of {self.service} have it"
            f" open (fleet_open_quorum {quorum:g}, fleet_min_instances {min_instances})"
        )


_RANK: dict[int, int] = {
    pb.BREAKER_STATE_OPEN: 3,
    pb.BREAKER_STATE_HALF_OPEN: 2,
    pb.BREAKER_STATE_FORCED_OPEN: 1,
}


def count_fleet(instances: Iterable[LiveInstance]) -> dict[tuple[str, str], FleetCount]:
    """Every (caller service, method) some live instance has a breaker for, counted."""
    live: dict[str, int] = {}
    counts: dict[tuple[str, str], FleetCount] = {}
    for instance in instances:
        live[instance.service] = live.get(instance.service, 0) + 1
        for name, snapshot in instance.breakers.items():
            method = split_breaker_name(name)[2]
            if not method.startswith("/"):
                continue  # not a gRPC method (an HTTP origin, an overflow breaker)
            key = (instance.service, method)
            count = counts.get(key)
            if count is None:
                count = counts[key] = FleetCount(instance.service, method, 0)
            seen = count.states.get(instance.instance_id)
            state = int(snapshot.state)
            if seen is None or _RANK.get(state, 0) > _RANK.get(seen, 0):
                count.states[instance.instance_id] = state
    for count in counts.values():
        count.live = live[count.service]
    return counts


def choose_prober(count: FleetCount | None, previous: Sequence[str] = ()) -> list[str]:
    """The instance that probes the next open period: the fleet takes turns, in id order.

    Only instances that have a breaker for the method are candidates (they call it); the turn
    passes to the one after the previous prober, so a prober that sent no probe (no traffic)
    or saw it fail is not asked again while another remains.
    """
    if count is None or not count.states:
        return []
    candidates = sorted(count.states)
    last = max(previous, default=None)
    following = [candidate for candidate in candidates if last is None or candidate > last]
    return [(following or candidates)[0]]
