"""Staged policy rollout: which instances run a policy's canary config, and how both halves fare.

A policy with a canary applies `canary.config` on a deterministic fraction of the matching
instances and its own config on the rest. Membership hashes the policy id with the instance id,
so it is the same on every agent and replica, and across restarts; raising the percentage only
adds instances. The control plane compares both halves (failure rate, rejections, shadow
rejections) for `status`, and its decider rolls a canary back on its own when the canary's
rejection rate exceeds the rest's by `max_rejection_margin`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from meshbreaker._names import selectors_for
from meshbreaker.control.quorum import LiveInstance
from meshbreaker.v1 import control_plane_pb2 as pb

# Calls both halves need before an automatic rollback compares them.
MIN_CALLS_TO_COMPARE = 20


def in_canary(policy_id: str, instance_id: str, percent: float) -> bool:
    """Whether `instance_id` runs the canary of policy `policy_id` at `percent` (0..100)."""
    digest = hashlib.sha256(f"{policy_id}\x1f{instance_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < round(percent * 100)


def covers(selector: pb.Selector, service: str, breaker: str) -> bool:
    """Whether a policy with `selector` applies to breaker `breaker` of caller `service`."""
    if selector.caller and selector.caller != service:
        return False
    key = selector.method or selector.service
    return not key or key in selectors_for(breaker)


@dataclass
class _Half:
    instances: int = 0
    total: int = 0
    failed: int = 0
    rejected: int = 0
    shadow_rejected: int = 0

    def add(self, snapshot: pb.BreakerSnapshot) -> None:
        self.total += snapshot.total
        self.failed += snapshot.failed
        self.rejected += snapshot.rejected
        self.shadow_rejected += snapshot.shadow_rejected

    def proto(self) -> pb.CanaryHalf:
        return pb.CanaryHalf(
            instances=self.instances,
            total=self.total,
            failed=self.failed,
            rejected=self.rejected,
            shadow_rejected=self.shadow_rejected,
        )


def rejection_rate(half: pb.CanaryHalf) -> float:
    """Rejected (and shadow-rejected) calls over the calls tried."""
    refused = half.rejected + half.shadow_rejected
    tried = half.total + half.rejected
    return refused / tried if tried else 0.0


def side_by_side(policy: pb.Policy, instances: Iterable[LiveInstance]) -> pb.CanaryStatus:
    """The canary and the rest of `policy`'s instances, their breakers' counters summed."""
    canary, rest = _Half(), _Half()
    for instance in instances:
        matched = [
            snapshot
            for name, snapshot in instance.breakers.items()
            if covers(policy.selector, instance.service, name)
        ]
        if not matched:
            continue
        half = canary if in_canary(policy.id, instance.instance_id, policy.canary.percent) else rest
        half.instances += 1
        for snapshot in matched:
            half.add(snapshot)
    return pb.CanaryStatus(
        policy_id=policy.id,
        percent=policy.canary.percent,
        canary=canary.proto(),
        rest=rest.proto(),
    )


def should_roll_back(status: pb.CanaryStatus, margin: float) -> bool:
    """True when the canary refuses more calls than the rest by more than `margin`."""
    if status.canary.total + status.canary.rejected < MIN_CALLS_TO_COMPARE:
        return False
    if status.rest.total + status.rest.rejected < MIN_CALLS_TO_COMPARE:
        return False
    return rejection_rate(status.canary) - rejection_rate(status.rest) > margin
