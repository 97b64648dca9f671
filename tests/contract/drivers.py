"""One way to drive the sync and the aio interceptors, so one contract runs against both.

A Driver makes calls of the four kinds through the flavour's interceptors and reports what a
caller of that flavour observes as a Seen: response, status, details and both metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest

from meshbreaker.aio import breaker_interceptors
from meshbreaker.aio import guarded_channel as aio_guarded_channel
from meshbreaker.grpc import BreakerInterceptor, guarded_channel
from meshbreaker.registry import BreakerRegistry
from tests.grpc.bytes_server import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY, BytesServer

Metadata = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Seen:
    """What the caller of one call observes, whatever the flavour."""

    value: Any  # the response (a list for response streams); None when the call raised
    code: grpc.StatusCode
    details: str | None
    initial: Metadata
    trailing: Metadata
    error: BaseException | None = None


def _pairs(metadata: Iterable[Any] | None) -> Metadata:
    return tuple((key, value) for key, value in metadata or ())


class RaisingBelow(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A sync interceptor below the breaker that raises `error` (no grpc.RpcError) on every call
    after the first `passing` (those it passes through)."""

    def __init__(self, error: Exception, passing: int = 0) -> None:
        self.error = error
        self.passing = passing
        self.calls = 0

    def _raise(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        if self.calls <= self.passing:
            return continuation(details, request)
        raise self.error

    intercept_unary_unary = intercept_unary_stream = _raise  # type: ignore[assignment]
    intercept_stream_unary = intercept_stream_stream = _raise  # type: ignore[assignment]


AioIntercept = Callable[[Any, Any, Any], Awaitable[Any]]


class _AioBelow:
    """One coroutine (continuation, details, request) as a grpc.aio interceptor."""

    def __init__(self, intercept: AioIntercept) -> None:
        self._intercept = intercept

    async def _run(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)


class _AioBelowUnaryUnary(_AioBelow, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioBelow._run  # type: ignore[assignment]


class _AioBelowUnaryStream(_AioBelow, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioBelow._run  # type: ignore[assignment]


class _AioBelowStreamUnary(_AioBelow, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AioBelow._run  # type: ignore[assignment]


class _AioBelowStreamStream(_AioBelow, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AioBelow._run  # type: ignore[assignment]


def aio_below(intercept: AioIntercept) -> list[grpc.aio.ClientInterceptor]:
    """`intercept` as grpc.aio interceptors of every call kind (a channel files each under one)."""
    kinds = (_AioBelowUnaryUnary, _AioBelowUnaryStream, _AioBelowStreamUnary, _AioBelowStreamStream)
    return [kind(intercept) for kind in kinds]


def aio_raising(below: RaisingBelow) -> list[grpc.aio.ClientInterceptor]:
    """`below` as grpc.aio interceptors."""

    async def raise_error(continuation: Any, details: Any, request: Any) -> Any:
        below.calls += 1
        if below.calls <= below.passing:
            return await continuation(details, request)
        raise below.error

    return aio_below(raise_error)


class SyncDriver:
    """Calls through BreakerInterceptor on a sync channel."""

    flavour = "sync"

    def __init__(self, server: BytesServer) -> None:
        self._server = server
        self._channels: list[grpc.Channel] = []

    def connect(
        self,
        registry: BreakerRegistry,
        *,
        address: str | None = None,
        below: RaisingBelow | None = None,
        **options: Any,
    ) -> None:
        """Guard the driver's calls with `registry` and the interceptor `options`.

        `below`: an interceptor between the breaker and the channel.
        """
        channel = grpc.insecure_channel(address or self._server.target)
        if below is not None:
            channel = grpc.intercept_channel(channel, below)
        channel = self.guard(channel, registry, options)
        self._channels.append(channel)
        self._channel = channel

    @staticmethod
    def guard(channel: grpc.Channel, registry: BreakerRegistry, options: Any) -> grpc.Channel:
        """The flavour's way to put the breakers on `channel`."""
        return grpc.intercept_channel(channel, BreakerInterceptor(registry, **options))

    async def close(self) -> None:
        for channel in self._channels:
            channel.close()

    async def unary(
        self, request: bytes, method: str = UNARY, timeout: float | None = None
    ) -> Seen:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method)
        try:
            value, call = multi.with_call(request, timeout=timeout)
        except grpc.RpcError as error:
            return self._error(error)
        return Seen(
            value,
            call.code(),
            call.details(),
            _pairs(call.initial_metadata()),
            _pairs(call.trailing_metadata()),
        )

    async def client_stream(self, requests: list[bytes]) -> Seen:
        multi: grpc.StreamUnaryMultiCallable[bytes, bytes] = self._channel.stream_unary(
            CLIENT_STREAM
        )
        try:
            value, call = multi.with_call(iter(requests))
        except grpc.RpcError as error:
            return self._error(error)
        return Seen(
            value,
            call.code(),
            call.details(),
            _pairs(call.initial_metadata()),
            _pairs(call.trailing_metadata()),
        )

    async def server_stream(self, request: bytes, timeout: float | None = None) -> Seen:
        multi: grpc.UnaryStreamMultiCallable[bytes, bytes] = self._channel.unary_stream(
            SERVER_STREAM
        )
        return self._stream(multi(request, timeout=timeout))

    async def bidi(self, requests: list[bytes]) -> Seen:
        multi: grpc.StreamStreamMultiCallable[bytes, bytes] = self._channel.stream_stream(BIDI)
        return self._stream(multi(iter(requests)))

    def _stream(self, call: Any) -> Seen:
        try:
            value = list(call)
        except grpc.RpcError as error:
            return self._error(error)
        return Seen(
            value,
            call.code(),
            call.details(),
            _pairs(call.initial_metadata()),
            _pairs(call.trailing_metadata()),
        )

    @staticmethod
    def _error(error: grpc.RpcError) -> Seen:
        assert isinstance(error, grpc.Call)
        return Seen(
            None,
            error.code(),
            error.details(),
            _pairs(error.initial_metadata()),
            _pairs(error.trailing_metadata()),
            error,
        )


class FutureDriver(SyncDriver):
    """SyncDriver whose unary-response calls are made with .future() and waited on."""

    flavour = "sync-future"

    async def unary(
        self, request: bytes, method: str = UNARY, timeout: float | None = None
    ) -> Seen:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method)
        return self._wait(multi.future(request, timeout=timeout))

    async def client_stream(self, requests: list[bytes]) -> Seen:
        multi: grpc.StreamUnaryMultiCallable[bytes, bytes] = self._channel.stream_unary(
            CLIENT_STREAM
        )
        return self._wait(multi.future(iter(requests)))

    def _wait(self, future: Any) -> Seen:
        try:
            value = future.result()
        except grpc.RpcError as error:
            return self._error(error)
        return Seen(
            value,
            future.code(),
            future.details(),
            _pairs(future.initial_metadata()),
            _pairs(future.trailing_metadata()),
        )


class BlockingDriver(SyncDriver):
    """SyncDriver whose unary-response calls are plain blocking calls: the response, no call.

    A response means OK, and the caller sees nothing more of the call (no details, no metadata).
    """

    flavour = "sync-blocking"

    async def unary(
        self, request: bytes, method: str = UNARY, timeout: float | None = None
    ) -> Seen:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method)
        return self._answer(lambda: multi(request, timeout=timeout))

    async def client_stream(self, requests: list[bytes]) -> Seen:
        multi: grpc.StreamUnaryMultiCallable[bytes, bytes] = self._channel.stream_unary(
            CLIENT_STREAM
        )
        return self._answer(lambda: multi(iter(requests)))

    def _answer(self, call: Callable[[], Any]) -> Seen:
        try:
            value = call()
        except grpc.RpcError as error:
            return self._error(error)
        return Seen(value, grpc.StatusCode.OK, None, (), ())


class GuardedDriver(SyncDriver):
    """SyncDriver through guarded_channel instead of intercept_channel."""

    flavour = "sync-guarded"

    @staticmethod
    def guard(channel: grpc.Channel, registry: BreakerRegistry, options: Any) -> grpc.Channel:
        return guarded_channel(channel, registry, **options)


class GuardedBlockingDriver(BlockingDriver):
    """BlockingDriver through guarded_channel."""

    flavour = "sync-guarded-blocking"

    @staticmethod
    def guard(channel: grpc.Channel, registry: BreakerRegistry, options: Any) -> grpc.Channel:
        return guarded_channel(channel, registry, **options)


class GuardedFutureDriver(FutureDriver):
    """FutureDriver through guarded_channel."""

    flavour = "sync-guarded-future"

    @staticmethod
    def guard(channel: grpc.Channel, registry: BreakerRegistry, options: Any) -> grpc.Channel:
        return guarded_channel(channel, registry, **options)


class AioDriver:
    """Calls through breaker_interceptors on a grpc.aio channel."""

    flavour = "aio"

    def __init__(self, server: BytesServer) -> None:
        self._server = server
        self._channels: list[grpc.aio.Channel] = []

    def connect(
        self,
        registry: BreakerRegistry,
        *,
        address: str | None = None,
        below: RaisingBelow | None = None,
        **options: Any,
    ) -> None:
        """Guard the driver's calls with `registry` and the interceptor `options`.

        `below`: an interceptor between the breaker and the channel.
        """
        lower = aio_raising(below) if below is not None else []
        channel = self.guard(address or self._server.target, registry, options, lower)
        self._channels.append(channel)
        self._channel = channel

    @staticmethod
    def guard(
        target: str,
        registry: BreakerRegistry,
        options: Any,
        below: list[grpc.aio.ClientInterceptor],
    ) -> grpc.aio.Channel:
        """A channel to `target` with the flavour's breakers above the interceptors `below`."""
        interceptors = [*breaker_interceptors(registry, **options), *below]
        return grpc.aio.insecure_channel(target, interceptors=interceptors)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def unary(
        self, request: bytes, method: str = UNARY, timeout: float | None = None
    ) -> Seen:
        multi: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method)
        return await self._unary_response(multi(request, timeout=timeout))

    async def client_stream(self, requests: list[bytes]) -> Seen:
        multi: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = self._channel.stream_unary(
            CLIENT_STREAM
        )
        return await self._unary_response(multi(iter(requests)))

    async def server_stream(self, request: bytes, timeout: float | None = None) -> Seen:
        multi: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = self._channel.unary_stream(
            SERVER_STREAM
        )
        return await self._stream(multi(request, timeout=timeout))

    async def bidi(self, requests: list[bytes]) -> Seen:
        multi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = self._channel.stream_stream(BIDI)
        return await self._stream(multi(iter(requests)))

    async def _unary_response(self, call: Any) -> Seen:
        try:
            value = await call
        except grpc.aio.AioRpcError as error:
            return self._error(error)
        return await self._seen(value, call)

    async def _stream(self, call: Any) -> Seen:
        try:
            value = [message async for message in call]
        except grpc.aio.AioRpcError as error:
            return self._error(error)
        return await self._seen(value, call)

    @staticmethod
    async def _seen(value: Any, call: Any) -> Seen:
        return Seen(
            value,
            await call.code(),
            await call.details(),
            _pairs(await call.initial_metadata()),
            _pairs(await call.trailing_metadata()),
        )

    @staticmethod
    def _error(error: grpc.aio.AioRpcError) -> Seen:
        return Seen(
            None,
            error.code(),
            error.details(),
            _pairs(error.initial_metadata()),
            _pairs(error.trailing_metadata()),
            error,
        )


class GuardedAioDriver(AioDriver):
    """AioDriver through meshbreaker.aio.guarded_channel instead of interceptors."""

    flavour = "aio-guarded"

    @staticmethod
    def guard(
        target: str,
        registry: BreakerRegistry,
        options: Any,
        below: list[grpc.aio.ClientInterceptor],
    ) -> grpc.aio.Channel:
        inner = grpc.aio.insecure_channel(target, interceptors=below or None)
        return aio_guarded_channel(inner, registry, **options)


Driver = SyncDriver | AioDriver
DRIVERS: dict[str, Callable[[BytesServer], Driver]] = {
    "sync": SyncDriver,
    "sync-guarded": GuardedDriver,
    "aio": AioDriver,
    "aio-guarded": GuardedAioDriver,
}


# Sync .future() and plain blocking calls: what differs from with_call is how the outcome
# comes back (and the guarded channel's blocking __call__ has a path of its own).
FUTURES: dict[str, Callable[[BytesServer], Driver]] = {
    "sync-future": FutureDriver,
    "sync-guarded-future": GuardedFutureDriver,
    "sync-blocking": BlockingDriver,
    "sync-guarded-blocking": GuardedBlockingDriver,
}


@pytest.fixture(params=sorted(DRIVERS))
async def driver(request: pytest.FixtureRequest, server: BytesServer) -> AsyncIterator[Driver]:
    """A driver of each flavour, on the test server."""
    made = DRIVERS[request.param](server)
    yield made
    await made.close()


@pytest.fixture(params=[*sorted(DRIVERS), *sorted(FUTURES)])
async def any_driver(request: pytest.FixtureRequest, server: BytesServer) -> AsyncIterator[Driver]:
    """Each flavour, and sync .future() calls."""
    made = {**DRIVERS, **FUTURES}[request.param](server)
    yield made
    await made.close()
