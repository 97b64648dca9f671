"""Which policies shape an xDS cluster, and what each becomes (the table in docs/DESIGN.md, "xDS").

A cluster names the gRPC services it serves. For a client whose bootstrap node `cluster` names
caller C, the policies that apply to C and select one of those services, or every service (the
mesh-wide ones), shape the cluster. Method policies cannot: xDS limits and ejects per cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshbreaker.control.convert import PolicySpec
from meshbreaker.control.layers import explain, specs_of
from meshbreaker.control.xds.model import OutlierDetection, outlier_detection_from_proto
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb


@dataclass(frozen=True)
class ClusterPolicy:
    """What the policies make of one cluster for one caller."""

    max_requests: int | None = None  # CDS circuit_breakers.thresholds[DEFAULT].max_requests
    outlier_detection: OutlierDetection | None = None  # CDS outlier_detection
    max_requests_from: str = ""  # the service whose config gave max_requests ("" = mesh-wide)
    outlier_detection_from: str = ""  # the id of the policy that gave outlier_detection


def check_policy(policy: pb.Policy, path: str = "policy") -> None:
    """Raise ConfigError if the policy's xDS section is invalid (a method selector, bad values)."""
    if not policy.HasField("outlier_detection"):
        return
    if policy.selector.method:
        raise ConfigError(
            f"{path}.outlier_detection",
            "needs a selector without a method (clients eject endpoints, not methods)",
        )
    outlier_detection_from_proto(policy.outlier_detection, f"{path}.outlier_detection")


def max_concurrent_calls(
    caller: str, service: str, policies: Iterable[pb.Policy | PolicySpec]
) -> int | None:
    """The effective service-level `max_concurrent_calls` of `service` for `caller` (None = off)."""
    return explain(caller, service, policies).config.max_concurrent_calls


def cluster_policy(
    caller: str, services: Sequence[str], policies: Sequence[pb.Policy]
) -> ClusterPolicy:
    """The cluster-wide settings the policies give a cluster serving `services`, for `caller`.

    max_requests is the smallest `max_concurrent_calls` among the services' service-level configs
    (xDS has one limit per cluster). Outlier detection comes from the most specific policy that
    sets it: a named service before every service, a named caller before every caller, then the
    smaller id. Policies that fail validation are skipped (they were refused when put).
    """
    specs = specs_of(policies)
    limits = [
        (limit, service)
        for service in services or [""]
        if (limit := max_concurrent_calls(caller, service, specs)) is not None
    ]
    max_requests, max_requests_from = min(limits) if limits else (None, "")
    wanted = set(services)
    candidates = [
        policy
        for policy in policies
        if policy.HasField("outlier_detection")
        and not policy.selector.method
        and (not policy.selector.caller or policy.selector.caller == caller)
        and (not policy.selector.service or policy.selector.service in wanted)
    ]
    candidates.sort(key=lambda p: (not p.selector.service, not p.selector.caller, p.id))
    outlier: OutlierDetection | None = None
    outlier_from = ""
    for policy in candidates:
        try:
            outlier = outlier_detection_from_proto(policy.outlier_detection)
        except ConfigError:
            continue
        outlier_from = policy.id
        break
    return ClusterPolicy(max_requests, outlier, max_requests_from, outlier_from)
