"""What BreakerInterceptor and guarded_channel cost per RPC, next to a plain channel.

Variants: a plain channel (and a second one, its A/A control), grpc.intercept_channel with a
pass-through interceptor (and its A/A control), BreakerInterceptor, and guarded_channel.

Also what the call-duration histogram (the metrics' one per-call cost) adds to a guarded call.

One run, one server process (a subprocess, so server work does not share the client's GIL), and
interleaved rounds: every round measures each variant once, in a rotating order, so drift on a
noisy machine hits all variants alike. Ratios are medians of per-round ratios. A second
pass-through interceptor is the A/A control: its ratio to the first shows the noise floor.

    python -m bench.grpc_overhead [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

from bench._harness import interleaved, median_ratio, table, write_json
from meshbreaker.aio import breaker_interceptors
from meshbreaker.aio import guarded_channel as aio_guarded_channel
from meshbreaker.grpc import BreakerInterceptor, guarded_channel
from meshbreaker.registry import BreakerRegistry

SERVICE = "bench.Svc"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
PAYLOAD = b"x" * 32
STREAM_MESSAGES = 100
THREADS = 4
VARIANTS = (
    "plain",
    "plain_control",
    "passthrough",
    "passthrough_control",
    "breaker",
    "guarded",
)


# ----- the server (its own process) --------------------------------------------------------------


def _serve(ports: Any) -> None:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(STREAM_MESSAGES):
            yield request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ports.put(port)
    server.wait_for_termination()


# ----- the pass-through interceptors -------------------------------------------------------------


class PassThrough(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """The cheapest possible sync interceptor: the baseline for what interception itself costs."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)

    def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)


async def _aio_pass(self: Any, continuation: Any, details: Any, request: Any) -> Any:
    return await continuation(details, request)


# A grpc.aio channel files each interceptor under one call kind, hence one class per kind.
class AioPassUnary(grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _aio_pass  # type: ignore[assignment]


class AioPassUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _aio_pass  # type: ignore[assignment]


class AioPassStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _aio_pass  # type: ignore[assignment]


class AioPassStreamStream(grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _aio_pass  # type: ignore[assignment]


def _aio_pass_through() -> list[Any]:
    return [AioPassUnary(), AioPassUnaryStream(), AioPassStreamUnary(), AioPassStreamStream()]


# ----- measurement ---------------------------------------------------------------------------


def _rotated(index: int) -> tuple[str, ...]:
    """VARIANTS starting at a different one each round, so none always runs first."""
    start = index % len(VARIANTS)
    return VARIANTS[start:] + VARIANTS[:start]


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Workload:
    """Per-variant samples (seconds per operation) and per-round medians."""

    def __init__(self, name: str, unit: str) -> None:
        self.name = name
        self.unit = unit
        self.samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        self.rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}

    def add_round(self, variant: str, samples: list[float]) -> None:
        self.samples[variant].extend(samples)
        self.rounds[variant].append(statistics.median(samples))

    def summary(self) -> dict[str, Any]:
        variants = {}
        for variant in VARIANTS:
            samples = self.samples[variant]
            median = statistics.median(samples)
            variants[variant] = {
                "median_us": round(median * 1e6, 2),
                "p99_us": round(_percentile(samples, 0.99) * 1e6, 2),
                "per_s": round(1.0 / median, 1),
            }

        def ratio(variant: str, base: str) -> float:
            pairs = zip(self.rounds[variant], self.rounds[base], strict=True)
            return round(statistics.median(a / b for a, b in pairs), 4)

        return {
            "unit": self.unit,
            "rounds": len(self.rounds["plain"]),
            "variants": variants,
            "ratio_to_passthrough": {v: ratio(v, "passthrough") for v in VARIANTS},
            "ratio_to_plain": {v: ratio(v, "plain") for v in VARIANTS},
        }


def _sync_channels(target: str) -> dict[str, grpc.Channel]:
    return {
        "plain": grpc.insecure_channel(target),
        "plain_control": grpc.insecure_channel(target),
        "passthrough": grpc.intercept_channel(grpc.insecure_channel(target), PassThrough()),
        "passthrough_control": grpc.intercept_channel(grpc.insecure_channel(target), PassThrough()),
        "breaker": grpc.intercept_channel(
            grpc.insecure_channel(target), BreakerInterceptor(BreakerRegistry())
        ),
        "guarded": guarded_channel(grpc.insecure_channel(target), BreakerRegistry()),
    }


def _sync_unary(call: Callable[[bytes], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call(PAYLOAD)
        samples.append(time.perf_counter() - start)
    return samples


def _sync_stream(call: Callable[[bytes], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        received = sum(1 for _ in call(PAYLOAD))
        samples.append(time.perf_counter() - start)
        assert received == STREAM_MESSAGES
    return samples


def _sync_threads(call: Callable[[bytes], Any], count: int, pool: futures.Executor) -> list[float]:
    """Wall time per call with THREADS threads calling at once (one sample per batch)."""
    barrier = threading.Barrier(THREADS + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(count):
            call(PAYLOAD)

    jobs = [pool.submit(worker) for _ in range(THREADS)]
    barrier.wait()
    start = time.perf_counter()
    for job in jobs:
        job.result()
    return [(time.perf_counter() - start) / (count * THREADS)]


def _run_sync(target: str, rounds: int, calls: int, streams: int, batches: int) -> dict[str, Any]:
    channels = _sync_channels(target)
    unary: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
        v: channels[v].unary_unary(UNARY) for v in VARIANTS
    }
    stream: dict[str, grpc.UnaryStreamMultiCallable[bytes, bytes]] = {
        v: channels[v].unary_stream(STREAM) for v in VARIANTS
    }
    workloads = {
        "unary": Workload("sync unary, 1 thread", "us/call"),
        "stream": Workload(f"sync server-stream of {STREAM_MESSAGES}", "us/stream"),
        "threads": Workload(f"sync unary, {THREADS} threads", "us/call (wall)"),
    }
    with futures.ThreadPoolExecutor(THREADS) as pool:
        for variant in VARIANTS:  # warm-up: connections, code paths, breakers
            _sync_unary(unary[variant], 50)
            _sync_stream(stream[variant], 5)
        for index in range(rounds):
            for variant in _rotated(index):
                workloads["unary"].add_round(variant, _sync_unary(unary[variant], calls))
                workloads["stream"].add_round(variant, _sync_stream(stream[variant], streams))
                samples = [
                    _sync_threads(unary[variant], calls // THREADS, pool)[0] for _ in range(batches)
                ]
                workloads["threads"].add_round(variant, samples)
    for channel in channels.values():
        channel.close()
    return {
        key: workload.summary() | {"name": workload.name} for key, workload in workloads.items()
    }


async def _aio_unary(call: Callable[[bytes], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await call(PAYLOAD)
        samples.append(time.perf_counter() - start)
    return samples


async def _aio_stream(call: Callable[[bytes], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        received = 0
        async for _ in call(PAYLOAD):
            received += 1
        samples.append(time.perf_counter() - start)
        assert received == STREAM_MESSAGES
    return samples


async def _aio_tasks(call: Callable[[bytes], Awaitable[Any]], count: int) -> list[float]:
    async def worker() -> None:
        for _ in range(count):
            await call(PAYLOAD)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(THREADS)))
    return [(time.perf_counter() - start) / (count * THREADS)]


async def _run_aio(
    target: str, rounds: int, calls: int, streams: int, batches: int
) -> dict[str, Any]:
    channels = {
        "plain": grpc.aio.insecure_channel(target),
        "plain_control": grpc.aio.insecure_channel(target),
        "passthrough": grpc.aio.insecure_channel(target, interceptors=_aio_pass_through()),
        "passthrough_control": grpc.aio.insecure_channel(target, interceptors=_aio_pass_through()),
        "breaker": grpc.aio.insecure_channel(
            target, interceptors=breaker_interceptors(BreakerRegistry())
        ),
        "guarded": aio_guarded_channel(grpc.aio.insecure_channel(target), BreakerRegistry()),
    }
    unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {
        v: channels[v].unary_unary(UNARY) for v in VARIANTS
    }
    stream: dict[str, grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = {
        v: channels[v].unary_stream(STREAM) for v in VARIANTS
    }
    workloads = {
        "unary": Workload("aio unary, 1 task", "us/call"),
        "stream": Workload(f"aio server-stream of {STREAM_MESSAGES}", "us/stream"),
        "tasks": Workload(f"aio unary, {THREADS} concurrent tasks", "us/call (wall)"),
    }
    for variant in VARIANTS:
        await _aio_unary(unary[variant], 50)
        await _aio_stream(stream[variant], 5)
    for index in range(rounds):
        for variant in _rotated(index):
            workloads["unary"].add_round(variant, await _aio_unary(unary[variant], calls))
            workloads["stream"].add_round(variant, await _aio_stream(stream[variant], streams))
            samples = [
                (await _aio_tasks(unary[variant], calls // THREADS))[0] for _ in range(batches)
            ]
            workloads["tasks"].add_round(variant, samples)
    for channel in channels.values():
        await channel.close()
    return {
        key: workload.summary() | {"name": workload.name} for key, workload in workloads.items()
    }


# ----- report --------------------------------------------------------------------------------


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


def _interceptor_cost(rounds: int, calls: int) -> dict[str, Any]:
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


def _histogram_table(cost: dict[str, Any]) -> str:
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


def _table(results: dict[str, Any]) -> str:
    rows = []
    for api in ("sync", "aio"):
        for workload in results[api].values():
            for variant in VARIANTS:
                row = workload["variants"][variant]
                rows.append(
                    [
                        workload["name"],
                        variant,
                        f"{row['median_us']:.1f}",
                        f"{row['p99_us']:.1f}",
                        f"{row['per_s']:.0f}",
                        f"{workload['ratio_to_passthrough'][variant]:.3f}",
                        f"{workload['ratio_to_plain'][variant]:.3f}",
                    ]
                )
    headers = ["workload", "variant", "median µs", "p99 µs", "per s", "x pass-through", "x plain"]
    return table(headers, rows)


def main(quick: bool = False) -> dict[str, Any]:
    """Runs the benchmark, prints the table, writes bench/results/grpc_overhead.json."""
    rounds, calls, streams, batches = (4, 200, 10, 2) if quick else (12, 600, 30, 3)
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    try:
        target = f"127.0.0.1:{ports.get(timeout=30)}"
        started = time.time()
        results: dict[str, Any] = {
            "meta": {
                "quick": quick,
                "rounds": rounds,
                "calls_per_round": calls,
                "streams_per_round": streams,
                "stream_messages": STREAM_MESSAGES,
                "threads": THREADS,
                "python": sys.version.split()[0],
                "grpcio": grpc.__version__,
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_average_before": list(os.getloadavg()),
            },
            "sync": _run_sync(target, rounds, calls, streams, batches),
            "aio": asyncio.run(_run_aio(target, rounds, calls, streams, batches)),
            "interceptor_cost": _interceptor_cost(rounds, 20_000 if quick else 100_000),
        }
        results["meta"]["seconds"] = round(time.time() - started, 1)
        results["meta"]["load_average_after"] = list(os.getloadavg())
    finally:
        server.terminate()
        server.join(10)
    cost = results["interceptor_cost"]
    print(_table(results))
    print(
        "\nx plain / x pass-through = median over rounds of variant / that variant, measured in"
        " the same round; plain_control and passthrough_control are the A/A noise floors."
        " Targets (issue 18): guarded x plain <= 1.03 (sync unary, server-stream), <= 1.05 (aio"
        " unary)."
    )
    print(
        f"Interception alone, no network: breaker adds {cost['added_ns_sync']:.0f} ns per sync"
        f" call and {cost['added_ns_aio']:.0f} ns per aio call over a pass-through interceptor."
    )
    print()
    print(_histogram_table(cost))
    print(f"wrote {write_json('grpc_overhead', results)}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    main(quick=parser.parse_args().quick)
