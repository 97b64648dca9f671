"""Validation of control-plane requests: everything a remote process sends is checked here first.

A check raises ConfigError (the servicer turns it into INVALID_ARGUMENT, naming the field) or
Refused with its own status code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import grpc

from meshbreaker._names import check_method_selector, check_service_selector, is_method_selector
from meshbreaker.control import convert
from meshbreaker.control.limits import Limits
from meshbreaker.control.store import selector_key
from meshbreaker.control.xds.mapping import check_policy as check_xds_section
from meshbreaker.errors import ConfigError, MeshbreakerError
from meshbreaker.registry import split_breaker_name
from meshbreaker.v1 import control_plane_pb2 as pb

MAX_INSTANCE_ID_LENGTH = 256
MAX_NACK_REASON_LENGTH = 4096
MAX_STORE_ID_LENGTH = 128
_INSTANCE_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")
STATE_FIELDS = {
    pb.BREAKER_STATE_CLOSED: "closed",
    pb.BREAKER_STATE_OPEN: "open",
    pb.BREAKER_STATE_HALF_OPEN: "half_open",
    pb.BREAKER_STATE_FORCED_OPEN: "forced_open",
    pb.BREAKER_STATE_FORCED_CLOSED: "forced_closed",
}


# Lifetime counters a breaker snapshot carries; none is ever negative.
_COUNTERS = (
    "total",
    "successful",
    "failed",
    "ignored",
    "slow",
    "rejected",
    "shadow_rejected",
    "window_calls",
    "consecutive_failures",
    "times_opened",
    "half_open_in_flight",
    "half_open_successes",
)
# Error details echo at most this much of anything a client sent.
MAX_DETAILS = 300


def clip(details: str) -> str:
    """`details` cut to MAX_DETAILS characters: an error never echoes a huge input back."""
    return details if len(details) <= MAX_DETAILS else details[: MAX_DETAILS - 1] + "…"


class Refused(MeshbreakerError):
    """A request is refused with a status code; raised inside handlers, turned into an abort."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = clip(details)


def without_output_only(policy: pb.Policy) -> pb.Policy:
    """A copy of `policy` without the fields the store sets."""
    copy = pb.Policy()
    copy.CopyFrom(policy)
    copy.DiscardUnknownFields()  # fields of a newer client are not stored, nor passed on
    for output_only in ("revision", "updated_at", "updated_by"):
        copy.ClearField(output_only)
    return copy


def expected_revision(request: Any) -> int | None:
    """A write request's `expected_revision`, or None when it has none."""
    if not request.HasField("expected_revision"):
        return None
    if request.expected_revision < 0:
        raise ConfigError("expected_revision", "must be >= 0")
    return int(request.expected_revision)


def check_report(request: pb.ReportStateRequest, limits: Limits) -> None:
    """Refuse a report with a missing or oversized id, or any breaker snapshot out of range."""
    if not request.instance_id:
        raise ConfigError("instance_id", "must not be empty")
    if len(request.instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise ConfigError("instance_id", f"at most {MAX_INSTANCE_ID_LENGTH} characters")
    convert.check_caller(request.service, "service", required=True)
    if request.applied_revision < 0:
        raise ConfigError("applied_revision", "must be >= 0")
    limit = limits.max_breakers_per_report
    if len(request.breakers) > limit:
        raise ConfigError("breakers", f"at most {limit} per report, got {len(request.breakers)}")
    max_name = convert.MAX_NAME_LENGTH
    states = STATE_FIELDS
    # Plain attribute reads and comparisons only: this runs for every breaker of every report.
    for index, breaker in enumerate(request.breakers):
        name = breaker.name
        if not name or len(name) > max_name:
            raise ConfigError(f"breakers[{index}].name", f"must be 1..{max_name} characters")
        if not name.isprintable() or ("/" in name and not split_breaker_name(name)[2]):
            raise ConfigError(
                f"breakers[{index}].name",
                "must be printable, and if it has / a gRPC breaker name ([target]/pkg.Svc/Method) "
                "or an endpoint URL (https://host/route, postgresql://host/db)",
            )
        if min(getattr(breaker, counter) for counter in _COUNTERS) < 0:
            negative = next(c for c in _COUNTERS if getattr(breaker, c) < 0)
            raise ConfigError(f"breakers[{index}].{negative}", "must be >= 0")
        if breaker.successful + breaker.failed + breaker.ignored > breaker.total:
            raise ConfigError(
                f"breakers[{index}].total", "must be >= successful + failed + ignored"
            )
        if not 0.0 <= breaker.state_age < math.inf or (
            breaker.HasField("open_remaining") and not 0.0 <= breaker.open_remaining < math.inf
        ):
            raise ConfigError(
                f"breakers[{index}].state_age", "ages must be finite numbers of seconds >= 0"
            )
        if breaker.state not in states:
            raise ConfigError(
                f"breakers[{index}].state", f"unknown or unset BreakerState {breaker.state}"
            )
        if not 0.0 <= breaker.failure_rate <= 1.0:  # also refuses NaN
            raise ConfigError(f"breakers[{index}].failure_rate", "must be in [0, 1]")
        if not 0.0 <= breaker.slow_call_rate <= 1.0:
            raise ConfigError(f"breakers[{index}].slow_call_rate", "must be in [0, 1]")
        if not 0.0 <= breaker.throttle_probability <= 1.0:
            raise ConfigError(f"breakers[{index}].throttle_probability", "must be in [0, 1]")
        if breaker.throttled < 0 or breaker.concurrency_limit < 0:
            field = "throttled" if breaker.throttled < 0 else "concurrency_limit"
            raise ConfigError(f"breakers[{index}].{field}", "must be >= 0")
        if not 0.0 <= breaker.mean_duration < math.inf:
            raise ConfigError(f"breakers[{index}].mean_duration", "must be a finite number >= 0")
        if breaker.transitions:
            convert.check_transitions(breaker.transitions, f"breakers[{index}].transitions")
        if breaker.HasField("duration_histogram"):
            convert.check_histogram(
                breaker.duration_histogram, f"breakers[{index}].duration_histogram"
            )
    if request.HasField("nack") and len(request.nack.reason) > MAX_NACK_REASON_LENGTH:
        raise ConfigError("nack.reason", f"at most {MAX_NACK_REASON_LENGTH} characters")
    if request.instance_key and not _INSTANCE_KEY.fullmatch(request.instance_key):
        raise ConfigError("instance_key", "must be 16..128 characters of [A-Za-z0-9_-]")
    check_transition_log(request.transition_log, limits, max_name)
    if request.transitions_dropped < 0:
        raise ConfigError("transitions_dropped", "must be >= 0")
    check_store_id(request.applied_store_id, "applied_store_id")
    if request.HasField("store_mismatch"):
        mismatch = request.store_mismatch
        check_store_id(mismatch.held_store_id, "store_mismatch.held_store_id")
        check_store_id(mismatch.offered_store_id, "store_mismatch.offered_store_id")
        if mismatch.held_revision < 0 or mismatch.offered_revision < 0:
            raise ConfigError("store_mismatch", "revisions must be >= 0")
        if len(mismatch.reason) > 256:
            raise ConfigError("store_mismatch.reason", "at most 256 characters")


def check_transition_log(log: Sequence[pb.TransitionRecord], limits: Limits, max_name: int) -> None:
    """Refuse a transition log that is too long, unordered, or names unknown states."""
    if len(log) > limits.max_transitions_per_report:
        raise ConfigError(
            "transition_log", f"at most {limits.max_transitions_per_report} per report"
        )
    previous = 0
    for index, record in enumerate(log):
        path = f"transition_log[{index}]"
        if record.sequence < 1 or (previous and record.sequence != previous + 1):
            raise ConfigError(f"{path}.sequence", "must be >= 1 and contiguous, oldest first")
        previous = record.sequence
        if not record.name or len(record.name) > max_name:
            raise ConfigError(f"{path}.name", f"must be 1..{max_name} characters")
        if record.from_state not in STATE_FIELDS or record.to_state not in STATE_FIELDS:
            raise ConfigError(path, "states must be known and set")
        if record.from_state == record.to_state:
            raise ConfigError(path, "from_state and to_state must differ")
        if not 0.0 <= record.age < math.inf:
            raise ConfigError(f"{path}.age", "must be a finite number >= 0")


def check_store_id(value: str, path: str) -> None:
    """Refuse a store id that is too long or holds control characters."""
    if len(value) > MAX_STORE_ID_LENGTH or not value.isprintable():
        raise ConfigError(path, f"must be at most {MAX_STORE_ID_LENGTH} printable characters")


def check_put(request: pb.PutPolicyRequest, limits: Limits) -> list[pb.Policy]:
    """The request's policies, valid, without output-only fields, with unique ids and selectors."""
    count = len(request.policies)
    if count == 0:
        raise ConfigError("policies", "at least one policy is needed")
    if count > limits.max_policies_per_put:
        raise ConfigError("policies", f"at most {limits.max_policies_per_put} per put, got {count}")
    seen_ids: dict[str, int] = {}
    seen_selectors: dict[tuple[str, str, str], int] = {}
    cleaned = []
    for index, policy in enumerate(request.policies):
        path = f"policies[{index}]"
        convert.policy_from_proto(policy, path)
        check_xds_section(policy, path)
        if policy.id in seen_ids:
            raise ConfigError(f"{path}.id", f"duplicate of policies[{seen_ids[policy.id]}]")
        seen_ids[policy.id] = index
        key = selector_key(policy)
        if key in seen_selectors:
            raise ConfigError(
                f"{path}.selector", f"same selector as policies[{seen_selectors[key]}]"
            )
        seen_selectors[key] = index
        cleaned.append(without_output_only(policy))
    return cleaned


def check_list_breakers(request: pb.ListBreakersRequest) -> None:
    """Refuse a ListBreakers filter that could never match."""
    convert.check_caller(request.service, "service", required=False)
    if is_method_selector(request.method):
        check_method_selector(request.method, "method")
    else:
        check_service_selector(request.method, "method")
    if request.state != pb.BREAKER_STATE_UNSPECIFIED and request.state not in STATE_FIELDS:
        raise ConfigError("state", f"unknown BreakerState {request.state}")
