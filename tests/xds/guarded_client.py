"""gRPC's xDS client with meshbreaker's interceptor on top, run as its own process.

argv: TARGET FLAVOUR ("sync" or "aio"). It makes one call to /test.Echo/Who (waiting for the
channel to be ready), then N concurrent calls to /test.Echo/Hold (N read from stdin), printing
one {"result": ...} line as each ends, then {"snapshot": ...} of the Hold breaker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import sys
from typing import Any

import grpc
import grpc.aio

from meshbreaker import BreakerConfig, BreakerRegistry
from meshbreaker.aio import breaker_interceptors
from meshbreaker.grpc import BreakerInterceptor

TIMEOUT = 20.0
# Two failures in a row would open it: the drops must not count as failures.
CONFIG = BreakerConfig(consecutive_failures=2, minimum_calls=100)


def snapshot(registry: BreakerRegistry) -> dict[str, Any]:
    state = registry.get("/test.Echo/Hold").snapshot()
    return {
        "state": state.state.value,
        "failed": state.failed,
        "successful": state.successful,
        "ignored": state.ignored,
        "rejected": state.rejected,
    }


def describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


def report(ended: queue.Queue[str], future: Any) -> None:
    try:
        ended.put(bytes(future.result()).decode())
    except grpc.RpcError as error:
        ended.put(describe(error))


def run_sync(target: str, count: int, registry: BreakerRegistry) -> None:
    channel = grpc.intercept_channel(grpc.insecure_channel(target), BreakerInterceptor(registry))
    who: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Echo/Who")
    who(b"", timeout=TIMEOUT, wait_for_ready=True)
    hold: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Echo/Hold")
    ended: queue.Queue[str] = queue.Queue()
    futures = [hold.future(b"", timeout=TIMEOUT) for _ in range(count)]
    for future in futures:
        future.add_done_callback(functools.partial(report, ended))
    for _ in futures:
        print(json.dumps({"result": ended.get()}), flush=True)
    print(json.dumps({"snapshot": snapshot(registry)}), flush=True)
    channel.close()


async def run_aio(target: str, count: int, registry: BreakerRegistry) -> None:
    async with grpc.aio.insecure_channel(
        target, interceptors=breaker_interceptors(registry)
    ) as channel:
        who: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Echo/Who")
        await who(b"", timeout=TIMEOUT, wait_for_ready=True)
        hold: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/test.Echo/Hold"
        )

        async def one() -> None:
            try:
                result = bytes(await hold(b"", timeout=TIMEOUT)).decode()
            except grpc.aio.AioRpcError as error:
                result = describe(error)
            print(json.dumps({"result": result}), flush=True)

        await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps({"snapshot": snapshot(registry)}), flush=True)


def main() -> None:
    target, flavour = sys.argv[1], sys.argv[2]
    count = int(sys.stdin.readline())
    registry = BreakerRegistry(CONFIG)
    if flavour == "sync":
        run_sync(target, count, registry)
    else:
        asyncio.run(run_aio(target, count, registry))


if __name__ == "__main__":
    main()
