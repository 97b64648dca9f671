"""The fleet phase: three gateway instances, and one service they call dies and recovers.

Twice, with the same breaker on the gateways' SendTransferNotification: first each instance
decides alone, then with `fleet_open_quorum`, so the control plane opens the method on the whole
fleet once two of the three have it open and lets one instance probe per open period. The
notification service counts what reaches it while it is dead (`ChaosStats.faulted_at`, arrival
times on this host's wall clock), and those are the probes:

* without coordination, every call after each instance's breaker had opened is one of its
  probes, and an open period is one of each instance's own (its `times_opened`, as reported);
* with coordination, a probe belongs to the fleet period in force when it arrived: the decision's
  `open_until` of period k up to that of period k + 1, read back from the control plane's events
  (each decision is a policy write), so only periods whose end is known are counted, exactly;
  and only those that began once every instance was seen holding the decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc

from examples.banking.gateway import NOTIFY_METHOD
from examples.banking.invariants import Check
from examples.banking.policies import applies, method_policy
from meshbreaker.config import ConfigLayer
from meshbreaker.control import convert
from meshbreaker.v1 import control_plane_pb2 as pb

if TYPE_CHECKING:
    from examples.banking.demo import Demo, PhaseResult

FLEET_POLICY = "demo-fleet"
HALF_OPEN_MAX_CALLS = 2
OPEN_DURATION = 3.0  # longer than a decision takes to reach every instance, even under load
PERIODS = 2  # open periods each half lets the dead service be probed in
# The gateways' breaker for SendTransferNotification in both halves: every open period as long
# (no backoff, no jitter), so the halves compare period for period; two probes at a time; and a
# call is never slow (its 0.3 s deadline comes first), so only the dead service reopens it.
FLEET_BREAKER: ConfigLayer = {
    "open_duration": OPEN_DURATION,
    "open_duration_max": OPEN_DURATION,
    "backoff_multiplier": 1.0,
    "open_jitter": 0.0,
    "half_open_max_calls": HALF_OPEN_MAX_CALLS,
    "half_open_success_threshold": 1,
    "slow_call_duration": 1.0,
}
# The second half: two of the three instances open decide for all of them.
WITH_QUORUM: ConfigLayer = {**FLEET_BREAKER, "fleet_open_quorum": 0.5, "fleet_min_instances": 2}
# The dying service refuses every SendTransferNotification, 0.2 s after it arrived: a busy
# caller's probes overlap, so an instance alone sends half_open_max_calls of them per period.
OUTAGE = {"outage": True, "added_latency": 0.2, "methods": ["SendTransferNotification"]}
FLEET_CHECK = "the fleet probed a dead service at most half_open_max_calls times per open period"

_REFUSING = frozenset(
    {pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN, pb.BREAKER_STATE_FORCED_OPEN}
)
_WAIT = 60.0  # a hold's longest: generous, it ends as soon as what it waits for is seen


def fleet(demo: Demo, phase: PhaseResult) -> None:
    """Three gateway instances; the notification service dies, without coordination, then with."""
    instances = demo.start_fleet()
    demo.fleet_load(spread=True)
    phase.marks["fleet_instances"] = instances
    phase.marks["half_open_max_calls"] = HALF_OPEN_MAX_CALLS
    try:
        if _apply(demo, phase, FLEET_BREAKER, instances):
            _without(demo, phase, instances)
        if _apply(demo, phase, WITH_QUORUM, instances):
            _with(demo, phase, instances)
    finally:
        demo.mesh.set_chaos("notification")
        demo.fleet_load(spread=False)
        demo.mesh.admin("DeletePolicy", pb.DeletePolicyRequest(id=FLEET_POLICY))


def _without(demo: Demo, phase: PhaseResult, instances: int) -> None:
    """Each instance opens and probes on its own: instances x half_open_max_calls per period."""
    before = _opened(demo)
    demo.mesh.set_chaos("notification", **OUTAGE)
    demo.hold(
        phase, seconds=0, until=lambda: _all_opened_since(demo, before, instances), longest=_WAIT
    )
    # In this order: a probe counted (one that arrived after `since`) ended its period after
    # `start` was read, so that period is counted too.
    start = _opened(demo)
    since = time.time()
    demo.hold(
        phase,
        seconds=0,
        until=lambda: _all_opened_since(demo, start, instances, PERIODS),
        longest=_WAIT,
    )
    demo.mesh.set_chaos("notification")
    demo.hold(phase, seconds=0, until=lambda: _all_closed(demo, instances), longest=_WAIT)
    end = _opened(demo)
    faulted = demo.mesh.chaos_stats("notification").faulted_at
    phase.marks["probes_without"] = sum(arrived > since for arrived in faulted)
    phase.marks["open_periods_without"] = sum(end.get(i, 0) - start[i] for i in start)


def _with(demo: Demo, phase: PhaseResult, instances: int) -> None:
    """The control plane opens the fleet by quorum and lets one instance probe per period."""
    outage = time.time()
    demo.mesh.set_chaos("notification", **OUTAGE)
    decided: list[pb.Policy] = []

    def everywhere() -> bool:
        decision = _decision(demo)
        if decision is None:
            return False
        states = _instances(demo)
        refusing = [
            item
            for item in states.values()
            if item.snapshot.state in _REFUSING and item.applied_revision >= decision.revision
        ]
        if len(states) < instances or len(refusing) < instances:
            return False
        decided.append(decision)
        return True

    demo.hold(phase, seconds=0, until=everywhere, longest=_WAIT)
    # From here every instance holds the decision: a period that begins later gets only the
    # probers' probes (one that began sooner may also get the own probe of an instance the
    # decision had not reached yet: how long a decision takes to arrive is bench/fleet.py's).
    everyone = time.time()
    if decided:
        decision = decided[-1]
        phase.marks["fleet_opened"] = instances
        phase.notes.append(
            f"fleet decision on all {instances} gateway instances: {decision.override_reason};"
            f" probing: {', '.join(decision.fleet.probers)}"
        )
    seen: dict[int, float] = {}  # period -> its open_until, as the decisions are polled

    def probed() -> bool:
        decision = _decision(demo)
        if decision is None:
            return True
        open_until = convert.timestamp_seconds(decision.fleet.open_until, "open_until")
        seen[decision.fleet.period] = open_until
        return len(periods_from(seen, everyone)) >= PERIODS

    demo.hold(phase, seconds=0, until=probed, longest=_WAIT)
    demo.mesh.set_chaos("notification")

    def closed() -> bool:
        return _decision(demo) is None and _all_closed(demo, instances)

    demo.hold(phase, seconds=0, until=closed, longest=_WAIT)
    if closed():
        phase.notes.append("the service recovered: the prober's probe passed, the fleet closed")
    faulted = demo.mesh.chaos_stats("notification").faulted_at
    periods = _periods(demo, since=outage)
    counts = probes_per_period(periods, faulted, everyone)
    left_out = [k for k in sorted(periods) if k + 1 in periods and periods[k] < everyone]
    if left_out:
        phase.notes.append(
            f"periods {', '.join(map(str, left_out))} not counted: they began before every"
            " instance was seen holding the decision"
        )
    phase.marks["periods_with"] = len(counts)
    phase.marks["probes_with"] = sum(counts)
    phase.marks["most_probes_with"] = max(counts, default=0)


def periods_from(open_until: dict[int, float], since: float) -> list[int]:
    """The fleet periods that began at or after `since` and whose end is known."""
    return [k for k in sorted(open_until) if k + 1 in open_until and open_until[k] >= since]


def probes_per_period(
    open_until: dict[int, float], arrivals: Sequence[float], since: float
) -> list[int]:
    """Probes in each period `periods_from` counts: arrivals in [open_until[k], [k + 1])."""
    return [
        sum(open_until[k] <= arrived < open_until[k + 1] for arrived in arrivals)
        for k in periods_from(open_until, since)
    ]


def _apply(demo: Demo, phase: PhaseResult, layer: ConfigLayer, instances: int) -> bool:
    """Put `layer` on the gateways' method; whether every instance reports it within 60 s."""
    description = "fleet phase: the gateways' notification breaker"
    demo.mesh.admin(
        "PutPolicy", method_policy(FLEET_POLICY, "gateway", NOTIFY_METHOD, layer, description)
    )

    def applied() -> bool:
        states = _instances(demo)
        configs = [convert.config_from_proto(item.snapshot.config) for item in states.values()]
        return len(configs) == instances and all(applies(layer, config) for config in configs)

    demo.hold(phase, seconds=0, until=applied, longest=_WAIT)
    if not applied():
        phase.notes.append(f"the fleet policy did not reach every gateway within {_WAIT:.0f} s")
        return False
    return True


def _instances(demo: Demo) -> dict[str, pb.InstanceBreaker]:
    """Each gateway instance's breaker for the method, as last reported ({} if none answers)."""
    request = pb.ListBreakersRequest(
        service="gateway", method=NOTIFY_METHOD, include_instances=True
    )
    try:
        groups = demo.mesh.admin("ListBreakers", request).groups
    except grpc.RpcError:
        return {}
    return {item.instance_id: item for group in groups for item in group.instance_breakers}


def _opened(demo: Demo) -> dict[str, int]:
    return {i: item.snapshot.times_opened for i, item in _instances(demo).items()}


def _all_opened_since(demo: Demo, before: dict[str, int], instances: int, more: int = 1) -> bool:
    """Every instance's breaker is open and has opened `more` times since `before`."""
    states = _instances(demo)
    return len(states) == instances and all(
        item.snapshot.state in _REFUSING and item.snapshot.times_opened >= before.get(i, 0) + more
        for i, item in states.items()
    )


def _all_closed(demo: Demo, instances: int) -> bool:
    states = _instances(demo)
    return len(states) == instances and all(
        item.snapshot.state == pb.BREAKER_STATE_CLOSED for item in states.values()
    )


def _decision(demo: Demo) -> pb.Policy | None:
    """The fleet policy while it holds a fleet decision."""
    try:
        policies = demo.mesh.admin("ListPolicies", pb.ListPoliciesRequest(caller="gateway"))
    except grpc.RpcError:
        return None
    return next(
        (p for p in policies.policies if p.id == FLEET_POLICY and p.HasField("fleet")), None
    )


def _periods(demo: Demo, since: float) -> dict[int, float]:
    """Each fleet period decided after `since`: its open_until, from the policy writes."""
    events = demo.mesh.admin("ListEvents", pb.ListEventsRequest(service="gateway")).events
    periods: dict[int, float] = {}
    for event in events:
        change = event.policy_change
        if event.WhichOneof("kind") != "policy_change" or change.policy_id != FLEET_POLICY:
            continue
        if not change.HasField("after") or not change.after.HasField("fleet"):
            continue
        decision = change.after.fleet
        if convert.timestamp_seconds(decision.decided_at, "decided_at") >= since:
            periods[decision.period] = convert.timestamp_seconds(decision.open_until, "open_until")
    return periods


def per_period(metrics: dict[str, int]) -> tuple[float, float]:
    """Probes per open period (without coordination, with it)."""
    instances = max(metrics.get("fleet_instances", 0), 1)
    periods_without = metrics.get("open_periods_without", 0) / instances
    without = metrics.get("probes_without", 0) / periods_without if periods_without else 0.0
    periods_with = metrics.get("periods_with", 0)
    with_ = metrics.get("probes_with", 0) / periods_with if periods_with else 0.0
    return without, with_


def fleet_check(metrics: dict[str, int]) -> Check:
    """With coordination, no fleet period saw more than half_open_max_calls probes."""
    limit = metrics.get("half_open_max_calls", HALF_OPEN_MAX_CALLS)
    periods, most = metrics.get("periods_with", 0), metrics.get("most_probes_with", 0)
    without, _ = per_period(metrics)
    ok = periods > 0 and most <= limit
    detail = (
        f"at most {most} probes in each of {periods} open periods of "
        f"{metrics.get('fleet_instances', 0)} gateway instances (half_open_max_calls {limit});"
        f" without coordination {without:.1f} per open period"
    )
    if not periods:
        detail = "no fleet period was measured"
    return Check(FLEET_CHECK, ok, detail)


def fleet_table(say: Callable[[str], None], metrics: dict[str, int]) -> None:
    """The probes the dead service got, without coordination and with it, side by side."""
    instances = metrics.get("fleet_instances", 0)
    limit = metrics.get("half_open_max_calls", 0)
    without, with_ = per_period(metrics)
    say(f"  fleet: {instances} gateway instances call one notification service, which died")
    say(
        f"  (UNAVAILABLE after 0.2 s) and recovered, twice; half_open_max_calls {limit}, open"
        f" periods of {OPEN_DURATION:.0f} s;"
    )
    say("  probes counted by the dead service as they arrived")
    say(
        f"    {'SendTransferNotification probes':<40}{'open periods':>13}{'probes':>8}"
        f"{'per period':>12}{'most':>6}"
    )
    periods_without = metrics.get("open_periods_without", 0) / max(instances, 1)
    say(
        f"    {'without coordination (each on its own)':<40}{periods_without:>13.1f}"
        f"{metrics.get('probes_without', 0):>8}{without:>12.1f}{'-':>6}"
    )
    say(
        f"    {'with coordination (fleet decision)':<40}{metrics.get('periods_with', 0):>13}"
        f"{metrics.get('probes_with', 0):>8}{with_:>12.1f}{metrics.get('most_probes_with', 0):>6}"
    )
