"""What the xDS server serves from: registered clusters and outlier-detection policies, validated.

Every check raises ConfigError naming the proto field path ("cluster.endpoints[1].port"), so the
admin RPCs answer INVALID_ARGUMENT with it and the CLI prints it on one line.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from meshbreaker._names import check_service
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import xds_pb2

MAX_CLUSTERS = 1_000
MAX_ENDPOINTS_PER_CLUSTER = 1_000
MAX_SERVICES_PER_CLUSTER = 100
MAX_ENDPOINT_WEIGHT = 1_000_000
# A registration lives this long past its last renewal; etcd leases are whole seconds, at least 2.
DEFAULT_REGISTRATION_TTL = 10
MIN_REGISTRATION_TTL = 2
MAX_REGISTRATION_TTL = 300
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

LB_POLICY_NAMES: dict[int, str] = {
    xds_pb2.LB_POLICY_UNSPECIFIED: "round_robin",
    xds_pb2.LB_POLICY_ROUND_ROBIN: "round_robin",
    xds_pb2.LB_POLICY_LEAST_REQUEST: "least_request",
    xds_pb2.LB_POLICY_RING_HASH: "ring_hash",
    xds_pb2.LB_POLICY_RANDOM: "random",
    xds_pb2.LB_POLICY_MAGLEV: "maglev",
}
LB_POLICY_BY_NAME: dict[str, int] = {
    name: value for value, name in LB_POLICY_NAMES.items() if value != xds_pb2.LB_POLICY_UNSPECIFIED
}


def check_cluster_name(value: str, path: str = "cluster.name") -> str:
    """`value` if it can name a cluster (and so an `xds:///` target); else ConfigError."""
    if not _NAME_RE.fullmatch(value):
        raise ConfigError(
            path,
            f"{value[:140]!r} must be 1..128 of [A-Za-z0-9._-], starting with a letter or digit",
        )
    return value


def check_cluster(cluster: xds_pb2.XdsCluster, path: str = "cluster") -> None:
    """Raise ConfigError naming the first thing wrong with `cluster` (output-only ones aside)."""
    check_cluster_name(cluster.name, f"{path}.name")
    if len(cluster.endpoints) > MAX_ENDPOINTS_PER_CLUSTER:
        raise ConfigError(f"{path}.endpoints", f"at most {MAX_ENDPOINTS_PER_CLUSTER} endpoints")
    seen: set[tuple[str, int]] = set()
    for index, endpoint in enumerate(cluster.endpoints):
        where = f"{path}.endpoints[{index}]"
        key = endpoint_key(check_endpoint(endpoint, where))
        if key in seen:
            raise ConfigError(where, f"{endpoint.host}:{endpoint.port} is listed twice")
        seen.add(key)
    if len(cluster.services) > MAX_SERVICES_PER_CLUSTER:
        raise ConfigError(f"{path}.services", f"at most {MAX_SERVICES_PER_CLUSTER} services")
    for index, service in enumerate(cluster.services):
        if not service:
            raise ConfigError(f"{path}.services[{index}]", "must not be empty")
        check_service(service, f"{path}.services[{index}]")
    if len(set(cluster.services)) != len(cluster.services):
        raise ConfigError(f"{path}.services", "lists a service twice")
    if cluster.lb_policy not in LB_POLICY_NAMES:
        raise ConfigError(f"{path}.lb_policy", f"unknown value {cluster.lb_policy}")


def check_endpoint(endpoint: xds_pb2.XdsEndpoint, path: str) -> xds_pb2.XdsEndpoint:
    """`endpoint` with its host in canonical form, if it is an IP address, port and weight."""
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        raise ConfigError(
            f"{path}.host",
            f"{endpoint.host[:80]!r} is not an IP address (xDS clients do not resolve names)",
        ) from None
    if not 1 <= endpoint.port <= 65535:
        raise ConfigError(f"{path}.port", "must be in 1..65535")
    if endpoint.weight > MAX_ENDPOINT_WEIGHT:
        raise ConfigError(f"{path}.weight", f"must be in 0..{MAX_ENDPOINT_WEIGHT}")
    return xds_pb2.XdsEndpoint(host=str(address), port=endpoint.port, weight=endpoint.weight)


def endpoint_key(endpoint: xds_pb2.XdsEndpoint) -> tuple[str, int]:
    """(canonical host, port): what makes two endpoints one address."""
    try:
        return str(ipaddress.ip_address(endpoint.host)), endpoint.port
    except ValueError:
        return endpoint.host, endpoint.port


def registered_endpoint(endpoint: xds_pb2.XdsEndpoint, path: str) -> xds_pb2.XdsEndpoint:
    """The endpoint a server may register for itself: checked, canonical, not a wildcard."""
    checked = check_endpoint(endpoint, path)
    if ipaddress.ip_address(checked.host).is_unspecified:
        raise ConfigError(
            f"{path}.host",
            f"{checked.host} is where a server listens, not an address: give the address "
            "clients reach it at",
        )
    return checked


def registration_ttl(seconds: float, path: str = "ttl") -> int:
    """`seconds` rounded up to whole seconds, if within the bounds of a registration's ttl."""
    if not MIN_REGISTRATION_TTL <= seconds <= MAX_REGISTRATION_TTL:
        raise ConfigError(
            path, f"must be {MIN_REGISTRATION_TTL}..{MAX_REGISTRATION_TTL} seconds, got {seconds:g}"
        )
    return math.ceil(seconds)


def served_endpoints(cluster: xds_pb2.XdsCluster) -> list[xds_pb2.XdsEndpoint]:
    """What EDS serves: the listed endpoints, then the registered ones at other addresses."""
    served = list(cluster.endpoints)
    seen = {endpoint_key(endpoint) for endpoint in served}
    for endpoint in cluster.registered_endpoints:
        key = endpoint_key(endpoint)
        if key not in seen:
            seen.add(key)
            served.append(endpoint)
    return served


def parse_endpoint(text: str) -> xds_pb2.XdsEndpoint:
    """ "HOST:PORT[/WEIGHT]" (IPv6 as "[::1]:PORT") as an endpoint; ConfigError if malformed."""
    address, _, weight_text = text.partition("/")
    host, colon, port_text = address.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ConfigError("endpoint", f"{text[:80]!r} is not HOST:PORT[/WEIGHT]")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    weight = 0
    if weight_text:
        if not weight_text.isdigit() or not 1 <= int(weight_text) <= 1_000_000:
            raise ConfigError("endpoint", f"{text[:80]!r}: the weight must be in 1..1000000")
        weight = int(weight_text)
    port = int(port_text)
    if port > 65535:
        raise ConfigError("endpoint", f"{text[:80]!r}: the port must be in 1..65535")
    return xds_pb2.XdsEndpoint(host=host, port=port, weight=weight)


def format_endpoint(endpoint: xds_pb2.XdsEndpoint) -> str:
    """The endpoint as "HOST:PORT" ("[::1]:PORT" for IPv6), with "/WEIGHT" when it has one."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    weight = f"/{endpoint.weight}" if endpoint.weight else ""
    return f"{host}:{endpoint.port}{weight}"


@dataclass(frozen=True)
class OutlierDetection:
    """gRFC A50 outlier detection, with its defaults; durations in seconds, percentages 0..100."""

    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    success_rate_stdev_factor: int = 1900
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50

    def __post_init__(self) -> None:
        for name in _DURATION_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(name, "must be a number of seconds")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(name, "must be > 0 and finite")
        if self.max_ejection_time < self.base_ejection_time:
            raise ConfigError("max_ejection_time", "must be >= base_ejection_time")
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, "must be an integer >= 0")
            if value > 0xFFFFFFFF:
                raise ConfigError(name, "must fit in 32 bits")
            if name in _PERCENT_FIELDS and value > 100:
                raise ConfigError(name, "must be in 0..100 (a percentage)")


_DURATION_FIELDS = ("interval", "base_ejection_time", "max_ejection_time")
_COUNT_FIELDS = tuple(f.name for f in fields(OutlierDetection) if f.name not in _DURATION_FIELDS)
_PERCENT_FIELDS = frozenset(
    {
        "max_ejection_percent",
        "enforcing_success_rate",
        "failure_percentage_threshold",
        "enforcing_failure_percentage",
    }
)


def outlier_detection_from_proto(
    message: xds_pb2.OutlierDetection, path: str = "policy.outlier_detection"
) -> OutlierDetection:
    """The validated OutlierDetection a message describes (unset fields: A50's defaults)."""
    values: dict[str, float | int] = {}
    for name in _DURATION_FIELDS:
        if message.HasField(name):  # type: ignore[arg-type]
            duration: Duration = getattr(message, name)
            values[name] = duration.ToNanoseconds() / 1e9
    for name in _COUNT_FIELDS:
        if message.HasField(name):  # type: ignore[arg-type]
            values[name] = int(getattr(message, name))
    try:
        return OutlierDetection(**values)  # type: ignore[arg-type]
    except ConfigError as error:
        raise ConfigError(f"{path}.{error.field}", error.message) from None


def outlier_detection_from_json(
    value: object, path: str = "outlier_detection"
) -> xds_pb2.OutlierDetection:
    """The message a JSON object spells (proto field names, durations as "10s"), checked."""
    if not isinstance(value, dict):
        raise ConfigError(path, "must be an object of OutlierDetection fields")
    message = xds_pb2.OutlierDetection()
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as error:
        raise ConfigError(path, " ".join(str(error).split())[:200]) from None
    outlier_detection_from_proto(message, path)
    return message


def outlier_detection_to_proto(value: OutlierDetection) -> xds_pb2.OutlierDetection:
    """Every field of `value`, set explicitly."""
    message = xds_pb2.OutlierDetection()
    for name in _DURATION_FIELDS:
        getattr(message, name).FromNanoseconds(round(getattr(value, name) * 1e9))
    for name in _COUNT_FIELDS:
        setattr(message, name, getattr(value, name))
    return message


def sorted_clusters(clusters: Iterable[xds_pb2.XdsCluster]) -> list[xds_pb2.XdsCluster]:
    """Clusters sorted by name."""
    return sorted(clusters, key=lambda cluster: cluster.name)
