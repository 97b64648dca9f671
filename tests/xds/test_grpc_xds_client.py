"""Acceptance against gRPC's own xDS client: a grpcio channel to `xds:///NAME` from a bootstrap.

Each client runs in its own process (grpcio reads the bootstrap once per process) with no
meshbreaker code; the control plane, with xds=True, and the backends run in the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from google.protobuf.duration_pb2 import Duration

from meshbreaker.cli import main
from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2
from tests.scrape_support import Scrape
from tests.xds.support import Admin, Backend, XdsClientProcess, cluster, wait_for

WHO = "/test.Echo/Who"
HOLD = "/test.Echo/Hold"
Backends = Callable[[int], Awaitable[list[Backend]]]
Clients = Callable[..., Awaitable[XdsClientProcess]]


async def test_calls_reach_the_registered_endpoints_and_follow_registry_changes(
    admin: Admin, backends: Backends, xds_client: Clients
) -> None:
    first, second, third = await backends(3)
    await admin.put_cluster(cluster("accounts", [first, second]))
    client = await xds_client("xds:///accounts", caller="gateway")

    reply = await client.ask({"op": "call", "n": 6, "method": WHO, "wait": True})

    assert sorted(set(reply["results"])) == ["backend-0", "backend-1"]
    assert third.calls == 0
    await admin.put_cluster(cluster("accounts", [third]))

    async def only_third() -> bool:
        reply = await client.ask({"op": "call", "n": 3, "method": WHO, "wait": True})
        return set(reply["results"]) == {"backend-2"}

    await wait_for(only_third)


async def test_max_concurrent_calls_reaches_an_open_channel_as_circuit_breaking(
    admin: Admin, backends: Backends, xds_client: Clients
) -> None:
    (backend,) = await backends(1)
    await admin.put_cluster(cluster("accounts", [backend], services=["bank.v1.AccountService"]))
    client = await xds_client("xds:///accounts", caller="gateway")
    assert (await client.ask({"op": "call", "n": 1, "method": WHO, "wait": True}))["results"] == [
        "backend-0"
    ]
    revision = await admin.put_policy(
        pb.Policy(
            id="accounts-bulkhead",
            selector=pb.Selector(service="bank.v1.AccountService"),
            config=pb.BreakerConfig(max_concurrent_calls=2),
        )
    )

    async def acked() -> bool:
        state = await admin.resource("node-gateway", "cluster")
        return state is not None and state.acked_version.startswith(f"{revision}.")

    await wait_for(acked)
    await client.send({"op": "concurrent", "n": 6, "method": HOLD})
    dropped = [(await client.read())["result"] for _ in range(4)]
    await wait_for(lambda: backend.held == 2)
    backend.release()
    answered = [(await client.read())["result"] for _ in range(2)]

    assert answered == ["backend-0", "backend-0"]
    assert all(result.startswith("UNAVAILABLE") for result in dropped), dropped


async def test_outlier_detection_ejects_the_failing_backend_of_three(
    admin: Admin, backends: Backends, xds_client: Clients
) -> None:
    healthy_a, failing, healthy_b = await backends(3)
    failing.failing = True
    await admin.put_cluster(
        cluster("accounts", [healthy_a, failing, healthy_b], services=["bank.v1.AccountService"])
    )
    await admin.put_policy(
        pb.Policy(
            id="accounts-ejection",
            selector=pb.Selector(service="bank.v1.AccountService"),
            outlier_detection=xds_pb2.OutlierDetection(
                interval=Duration(nanos=500_000_000),
                base_ejection_time=Duration(seconds=60),
                max_ejection_percent=50,
                enforcing_success_rate=0,
                failure_percentage_threshold=50,
                enforcing_failure_percentage=100,
                failure_percentage_minimum_hosts=3,
                failure_percentage_request_volume=3,
            ),
        )
    )
    client = await xds_client("xds:///accounts", caller="gateway")
    await client.ask({"op": "call", "n": 1, "method": WHO, "wait": True})

    reply = await client.ask({"op": "until_clean", "method": WHO, "clean": 30, "deadline": 25})

    results = reply["results"]
    assert any("backend-1 is failing" in result for result in results)
    assert set(results[-30:]) == {"backend-0", "backend-2"}
    calls_before = failing.calls
    await client.ask({"op": "call", "n": 10, "method": WHO, "wait": True})
    assert failing.calls == calls_before


async def test_a_resource_the_client_rejects_is_nacked_and_shown(
    admin: Admin,
    backends: Backends,
    xds_client: Clients,
    xds_server: ControlPlaneServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (backend,) = await backends(1)
    await admin.put_cluster(cluster("accounts", [backend]))
    client = await xds_client("xds:///accounts", caller="gateway")
    await client.ask({"op": "call", "n": 1, "method": WHO, "wait": True})

    # Envoy balances with Maglev; gRPC clients do not, and say so.
    await admin.put_cluster(cluster("accounts", [backend], lb_policy=xds_pb2.LB_POLICY_MAGLEV))

    async def nacked() -> bool:
        state = await admin.resource("node-gateway", "cluster")
        return state is not None and bool(state.nacked_version)

    await wait_for(nacked)
    state = await admin.resource("node-gateway", "cluster")
    assert state is not None
    assert "LB policy is not supported" in state.error
    assert state.acked_version != state.nacked_version
    # `meshbreaker status` shows it beside the agents, and /metrics counts it.
    status = await asyncio.to_thread(main, ["--target", xds_server.target, "status"])
    out = capsys.readouterr().out
    assert status == 0
    (row,) = [
        line for line in out.splitlines() if line.startswith("node-gateway") and "cluster" in line
    ]
    assert "LB policy is not supported" in row and state.nacked_version in row
    assert "1 xDS client(s), 1 NACKing" in out
    scrape = await asyncio.to_thread(
        Scrape, f"http://{xds_server.metrics_host}:{xds_server.metrics_port}/metrics"
    )
    key = {"node_id": "node-gateway", "caller": "gateway", "type": "cluster"}
    assert scrape.one("meshbreaker_control_plane_xds_nacking", **key) == 1
    assert scrape.one("meshbreaker_control_plane_xds_nacking", **{**key, "type": "listener"}) == 0
    assert scrape.one("meshbreaker_control_plane_xds_acked_cluster_revision", **key) == 1
    assert scrape.one("meshbreaker_control_plane_xds_clients") == 1
    assert scrape.one("meshbreaker_control_plane_xds_nacks_total") >= 1
    # The client keeps the cluster it had and goes on calling.
    assert (await client.ask({"op": "call", "n": 2, "method": WHO, "wait": True}))["results"] == [
        "backend-0",
        "backend-0",
    ]


async def test_retry_policies_reach_the_routes_for_idempotent_methods_only(
    admin: Admin, backends: Backends, xds_client: Clients
) -> None:
    (backend,) = await backends(1)
    backend.flaky = True
    await admin.put_cluster(cluster("echo", [backend], services=["test.Echo"]))
    client = await xds_client("xds:///echo", caller="gateway")
    await client.ask({"op": "call", "n": 2, "method": WHO, "wait": True})

    async def routes_at(revision: int) -> None:
        async def acked() -> bool:
            state = await admin.resource("node-gateway", "route")
            return state is not None and state.acked_version.startswith(f"{revision}.")

        await wait_for(acked)

    retry = pb.RetryPolicy(
        max_attempts=3,
        initial_backoff=Duration(nanos=10_000_000),
        max_backoff=Duration(nanos=50_000_000),
        retryable_codes=pb.CodeList(codes=["UNAVAILABLE"]),
    )
    await routes_at(
        await admin.put_policy(
            pb.Policy(
                id="echo-retries",
                selector=pb.Selector(service="test.Echo"),
                config=pb.BreakerConfig(retry=retry, idempotent=True),
            )
        )
    )
    before = backend.calls
    reply = await client.ask({"op": "call", "n": 6, "method": WHO, "wait": True})
    assert reply["results"] == ["backend-0"] * 6  # gRPC retried each failed first attempt
    assert backend.calls - before == 12

    # The same retries on a method that is not idempotent: gRPC would retry by status alone,
    # so that method's route gets none.
    await routes_at(
        await admin.put_policy(
            pb.Policy(
                id="who-not-idempotent",
                selector=pb.Selector(method=WHO),
                config=pb.BreakerConfig(idempotent=False),
            )
        )
    )
    before = backend.calls
    reply = await client.ask({"op": "call", "n": 6, "method": WHO, "wait": True})
    assert sum(result == "backend-0" for result in reply["results"]) == 3
    assert backend.calls - before == 6
