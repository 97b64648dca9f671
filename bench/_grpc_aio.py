"""grpc.aio channels in bench/grpc_overhead.py: unary, server-stream and concurrent workloads."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from bench._grpc_rig import (
    PAYLOAD,
    STREAM,
    STREAM_MESSAGES,
    THREADS,
    UNARY,
    VARIANTS,
    Workload,
    aio_pass_through,
    interleave_aio,
    rotated,
)
from meshbreaker.aio import breaker_interceptors
from meshbreaker.aio import guarded_channel as aio_guarded_channel
from meshbreaker.registry import BreakerRegistry


async def _aio_unary(call: Callable[[bytes], Awaitable[Any]], count: int) -> None:
    for _ in range(count):
        await call(PAYLOAD)


async def _aio_stream(call: Callable[[bytes], Any], count: int) -> None:
    for _ in range(count):
        received = 0
        async for _ in call(PAYLOAD):
            received += 1
        assert received == STREAM_MESSAGES


async def _aio_tasks(call: Callable[[bytes], Awaitable[Any]], count: int) -> list[float]:
    async def worker() -> None:
        for _ in range(count):
            await call(PAYLOAD)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(THREADS)))
    return [(time.perf_counter() - start) / (count * THREADS)]


def _aio_channels(target: str) -> dict[str, grpc.aio.Channel]:
    return {
        "plain": grpc.aio.insecure_channel(target),
        "plain_control": grpc.aio.insecure_channel(target),
        "passthrough": grpc.aio.insecure_channel(target, interceptors=aio_pass_through()),
        "passthrough_control": grpc.aio.insecure_channel(target, interceptors=aio_pass_through()),
        "breaker": grpc.aio.insecure_channel(
            target, interceptors=breaker_interceptors(BreakerRegistry())
        ),
        "guarded": aio_guarded_channel(grpc.aio.insecure_channel(target), BreakerRegistry()),
    }


async def run_aio(
    target: str, rounds: int, calls: int, streams: int, batches: int
) -> dict[str, Any]:
    channels = _aio_channels(target)
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
    rng = random.Random(0)  # the same orders in every run
    for index in range(rounds):
        order = rotated(index)
        await interleave_aio(workloads["unary"], rng, calls, lambda v: _aio_unary(unary[v], 1))
        await interleave_aio(workloads["stream"], rng, streams, lambda v: _aio_stream(stream[v], 1))
        for variant in order:
            cpu = time.process_time()
            samples = [
                (await _aio_tasks(unary[variant], calls // THREADS))[0] for _ in range(batches)
            ]
            operations = batches * (calls // THREADS) * THREADS
            workloads["tasks"].add_round(variant, samples, (time.process_time() - cpu) / operations)
    for channel in channels.values():
        await channel.close()
    return {
        key: workload.summary() | {"name": workload.name} for key, workload in workloads.items()
    }
