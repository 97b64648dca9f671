"""Sync channels in bench/grpc_overhead.py: unary, server-stream and threaded unary workloads."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from bench._grpc_rig import (
    PAYLOAD,
    STREAM,
    STREAM_MESSAGES,
    THREADS,
    UNARY,
    VARIANTS,
    PassThrough,
    Workload,
    interleave,
    rotated,
)
from meshbreaker.grpc import BreakerInterceptor, guarded_channel
from meshbreaker.registry import BreakerRegistry


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


def _sync_unary(call: Callable[[bytes], Any], count: int) -> None:
    for _ in range(count):
        call(PAYLOAD)


def _sync_stream(call: Callable[[bytes], Any], count: int) -> None:
    for _ in range(count):
        received = sum(1 for _ in call(PAYLOAD))
        assert received == STREAM_MESSAGES


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


def run_sync(target: str, rounds: int, calls: int, streams: int, batches: int) -> dict[str, Any]:
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
        rng = random.Random(0)  # the same orders in every run
        for index in range(rounds):
            order = rotated(index)
            interleave(workloads["unary"], rng, calls, lambda v: unary[v](PAYLOAD))
            interleave(workloads["stream"], rng, streams, lambda v: _sync_stream(stream[v], 1))
            for variant in order:
                cpu = time.process_time()
                samples = [
                    _sync_threads(unary[variant], calls // THREADS, pool)[0] for _ in range(batches)
                ]
                operations = batches * (calls // THREADS) * THREADS
                workloads["threads"].add_round(
                    variant, samples, (time.process_time() - cpu) / operations
                )
    for channel in channels.values():
        channel.close()
    return {
        key: workload.summary() | {"name": workload.name} for key, workload in workloads.items()
    }
