"""gRPC service config from meshbreaker policies, for channels that do not speak xDS.

`service_config(policies, service=...)` returns the JSON for the `grpc.service_config` channel
option: an outlier-detection LB policy (gRFC A50) over round robin from the policy's
`outlier_detection`. The retry policy and retry throttling follow when meshbreaker's RetryPolicy
exists; until then the JSON carries none. Circuit breaking (`max_concurrent_calls`) has no
service-config form: meshbreaker's interceptors enforce it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshbreaker._names import check_service
from meshbreaker.errors import ConfigError

if TYPE_CHECKING:
    from meshbreaker.control.xds.model import OutlierDetection
    from meshbreaker.v1 import control_plane_pb2 as pb

# C-core's registered name for gRFC A50's LB policy.
OUTLIER_DETECTION_LB = "outlier_detection_experimental"


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
    from meshbreaker.control.xds.mapping import cluster_policy

    resolved = cluster_policy(caller, [service], list(policies))
    config: dict[str, Any] = {}
    if resolved.outlier_detection is not None:
        config["loadBalancingConfig"] = [outlier_detection_config(resolved.outlier_detection)]
    return json.dumps(config, sort_keys=True)
