"""The four xDS resources of a registered cluster, as gRPC's xDS client and Envoy read them.

For cluster N: Listener N (an api_listener: HttpConnectionManager, routes over ADS, the router
filter), RouteConfiguration N (every path to cluster N, with the policies' retries), Cluster N
(EDS over ADS, its LB policy, circuit breaking and outlier detection from the policies) and
ClusterLoadAssignment N (its endpoints, one locality). A channel to `xds:///N` asks for exactly
these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from meshbreaker.control.xds.mapping import ClusterPolicy, RouteRetry, cluster_policy, route_retries
from meshbreaker.control.xds.model import OutlierDetection, served_endpoints
from meshbreaker.retry import RetryPolicy
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_NAMES: dict[str, str] = {
    LISTENER: "listener",
    ROUTE: "route",
    CLUSTER: "cluster",
    ENDPOINT: "endpoint",
}
ROUTER_FILTER = "envoy.filters.http.router"
# The status codes gRPC's xDS client retries on (gRFC A44), by their `retry_on` names.
A44_RETRY_ON = {
    "CANCELLED": "cancelled",
    "DEADLINE_EXCEEDED": "deadline-exceeded",
    "INTERNAL": "internal",
    "RESOURCE_EXHAUSTED": "resource-exhausted",
    "UNAVAILABLE": "unavailable",
}

_LB_POLICIES = {
    xds_pb2.LB_POLICY_UNSPECIFIED: cluster_pb2.Cluster.ROUND_ROBIN,
    xds_pb2.LB_POLICY_ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    xds_pb2.LB_POLICY_LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    xds_pb2.LB_POLICY_RING_HASH: cluster_pb2.Cluster.RING_HASH,
    xds_pb2.LB_POLICY_RANDOM: cluster_pb2.Cluster.RANDOM,
    xds_pb2.LB_POLICY_MAGLEV: cluster_pb2.Cluster.MAGLEV,
}


@dataclass(frozen=True)
class MeshState:
    """What resources are computed from: the clusters and policies at their revisions."""

    clusters: Mapping[str, xds_pb2.XdsCluster]
    policies: Sequence[pb.Policy]
    cluster_revision: int = 0
    policy_revision: int = 0

    @property
    def version(self) -> str:
        """The version sent with resources: "<policy revision>.<cluster revision>"."""
        return f"{self.policy_revision}.{self.cluster_revision}"


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def pack(message: Message) -> any_pb2.Any:
    """`message` in an Any."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def listener(name: str) -> listener_pb2.Listener:
    """The api_listener a channel to `xds:///name` starts from."""
    manager = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=name),
        http_filters=[
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))
        ],
    )
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager))
    )


def retry_policy(value: RetryPolicy) -> route_components_pb2.RetryPolicy | None:
    """The A44 retry policy of `value`; None if none of its codes is one gRPC retries on.

    xDS has no backoff multiplier (gRPC doubles) and no retry budget; codes outside A44's five
    are left out. gRPC caps attempts at 5.
    """
    codes = sorted(A44_RETRY_ON[code] for code in value.retryable_codes if code in A44_RETRY_ON)
    if value.max_attempts < 2 or not codes:
        return None
    return route_components_pb2.RetryPolicy(
        retry_on=",".join(codes),
        num_retries=_u32(value.max_attempts - 1),
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=_seconds(value.initial_backoff),
            max_interval=_seconds(value.max_backoff),
        ),
    )


def _route(cluster_name: str, retry: RouteRetry) -> route_components_pb2.Route:
    if retry.method:
        match = route_components_pb2.RouteMatch(path=retry.path)
    else:
        match = route_components_pb2.RouteMatch(prefix=retry.path)
    action = route_components_pb2.RouteAction(cluster=cluster_name)
    policy = None if retry.retry is None else retry_policy(retry.retry)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    return route_components_pb2.Route(match=match, route=action)


def route_configuration(
    name: str, retries: Sequence[RouteRetry] = ()
) -> route_pb2.RouteConfiguration:
    """Every call to cluster `name`: method routes, then service routes, then every other path."""
    routes = [_route(name, retry) for retry in retries]
    if not routes or routes[-1].match.prefix or routes[-1].match.path:
        routes.append(_route(name, RouteRetry()))
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[route_components_pb2.VirtualHost(name=name, domains=["*"], routes=routes)],
    )


def _seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def outlier_detection(value: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    """A50's fields of Envoy's OutlierDetection; consecutive-error ejection stays off (gRPC)."""
    return outlier_detection_pb2.OutlierDetection(
        interval=_seconds(value.interval),
        base_ejection_time=_seconds(value.base_ejection_time),
        max_ejection_time=_seconds(value.max_ejection_time),
        max_ejection_percent=_u32(value.max_ejection_percent),
        success_rate_stdev_factor=_u32(value.success_rate_stdev_factor),
        enforcing_success_rate=_u32(value.enforcing_success_rate),
        success_rate_minimum_hosts=_u32(value.success_rate_minimum_hosts),
        success_rate_request_volume=_u32(value.success_rate_request_volume),
        failure_percentage_threshold=_u32(value.failure_percentage_threshold),
        enforcing_failure_percentage=_u32(value.enforcing_failure_percentage),
        failure_percentage_minimum_hosts=_u32(value.failure_percentage_minimum_hosts),
        failure_percentage_request_volume=_u32(value.failure_percentage_request_volume),
        enforcing_consecutive_5xx=_u32(0),
        enforcing_consecutive_gateway_failure=_u32(0),
    )


def cluster(registered: xds_pb2.XdsCluster, policy: ClusterPolicy) -> cluster_pb2.Cluster:
    """The CDS resource of a registered cluster, shaped by `policy`."""
    resource = cluster_pb2.Cluster(
        name=registered.name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=registered.name
        ),
        lb_policy=_LB_POLICIES[registered.lb_policy],
    )
    if policy.max_requests is not None:
        resource.circuit_breakers.CopyFrom(
            circuit_breaker_pb2.CircuitBreakers(
                thresholds=[
                    circuit_breaker_pb2.CircuitBreakers.Thresholds(
                        priority=base_pb2.DEFAULT, max_requests=_u32(policy.max_requests)
                    )
                ]
            )
        )
    if policy.outlier_detection is not None:
        resource.outlier_detection.CopyFrom(outlier_detection(policy.outlier_detection))
    return resource


def load_assignment(registered: xds_pb2.XdsCluster) -> endpoint_pb2.ClusterLoadAssignment:
    """The EDS resource: every endpoint, listed or registered, healthy, in one locality (gRPC
    ignores weightless ones)."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=registered.name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(region="meshbreaker", zone=registered.name),
                load_balancing_weight=_u32(1),
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=endpoint.host, port_value=endpoint.port
                                )
                            )
                        ),
                        health_status=health_check_pb2.HEALTHY,
                        load_balancing_weight=_u32(endpoint.weight or 1),
                    )
                    for endpoint in served_endpoints(registered)
                ],
            )
        ],
    )


def resources(
    type_url: str, names: Sequence[str], state: MeshState, caller: str
) -> dict[str, Message]:
    """The resources of one type a client asked for by name; unknown names are left out."""
    out: dict[str, Message] = {}
    for name in names:
        registered = state.clusters.get(name)
        if registered is None:
            continue
        if type_url == LISTENER:
            out[name] = listener(name)
        elif type_url == ROUTE:
            retries = route_retries(caller, list(registered.services), state.policies)
            out[name] = route_configuration(name, retries)
        elif type_url == CLUSTER:
            policy = cluster_policy(caller, list(registered.services), state.policies)
            out[name] = cluster(registered, policy)
        elif type_url == ENDPOINT:
            out[name] = load_assignment(registered)
    return out
