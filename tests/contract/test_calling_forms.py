"""Every calling form grpc's multi-callables accept, on both paths of each flavour.

A guarded channel's multi-callables stand in for grpc's own, so they take the same arguments in
the same ways: grpc's parameter names (`request`, `request_iterator`), positions and defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker.aio import breaker_interceptors
from meshbreaker.aio import guarded as aio_guarded
from meshbreaker.aio import guarded_channel as aio_guarded_channel
from meshbreaker.grpc import BreakerInterceptor, guarded_channel
from meshbreaker.grpc import guarded as sync_guarded
from meshbreaker.registry import BreakerRegistry
from tests.grpc.bytes_server import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY, BytesServer

METADATA = (("x-form", "1"),)


def _parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [
        (parameter.name, parameter.kind, parameter.default)
        for parameter in inspect.signature(function).parameters.values()
    ]


@pytest.mark.parametrize(
    ("guarded", "grpcs"),
    [
        (sync_guarded.GuardedUnaryUnary, grpc.UnaryUnaryMultiCallable),
        (sync_guarded.GuardedUnaryStream, grpc.UnaryStreamMultiCallable),
        (sync_guarded.GuardedStreamUnary, grpc.StreamUnaryMultiCallable),
        (sync_guarded.GuardedStreamStream, grpc.StreamStreamMultiCallable),
        (aio_guarded.GuardedUnaryUnary, grpc.aio.UnaryUnaryMultiCallable),
        (aio_guarded.GuardedUnaryStream, grpc.aio.UnaryStreamMultiCallable),
        (aio_guarded.GuardedStreamUnary, grpc.aio.StreamUnaryMultiCallable),
        (aio_guarded.GuardedStreamStream, grpc.aio.StreamStreamMultiCallable),
    ],
    ids=lambda kind: f"{kind.__module__}.{kind.__name__}",
)
def test_the_signatures_are_grpcs(guarded: type, grpcs: type) -> None:
    """Names, kinds (positional, keyword-only) and defaults of every calling form."""
    forms = [name for name in ("__call__", "with_call", "future") if hasattr(grpcs, name)]
    assert forms
    for form in forms:
        assert _parameters(getattr(guarded, form)) == _parameters(getattr(grpcs, form)), form


@pytest.fixture(params=["intercept_channel", "guarded_channel"])
def sync_channel(
    request: pytest.FixtureRequest, server: BytesServer, registry: BreakerRegistry
) -> Iterator[grpc.Channel]:
    plain = grpc.insecure_channel(server.target)
    if request.param == "guarded_channel":
        channel = guarded_channel(plain, registry)
    else:
        channel = grpc.intercept_channel(plain, BreakerInterceptor(registry))
    yield channel
    channel.close()


def test_every_sync_calling_form(sync_channel: grpc.Channel, registry: BreakerRegistry) -> None:
    uu: Any = sync_channel.unary_unary(UNARY)
    us: Any = sync_channel.unary_stream(SERVER_STREAM)
    su: Any = sync_channel.stream_unary(CLIENT_STREAM)
    ss: Any = sync_channel.stream_stream(BIDI)
    options = {"timeout": 30.0, "metadata": METADATA, "credentials": None}
    options |= {"wait_for_ready": None, "compression": None}
    positional = tuple(options.values())
    assert uu(b"a") == uu(b"a", *positional) == uu(request=b"a", **options) == b"a"
    assert uu.with_call(b"b", *positional)[0] == uu.with_call(request=b"b", **options)[0] == b"b"
    assert uu.future(b"c", *positional).result() == uu.future(request=b"c", **options).result()
    assert list(us(b"n:2", *positional)) == list(us(request=b"n:2", **options)) == [b"m0", b"m1"]
    assert su(iter([b"x"]), *positional) == b"count:1"
    assert su(request_iterator=iter([b"x", b"y"]), **options) == b"count:2"
    assert su.with_call(iter([b"x"]), *positional)[0] == b"count:1"
    assert su.with_call(request_iterator=iter([b"x"]), **options)[0] == b"count:1"
    assert su.future(iter([b"x"]), *positional).result() == b"count:1"
    assert su.future(request_iterator=iter([b"x"]), **options).result() == b"count:1"
    assert list(ss(iter([b"p"]), *positional)) == [b"p"]
    assert list(ss(request_iterator=iter([b"q"]), **options)) == [b"q"]
    successes = {method: registry.get(method).snapshot().successful for method in _METHODS}
    assert successes == {UNARY: 7, SERVER_STREAM: 2, CLIENT_STREAM: 6, BIDI: 2}


_METHODS = (UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI)


@pytest.fixture(params=["interceptors", "guarded_channel"])
async def aio_channel(
    request: pytest.FixtureRequest, server: BytesServer, registry: BreakerRegistry
) -> AsyncIterator[grpc.aio.Channel]:
    if request.param == "guarded_channel":
        channel = aio_guarded_channel(grpc.aio.insecure_channel(server.target), registry)
    else:
        interceptors = breaker_interceptors(registry)
        channel = grpc.aio.insecure_channel(server.target, interceptors=interceptors)
    yield channel
    await channel.close()


async def _written(call: Any, *requests: bytes) -> Any:
    for message in requests:
        await call.write(message)
    await call.done_writing()
    return call


async def test_every_aio_calling_form(
    aio_channel: grpc.aio.Channel, registry: BreakerRegistry
) -> None:
    uu: Any = aio_channel.unary_unary(UNARY)
    us: Any = aio_channel.unary_stream(SERVER_STREAM)
    su: Any = aio_channel.stream_unary(CLIENT_STREAM)
    ss: Any = aio_channel.stream_stream(BIDI)
    options = {"timeout": 30.0, "metadata": METADATA, "credentials": None}
    options |= {"wait_for_ready": None, "compression": None}
    positional = tuple(options.values())
    assert await uu(b"a") == await uu(request=b"a", **options) == b"a"
    assert [m async for m in us(request=b"n:2", **options)] == [b"m0", b"m1"]
    assert await su(iter([b"x"]), *positional) == b"count:1"
    assert await su(request_iterator=iter([b"x", b"y"]), **options) == b"count:2"
    assert await await_written(su(), b"x") == b"count:1"
    assert await await_written(su(request_iterator=None, **options), b"x", b"y") == b"count:2"
    assert [m async for m in ss(iter([b"p"]), *positional)] == [b"p"]
    assert [m async for m in ss(request_iterator=iter([b"q"]), **options)] == [b"q"]
    assert [m async for m in await _written(ss(), b"r")] == [b"r"]
    successes = {method: registry.get(method).snapshot().successful for method in _METHODS}
    assert successes == {UNARY: 2, SERVER_STREAM: 1, CLIENT_STREAM: 4, BIDI: 3}


async def await_written(call: Any, *requests: bytes) -> Any:
    """The response of a stream-unary call after writing `requests` to it."""
    return await (await _written(call, *requests))
