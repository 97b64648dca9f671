"""No double counting: a call gRPC's xDS circuit breaking drops is a rejection, not a failure.

gRPC's own xDS client enforces `max_requests` (from max_concurrent_calls) below meshbreaker's
interceptor; the calls it drops end UNAVAILABLE "circuit breaker drop" without leaving the
process, so the breaker counts them as rejected and never as failures of the dependency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from meshbreaker.v1 import control_plane_pb2 as pb
from tests.xds.support import GUARDED_SCRIPT, Admin, Backend, XdsClientProcess, cluster, wait_for


@pytest.mark.parametrize("flavour", ["sync", "aio"])
async def test_xds_drops_count_as_rejections_in_the_interceptor(
    admin: Admin,
    backends: Callable[[int], Awaitable[list[Backend]]],
    xds_client: Callable[..., Awaitable[XdsClientProcess]],
    flavour: str,
) -> None:
    (backend,) = await backends(1)
    await admin.put_cluster(cluster("accounts", [backend], services=["bank.v1.AccountService"]))
    await admin.put_policy(
        pb.Policy(
            id="bulkhead",
            selector=pb.Selector(service="bank.v1.AccountService"),
            config=pb.BreakerConfig(max_concurrent_calls=2),
        )
    )
    client = await xds_client(
        "xds:///accounts", caller="gateway", script=GUARDED_SCRIPT, args=(flavour,)
    )

    await client.send_line("6")
    dropped = [(await client.read())["result"] for _ in range(4)]
    await wait_for(lambda: backend.held == 2)
    backend.release()
    answered = [(await client.read())["result"] for _ in range(2)]
    snapshot = (await client.read())["snapshot"]

    assert dropped == ["UNAVAILABLE: circuit breaker drop"] * 4
    assert answered == ["backend-0", "backend-0"]
    # Four UNAVAILABLE in a row would have opened it (two failures do) had they been failures.
    assert snapshot == {
        "state": "CLOSED",
        "failed": 0,
        "successful": 2,
        "ignored": 4,
        "rejected": 4,
    }
