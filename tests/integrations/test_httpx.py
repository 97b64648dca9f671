"""BreakerTransport and AsyncBreakerTransport against a real local HTTP server with faults."""

from __future__ import annotations

import importlib
import sys

import httpx
import pytest

import meshbreaker.httpx as mb_httpx
from meshbreaker import BulkheadFullError, CallNotPermittedError, ConfigError, State
from meshbreaker._names import is_endpoint_name
from meshbreaker.errors import ThrottledError
from meshbreaker.httpx import (
    BreakerTransport,
    HTTPBulkheadFullError,
    HTTPCallNotPermittedError,
    HTTPThrottledError,
    default_route,
    parse_retry_after,
    route_templates,
)
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from tests.integrations.conftest import CONFIG, MakeCaller
from tests.integrations.http_server import Fault, FaultyServer, closed_port


def test_one_breaker_per_origin_and_route_template_without_the_query(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    client.get(http_server.url("/v1/accounts/42?page=1"))
    client.get(http_server.url("/v1/accounts/7"))
    client.get(http_server.url("/v1/accounts/0b9e6c1e-4f2a-4d8e-9c3b-2a1d5e6f7a8b/statements"))

    origin = http_server.origin
    assert sorted(breaker.name for breaker in registry) == [
        f"{origin}/v1/accounts/{{id}}",
        f"{origin}/v1/accounts/{{id}}/statements",
    ]
    assert registry.get(f"{origin}/v1/accounts/{{id}}").snapshot().successful == 2
    assert all(is_endpoint_name(breaker.name) for breaker in registry)  # selectable by policies


def test_a_route_callable_names_the_breakers(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry, route=route_templates("/v1/cards/{card}/charges"))
    client.get(http_server.url("/v1/cards/visa-1234/charges"))
    client.get(http_server.url("/v1/cards/amex-9/charges"))
    client.get(http_server.url("/v1/refunds/12"))  # no template matches: the default route

    origin = http_server.origin
    assert sorted(breaker.name for breaker in registry) == [
        f"{origin}/v1/cards/{{card}}/charges",
        f"{origin}/v1/refunds/{{id}}",
    ]


def test_5xx_and_429_are_failures_other_statuses_successes(
    http_server: FaultyServer, clock: FakeClock, make_caller: MakeCaller
) -> None:
    registry = BreakerRegistry(CONFIG.replace(consecutive_failures=0), clock=clock)
    client = make_caller(registry)
    for status in (500, 503, 429, 404, 400, 302, 200):
        http_server.fault("/charge", Fault(status=status))
        client.get(http_server.url("/charge"))

    snapshot = registry.get(http_server.url("/charge")).snapshot()
    assert (snapshot.failed, snapshot.successful) == (3, 4)


def test_failure_statuses_are_configurable(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry, failure_statuses={503})
    for status in (500, 503, 429):
        http_server.fault("/charge", Fault(status=status))
        client.get(http_server.url("/charge"))

    snapshot = registry.get(http_server.url("/charge")).snapshot()
    assert (snapshot.failed, snapshot.successful) == (1, 2)


def test_an_open_breaker_refuses_with_a_transport_error_and_sends_nothing(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    http_server.fault("/charge", Fault(status=502))
    for _ in range(3):
        assert client.get(http_server.url("/charge")).status_code == 502
    breaker = registry.get(http_server.url("/charge"))
    assert breaker.state is State.OPEN

    with pytest.raises(httpx.TransportError) as caught:  # what existing handlers catch
        client.get(http_server.url("/charge?amount=5"))

    error = caught.value
    assert isinstance(error, HTTPCallNotPermittedError)
    assert isinstance(error, CallNotPermittedError)
    assert (error.name, error.state, error.retry_after) == (breaker.name, State.OPEN, 10.0)
    assert error.request.url == http_server.url("/charge?amount=5")
    assert str(error) == f"circuit breaker '{breaker.name}' is OPEN; next probe in 10.000s"
    assert http_server.hits("/charge") == 3
    assert breaker.snapshot().rejected == 1


def test_a_good_probe_after_the_open_period_closes_the_breaker(
    http_server: FaultyServer, registry: BreakerRegistry, clock: FakeClock, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    http_server.fault("/charge", Fault(status=500))
    for _ in range(3):
        client.get(http_server.url("/charge"))
    http_server.fault("/charge", None)
    clock.advance(10.0)

    assert client.get(http_server.url("/charge")).text == "ok"
    assert registry.get(http_server.url("/charge")).state is State.CLOSED


@pytest.mark.parametrize(
    ("status", "retry_after", "open_for"),
    [
        (503, "30", 30.0),  # lengthened
        (429, "30", 30.0),
        (503, "99999", 60.0),  # capped by open_duration_max
        (503, "2", 10.0),  # never shortened
        (500, "30", 10.0),  # only 429 and 503 carry it
        (503, "soon", 10.0),  # unparsable: ignored
    ],
)
def test_retry_after_lengthens_the_open_period(
    http_server: FaultyServer,
    clock: FakeClock,
    make_caller: MakeCaller,
    status: int,
    retry_after: str,
    open_for: float,
) -> None:
    registry = BreakerRegistry(CONFIG.replace(open_duration_max=60.0), clock=clock)
    client = make_caller(registry)
    http_server.fault("/charge", Fault(status=status, headers={"Retry-After": retry_after}))
    for _ in range(3):
        client.get(http_server.url("/charge"))

    snapshot = registry.get(http_server.url("/charge")).snapshot()
    assert snapshot.state is State.OPEN
    assert snapshot.times_opened == 1
    assert snapshot.open_until == clock() + open_for


def test_retry_after_does_not_open_a_closed_breaker(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    http_server.fault("/charge", Fault(status=429, headers={"Retry-After": "30"}))
    client.get(http_server.url("/charge"))
    assert registry.get(http_server.url("/charge")).state is State.CLOSED


def test_parse_retry_after_reads_delays_and_http_dates() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    at = 1445412480.0  # that instant
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(date, now=lambda: at - 45.0) == 45.0
    assert parse_retry_after(date, now=lambda: at + 45.0) == 0.0  # already past
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=lambda: at) == 0.0
    for bad in (None, "", "-5", "1.5", "soon", "9" * 11, " " * 100 + "1"):
        assert parse_retry_after(bad) is None


def test_a_refused_connection_is_a_failure(
    registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    url = f"http://127.0.0.1:{closed_port()}/charge"
    with pytest.raises(httpx.ConnectError):
        client.get(url)
    assert registry.get(url).snapshot().failed == 1


def test_a_read_timeout_is_a_failure(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    http_server.fault("/slow", Fault(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        client.get(http_server.url("/slow"), timeout=httpx.Timeout(5.0, read=0.05))
    assert registry.get(http_server.url("/slow")).snapshot().failed == 1


def test_a_dropped_connection_is_a_failure(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    http_server.fault("/charge", Fault(drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(http_server.url("/charge"))
    assert registry.get(http_server.url("/charge")).snapshot().failed == 1


def test_a_body_that_breaks_off_is_a_failure_despite_its_good_status(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    http_server.fault("/statement", Fault(status=200, truncate=True))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(http_server.url("/statement"))
    snapshot = registry.get(http_server.url("/statement")).snapshot()
    assert (snapshot.failed, snapshot.successful) == (1, 0)


def test_a_streamed_response_counts_when_closed_and_holds_its_bulkhead_slot_until_then(
    http_server: FaultyServer, clock: FakeClock, make_caller: MakeCaller
) -> None:
    registry = BreakerRegistry(CONFIG.replace(max_concurrent_calls=1), clock=clock)
    client = make_caller(registry)
    url = http_server.url("/export")
    stream = client.stream(url)
    assert stream.status_code == 200
    breaker = registry.get(url)
    assert breaker.snapshot().total == 0  # the body is still open

    with pytest.raises(HTTPBulkheadFullError) as caught:
        client.get(url)
    assert isinstance(caught.value, BulkheadFullError)
    assert isinstance(caught.value, httpx.TransportError)

    stream.close()  # closed unread: the server answered, so a success, and the slot is free
    assert breaker.snapshot().successful == 1
    assert client.get(url).text == "ok"
    assert breaker.snapshot().successful == 2


def test_adaptive_throttling_refuses_locally_with_a_transport_error(
    http_server: FaultyServer, clock: FakeClock, make_caller: MakeCaller
) -> None:
    config = CONFIG.replace(consecutive_failures=0, throttle_k=1.0)
    client = make_caller(BreakerRegistry(config, clock=clock))
    http_server.fault("/charge", Fault(status=503))
    # Nothing is accepted, so the refusal probability grows as requests/(requests + 1):
    # past the tenth request at least 0.9 each time, so 60 requests see a refusal.
    with pytest.raises(HTTPThrottledError) as throttled:
        for _ in range(60):
            client.get(http_server.url("/charge"))
    assert isinstance(throttled.value, ThrottledError)
    assert isinstance(throttled.value, httpx.TransportError)
    assert "throttling" in str(throttled.value)


def test_a_full_connection_pool_is_not_held_against_the_server(
    http_server: FaultyServer, registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry, limits=httpx.Limits(max_connections=1))
    url = http_server.url("/export")
    stream = client.stream(url)  # holds the only connection
    with pytest.raises(httpx.PoolTimeout):
        client.get(url)
    stream.close()

    snapshot = registry.get(url).snapshot()
    assert (snapshot.ignored, snapshot.failed, snapshot.successful) == (1, 0, 1)


def test_a_request_that_cannot_leave_the_process_is_ignored(
    registry: BreakerRegistry, make_caller: MakeCaller
) -> None:
    client = make_caller(registry)
    with pytest.raises(httpx.UnsupportedProtocol):
        client.get("ftp://127.0.0.1/file")
    assert registry.get("ftp://127.0.0.1/file").snapshot().ignored == 1


async def test_a_cancelled_request_is_ignored_and_frees_its_probe_slot(
    http_server: FaultyServer, registry: BreakerRegistry, clock: FakeClock
) -> None:
    import asyncio

    url = http_server.url("/slow")
    breaker = registry.get(url)
    async with httpx.AsyncClient(transport=mb_httpx.AsyncBreakerTransport(registry)) as client:
        http_server.fault("/slow", Fault(status=500))
        for _ in range(3):
            await client.get(url)
        clock.advance(10.0)  # the next request is the one half-open probe
        http_server.fault("/slow", Fault(hang=True))
        probe = asyncio.create_task(client.get(url))
        for _ in range(500):  # until the probe reached the server
            if http_server.hits("/slow") == 4:
                break
            await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert breaker.snapshot().ignored == 1
        assert breaker.snapshot().state is State.HALF_OPEN
        http_server.fault("/slow", None)
        assert (await client.get(url)).text == "ok"  # the slot came back
    assert breaker.state is State.CLOSED


def test_default_route_folds_ids_and_bounds_long_paths() -> None:
    def route(url: str) -> str:
        return default_route(httpx.Request("GET", url))

    assert route("https://x/v1/a/123/b/00ff?q=9") == "/v1/a/{id}/b/00ff"
    assert route("https://x/" + "a" * 300) == "/{path}"
    assert route("https://x/a%0Ab") == "/a%0Ab"  # percent-encoded: never a raw control character


def test_bad_options_are_refused_with_the_field_named(
    http_server: FaultyServer, registry: BreakerRegistry
) -> None:
    with pytest.raises(TypeError, match="registry must be a BreakerRegistry"):
        BreakerTransport(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="failure_statuses"):
        BreakerTransport(registry, failure_statuses="500")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="700 is not an HTTP status"):
        BreakerTransport(registry, failure_statuses={500, 700})
    with pytest.raises(ConfigError, match="failure_exceptions"):
        BreakerTransport(registry, failure_exceptions=[httpx.ConnectError])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="route_templates"):
        route_templates("/v1/{card")
    with pytest.raises(ConfigError, match="starting with '/'"):
        route_templates("v1/charges")
    with pytest.raises(ConfigError, match="no space"):
        route_templates("/v1/charges?all")

    transport = BreakerTransport(registry, route=lambda request: "charges")
    with httpx.Client(transport=transport) as client, pytest.raises(ConfigError, match="route"):
        client.get(http_server.url("/charges"))
    assert len(registry) == 0


def test_without_httpx_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.delitem(sys.modules, "meshbreaker.httpx")
    with pytest.raises(ImportError, match=r"pip install 'meshbreaker\[httpx\]'"):
        importlib.import_module("meshbreaker.httpx")


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(mb_httpx).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == "meshbreaker.httpx"
    }
    assert public <= set(mb_httpx.__all__)
    assert all(hasattr(mb_httpx, name) for name in mb_httpx.__all__)
