"""Overrides held in policies: set or cleared with everything that belongs to them.

An override is stored in the policy with exactly its selector (created without a config when none
exists). Its expiry, reason and fleet decision belong to it: setting a new override replaces all
three, clearing it removes them, and a policy left with neither config nor override is deleted.
"""

from __future__ import annotations

from meshbreaker.config import State
from meshbreaker.control import convert
from meshbreaker.v1 import control_plane_pb2 as pb

# The longest override with an expiry (a year): longer ones are meant to be permanent.
MAX_OVERRIDE_SECONDS = 366 * 24 * 3600.0

# The `updated_by` of the changes the control plane makes on its own.
CONTROL_PLANE_ACTOR = "control-plane"


def set_override(
    policy: pb.Policy,
    override: State | None,
    *,
    expires_at: float | None = None,
    reason: str = "",
    fleet: pb.FleetDecision | None = None,
) -> None:
    """Give `policy` this override (None = automatic) with its expiry, reason and decision."""
    policy.override = convert.override_to_proto(override)
    for name in ("override_expires_at", "override_reason", "fleet"):
        policy.ClearField(name)
    if override is None:
        return
    if expires_at is not None:
        policy.override_expires_at.CopyFrom(convert.seconds_to_timestamp(expires_at))
    policy.override_reason = reason
    if fleet is not None:
        policy.fleet.CopyFrom(fleet)


def is_empty(policy: pb.Policy) -> bool:
    """True for a policy that does nothing (no config, no override, no xDS section)."""
    return (
        policy.override == pb.OVERRIDE_NONE
        and not policy.HasField("config")
        and not policy.HasField("outlier_detection")
    )


def expires_at(policy: pb.Policy) -> float | None:
    """When `policy`'s override expires (unix seconds), or None."""
    if not policy.HasField("override_expires_at"):
        return None
    return policy.override_expires_at.ToNanoseconds() / 1e9
