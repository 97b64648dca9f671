"""Retries on xDS routes (gRFC A44): which routes get which retries, and what is left out."""

from __future__ import annotations

from typing import Any

from meshbreaker.control.convert import layer_to_proto
from meshbreaker.control.xds.mapping import RouteRetry, route_retries
from meshbreaker.control.xds.resources import retry_policy, route_configuration
from meshbreaker.retry import RetryPolicy
from meshbreaker.v1 import control_plane_pb2 as pb

SERVICE = "bank.v1.AccountService"
RETRY = RetryPolicy(max_attempts=4, retryable_codes=frozenset({"UNAVAILABLE", "ABORTED"}))


def policy(policy_id: str, layer: dict[str, Any], **selector: str) -> pb.Policy:
    """A policy setting exactly the fields of `layer`."""
    return pb.Policy(id=policy_id, selector=pb.Selector(**selector), config=layer_to_proto(layer))


def test_routes_go_from_methods_to_services_to_everything_else() -> None:
    policies = [
        policy("mesh", {"retry": RetryPolicy(max_attempts=2), "idempotent": True}),
        policy("accounts", {"retry": RETRY}, service=SERVICE),
        policy("debit", {"idempotent": False}, method=f"/{SERVICE}/Debit"),
        policy("batch", {"retry": None}, caller="batch", method=f"/{SERVICE}/Get"),
    ]
    routes = route_retries("gateway", [SERVICE], policies)
    assert routes == [
        RouteRetry(SERVICE, "Debit", None),  # not idempotent: gRPC would retry by status alone
        RouteRetry(SERVICE, "", RETRY),
        RouteRetry("", "", RetryPolicy(max_attempts=2)),
    ]
    assert [route.path for route in routes] == [f"/{SERVICE}/Debit", f"/{SERVICE}/", ""]
    # The batch caller's method policy gives it a route of its own; the gateway never saw it.
    assert RouteRetry(SERVICE, "Get", None) in route_retries("batch", [SERVICE], policies)

    config = route_configuration("accounts", routes)
    (host,) = config.virtual_hosts
    assert [r.match.path or r.match.prefix for r in host.routes] == [
        f"/{SERVICE}/Debit",
        f"/{SERVICE}/",
        "",
    ]
    assert not host.routes[0].route.HasField("retry_policy")
    assert host.routes[1].route.retry_policy.retry_on == "unavailable"
    assert host.routes[2].route.retry_policy.num_retries.value == 1
    assert {r.route.cluster for r in host.routes} == {"accounts"}


def test_what_a44_cannot_say_is_left_out() -> None:
    converted = retry_policy(
        RetryPolicy(
            max_attempts=7,
            initial_backoff=0.02,
            max_backoff=0.5,
            multiplier=3.0,  # gRPC's xDS retries always double
            retryable_codes=frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN"}),
        )
    )
    assert converted is not None
    assert converted.retry_on == "deadline-exceeded,unavailable"
    assert converted.num_retries.value == 6  # gRPC caps attempts at 5 itself
    assert converted.retry_back_off.base_interval.ToMilliseconds() == 20
    assert converted.retry_back_off.max_interval.ToMilliseconds() == 500
    assert retry_policy(RetryPolicy(retryable_codes=frozenset({"ABORTED"}))) is None
    assert retry_policy(RetryPolicy(max_attempts=1)) is None
    assert route_configuration("x").virtual_hosts[0].routes[0].match.prefix == ""
