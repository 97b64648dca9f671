"""What interception alone costs, in process and with no network: ns per call, and the histogram."""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc

from bench._grpc_rig import PAYLOAD, STREAM, STREAM_MESSAGES, UNARY, AioPassUnary, PassThrough
from bench._harness import interleaved, median_ratio, table
from meshbreaker._adapter.guard import Guard
from meshbreaker.aio import GuardedChannel, breaker_interceptors
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


class _AioCall:
    """A grpc.aio call without the network, ending the way grpc's do.

    Its done-callbacks run as it ends, before the awaiting task resumes, and are dropped then
    (so no reference cycle outlives the call); code() is a coroutine. A unary call ends when
    awaited, a response stream after its last message.
    """

    __slots__ = ("_callbacks", "_done")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] | None = []
        self._done = False

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        assert self._callbacks is not None, "the benchmark adds callbacks only while running"
        self._callbacks.append(functools.partial(callback, self))

    def _end(self) -> None:
        self._done = True
        callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            callback()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def __await__(self) -> Generator[Any, None, bytes]:
        self._end()
        return PAYLOAD
        yield  # a generator that returns at once, as awaiting a call that has its answer does

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        for _ in range(STREAM_MESSAGES):
            yield PAYLOAD
        self._end()


def _aio_multicallable(_request: Any, **_options: Any) -> _AioCall:
    return _AioCall()


class _AioChannel:
    """What GuardedChannel wraps, reduced to the two multi-callables the benchmark calls."""

    def unary_unary(self, _method: str, *_args: Any, **_kwargs: Any) -> Any:
        return _aio_multicallable

    unary_stream = unary_unary


def guarded_aio_cost(rounds: int, calls: int) -> dict[str, Any]:
    """CPU ns per aio call (unary) and per response stream of STREAM_MESSAGES, no network.

    A bare call, the same again as the A/A control, and the call through the aio guarded
    channel, timed by the CPU clock of the loop's thread (time other jobs took stays out).
    """
    loop = asyncio.new_event_loop()
    guarded = GuardedChannel(_AioChannel(), Guard(BreakerRegistry()))  # type: ignore[arg-type]

    async def unary(call: Any, count: int) -> None:
        for _ in range(count):
            await call(PAYLOAD)

    async def stream(call: Any, count: int) -> None:
        for _ in range(count):
            async for _message in call(PAYLOAD):
                pass

    def variant(body: Any, call: Any, share: int = 1) -> Callable[[int], None]:
        return lambda count: loop.run_until_complete(body(call, max(1, count // share)))

    # A stream is about as much work as this many unary calls: streams run that much fewer
    # times per round, so every variant's round takes about as long.
    calls_per_stream = STREAM_MESSAGES // 10
    samples = interleaved(
        {
            "unary_plain": variant(unary, _aio_multicallable),
            "unary_control": variant(unary, _aio_multicallable),
            "unary_guarded": variant(unary, guarded.unary_unary(UNARY)),
            "stream_plain": variant(stream, _aio_multicallable, calls_per_stream),
            "stream_control": variant(stream, _aio_multicallable, calls_per_stream),
            "stream_guarded": variant(stream, guarded.unary_stream(STREAM), calls_per_stream),
        },
        rounds=rounds,
        calls=calls,
        clock=time.thread_time_ns,
    )
    loop.close()
    for name in samples:  # per stream, not per `calls`
        if name.startswith("stream"):
            samples[name] = [ns * calls_per_stream for ns in samples[name]]
    result: dict[str, Any] = {"ns": {n: round(statistics.median(v), 1) for n, v in samples.items()}}
    for kind in ("unary", "stream"):
        for other in ("control", "guarded"):
            name = f"{kind}_{other}"
            result[f"{name}_added_ns"] = _added_ns(samples, name, f"{kind}_plain")
            result[f"{name}_ratio"] = round(median_ratio(samples, name, f"{kind}_plain"), 3)
    return result


def guarded_aio_table(cost: dict[str, Any]) -> str:
    ns = cost["ns"]
    rows = [
        [
            case,
            f"{ns[f'{kind}_plain']:.0f}",
            f"{ns[f'{kind}_control']:.0f} ({cost[f'{kind}_control_ratio']:.3f})",
            f"{ns[f'{kind}_guarded']:.0f}",
            f"{cost[f'{kind}_guarded_added_ns']:.0f}",
            f"{cost[f'{kind}_guarded_ratio']:.3f}",
        ]
        for kind, case in (
            ("unary", "aio unary call"),
            ("stream", f"aio server-stream of {STREAM_MESSAGES}, per stream"),
        )
    ]
    headers = ["aio guarded channel, interception alone (CPU, no network)", "plain ns"]
    headers += ["A/A control ns (x plain)", "guarded ns", "added ns", "x plain"]
    return table(headers, rows)


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
