"""meshbreaker.aio.guarded_channel: what is its own (composition, the channel API, bad input).

Its behaviour as a breaker runs through tests/aio/test_aio_interceptor.py and the contract
suite, both parametrised over the interceptors and the guarded channel.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker.aio import GuardedChannel, guarded_channel
from meshbreaker.config import State
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.registry import BreakerRegistry
from tests.grpc.bytes_server import SERVER_STREAM, UNARY, BytesServer


class Tracing(grpc.aio.UnaryUnaryClientInterceptor):
    """A pass-through interceptor that notes each call it sees."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append(details.method.decode())
        return await continuation(details, request)


async def test_the_channel_s_own_interceptors_run_inside_the_breaker(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    tracing = Tracing()
    inner = grpc.aio.insecure_channel(server.target, interceptors=[tracing])
    async with guarded_channel(inner, registry) as channel:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        assert await unary(b"ok") == b"ok"
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await unary(b"fail:UNAVAILABLE")
        assert registry.get(UNARY).state is State.OPEN
        with pytest.raises(CallNotPermittedError):
            await unary(b"ok")
    assert tracing.seen == [UNARY] * 3  # the rejected call never reached the interceptor


async def test_the_channel_api_reaches_the_wrapped_channel(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    inner = grpc.aio.insecure_channel(server.target)
    channel = guarded_channel(inner, registry)
    assert isinstance(channel, GuardedChannel) and channel.registry is registry
    await channel.channel_ready()
    assert channel.get_state() is grpc.ChannelConnectivity.READY
    stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(SERVER_STREAM)
    assert [message async for message in stream(b"n:2")] == [b"m0", b"m1"]
    await channel.close()
    assert inner.get_state() is grpc.ChannelConnectivity.SHUTDOWN


def test_what_is_not_an_aio_channel_is_refused(
    server: BytesServer, registry: BreakerRegistry
) -> None:
    sync = grpc.insecure_channel(server.target)
    with pytest.raises(TypeError, match=r"channel must be a grpc\.aio\.Channel, got "):
        guarded_channel(sync, registry)  # type: ignore[arg-type]
    sync.close()
