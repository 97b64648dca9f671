"""gRPC service config from meshbreaker policies, for channels that do not speak xDS.

`service_config(policies, service=...)` returns the JSON for the `grpc.service_config` channel
option: an outlier-detection LB policy (gRFC A50) over round robin from the policy's
`outlier_detection`; a `retryPolicy` (gRFC A6) per method config from the effective `retry` of
the service and of each method a policy names (idempotent methods only: gRPC retries by status,
whether or not the server ran the call); and `retryThrottling` from the service's retry budget.
Circuit breaking (`max_concurrent_calls`) has no service-config form: meshbreaker's interceptors
enforce it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshbreaker._names import check_service
from meshbreaker.errors import ConfigError

if TYPE_CHECKING:
    from meshbreaker.control.xds.mapping import RouteRetry
    from meshbreaker.control.xds.model import OutlierDetection
    from meshbreaker.retry import RetryPolicy
    from meshbreaker.v1 import control_plane_pb2 as pb

# C-core's registered name for gRFC A50's LB policy.
OUTLIER_DETECTION_LB = "outlier_detection_experimental"
# gRPC's bounds on retryThrottling (gRFC A6).
MAX_THROTTLING_TOKENS = 1000
MIN_TOKEN_RATIO = 0.001


def _seconds(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".") + "s"


def outlier_detection_config(value: OutlierDetection, child: str = "round_robin") -> dict[str, Any]:
    """The `loadBalancingConfig` entry for `value`, balancing with `child` underneath."""
    config: dict[str, Any] = {
        "interval": _seconds(value.interval),
        "baseEjectionTime": _seconds(value.base_ejection_time),
        "maxEjectionTime": _seconds(value.max_ejection_time),
        "maxEjectionPercent": value.max_ejection_percent,
        "childPolicy": [{child: {}}],
    }
    # As in A50's xDS mapping: enforcement 0 turns a kind of ejection off.
    if value.enforcing_success_rate:
        config["successRateEjection"] = {
            "stdevFactor": value.success_rate_stdev_factor,
            "enforcementPercentage": value.enforcing_success_rate,
            "minimumHosts": value.success_rate_minimum_hosts,
            "requestVolume": value.success_rate_request_volume,
        }
    if value.enforcing_failure_percentage:
        config["failurePercentageEjection"] = {
            "threshold": value.failure_percentage_threshold,
            "enforcementPercentage": value.enforcing_failure_percentage,
            "minimumHosts": value.failure_percentage_minimum_hosts,
            "requestVolume": value.failure_percentage_request_volume,
        }
    return {OUTLIER_DETECTION_LB: config}


def service_config(policies: Iterable[pb.Policy], *, service: str, caller: str = "") -> str:
    """The service config JSON a channel to `service` should use, for calls made by `caller`.

    `policies` are meshbreaker.v1 Policy messages (as `ListPolicies` returns them); the most
    specific policy with an `outlier_detection` that applies to the caller and the service wins.
    """
    if not service:
        raise ConfigError("service", "name the gRPC service the channel calls")
    check_service(service, "service")
    # Imported here: an interceptor user who never asks for service config loads no control code.
    from meshbreaker.control.xds.mapping import cluster_policy, route_retries

    listed = list(policies)
    resolved = cluster_policy(caller, [service], listed)
    config: dict[str, Any] = {}
    if resolved.outlier_detection is not None:
        config["loadBalancingConfig"] = [outlier_detection_config(resolved.outlier_detection)]
    routes = [route for route in route_retries(caller, [service], listed) if route.service]
    if any(route.retry is not None for route in routes):
        config["methodConfig"] = [method_config(route) for route in routes]
    own = next(route.retry for route in routes if not route.method)
    if own is not None and own.max_attempts > 1:
        config["retryThrottling"] = retry_throttling(own)
    return json.dumps(config, sort_keys=True)


def retry_policy_config(value: RetryPolicy) -> dict[str, Any] | None:
    """A `retryPolicy` for `value` (gRFC A6); None when it allows one attempt only."""
    if value.max_attempts < 2:
        return None
    return {
        "maxAttempts": value.max_attempts,  # gRPC caps it at 5
        "initialBackoff": _seconds(value.initial_backoff),
        "maxBackoff": _seconds(value.max_backoff),
        "backoffMultiplier": value.multiplier,
        "retryableStatusCodes": sorted(value.retryable_codes),
    }


def method_config(route: RouteRetry) -> dict[str, Any]:
    """The `methodConfig` entry of one route; without a retryPolicy it turns retries off there."""
    name = {"service": route.service}
    if route.method:
        name["method"] = route.method
    entry: dict[str, Any] = {"name": [name]}
    policy = None if route.retry is None else retry_policy_config(route.retry)
    if policy is not None:
        entry["retryPolicy"] = policy
    return entry


def retry_throttling(value: RetryPolicy) -> dict[str, Any]:
    """`retryThrottling` approximating the retry budget of `value` for the whole channel.

    gRPC keeps a token bucket per channel: a failed call takes a token, a success gives back
    `tokenRatio`, and retries stop while at most half the tokens are left. `tokenRatio` is the
    budget's ratio of retries to calls; `maxTokens` lets twice the budget's floor of retries
    (`budget_min_per_second` over `budget_ttl`) fail in a row before retries stop.
    """
    tokens = 2 * value.budget_min_per_second * value.budget_ttl
    return {
        "maxTokens": int(min(MAX_THROTTLING_TOKENS, max(1, tokens))),
        "tokenRatio": round(min(1.0, max(MIN_TOKEN_RATIO, value.budget_ratio)), 3),
    }
