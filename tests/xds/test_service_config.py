"""`meshbreaker.grpc.service_config`: the policies as service config, read by a plain channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration

from meshbreaker.errors import ConfigError
from meshbreaker.grpc import service_config
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2
from tests.xds.support import DEADLINE, Backend

SERVICE = "bank.v1.AccountService"


def ejection_policy(policy_id: str, service: str = SERVICE, caller: str = "") -> pb.Policy:
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(service=service, caller=caller),
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


def test_the_json_carries_a50_outlier_detection_and_its_defaults() -> None:
    config = json.loads(service_config([ejection_policy("p")], service=SERVICE))
    (entry,) = config["loadBalancingConfig"]
    assert entry == {
        "outlier_detection_experimental": {
            "interval": "0.5s",
            "baseEjectionTime": "60s",
            "maxEjectionTime": "300s",
            "maxEjectionPercent": 50,
            "failurePercentageEjection": {
                "threshold": 50,
                "enforcementPercentage": 100,
                "minimumHosts": 3,
                "requestVolume": 3,
            },
            "childPolicy": [{"round_robin": {}}],
        }
    }
    defaults = pb.Policy(id="d", outlier_detection=xds_pb2.OutlierDetection())
    entry = json.loads(service_config([defaults], service=SERVICE))["loadBalancingConfig"][0]
    assert entry["outlier_detection_experimental"]["successRateEjection"] == {
        "stdevFactor": 1900,
        "enforcementPercentage": 100,
        "minimumHosts": 5,
        "requestVolume": 100,
    }
    assert "failurePercentageEjection" not in entry["outlier_detection_experimental"]


def test_the_most_specific_policy_applies_and_others_are_ignored() -> None:
    policies = [
        pb.Policy(id="mesh", outlier_detection=xds_pb2.OutlierDetection(max_ejection_percent=1)),
        ejection_policy("other", service="bank.v1.LedgerService"),
        ejection_policy("mine", caller="gateway"),
    ]
    lb = "outlier_detection_experimental"
    mine = json.loads(service_config(policies, service=SERVICE, caller="gateway"))
    assert mine["loadBalancingConfig"][0][lb]["maxEjectionPercent"] == 50
    anyone = json.loads(service_config(policies, service=SERVICE, caller="batch"))
    assert anyone["loadBalancingConfig"][0][lb]["maxEjectionPercent"] == 1
    assert service_config([], service=SERVICE) == "{}"
    with pytest.raises(ConfigError, match="service"):
        service_config(policies, service="not a service")


async def test_a_plain_channel_with_it_ejects_the_failing_backend(
    backends: Callable[[int], Awaitable[list[Backend]]],
) -> None:
    healthy_a, failing, healthy_b = await backends(3)
    failing.failing = True
    target = "ipv4:" + ",".join(f"127.0.0.1:{b.port}" for b in (healthy_a, failing, healthy_b))
    config = service_config([ejection_policy("p")], service=SERVICE)
    async with grpc.aio.insecure_channel(target, options=[("grpc.service_config", config)]) as ch:
        who: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary("/test.Echo/Who")
        results: list[str] = []
        loop_end = asyncio.get_running_loop().time() + DEADLINE
        while len(results) < 30 or any(":" in result for result in results[-30:]):
            assert asyncio.get_running_loop().time() < loop_end, results[-40:]
            try:
                results.append(bytes(await who(b"", timeout=DEADLINE)).decode())
            except grpc.aio.AioRpcError as error:
                results.append(f"{error.code().name}: {error.details()}")
    assert any("backend-1 is failing" in result for result in results)
    assert set(results[-30:]) == {"backend-0", "backend-2"}


RETRY = pb.RetryPolicy(
    max_attempts=3,
    initial_backoff=Duration(nanos=10_000_000),
    max_backoff=Duration(nanos=50_000_000),
    multiplier=1.5,
    retryable_codes=pb.CodeList(codes=["UNAVAILABLE", "ABORTED"]),
    budget_ratio=0.1,
    budget_min_per_second=5,
    budget_ttl=Duration(seconds=10),
)


def retry_policies(service: str = "test.Echo") -> list[pb.Policy]:
    return [
        pb.Policy(
            id="retries",
            selector=pb.Selector(service=service),
            config=pb.BreakerConfig(retry=RETRY, idempotent=True),
        ),
        pb.Policy(
            id="hold-once",
            selector=pb.Selector(method=f"/{service}/Hold"),
            config=pb.BreakerConfig(idempotent=False),
        ),
    ]


def test_the_json_carries_retries_per_method_config_and_the_budget_as_throttling() -> None:
    config = json.loads(service_config(retry_policies(SERVICE), service=SERVICE))
    assert config["methodConfig"] == [
        {"name": [{"service": SERVICE, "method": "Hold"}]},  # not idempotent: no retries
        {
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.01s",
                "maxBackoff": "0.05s",
                "backoffMultiplier": 1.5,
                "retryableStatusCodes": ["ABORTED", "UNAVAILABLE"],
            },
        },
    ]
    assert config["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.1}
    # Retries without `idempotent` would be retried by status alone: none are exported.
    not_idempotent = pb.Policy(
        id="r", selector=pb.Selector(service=SERVICE), config=pb.BreakerConfig(retry=RETRY)
    )
    assert service_config([not_idempotent], service=SERVICE) == "{}"


async def test_a_plain_channel_with_it_retries_what_the_policy_says(
    backends: Callable[[int], Awaitable[list[Backend]]],
) -> None:
    (backend,) = await backends(1)
    backend.flaky = True
    config = service_config(retry_policies(), service="test.Echo")
    target = f"127.0.0.1:{backend.port}"
    async with grpc.aio.insecure_channel(target, options=[("grpc.service_config", config)]) as ch:
        who: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary("/test.Echo/Who")
        answers = [bytes(await who(b"", timeout=DEADLINE)).decode() for _ in range(4)]
    assert answers == ["backend-0"] * 4  # every failed first attempt was retried
    assert backend.calls == 8
