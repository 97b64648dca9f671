"""httpx transports that send every request through a circuit breaker per host and route.

`httpx.Client(transport=BreakerTransport(registry))`: the breaker of a request is named by its
origin and route template, `"https://cards.example/v1/charges"` (query dropped, id-like path
segments folded to `{id}`, or whatever a `route=` callable says). The sync and async transports
are thin shells over one `_Core`; the response body is tracked by one `_Tracker`.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import Final, Generic, TypeVar

try:
    import httpx
except ImportError as error:  # absolute import: this module's own name is not the package's
    raise ImportError(
        "meshbreaker.httpx needs the httpx package: pip install 'meshbreaker[httpx]'"
    ) from error

from meshbreaker.breaker import CircuitBreaker, Outcome, Permit
from meshbreaker.errors import (
    BulkheadFullError,
    CallNotPermittedError,
    ConfigError,
    ThrottledError,
)
from meshbreaker.registry import BreakerRegistry

__all__ = [
    "DEFAULT_FAILURE_EXCEPTIONS",
    "DEFAULT_FAILURE_STATUSES",
    "AsyncBreakerTransport",
    "BreakerTransport",
    "HTTPBulkheadFullError",
    "HTTPCallNotPermittedError",
    "HTTPThrottledError",
    "Route",
    "breaker_name",
    "default_route",
    "parse_retry_after",
    "route_templates",
]

Route = Callable[[httpx.Request], "str | None"]

DEFAULT_FAILURE_STATUSES: Final[frozenset[int]] = frozenset({429, *range(500, 600)})
# What says the dependency (or the way to it) is unwell. A PoolTimeout (this process's own pool
# is full), LocalProtocolError and UnsupportedProtocol (a bad request) never left the process.
DEFAULT_FAILURE_EXCEPTIONS: Final[tuple[type[BaseException], ...]] = (
    httpx.NetworkError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)
# Breaker names go into every agent report, which the control plane bounds (512 characters).
MAX_ROUTE_LENGTH: Final = 256
LONG_ROUTE: Final = "/{path}"
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})

_SUCCESS, _FAILURE, _IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED
_ID_SEGMENT = re.compile(
    r"(?<=/)(?:[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"(?=/|$)"
)
_TEMPLATE_PART = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_DELAY_SECONDS = re.compile(r"[0-9]{1,10}")


class HTTPCallNotPermittedError(CallNotPermittedError, httpx.TransportError):
    """A request the breaker refused without sending it; also an httpx.TransportError."""

    def __init__(self, rejection: CallNotPermittedError, request: httpx.Request) -> None:
        httpx.TransportError.__init__(self, "", request=request)
        self.args = rejection.args  # TransportError set its own; the fields live here


class HTTPBulkheadFullError(BulkheadFullError, HTTPCallNotPermittedError):
    """A request refused because its breaker's max_concurrent_calls are all in flight."""


class HTTPThrottledError(ThrottledError, HTTPCallNotPermittedError):
    """A request adaptive throttling refused locally (the policy's throttle_k)."""


def default_route(request: httpx.Request) -> str:
    """The request's path without its query, id-like segments (digits, UUIDs) as `{id}`."""
    path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
    if len(path) > MAX_ROUTE_LENGTH:
        return LONG_ROUTE
    return _ID_SEGMENT.sub("{id}", path)


def breaker_name(request: httpx.Request, route: str) -> str:
    """`scheme://host[:port]` of the request followed by `route`."""
    url = request.url
    return f"{url.scheme}://{url.netloc.decode('ascii')}{route}"


def route_templates(*templates: str) -> Route:
    """A `route=` callable naming paths by templates like "/v1/accounts/{id}"; None elsewhere.

    A `{name}` matches one path segment; the first template that matches wins.
    """
    patterns = []
    for template in templates:
        _check_route(template, "route_templates")
        pieces = _TEMPLATE_PART.split(template)
        if any("{" in piece or "}" in piece for piece in pieces):
            raise ConfigError("route_templates", f"{template!r}: use {{name}} for a segment")
        regex = "[^/]+".join(re.escape(piece) for piece in pieces)
        patterns.append((re.compile(regex), template))

    def route(request: httpx.Request) -> str | None:
        path = request.url.path
        for pattern, template in patterns:
            if pattern.fullmatch(path):
                return template
        return None

    return route


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a Retry-After header asks for (a delay or an HTTP-date); None if absent or bad."""
    if value is None or len(value) > 64:  # a server's header: bounded before it is parsed
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now())


def _check_route(route: object, field: str) -> str:
    if not isinstance(route, str) or not route.startswith("/"):
        raise ConfigError(field, f"{route!r} is not a path template starting with '/'")
    if len(route) > MAX_ROUTE_LENGTH or not route.isprintable() or any(c in route for c in " ?#"):
        raise ConfigError(
            field,
            f"{route[:40]!r}: at most {MAX_ROUTE_LENGTH} printable characters, no space, ? or #",
        )
    return route


def _check_statuses(statuses: object) -> frozenset[int]:
    if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Collection):
        raise ConfigError("failure_statuses", "must be a collection of HTTP status codes")
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigError("failure_statuses", f"{status!r} is not an HTTP status (100..599)")
    return frozenset(statuses)


def _check_exceptions(kinds: object) -> tuple[type[BaseException], ...]:
    if not isinstance(kinds, tuple) or not all(
        isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds
    ):
        raise ConfigError("failure_exceptions", "must be a tuple of exception classes")
    return kinds


class _Core:
    """What both transports share: naming, admission, and how a request's end counts."""

    __slots__ = ("failure_exceptions", "failure_statuses", "registry", "route")

    def __init__(
        self,
        registry: BreakerRegistry,
        route: Route | None,
        failure_statuses: Collection[int],
        failure_exceptions: tuple[type[BaseException], ...],
    ) -> None:
        if not isinstance(registry, BreakerRegistry):
            raise TypeError(f"registry must be a BreakerRegistry, got {type(registry).__name__}")
        if route is not None and not callable(route):
            raise ConfigError("route", "must be a callable(request) -> path template or None")
        self.registry = registry
        self.route = route
        self.failure_statuses = _check_statuses(failure_statuses)
        self.failure_exceptions = _check_exceptions(failure_exceptions)

    def admit(self, request: httpx.Request) -> tuple[CircuitBreaker, Permit]:
        """The request's breaker and a permit, or an HTTPCallNotPermittedError."""
        route = None if self.route is None else self.route(request)
        if route is None:
            route = default_route(request)
        else:
            _check_route(route, "route")
        breaker = self.registry.get(breaker_name(request, route))
        try:
            return breaker, breaker.acquire()
        except BulkheadFullError as rejection:
            raise HTTPBulkheadFullError(rejection, request) from None
        except ThrottledError as rejection:
            raise HTTPThrottledError(rejection, request) from None
        except CallNotPermittedError as rejection:
            raise HTTPCallNotPermittedError(rejection, request) from None

    def outcome(self, error: BaseException) -> Outcome:
        """How a request (or its body) ending in `error` counts; cancellation is ignored."""
        if isinstance(error, self.failure_exceptions):
            return _FAILURE
        return _IGNORED

    def responded(
        self, breaker: CircuitBreaker, permit: Permit, response: httpx.Response
    ) -> _Tracker | None:
        """Record a failure status now; otherwise a tracker for the body, which decides."""
        status = response.status_code
        if status not in self.failure_statuses:
            return _Tracker(self, permit)
        permit.failure()
        if status in RETRY_AFTER_STATUSES:
            seconds = parse_retry_after(response.headers.get("retry-after"))
            if seconds is not None:
                breaker.keep_open(seconds)  # one locked step: only lengthens an opening
        return None


class _Tracker:
    """Reports a response with a good status once its body ends, fails or is closed."""

    __slots__ = ("_core", "_permit")

    def __init__(self, core: _Core, permit: Permit) -> None:
        self._core = core
        self._permit = permit

    def ended(self) -> None:
        """The body was read, or the caller closed it: the server answered (first report wins)."""
        self._permit.success()

    def broke(self, error: BaseException) -> None:
        """Reading the body raised `error`."""
        self._permit.record(self._core.outcome(error))


class _TrackedStream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, tracker: _Tracker) -> None:
        self._stream = stream
        self._tracker = tracker

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as error:
            self._tracker.broke(error)
            raise
        self._tracker.ended()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._tracker.ended()


class _AsyncTrackedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, tracker: _Tracker) -> None:
        self._stream = stream
        self._tracker = tracker

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception as error:
            self._tracker.broke(error)
            raise
        self._tracker.ended()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._tracker.ended()


_Inner = TypeVar("_Inner", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _Shell(Generic[_Inner]):
    """What the sync and async transports share: the core, and the transport they send through."""

    def __init__(
        self,
        registry: BreakerRegistry,
        transport: _Inner | None = None,
        *,
        route: Route | None = None,
        failure_statuses: Collection[int] = DEFAULT_FAILURE_STATUSES,
        failure_exceptions: tuple[type[BaseException], ...] = DEFAULT_FAILURE_EXCEPTIONS,
    ) -> None:
        self._core = _Core(registry, route, failure_statuses, failure_exceptions)
        self._transport: _Inner = self._default_transport() if transport is None else transport

    def _default_transport(self) -> _Inner:
        raise NotImplementedError

    @property
    def registry(self) -> BreakerRegistry:
        """The registry holding this transport's breakers."""
        return self._core.registry


class BreakerTransport(_Shell[httpx.BaseTransport], httpx.BaseTransport):
    """Sends each request through the breaker of its origin and route, then `transport`.

    Failures: `failure_statuses` (5xx and 429 by default) and `failure_exceptions` (connection
    errors, timeouts, broken responses). A response with another status counts when its body
    ends: a success, or a failure if reading it fails. A `Retry-After` on a failed 429 or 503
    lengthens the open period of a breaker that is open (up to its open_duration_max). A refused
    request raises HTTPCallNotPermittedError, both a CallNotPermittedError and an
    httpx.TransportError. Without `transport`, an httpx.HTTPTransport.
    """

    def _default_transport(self) -> httpx.BaseTransport:
        return httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core = self._core
        breaker, permit = core.admit(request)
        try:
            response = self._transport.handle_request(request)
        except BaseException as error:
            permit.record(core.outcome(error))
            raise
        tracker = core.responded(breaker, permit, response)
        if tracker is not None:
            stream = response.stream
            assert isinstance(stream, httpx.SyncByteStream), "a sync transport's response"
            response.stream = _TrackedStream(stream, tracker)
        return response

    def close(self) -> None:
        self._transport.close()


class AsyncBreakerTransport(_Shell[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """BreakerTransport for httpx.AsyncClient: the same breakers, names and outcomes.

    Without `transport`, an httpx.AsyncHTTPTransport.
    """

    def _default_transport(self) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core = self._core
        breaker, permit = core.admit(request)
        try:
            response = await self._transport.handle_async_request(request)
        except BaseException as error:
            permit.record(core.outcome(error))
            raise
        tracker = core.responded(breaker, permit, response)
        if tracker is not None:
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream), "an async transport's response"
            response.stream = _AsyncTrackedStream(stream, tracker)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()
