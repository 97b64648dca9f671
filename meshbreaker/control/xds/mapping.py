"""Which policies shape an xDS cluster, and what each becomes (the table in docs/DESIGN.md, "xDS").

A cluster names the gRPC services it serves. For a client whose bootstrap node `cluster` names
caller C, the policies that apply to C and select one of those services, or every service (the
mesh-wide ones), shape the cluster. Method policies cannot: xDS limits and ejects per cluster.
Retries are per route, so method policies shape those (`route_retries`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshbreaker._names import is_method_name, method_service
from meshbreaker.control.convert import PolicySpec
from meshbreaker.control.layers import explain, specs_of
from meshbreaker.control.xds.model import OutlierDetection, outlier_detection_from_proto
from meshbreaker.errors import ConfigError
from meshbreaker.retry import RetryPolicy
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


@dataclass(frozen=True)
class RouteRetry:
    """The retries gRPC itself should make on one route: a method, a whole service, or all."""

    service: str = ""  # "" = every call (the mesh-wide route)
    method: str = ""  # the method's own name in `service`; "" = the whole service
    retry: RetryPolicy | None = None  # None = no retries configured on this route

    @property
    def path(self) -> str:
        """The request path the route matches: exactly "/pkg.Svc/M", or by prefix "/pkg.Svc/"."""
        if not self.service:
            return ""
        return f"/{self.service}/{self.method}"


def effective_retry(caller: str, key: str, specs: Sequence[PolicySpec]) -> RetryPolicy | None:
    """The retries a channel may make for `key` (a method, a service, "" for all), for `caller`.

    meshbreaker retries a call that may have reached the server only if the method is
    `idempotent`; gRPC's own retries (xDS or service config) retry by status alone, so a method
    that is not idempotent gets none (gRPC still retries calls that never left, transparently).
    """
    config = explain(caller, key, specs).config
    return config.retry if config.idempotent else None


def route_retries(
    caller: str, services: Sequence[str], policies: Sequence[pb.Policy | PolicySpec]
) -> list[RouteRetry]:
    """The retry routes of a cluster serving `services`, for `caller`, most specific first.

    A method gets a route of its own when a method policy applying to `caller` names it and its
    retries differ from its service's; then one route per service; last, every other call (the
    mesh-wide retries).
    """
    specs = specs_of(policies)
    routes: list[RouteRetry] = []
    for service in sorted(set(services)):
        own = effective_retry(caller, service, specs)
        methods = sorted(
            {
                spec.selector.method
                for spec in specs
                if spec.selector.applies_to(caller)
                and is_method_name(spec.selector.method)
                and method_service(spec.selector.method) == service
            }
        )
        for method in methods:
            retry = effective_retry(caller, method, specs)
            if retry != own:
                routes.append(RouteRetry(service, method.rsplit("/", 1)[1], retry))
        routes.append(RouteRetry(service, "", own))
    routes.append(RouteRetry("", "", effective_retry(caller, "", specs)))
    return routes


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
