"""The rig of bench/grpc_overhead.py: the server process, pass-through interceptors, workloads."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

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


def serve(ports: Any) -> None:
    """The echo server, in its own process so its work does not share the client's GIL."""

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


def aio_pass_through() -> list[Any]:
    """One pass-through interceptor per call kind (a channel files each under one kind)."""
    return [AioPassUnary(), AioPassUnaryStream(), AioPassStreamUnary(), AioPassStreamStream()]


# ----- measurement ---------------------------------------------------------------------------


def rotated(index: int) -> tuple[str, ...]:
    """VARIANTS starting at a different one each round, so none always runs first."""
    start = index % len(VARIANTS)
    return VARIANTS[start:] + VARIANTS[:start]


class _Tally:
    """One round's turns: each variant's wall time per operation, and its summed CPU time."""

    def __init__(self, rng: random.Random, count: int) -> None:
        self._rng = rng
        self._count = count
        self.wall: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        self.cpu = dict.fromkeys(VARIANTS, 0.0)
        self._started = (0.0, 0.0)

    def turns(self) -> Iterator[str]:
        """`count` turns of every variant, each turn in a fresh random order."""
        order = list(VARIANTS)
        for _ in range(self._count):
            self._rng.shuffle(order)
            yield from order

    def start(self) -> None:
        self._started = (time.process_time(), time.perf_counter())

    def stop(self, variant: str) -> None:
        end = time.perf_counter()
        self.wall[variant].append(end - self._started[1])
        self.cpu[variant] += time.process_time() - self._started[0]

    def into(self, workload: Workload) -> None:
        for variant in VARIANTS:
            workload.add_round(variant, self.wall[variant], self.cpu[variant] / self._count)


def interleave(
    workload: Workload, rng: random.Random, count: int, run: Callable[[str], object]
) -> None:
    """One round of `workload`: `count` operations of each variant, one of each in turn.

    Interleaving single operations (not blocks of one variant) puts every variant in the same
    instants of a noisy machine, so a round's per-variant medians are compared like for like.
    Each turn is in a fresh random order: with a fixed cycle every variant would always follow
    the same one, and what an operation leaves behind (caches, the server's threads) would bias
    its successor. The client's CPU time is taken per operation, so each variant's is its own.
    """
    tally = _Tally(rng, count)
    for variant in tally.turns():
        tally.start()
        run(variant)
        tally.stop(variant)
    tally.into(workload)


async def interleave_aio(
    workload: Workload,
    rng: random.Random,
    count: int,
    run: Callable[[str], Awaitable[None]],
) -> None:
    """interleave() for coroutines: the same round, each operation awaited in turn."""
    tally = _Tally(rng, count)
    for variant in tally.turns():
        tally.start()
        await run(variant)
        tally.stop(variant)
    tally.into(workload)


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` quantile of `samples` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Workload:
    """Per-variant samples (seconds per operation), per-round medians, client CPU per round."""

    def __init__(self, name: str, unit: str) -> None:
        self.name = name
        self.unit = unit
        self.samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        self.rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        self.cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}

    def add_round(self, variant: str, samples: list[float], cpu: float) -> None:
        """One round of `variant`: its samples, and the client's CPU seconds per operation."""
        self.samples[variant].extend(samples)
        self.rounds[variant].append(statistics.median(samples))
        self.cpu[variant].append(cpu)

    def summary(self) -> dict[str, Any]:
        variants = {}
        for variant in VARIANTS:
            samples = self.samples[variant]
            median = statistics.median(samples)
            variants[variant] = {
                "median_us": round(median * 1e6, 2),
                "p99_us": round(percentile(samples, 0.99) * 1e6, 2),
                "per_s": round(1.0 / median, 1),
                "client_cpu_us": round(statistics.median(self.cpu[variant]) * 1e6, 2),
            }

        def ratio(variant: str, base: str, rounds: dict[str, list[float]] = self.rounds) -> float:
            pairs = zip(rounds[variant], rounds[base], strict=True)
            return round(statistics.median(a / b for a, b in pairs), 4)

        return {
            "unit": self.unit,
            "rounds": len(self.rounds["plain"]),
            "variants": variants,
            "ratio_to_passthrough": {v: ratio(v, "passthrough") for v in VARIANTS},
            "ratio_to_plain": {v: ratio(v, "plain") for v in VARIANTS},
            "cpu_ratio_to_plain": {v: ratio(v, "plain", self.cpu) for v in VARIANTS},
        }
