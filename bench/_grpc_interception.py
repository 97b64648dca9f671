"""What interception alone costs, in process and with no network: ns per call, and the histogram."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from typing import Any

import grpc

from bench._grpc_rig import PAYLOAD, UNARY, AioPassUnary, PassThrough
from bench._harness import interleaved, median_ratio, table
from meshbreaker.aio import breaker_interceptors
from meshbreaker.grpc import BreakerInterceptor
from meshbreaker.registry import BreakerRegistry


class _DoneCall:
    """What a sync unary continuation returns on the blocking path: an already finished call."""

    def done(self) -> bool:
        return True

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK


class _AioDoneCall(_DoneCall):
    async def code(self) -> grpc.StatusCode:  # type: ignore[override]
        return grpc.StatusCode.OK


def _added_ns(samples: dict[str, list[float]], variant: str, base: str) -> float:
    """Median over rounds of what `variant` adds to `base` in the same round (ns per call)."""
    pairs = zip(samples[base], samples[variant], strict=True)
    return round(statistics.median(b - a for a, b in pairs), 1)


def interceptor_cost(rounds: int, calls: int) -> dict[str, Any]:
    """In-process CPU cost of the interception alone (no network): ns per call."""
    details = grpc.ClientCallDetails()
    details.method = UNARY
    done = _DoneCall()

    def continuation(_details: Any, _request: Any) -> _DoneCall:
        return done

    def sync_variant(interceptor: Any) -> Callable[[int], None]:
        intercept = interceptor.intercept_unary_unary

        def run(count: int) -> None:
            for _ in range(count):
                intercept(continuation, details, PAYLOAD)

        return run

    aio_done = _AioDoneCall()

    async def aio_continuation(_details: Any, _request: Any) -> _AioDoneCall:
        return aio_done

    loop = asyncio.new_event_loop()

    def aio_variant(interceptor: Any) -> Callable[[int], None]:
        intercept = interceptor.intercept_unary_unary

        async def batch(count: int) -> None:
            for _ in range(count):
                await intercept(aio_continuation, details, PAYLOAD)

        return lambda count: loop.run_until_complete(batch(count))

    def with_histogram() -> BreakerRegistry:
        registry = BreakerRegistry()
        registry.track_durations()  # DEFAULT_BUCKETS, as PrometheusExporter sets by default
        return registry

    samples = interleaved(
        {
            "sync_passthrough": sync_variant(PassThrough()),
            "sync_breaker": sync_variant(BreakerInterceptor(BreakerRegistry())),
            "sync_breaker_histogram": sync_variant(BreakerInterceptor(with_histogram())),
            "aio_passthrough": aio_variant(AioPassUnary()),
            "aio_breaker": aio_variant(breaker_interceptors(BreakerRegistry())[0]),
            "aio_breaker_histogram": aio_variant(breaker_interceptors(with_histogram())[0]),
        },
        rounds=rounds,
        calls=calls,
    )
    loop.close()
    return {
        "ns_per_call": {name: round(statistics.median(v), 1) for name, v in samples.items()},
        "added_ns_sync": _added_ns(samples, "sync_breaker", "sync_passthrough"),
        "added_ns_aio": _added_ns(samples, "aio_breaker", "aio_passthrough"),
        "ratio_sync": round(median_ratio(samples, "sync_breaker", "sync_passthrough"), 3),
        "ratio_aio": round(median_ratio(samples, "aio_breaker", "aio_passthrough"), 3),
        # The duration histogram: the guarded call with it on, over the same call with it off.
        "histogram_added_ns_sync": _added_ns(samples, "sync_breaker_histogram", "sync_breaker"),
        "histogram_added_ns_aio": _added_ns(samples, "aio_breaker_histogram", "aio_breaker"),
        "histogram_ratio_sync": round(
            median_ratio(samples, "sync_breaker_histogram", "sync_breaker"), 3
        ),
        "histogram_ratio_aio": round(
            median_ratio(samples, "aio_breaker_histogram", "aio_breaker"), 3
        ),
    }


def histogram_table(cost: dict[str, Any]) -> str:
    rows = [
        [
            f"{api} guarded call, duration histogram on vs off",
            f"{cost['ns_per_call'][f'{api}_breaker']:.0f}",
            f"{cost['ns_per_call'][f'{api}_breaker_histogram']:.0f}",
            f"{cost[f'histogram_added_ns_{api}']:.0f}",
            f"{cost[f'histogram_ratio_{api}']:.3f}",
            "<= 1.20",
        ]
        for api in ("sync", "aio")
    ]
    headers = ["case (interception alone, no network)", "off ns", "on ns", "added ns", "ratio"]
    return table([*headers, "target"], rows)
