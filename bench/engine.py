"""Engine overhead: meshbreaker vs pybreaker and circuitbreaker, measured side by side.

Two "reference" rows put the figures in scale: for a closed call, calling through a function
plus two clock reads and one lock round trip (the naive design's minimum; meshbreaker's quick
successes take no lock, but forward *args/**kwargs and log the duration); for a rejection,
calling a function that raises the same exception.

Variants are interleaved in rounds and the figures quoted are medians of per-round ratios,
because absolute times on shared machines drift by 2x between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import circuitbreaker
import pybreaker

from bench._harness import interleaved, median_ratio, table, write_json
from meshbreaker import (
    BreakerConfig,
    BreakerRegistry,
    CallNotPermittedError,
    CircuitBreaker,
    State,
    WindowType,
    circuit,
)


def work() -> None:
    """The guarded function: as cheap as possible, so the overhead is what is measured."""


def _boom() -> None:
    raise ConnectionError("down")


def _reject() -> None:
    raise CallNotPermittedError("reference", State.OPEN, 1.0)


def closed_variants() -> dict[str, Callable[[int], None]]:
    cb = CircuitBreaker("bench", BreakerConfig())
    guarded = circuit(cb)(work)
    cb_histogram = CircuitBreaker("bench-histogram", BreakerConfig())
    cb_histogram.track_durations()
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    cbr = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60)
    cbr_work = cbr.decorate(work)

    def bare(n: int) -> None:
        for _ in range(n):
            work()

    def mb_call(n: int) -> None:
        call = cb.call
        for _ in range(n):
            call(work)

    def mb_histogram(n: int) -> None:
        call = cb_histogram.call
        for _ in range(n):
            call(work)

    def mb_decorator(n: int) -> None:
        for _ in range(n):
            guarded()

    def mb_guard(n: int) -> None:
        guard = cb.guard
        for _ in range(n):
            with guard():
                work()

    def mb_permit(n: int) -> None:
        acquire = cb.acquire
        for _ in range(n):
            permit = acquire()
            work()
            permit.success()

    lock = threading.Lock()
    clock = time.monotonic

    def timed(fn: Callable[[], None]) -> None:
        start = clock()
        fn()
        lock.acquire()
        try:
            _ = clock() - start
        finally:
            lock.release()

    def reference_closed(n: int) -> None:
        for _ in range(n):
            timed(work)

    def pybreaker_call(n: int) -> None:
        call = pb.call
        for _ in range(n):
            call(work)

    def circuitbreaker_call(n: int) -> None:
        for _ in range(n):
            cbr_work()

    return {
        "bare": bare,
        "meshbreaker cb.call": mb_call,
        "meshbreaker cb.call + duration histogram": mb_histogram,
        "meshbreaker @circuit": mb_decorator,
        "meshbreaker guard()": mb_guard,
        "meshbreaker acquire/success": mb_permit,
        "pybreaker": pybreaker_call,
        "circuitbreaker": circuitbreaker_call,
        "reference: call(fn) + 2 clock reads + lock": reference_closed,
    }


def throttle_variants() -> dict[str, Callable[[int], None]]:
    """cb.call with throttling off, on (quiet), and off on a second breaker: the A/A control."""

    def calling(config: BreakerConfig, name: str) -> Callable[[int], None]:
        call = CircuitBreaker(name, config).call

        def run(n: int) -> None:
            for _ in range(n):
                call(work)

        return run

    return {
        "cb.call": calling(BreakerConfig(), "bench-off"),
        "cb.call + adaptive throttling": calling(BreakerConfig(throttle_k=2.0), "bench-throttle"),
        "cb.call, a second breaker (A/A)": calling(BreakerConfig(), "bench-off-again"),
    }


def alternating(
    variants: dict[str, Callable[[int], None]], *, rounds: int, calls: int
) -> dict[str, list[float]]:
    """Like interleaved(), with the order reversed every other round: no variant always runs first.

    For ratios near 1, where running first or last in a round (cache, allocator, the machine's
    drift within a round) is as large as the difference measured.
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run(min(calls, 2000))  # warm-up
    order = list(variants)
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            start = time.perf_counter_ns()
            variants[name](calls)
            samples[name].append((time.perf_counter_ns() - start) / calls)
    return samples


def open_variants() -> dict[str, Callable[[int], None]]:
    cb = CircuitBreaker("bench-open", BreakerConfig(open_duration=3600, open_duration_max=3600))
    cb.force_open()
    cb_auto = CircuitBreaker(
        "bench-open",
        BreakerConfig(consecutive_failures=1, open_duration=3600, open_duration_max=3600),
    )
    with contextlib.suppress(ConnectionError):
        cb_auto.call(_boom)
    pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    pb.open()
    cbr = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    cbr_boom = cbr.decorate(_boom)
    with contextlib.suppress(ConnectionError):
        cbr_boom()

    def rejecting(call: Callable[[], object], error: type[BaseException]) -> Callable[[int], None]:
        # A plain try/except, as callers write it, and partial() rather than a lambda: harness
        # overhead (contextlib.suppress costs more than a whole rejection) would dilute the ratios.
        def run(n: int) -> None:
            for _ in range(n):
                try:  # noqa: SIM105 (suppress() would be most of what is timed)
                    call()
                except error:
                    pass

        return run

    return {
        "meshbreaker OPEN": rejecting(partial(cb_auto.call, work), CallNotPermittedError),
        "meshbreaker FORCED_OPEN": rejecting(partial(cb.call, work), CallNotPermittedError),
        "pybreaker OPEN": rejecting(partial(pb.call, work), pybreaker.CircuitBreakerError),
        "circuitbreaker OPEN": rejecting(cbr_boom, circuitbreaker.CircuitBreakerError),
        "reference: call(fn) that raises": rejecting(_reject, CallNotPermittedError),
    }


def async_variants() -> dict[str, Callable[[int], None]]:
    cb = CircuitBreaker("bench-async", BreakerConfig())

    async def awork() -> None:
        pass

    async def bare(n: int) -> None:
        for _ in range(n):
            await awork()

    async def guarded(n: int) -> None:
        call_async = cb.call_async
        for _ in range(n):
            await call_async(awork)

    loop = asyncio.new_event_loop()
    return {
        "await bare": lambda n: loop.run_until_complete(bare(n)),
        "await cb.call_async": lambda n: loop.run_until_complete(guarded(n)),
    }


MEMORY_CONFIGS = {
    "default config": BreakerConfig(),
    "largest COUNT window (1,000,000 calls)": BreakerConfig(
        window_type=WindowType.COUNT, window_size=1_000_000
    ),
    "largest TIME window (3600 s)": BreakerConfig(window_size=3600),
}


def bytes_per_breaker(config: BreakerConfig, breakers: int) -> float:
    """Bytes traced per breaker for `breakers` breakers of one registry, one call each."""
    registry = BreakerRegistry(config)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(breakers):
            registry.get(f"/bench.v1.Service/Method{index}").call(work)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / breakers
    finally:
        tracemalloc.stop()


def threaded(guard: Callable[[Callable[[], Any]], Any] | None, threads: int, calls: int) -> float:
    """Calls per second of `threads` threads, each sleeping 1 ms per call (GIL released)."""

    def sleeper() -> None:
        time.sleep(0.001)

    def run() -> None:
        for _ in range(calls):
            if guard is None:
                sleeper()
            else:
                guard(sleeper)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * calls / (time.perf_counter() - start)


def main(quick: bool = False) -> dict[str, Any]:
    """Run every engine benchmark, print the tables and write bench/results/engine.json."""
    logging.getLogger("pybreaker").setLevel(logging.CRITICAL)
    rounds, calls = (5, 5_000) if quick else (15, 20_000)
    closed = interleaved(closed_variants(), rounds=rounds, calls=calls)
    rejected = interleaved(open_variants(), rounds=rounds, calls=calls)
    throttling = alternating(throttle_variants(), rounds=2 * rounds, calls=calls)
    awaited = interleaved(async_variants(), rounds=rounds, calls=calls)

    thread_rounds, thread_calls = (3, 30) if quick else (7, 100)
    cb = CircuitBreaker("bench-threads", BreakerConfig())
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    per_round: dict[str, list[float]] = {"none": [], "meshbreaker": [], "pybreaker": []}
    for _ in range(thread_rounds):
        per_round["none"].append(threaded(None, 8, thread_calls))
        per_round["meshbreaker"].append(threaded(cb.call, 8, thread_calls))
        per_round["pybreaker"].append(threaded(pb.call, 8, thread_calls))

    breakers = 2_000 if quick else 10_000
    memory = {name: bytes_per_breaker(config, breakers) for name, config in MEMORY_CONFIGS.items()}

    results: dict[str, Any] = {
        "memory_bytes_per_breaker": memory,
        "memory_breakers": breakers,
        "closed_ns": {k: statistics.median(v) for k, v in closed.items()},
        "open_ns": {k: statistics.median(v) for k, v in rejected.items()},
        "throttle_ns": {k: statistics.median(v) for k, v in throttling.items()},
        "async_ns": {k: statistics.median(v) for k, v in awaited.items()},
        "threads_calls_per_s": {k: statistics.median(v) for k, v in per_round.items()},
        "ratios": {
            "closed cb.call / pybreaker": median_ratio(closed, "meshbreaker cb.call", "pybreaker"),
            "closed cb.call / circuitbreaker": median_ratio(
                closed, "meshbreaker cb.call", "circuitbreaker"
            ),
            "closed @circuit / circuitbreaker": median_ratio(
                closed, "meshbreaker @circuit", "circuitbreaker"
            ),
            "closed cb.call histogram on / off": median_ratio(
                closed, "meshbreaker cb.call + duration histogram", "meshbreaker cb.call"
            ),
            "closed cb.call throttling on / off": median_ratio(
                throttling, "cb.call + adaptive throttling", "cb.call"
            ),
            "closed cb.call A/A: a second breaker / the first (noise)": median_ratio(
                throttling, "cb.call, a second breaker (A/A)", "cb.call"
            ),
            "rejection / pybreaker": median_ratio(rejected, "meshbreaker OPEN", "pybreaker OPEN"),
            "rejection / circuitbreaker": median_ratio(
                rejected, "meshbreaker OPEN", "circuitbreaker OPEN"
            ),
            "reference closed / pybreaker": median_ratio(
                closed, "reference: call(fn) + 2 clock reads + lock", "pybreaker"
            ),
            "reference rejection / pybreaker": median_ratio(
                rejected, "reference: call(fn) that raises", "pybreaker OPEN"
            ),
            "call_async / bare await": median_ratio(awaited, "await cb.call_async", "await bare"),
            "8 threads meshbreaker / no breaker": statistics.median(
                m / n for m, n in zip(per_round["meshbreaker"], per_round["none"], strict=True)
            ),
            "8 threads pybreaker / no breaker": statistics.median(
                p / n for p, n in zip(per_round["pybreaker"], per_round["none"], strict=True)
            ),
        },
        "memory_targets": {
            "default config": 2 * 1024,
            "largest COUNT window (1,000,000 calls)": 64 * 1024,
            "largest TIME window (3600 s)": 64 * 1024,
        },
        "targets": {
            "closed cb.call / pybreaker": 0.3,
            "closed cb.call / circuitbreaker": 0.6,
            "closed cb.call histogram on / off": 1.2,
            "closed cb.call throttling on / off": 1.2,
            "rejection / pybreaker": 0.25,
            "8 threads meshbreaker / no breaker": 0.95,
        },
        "rounds": rounds,
        "calls_per_round": calls,
    }
    _print(results)
    write_json("engine", results)
    return results


def _print(results: dict[str, Any]) -> None:
    rows = []
    for group in ("closed_ns", "throttle_ns", "open_ns", "async_ns"):
        for name, ns in results[group].items():
            rows.append([group.removesuffix("_ns"), name, f"{ns:,.0f} ns"])
    for name, rate in results["threads_calls_per_s"].items():
        rows.append(["8 threads, 1 ms sleep", name, f"{rate:,.0f} calls/s"])
    print(table(["case", "variant", "median"], rows))
    print()
    ratio_rows = []
    for name, value in results["ratios"].items():
        target = results["targets"].get(name)
        if target is None:
            verdict = ""
        elif name.startswith("8 threads"):
            verdict = f"≥ {target} " + ("met" if value >= target else "MISSED")
        else:
            verdict = f"≤ {target} " + ("met" if value <= target else "MISSED")
        ratio_rows.append([name, f"{value:.2f}x", verdict])
    print(table(["ratio (median of per-round ratios)", "value", "target"], ratio_rows))
    print()
    memory_rows = []
    for name, size in results["memory_bytes_per_breaker"].items():
        target = results["memory_targets"][name]
        verdict = f"≤ {target:,} B " + ("met" if size <= target else "MISSED")
        memory_rows.append([name, f"{size:,.0f} B", verdict])
    breakers = results["memory_breakers"]
    headers = [f"memory per breaker ({breakers:,} breakers, one call each)", "bytes", "target"]
    print(table(headers, memory_rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    main(quick=parser.parse_args().quick)
