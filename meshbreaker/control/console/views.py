"""What the console's page reads: control-plane protos turned into plain JSON-ready dicts.

Every string here came from a remote process (breaker names, instance ids, NACK reasons, policy
descriptions); the page only ever puts them into the DOM as text. Numbers stay numbers (the proto
JSON mapping would send int64 as strings).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from meshbreaker.control import convert
from meshbreaker.v1 import control_plane_pb2 as pb

_STATE_PREFIX = "BREAKER_STATE_"


def state_name(state: int) -> str:
    """ "OPEN", "FORCED_CLOSED"...; "" for an unset state (a breaker first seen)."""
    if state == pb.BREAKER_STATE_UNSPECIFIED:
        return ""
    return pb.BreakerState.Name(state).removeprefix(_STATE_PREFIX)  # type: ignore[arg-type]


def _histogram(snapshot: pb.BreakerSnapshot) -> dict[str, Any] | None:
    if not snapshot.HasField("duration_histogram"):
        return None
    histogram = snapshot.duration_histogram
    return {"bounds": list(histogram.bounds), "counts": list(histogram.counts)}


def _member(item: pb.InstanceBreaker) -> dict[str, Any]:
    """One instance's view of one breaker."""
    snapshot = item.snapshot
    config = snapshot.config if snapshot.HasField("config") else None
    return {
        "instance": item.instance_id,
        "state": state_name(snapshot.state),
        "state_age": snapshot.state_age,
        "open_remaining": (
            snapshot.open_remaining if snapshot.HasField("open_remaining") else None
        ),
        "report_age": item.report_age,
        "applied_revision": item.applied_revision,
        "failure_rate": snapshot.failure_rate,
        "slow_call_rate": snapshot.slow_call_rate,
        "failure_rate_threshold": (
            config.failure_rate_threshold
            if config is not None and config.HasField("failure_rate_threshold")
            else None
        ),
        "slow_call_rate_threshold": (
            config.slow_call_rate_threshold
            if config is not None
            and config.HasField("slow_call_rate_threshold")
            and not config.slow_calls_disabled
            else None
        ),
        "window_calls": snapshot.window_calls,
        "minimum_calls": (
            config.minimum_calls
            if config is not None and config.HasField("minimum_calls")
            else None
        ),
        "total": snapshot.total,
        "failed": snapshot.failed,
        "rejected": snapshot.rejected,
        "throttled": snapshot.throttled,
        "shadow": config is not None and config.mode == pb.MODE_SHADOW,
        "histogram": _histogram(snapshot),
    }


def override(policy: pb.Policy) -> dict[str, Any] | None:
    """A policy's override as the page shows it: state, expiry (unix seconds), reason, and the
    fleet decision it carries (None for an operator's override)."""
    word = _override_word(policy.override)
    if word is None:
        return None
    return {
        "state": word,
        "expires_at": (
            policy.override_expires_at.ToMilliseconds() / 1000.0
            if policy.HasField("override_expires_at")
            else None
        ),
        "reason": policy.override_reason,
        "fleet": fleet_decision(policy.fleet) if policy.HasField("fleet") else None,
    }


def fleet_decision(decision: pb.FleetDecision) -> dict[str, Any]:
    """The decider's open period, its probers and when their probes may start (unix seconds)."""
    return {
        "period": decision.period,
        "probers": list(decision.probers),
        "open_until": decision.open_until.ToMilliseconds() / 1000.0,
    }


def mesh(
    response: pb.ListBreakersResponse, series: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, Any]:
    """Every breaker group with its instances and call history, and every live instance."""
    groups = []
    for group in response.groups:
        groups.append(
            {
                "service": group.service,
                "name": group.name,
                "instances": group.instances,
                "states": {
                    "CLOSED": group.closed,
                    "OPEN": group.open,
                    "HALF_OPEN": group.half_open,
                    "FORCED_OPEN": group.forced_open,
                    "FORCED_CLOSED": group.forced_closed,
                },
                "failure_rate": group.failure_rate,
                "slow_call_rate": group.slow_call_rate,
                "total": group.total,
                "failed": group.failed,
                "rejected": group.rejected,
                "throttled": group.throttled,
                "shadow": group.shadow,
                "members": [_member(item) for item in group.instance_breakers],
                "history": series.get((group.service, group.name)),
            }
        )
    instances = []
    for instance in response.instances:
        mismatch = instance.store_mismatch if instance.HasField("store_mismatch") else None
        instances.append(
            {
                "instance": instance.instance_id,
                "service": instance.service,
                "applied_revision": instance.applied_revision,
                "report_age": instance.report_age,
                "breakers": instance.breakers,
                "nack": (
                    {"revision": instance.nack.revision, "reason": instance.nack.reason}
                    if instance.HasField("nack")
                    else None
                ),
                "store_mismatch": None if mismatch is None else mismatch.reason,
            }
        )
    overrides = [
        {
            "policy_id": item.policy.id,
            "caller": item.policy.selector.caller,
            "service": item.policy.selector.service,
            "method": item.policy.selector.method,
            "remaining": item.remaining if item.HasField("remaining") else None,
            **(override(item.policy) or {}),
        }
        for item in response.overrides
    ]
    return {
        "revision": response.revision,
        "store_id": response.store_id,
        "groups": groups,
        "instances": instances,
        "overrides": overrides,
    }


def event(message: pb.Event) -> dict[str, Any]:
    """One event of the WatchEvents stream; kinds this version does not know come as `detail`."""
    kind = message.WhichOneof("kind") or ""
    item: dict[str, Any] = {
        "sequence": message.sequence,
        "time": message.time.ToMilliseconds() / 1000.0,
        "kind": kind,
    }
    if kind == "transition":
        transition = message.transition
        item.update(
            service=transition.service,
            instance=transition.instance_id,
            name=transition.name,
            from_state=state_name(transition.from_state),
            to_state=state_name(transition.to_state),
        )
    elif kind == "policy_change":
        change = message.policy_change
        after = change.after if change.HasField("after") else None
        ended = change.before.HasField("fleet") and (after is None or not after.HasField("fleet"))
        item.update(
            policy_id=change.policy_id,
            change="delete" if after is None else "put",
            revision=change.revision,
            actor=change.actor,
            override=override(after) if after is not None else None,
            description=after.description if after is not None else "",
            fleet_ended=ended,  # the decider closed the method again (or an operator took over)
        )
    elif kind == "nack":
        nack = message.nack
        item.update(
            service=nack.service,
            instance=nack.instance_id,
            revision=nack.nack.revision,
            reason=nack.nack.reason,
        )
    elif kind:
        # A newer kind (fleet decisions...): its fields, shown as text by the page.
        item["detail"] = json_format.MessageToDict(
            getattr(message, kind), preserving_proto_field_name=True
        )
    return item


def _override_word(override: int) -> str | None:
    state = convert.override_from_proto(override)
    return None if state is None else state.value
