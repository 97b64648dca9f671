"""Overload control, measured side by side: retry amplification, and goodput under overload.

A real gRPC server on loopback simulates a backend with `CAPACITY` workers: a call that finds n
calls in flight takes BASE_LATENCY * max(1, n / CAPACITY) (it queues) and fails with
RESOURCE_EXHAUSTED with probability clamp((n - 2 * CAPACITY) / (2 * CAPACITY), 0, 0.95) (the
queue overflows). Closed-loop clients (threads) call it through meshbreaker's interceptor, each
thinking THINK seconds between calls, whatever the answer.

Goodput (successful calls per second) is compared for: no limit; a fixed bulkhead
(max_concurrent_calls) swept to find the best one in hindsight; the adaptive limit; adaptive
throttling; both. Retry amplification (attempts the server saw / calls the clients made) is
measured with a retry policy with and without its budget, while half of all attempts fail, and
while all do; and for client-streaming calls (STREAM_LENGTH requests each, replayed from gRFC A6's
buffer on every retry) while half fail, with the messages each attempt delivered.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from bench._harness import table, write_json
from meshbreaker import BreakerConfig, BreakerRegistry, CallNotPermittedError
from meshbreaker.grpc import BreakerInterceptor
from meshbreaker.retry import RetryPolicy

CAPACITY = 8
BASE_LATENCY = 0.05
THINK = 0.05
CLIENTS = 32
METHOD = "/bench.Backend/Work"
STREAM_METHOD = "/bench.Backend/WorkStream"
STREAM_LENGTH = 4
# The breaker itself never trips here: what is measured is the overload controls alone.
QUIET = BreakerConfig(consecutive_failures=0, failure_rate_threshold=1.0, minimum_calls=10**6)
# The variants with no tuning, held to GOODPUT_TARGET x the best fixed bulkhead in hindsight.
ADAPTIVE = ("adaptive limit", "adaptive throttling (k=2)", "adaptive limit + throttling")
GOODPUT_TARGET = 0.9


class Backend:
    """The simulated backend: latency and errors grow with the calls in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.attempts = 0
        self.messages = 0  # requests received by WorkStream
        self.fail_ratio = 0.0  # an outage: this share of attempts fails whatever the load
        self.rng = random.Random(7)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
        handlers: dict[str, grpc.RpcMethodHandler[Any, bytes]] = {
            "Work": grpc.unary_unary_rpc_method_handler(self._work),
            "WorkStream": grpc.stream_unary_rpc_method_handler(self._work_stream),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Backend", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _work(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.in_flight += 1
            self.attempts += 1
            load = self.in_flight
            draw = self.rng.random()
        try:
            if draw < self.fail_ratio:
                context.abort(grpc.StatusCode.UNAVAILABLE, "outage")
            time.sleep(BASE_LATENCY * max(1.0, load / CAPACITY))
            overflow = min(0.95, max(0.0, (load - 2 * CAPACITY) / (2 * CAPACITY)))
            if draw < overflow:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
            return request
        finally:
            with self.lock:
                self.in_flight -= 1

    def _work_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        received = sum(1 for _ in requests)  # all of them first: the call's work is its stream
        with self.lock:
            self.messages += received
        return self._work(b"x" * received, context)

    def stop(self) -> None:
        self.server.stop(None)


def drive(
    backend: Backend,
    config: BreakerConfig,
    seconds: float,
    clients: int,
    warmup: float,
    think: float = THINK,
    streamed: bool = False,
) -> dict[str, Any]:
    """Run `clients` closed-loop clients for `warmup` + `seconds`; what they saw in `seconds`.

    The warm-up uses the same registry, so limits and budgets have learned when counting starts.
    `streamed`: client-streaming calls of STREAM_LENGTH requests instead of unary ones.
    """
    registry = BreakerRegistry(config)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{backend.port}"), BreakerInterceptor(registry)
    )
    method = STREAM_METHOD if streamed else METHOD
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
    stream: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(STREAM_METHOD)
    requests = [b"x"] * STREAM_LENGTH

    def call(request: bytes, timeout: float) -> bytes:
        if streamed:
            return stream(iter(requests), timeout=timeout)
        return unary(request, timeout=timeout)

    stop, measuring = threading.Event(), threading.Event()
    counts = {"calls": 0, "ok": 0, "refused": 0, "failed": 0}
    lock = threading.Lock()

    def client() -> None:
        mine = {"calls": 0, "ok": 0, "refused": 0, "failed": 0}
        while not stop.is_set():
            counted = measuring.is_set()
            try:
                call(b"x", timeout=5)
                outcome = "ok"
            except grpc.RpcError as error:
                outcome = "refused" if isinstance(error, CallNotPermittedError) else "failed"
            if counted:
                mine["calls"] += 1
                mine[outcome] += 1
            time.sleep(think)
        with lock:
            for key, value in mine.items():
                counts[key] += value

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    with backend.lock:
        attempts_before, messages_before = backend.attempts, backend.messages
    measuring.set()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - started
    with backend.lock:
        attempts = backend.attempts - attempts_before
        messages = backend.messages - messages_before
    for thread in threads:
        thread.join()
    snapshot = registry.get(method).snapshot()
    channel.close()
    return {
        **counts,
        "attempts": attempts,
        "goodput": counts["ok"] / elapsed,
        "calls_per_second": counts["calls"] / elapsed,
        "amplification": attempts / max(1, counts["calls"] - counts["refused"]),
        "messages_per_attempt": messages / max(1, attempts) if streamed else None,
        "concurrency_limit": snapshot.concurrency_limit,
        "throttle_probability": snapshot.throttle_probability,
    }


def goodput(backend: Backend, seconds: float, bulkheads: list[int], rounds: int) -> dict[str, Any]:
    """Goodput of every variant: rounds of all variants in turn, each variant's median round.

    Interleaved rounds, because the machine's load drifts: a variant measured only early or only
    late would be compared with a different machine.
    """
    variants: dict[str, BreakerConfig] = {"no limit": QUIET}
    for size in bulkheads:
        variants[f"bulkhead {size}"] = QUIET.replace(max_concurrent_calls=size)
    variants["adaptive limit"] = QUIET.replace(concurrency_limit="adaptive")
    variants["adaptive throttling (k=2)"] = QUIET.replace(throttle_k=2.0)
    variants["adaptive limit + throttling"] = QUIET.replace(
        concurrency_limit="adaptive", throttle_k=2.0
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, config in variants.items():
            runs[name].append(drive(backend, config, seconds, CLIENTS, warmup=min(2.0, seconds)))
    results = {}
    for name, measured in runs.items():
        ordered = sorted(measured, key=lambda row: float(row["goodput"]))
        results[name] = {**ordered[len(ordered) // 2], "rounds": [r["goodput"] for r in measured]}
    return results


def amplification(backend: Backend, retry_seconds: float, warmup: float) -> dict[str, Any]:
    """Attempts per call with retries, with and without the budget, in two outages.

    Counted after a warm-up of one budget ttl, so the budget is in its steady state: retries <=
    0.2 x calls + 10/s, which stays under 1.25 x calls from 200 calls/s on.
    """
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.005)
    unbudgeted = RetryPolicy(
        max_attempts=5, initial_backoff=0.001, max_backoff=0.005, budget_ratio=1000.0
    )
    results = {}
    for share in (0.5, 1.0):
        backend.fail_ratio = share
        for label, retry in (("budget", policy), ("no budget", unbudgeted)):
            config = QUIET.replace(retry=retry, idempotent=True)
            name = f"{share:.0%} of attempts fail, {label}"
            results[name] = drive(backend, config, retry_seconds, 32, warmup, think=0.01)
    backend.fail_ratio = 0.5
    for label, retry in (("budget", policy), ("no budget", unbudgeted)):
        config = QUIET.replace(retry=retry, idempotent=True)
        name = f"50% of attempts fail, request streams of {STREAM_LENGTH}, {label}"
        results[name] = drive(backend, config, retry_seconds, 32, warmup, 0.01, streamed=True)
    backend.fail_ratio = 0.0
    return results


def main(quick: bool = False) -> dict[str, Any]:
    """Run both measurements, print the tables and write bench/results/overload.json."""
    seconds, rounds = (1.5, 1) if quick else (3.0, 3)
    bulkheads = [4, 8, 16, 32] if quick else [2, 4, 8, 12, 16, 24, 32]
    backend = Backend()
    try:
        measured = goodput(backend, seconds, bulkheads, rounds)
        # Counted over one budget ttl (10 s), after one: any shorter window can see a share of
        # the budget that its own calls did not deposit.
        retried = amplification(backend, seconds if quick else 10.0, 1.0 if quick else 10.0)
    finally:
        backend.stop()
    best_name = max(
        (name for name in measured if name.startswith("bulkhead")),
        key=lambda name: measured[name]["goodput"],
    )
    best = measured[best_name]["goodput"]
    results: dict[str, Any] = {
        "goodput": measured,
        "retries": retried,
        "best_fixed_bulkhead": best_name,
        "ratios": {
            f"{name} / best fixed bulkhead": measured[name]["goodput"] / best
            for name in ("no limit", *ADAPTIVE)
        },
        "targets": {
            **{f"{name} / best fixed bulkhead": GOODPUT_TARGET for name in ADAPTIVE},
            "amplification with the budget": 1.25,
        },
        "model": {
            "capacity": CAPACITY,
            "base_latency": BASE_LATENCY,
            "think": THINK,
            "clients": CLIENTS,
            "seconds": seconds,
        },
    }
    _print(results)
    write_json("overload", results)
    return results


def _rows(results: dict[str, Any]) -> Iterator[list[str]]:
    best = results["goodput"][results["best_fixed_bulkhead"]]["goodput"]
    for name, row in results["goodput"].items():
        limit = row["concurrency_limit"]
        ratio = row["goodput"] / best
        verdict = ""
        if name in ADAPTIVE:
            verdict = f"≥ {GOODPUT_TARGET} " + ("met" if ratio >= GOODPUT_TARGET else "MISSED")
        yield [
            name,
            f"{row['goodput']:,.0f}/s",
            f"{ratio:.2f}",
            f"{row['failed'] / max(1, row['calls']):.0%}",
            f"{row['refused'] / max(1, row['calls']):.0%}",
            "" if limit is None else str(limit),
            verdict,
        ]


def _print(results: dict[str, Any]) -> None:
    headers = ["variant", "goodput", "/ best bulkhead", "failed", "refused locally", "limit"]
    headers.append("target")
    print(table(headers, list(_rows(results))))
    print()
    rows = []
    for name, row in results["retries"].items():
        verdict = ""
        if name.endswith(", budget"):
            met = row["amplification"] <= results["targets"]["amplification with the budget"]
            verdict = "≤ 1.25 " + ("met" if met else "MISSED")
        rate = row["calls_per_second"]
        per_attempt = row.get("messages_per_attempt")
        replayed = "" if per_attempt is None else f"{per_attempt:.2f}"
        rows.append([name, f"{rate:,.0f}/s", f"{row['amplification']:.2f}", replayed, verdict])
    headers = ["retries (max_attempts=5)", "calls", "attempts / call", "messages / attempt"]
    headers.append("target")
    print(table(headers, rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke run")
    main(quick=parser.parse_args().quick)
