"""Quorum open: how much of a caller service's fleet has a method open, and who may probe.

`QuorumCounter` keeps, per (caller service, method), each live instance's state and how many
have it open, updated from the instances that changed since it last looked: an instance whose
breakers were replaced (it reported), that joined, or that is gone (its presence expired, so it
never counts). The decider in `fleet.py` acts on what it finds.
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


def method_states(breakers: Mapping[str, pb.BreakerSnapshot]) -> dict[str, int]:
    """Each gRPC method's state on one instance (the most open one, if several targets)."""
    states: dict[str, int] = {}
    for name, snapshot in breakers.items():
        method = split_breaker_name(name)[2]
        if not method.startswith("/"):
            continue  # not a gRPC method (an HTTP origin, an overflow breaker)
        seen = states.get(method)
        state = int(snapshot.state)
        if seen is None or _RANK.get(state, 0) > _RANK.get(seen, 0):
            states[method] = state
    return states


@dataclass
class _Counted:
    """What one instance adds to the counts, and the breakers it was read from."""

    service: str
    breakers: Mapping[str, pb.BreakerSnapshot]
    states: dict[str, int]  # method -> state


class QuorumCounter:
    """Per (caller service, method): every live instance's state, and how many have it open.

    `update` costs one look per live instance plus the breakers of those that changed, not
    every breaker of every instance. It relies on the instance table's invariant that an
    instance's breaker mapping is replaced by each report, never changed in place, so the same
    mapping object means nothing changed.
    """

    def __init__(self) -> None:
        self._counted: dict[str, _Counted] = {}  # instance id -> what it adds
        self._live: dict[str, int] = {}  # service -> live instances
        self._states: dict[tuple[str, str], dict[str, int]] = {}  # key -> instance -> state
        self._open: dict[tuple[str, str], int] = {}  # key -> instances with it open (> 0)

    def update(self, instances: Iterable[LiveInstance]) -> None:
        """Bring the counts to `instances`, the live instances now."""
        present: set[str] = set()
        for instance in instances:
            instance_id = instance.instance_id
            present.add(instance_id)
            counted = self._counted.get(instance_id)
            if counted is not None and counted.breakers is instance.breakers:
                continue  # no report since the last look
            if counted is not None:
                self._remove(instance_id, counted)
            self._add(instance_id, instance.service, instance.breakers)
        for gone in [key for key in self._counted if key not in present]:
            self._remove(gone, self._counted[gone])

    def open_keys(self) -> list[tuple[str, str]]:
        """The (service, method) pairs some live instance has open, sorted."""
        return sorted(self._open)

    def count(self, service: str, method: str) -> FleetCount | None:
        """The method across the service's live instances (None when none has its breaker)."""
        states = self._states.get((service, method))
        if states is None:
            return None
        return FleetCount(service, method, self._live[service], dict(states))

    def counts(self) -> dict[tuple[str, str], FleetCount]:
        """Every (service, method) counted (for tests and tools; the decider asks per key)."""
        return {
            key: FleetCount(key[0], key[1], self._live[key[0]], dict(states))
            for key, states in self._states.items()
        }

    def _add(
        self, instance_id: str, service: str, breakers: Mapping[str, pb.BreakerSnapshot]
    ) -> None:
        states = method_states(breakers)
        self._counted[instance_id] = _Counted(service, breakers, states)
        self._live[service] = self._live.get(service, 0) + 1
        for method, state in states.items():
            key = (service, method)
            self._states.setdefault(key, {})[instance_id] = state
            if state in OPEN_STATES:
                self._open[key] = self._open.get(key, 0) + 1

    def _remove(self, instance_id: str, counted: _Counted) -> None:
        del self._counted[instance_id]
        service = counted.service
        left = self._live[service] - 1
        if left:
            self._live[service] = left
        else:
            del self._live[service]
        for method, state in counted.states.items():
            key = (service, method)
            holders = self._states[key]
            del holders[instance_id]
            if not holders:
                del self._states[key]
            if state in OPEN_STATES:
                opened = self._open[key] - 1
                if opened:
                    self._open[key] = opened
                else:
                    del self._open[key]


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
