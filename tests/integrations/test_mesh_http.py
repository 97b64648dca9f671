"""Policies from a real control plane select HTTP breakers by route and by origin, via an agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshbreaker import BreakerConfig, BreakerRegistry, State
from meshbreaker.control import MeshAgent
from meshbreaker.control.convert import config_to_proto
from meshbreaker.httpx import BreakerTransport, HTTPCallNotPermittedError
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.integrations.http_server import Fault, FaultyServer
from tests.server_support import ControlPlane, wait_until


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "mesh.db")
    yield plane
    plane.close()


def put(
    plane: ControlPlane,
    policy_id: str,
    selector: pb.Selector,
    config: BreakerConfig | None = None,
    *,
    forced_open: bool = False,
) -> int:
    policy = pb.Policy(id=policy_id, selector=selector)
    if config is not None:
        policy.config.CopyFrom(config_to_proto(config))
    if forced_open:
        policy.override = pb.OVERRIDE_FORCED_OPEN
    request = pb.PutPolicyRequest(policies=[policy])
    return int(plane.stub.PutPolicy(request, timeout=5).revision)


def test_a_policy_reaches_the_http_breakers_of_a_route_and_of_an_origin(
    control_plane: ControlPlane, http_server: FaultyServer
) -> None:
    registry = BreakerRegistry()
    origin = http_server.origin
    charges = f"{origin}/v1/charges"
    with (
        MeshAgent(control_plane.target, "notification", registry, report_interval=60.0) as agent,
        httpx.Client(transport=BreakerTransport(registry)) as client,
    ):
        strict = BreakerConfig(consecutive_failures=1, open_duration=30.0, open_duration_max=30.0)
        put(control_plane, "cards-strict", pb.Selector(method=charges), strict)
        revision = put(control_plane, "cards-down", pb.Selector(service=origin), forced_open=True)
        assert agent.wait_for_revision(revision, timeout=10.0)

        with pytest.raises(HTTPCallNotPermittedError) as refused:
            client.get(f"{origin}/v1/refunds")  # every route of the origin is forced open
        assert refused.value.state is State.FORCED_OPEN
        assert http_server.hits("/v1/refunds") == 0

        revision = int(
            control_plane.stub.DeletePolicy(
                pb.DeletePolicyRequest(id="cards-down"), timeout=5
            ).revision
        )
        assert agent.wait_for_revision(revision, timeout=10.0)
        assert client.get(f"{origin}/v1/refunds").text == "ok"

        http_server.fault("/v1/charges", Fault(status=503))
        client.get(charges)  # one failure opens the route the policy names
        assert registry.get(charges).config.consecutive_failures == 1
        assert registry.get(charges).state is State.OPEN
        assert registry.get(f"{origin}/v1/refunds").config.consecutive_failures == 5

        def reported() -> bool:
            response = control_plane.stub.ListBreakers(
                pb.ListBreakersRequest(method=charges), timeout=5
            )
            return [group.name for group in response.groups] == [charges]

        assert wait_until(reported, timeout=10.0)


def test_an_http_selector_that_could_never_match_is_refused(control_plane: ControlPlane) -> None:
    import grpc

    for selector in (
        pb.Selector(service="https://cards.example/v1"),  # a route is not an origin
        pb.Selector(method="https://cards.example/v1/charges?x=1"),  # no query in a name
        pb.Selector(service="https://cards.example", method="https://other.example/v1"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            put(control_plane, "bad", selector, BreakerConfig())
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
