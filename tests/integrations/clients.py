"""One face for httpx.Client + BreakerTransport and httpx.AsyncClient + AsyncBreakerTransport.

The httpx tests run every behaviour through both, so the sync and async transports cannot drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import httpx

from meshbreaker.httpx import AsyncBreakerTransport, BreakerTransport
from meshbreaker.registry import BreakerRegistry

_T = TypeVar("_T")
TIMEOUT = httpx.Timeout(5.0, pool=0.05)


class OpenStream(Protocol):
    status_code: int

    def close(self) -> None: ...


class Caller(Protocol):
    """Requests through a breaker transport; `.stream()` leaves the body open until closed."""

    def get(self, url: str, *, timeout: httpx.Timeout | None = None) -> httpx.Response: ...

    def stream(self, url: str) -> OpenStream: ...

    def close(self) -> None: ...


class SyncCaller:
    def __init__(self, registry: BreakerRegistry, limits: httpx.Limits | None, **options: Any):
        inner = None if limits is None else httpx.HTTPTransport(limits=limits)
        transport = BreakerTransport(registry, inner, **options)
        self._client = httpx.Client(transport=transport, timeout=TIMEOUT)

    def get(self, url: str, *, timeout: httpx.Timeout | None = None) -> httpx.Response:
        return self._client.get(url, timeout=TIMEOUT if timeout is None else timeout)

    def stream(self, url: str) -> OpenStream:
        return self._client.send(self._client.build_request("GET", url), stream=True)

    def close(self) -> None:
        self._client.close()


class _AsyncStream:
    def __init__(self, caller: AsyncCaller, response: httpx.Response) -> None:
        self._caller = caller
        self._response = response
        self.status_code = response.status_code

    def close(self) -> None:
        self._caller.run(self._response.aclose())


class AsyncCaller:
    def __init__(self, registry: BreakerRegistry, limits: httpx.Limits | None, **options: Any):
        self._loop = asyncio.new_event_loop()
        inner = None if limits is None else httpx.AsyncHTTPTransport(limits=limits)
        transport = AsyncBreakerTransport(registry, inner, **options)
        self._client = httpx.AsyncClient(transport=transport, timeout=TIMEOUT)

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self._loop.run_until_complete(coroutine)

    def get(self, url: str, *, timeout: httpx.Timeout | None = None) -> httpx.Response:
        return self.run(self._client.get(url, timeout=TIMEOUT if timeout is None else timeout))

    def stream(self, url: str) -> OpenStream:
        request = self._client.build_request("GET", url)
        return _AsyncStream(self, self.run(self._client.send(request, stream=True)))

    def close(self) -> None:
        self.run(self._client.aclose())
        self._loop.close()
