"""BreakerInterceptor on sync channels against a real server: the "Must hold" list of issue 3.

Every test runs through grpc.intercept_channel and through guarded_channel (issue 18).
"""

from __future__ import annotations

import gc
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from meshbreaker._adapter.guard import Guard
from meshbreaker.config import BreakerConfig, State
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ConfigError
from meshbreaker.grpc import BreakerInterceptor, GuardedChannel, RejectedCall
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from tests.grpc.broken_registries import BROKEN_REGISTRIES
from tests.grpc.bytes_server import (
    BIDI,
    CLIENT_STREAM,
    CONFIG,
    OTHER,
    PATIENT,
    SERVER_STREAM,
    TRAILER,
    UNARY,
    BytesServer,
)
from tests.server_support import wait_until

FAILURE_CODES = [
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "UNKNOWN",
    "DATA_LOSS",
    "RESOURCE_EXHAUSTED",
]
SUCCESS_CODES = ["NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "FAILED_PRECONDITION"]


class Client:
    """Callables for the four test methods on one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        self.other: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(OTHER)
        self.server_stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            SERVER_STREAM
        )
        self.client_stream: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
            CLIENT_STREAM
        )
        self.bidi: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(BIDI)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(params=["intercept_channel", "guarded_channel"])
def connect(server: BytesServer, request: pytest.FixtureRequest) -> Iterator[Callable[..., Client]]:
    """connect(interceptor=None) -> Client on a fresh channel to the test server.

    Each test runs twice: the interceptor through grpc.intercept_channel, and the same
    interceptor carried by a GuardedChannel, which must behave exactly alike.
    """
    clients: list[Client] = []

    def make(interceptor: Any = None) -> Client:
        channel = grpc.insecure_channel(server.target)
        if request.param == "guarded_channel" and isinstance(interceptor, BreakerInterceptor):
            channel = GuardedChannel(channel, interceptor)
        elif interceptor is not None:
            channel = grpc.intercept_channel(channel, interceptor)
        client = Client(channel)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def outcome(fn: Callable[[], Any]) -> Any:
    """What a caller observes: the value, or the error's type, code, details and trailers."""
    try:
        return ("ok", fn())
    except grpc.RpcError as error:
        return (
            "error",
            type(error).__name__,
            error.code(),
            error.details(),
            tuple(error.trailing_metadata() or ()),
        )


def trip(client: Client, registry: BreakerRegistry, method: str = UNARY) -> None:
    """Opens the breaker of `method` with two UNAVAILABLE answers."""
    call: Callable[[], object] = {
        UNARY: lambda: client.unary(b"fail:UNAVAILABLE"),
        OTHER: lambda: client.other(b"fail:UNAVAILABLE"),
        SERVER_STREAM: lambda: list(client.server_stream(b"fail-after:0:UNAVAILABLE")),
        CLIENT_STREAM: lambda: client.client_stream(iter([b"fail:UNAVAILABLE"])),
        BIDI: lambda: list(client.bidi(iter([b"fail:UNAVAILABLE"]))),
    }[method]
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert wait_until(lambda: registry.get(method).state is State.OPEN)


# ----- closed: everything reaches the caller exactly as without the interceptor ----------------


def code_and_details(future: grpc.Future[Any]) -> tuple[grpc.StatusCode, str | None]:
    """What a caller reads from a call future that failed."""
    error = future.exception()
    assert isinstance(error, grpc.RpcError), error
    return error.code(), error.details()


def scenarios(client: Client) -> list[Callable[[], Any]]:
    return [
        lambda: client.unary(b"hello"),
        lambda: client.unary(b"fail:NOT_FOUND"),
        lambda: client.unary(b"fail:UNAVAILABLE"),
        lambda: client.unary.with_call(b"hello")[0],
        lambda: client.unary.with_call(b"fail:INTERNAL")[0],
        lambda: client.unary.future(b"hello").result(),
        lambda: client.unary.future(b"fail:DATA_LOSS").result(),
        lambda: code_and_details(client.unary.future(b"fail:ABORTED")),
        lambda: list(client.server_stream(b"n:3")),
        lambda: list(client.server_stream(b"fail-after:2:UNAVAILABLE")),
        lambda: client.client_stream(iter([b"a", b"b", b"c"])),
        lambda: client.client_stream(iter([b"a", b"fail:PERMISSION_DENIED"])),
        lambda: client.client_stream.with_call(iter([b"a"]))[0],
        lambda: client.client_stream.future(iter([b"a", b"b"])).result(),
        lambda: list(client.bidi(iter([b"x", b"y"]))),
        lambda: list(client.bidi(iter([b"x", b"fail:INTERNAL"]))),
    ]


def test_closed_breaker_is_invisible_to_the_caller(connect: Callable[..., Client]) -> None:
    plain = connect()
    guarded = connect(BreakerInterceptor(BreakerRegistry(PATIENT)))
    expected = [outcome(fn) for fn in scenarios(plain)]
    observed = [outcome(fn) for fn in scenarios(guarded)]
    assert observed == expected
    assert ("ok", [b"m0", b"m1", b"m2"]) in observed
    assert any(item[0] == "error" and TRAILER in item[4] for item in observed)


def test_with_call_and_stream_calls_keep_their_call_api(
    connect: Callable[..., Client], registry: BreakerRegistry
) -> None:
    client = connect(BreakerInterceptor(registry))
    response, call = client.unary.with_call(b"hi", metadata=(("k", "v"),))
    assert response == b"hi" and call.code() is grpc.StatusCode.OK
    assert TRAILER in tuple(call.trailing_metadata())
    stream = client.server_stream(b"n:2")
    assert isinstance(stream, grpc.Call) and isinstance(stream, grpc.Future)
    assert isinstance(stream, grpc.RpcError)
    assert list(stream) == [b"m0", b"m1"]
    assert stream.code() is grpc.StatusCode.OK and stream.done()
    seen: list[Any] = []
    stream.add_done_callback(seen.append)
    assert seen == [stream]


def test_future_does_not_block_in_the_interceptor(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(BreakerInterceptor(registry))
    # The server holds both calls until `release` is set: an interceptor that waited for the
    # response would never return them. No clock is read; the deadline is only a safety net.
    calls: list[Any] = []
    issued = threading.Thread(
        target=lambda: calls.extend((client.unary.future(b"block"), client.server_stream(b"block")))
    )
    issued.start()
    issued.join(timeout=10)
    assert not issued.is_alive() and len(calls) == 2
    future, stream = calls
    assert not future.done()
    server.release.set()
    assert future.result(timeout=2) == b"block"
    assert list(stream) == [b"block"]
    assert wait_until(lambda: registry.get(UNARY).snapshot().successful == 1)


# ----- outcome by status -----------------------------------------------------------------------


def test_cancelled_call_is_ignored(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(BreakerInterceptor(registry))
    future = client.unary.future(b"block")
    assert server.entered.acquire(timeout=2)  # cancelled mid-flight, not before it arrived
    assert future.cancel()
    assert wait_until(lambda: registry.get(UNARY).snapshot().ignored == 1)
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.failed, snapshot.successful) == (0, 0)


def test_codes_configured_on_the_breaker_config(
    connect: Callable[..., Client], clock: FakeClock
) -> None:
    registry = BreakerRegistry(CONFIG, clock=clock)
    registry.set_policy(
        UNARY, CONFIG.replace(failure_codes={"NOT_FOUND"}, ignored_codes={"ABORTED"})
    )
    client = connect(BreakerInterceptor(registry))
    for request in (b"fail:NOT_FOUND", b"fail:ABORTED", b"fail:UNAVAILABLE"):
        with pytest.raises(grpc.RpcError) as raised:
            client.unary(request)
        assert raised.value.code().name == request.decode().removeprefix("fail:")
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.failed, snapshot.ignored, snapshot.successful) == (1, 1, 1)


def test_slow_unary_call_is_its_total_time(
    connect: Callable[..., Client], registry: BreakerRegistry
) -> None:
    client = connect(BreakerInterceptor(registry))
    assert client.unary(b"tick") == b"tick"  # the server advances the fake clock by 10 s
    assert client.unary(b"fast") == b"fast"
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.successful, snapshot.slow) == (2, 1)


def test_slow_stream_is_the_time_to_its_first_message(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(BreakerInterceptor(registry))
    stream = client.server_stream(b"long-lived")
    assert next(stream) == b"m0"
    server.release.set()  # 10 s pass on the fake clock between m0 and m1
    assert list(stream) == [b"m1", b"m2"]
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.successful, snapshot.slow) == (1, 0)
    assert list(client.server_stream(b"tick-first")) == [b"m0"]
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.successful, snapshot.slow) == (2, 1)


# ----- open: the server is never contacted ------------------------------------------------------


def assert_rejection(error: BaseException, method: str = UNARY) -> None:
    assert isinstance(error, grpc.RpcError)
    assert isinstance(error, CallNotPermittedError)
    assert (error.name, error.state) == (method, State.OPEN)
    assert str(error) == f"circuit breaker '{method}' is OPEN; next probe in 30.000s"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.args, copy.code()) == (type(error), error.args, error.code())
    assert isinstance(error, grpc.Call) and isinstance(error, grpc.Future)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    details = error.details()
    assert method in details and "OPEN" in details and "30.000s" in details
    assert tuple(error.trailing_metadata()) == (("x-meshbreaker-state", "OPEN"),)


def test_open_unary_rejects_every_way_of_calling_without_the_server(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer
) -> None:
    client = connect(BreakerInterceptor(registry))
    trip(client, registry)
    before = server.count(UNARY)
    with pytest.raises(CallNotPermittedError) as blocking:
        client.unary(b"hello")
    assert_rejection(blocking.value)
    with pytest.raises(grpc.RpcError) as with_call:
        client.unary.with_call(b"hello")
    assert_rejection(with_call.value)
    future = client.unary.future(b"hello")
    assert future.done()
    error = future.exception()
    assert isinstance(error, RejectedCall)
    assert_rejection(error)
    assert error is future
    with pytest.raises(RejectedCall):
        future.result()
    assert server.count(UNARY) == before
    assert registry.get(UNARY).snapshot().rejected == 3


@pytest.mark.parametrize("method", [SERVER_STREAM, BIDI, CLIENT_STREAM])
def test_open_streams_raise_on_first_read_without_the_server(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer, method: str
) -> None:
    client = connect(BreakerInterceptor(registry))
    trip(client, registry, method)
    before = server.total()
    if method == SERVER_STREAM:
        responses = client.server_stream(b"n:3")
    elif method == BIDI:
        responses = client.bidi(iter([b"a"]))
    else:
        future = client.client_stream.future(iter([b"a"]))
    with pytest.raises(CallNotPermittedError) as raised:
        next(responses) if method != CLIENT_STREAM else future.result()
    assert_rejection(raised.value, method)
    assert server.total() == before


def test_forced_open_details_say_no_probe(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer
) -> None:
    registry.set_override(UNARY, State.FORCED_OPEN)
    client = connect(BreakerInterceptor(registry))
    with pytest.raises(CallNotPermittedError) as raised:
        client.unary(b"x")
    error = raised.value
    assert isinstance(error, RejectedCall)
    assert "FORCED_OPEN" in error.details()
    assert tuple(error.trailing_metadata()) == (("x-meshbreaker-state", "FORCED_OPEN"),)
    assert server.total() == 0


# ----- half-open ----------------------------------------------------------------------------------


def test_half_open_lets_at_most_two_of_twenty_concurrent_probes_through(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer, clock: FakeClock
) -> None:
    client = connect(BreakerInterceptor(registry))
    trip(client, registry)
    clock.advance(31)
    before = server.count(UNARY)
    server.expect_entries()
    barrier = threading.Barrier(20)

    def probe() -> Any:
        barrier.wait()
        return outcome(lambda: client.unary(b"block"))

    with futures.ThreadPoolExecutor(20) as pool:
        results = [pool.submit(probe) for _ in range(20)]
        for _ in range(2):
            assert server.entered.acquire(timeout=2)
        assert wait_until(lambda: sum(r.done() for r in results) == 18)
        assert server.count(UNARY) - before == 2
        server.release.set()
        observed = [r.result(timeout=2) for r in results]
    assert observed.count(("ok", b"block")) == 2
    assert server.count(UNARY) - before == 2
    assert registry.get(UNARY).state is State.CLOSED


# ----- streams ------------------------------------------------------------------------------------


def test_cancelled_stream_is_ignored_and_releases_its_permit(
    connect: Callable[..., Client], registry: BreakerRegistry
) -> None:
    client = connect(BreakerInterceptor(registry))
    stream = client.server_stream(b"forever")
    assert next(stream) == b"m0"
    assert stream.cancel()
    with pytest.raises(grpc.RpcError) as raised:
        list(stream)
    assert raised.value.code() is grpc.StatusCode.CANCELLED
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.ignored, snapshot.failed, snapshot.successful) == (1, 0, 0)


def test_a_thousand_abandoned_streams_leak_no_permit(
    connect: Callable[..., Client], registry: BreakerRegistry, clock: FakeClock
) -> None:
    client = connect(BreakerInterceptor(registry))
    trip(client, registry, SERVER_STREAM)
    clock.advance(31)  # half-open: only 2 permits may be in flight, so one leak would block probes
    for index in range(1000):
        stream = client.server_stream(b"forever")
        assert next(stream) == b"m0"
        if index % 2:
            stream.cancel()
        del stream  # abandoned: dropped mid-stream
    gc.collect()
    breaker = registry.get(SERVER_STREAM)
    snapshot = breaker.snapshot()
    assert snapshot.state is State.HALF_OPEN
    assert (snapshot.half_open_in_flight, snapshot.ignored, snapshot.rejected) == (0, 1000, 0)
    assert list(client.server_stream(b"n:1")) == [b"m0"]
    assert breaker.state is State.CLOSED


# ----- deadlines, isolation -----------------------------------------------------------------------


# ----- fallbacks ----------------------------------------------------------------------------------


def test_fallback_answers_rejected_unary_calls(
    connect: Callable[..., Client], registry: BreakerRegistry, server: BytesServer
) -> None:
    seen: list[tuple[Any, BaseException]] = []

    def fallback(request: bytes, error: BaseException) -> bytes:
        seen.append((request, error))
        return b"cached"

    client = connect(
        BreakerInterceptor(registry, fallbacks={UNARY: fallback, CLIENT_STREAM: fallback})
    )
    trip(client, registry)
    before = server.total()
    assert client.unary(b"q") == b"cached"
    response, call = client.unary.with_call(b"q")
    assert response == b"cached" and call.code() is grpc.StatusCode.OK
    assert ("x-meshbreaker-fallback", "rejected") in call.trailing_metadata()
    assert client.unary.future(b"q").result() == b"cached"
    assert server.total() == before
    assert seen[0][0] == b"q" and isinstance(seen[0][1], CallNotPermittedError)
    assert client.client_stream(iter([b"a"])) == b"count:1"  # its own breaker is closed


def test_fallback_on_failure_only_when_asked(
    connect: Callable[..., Client], registry: BreakerRegistry
) -> None:
    errors: list[BaseException] = []  # checked outside: the interceptor catches what it raises

    def fallback(request: bytes, error: BaseException) -> bytes:
        errors.append(error)
        code = error.code().name if isinstance(error, grpc.RpcError) else "?"
        return b"fallback for " + request + b" after " + code.encode()

    without = connect(BreakerInterceptor(registry, fallbacks={UNARY: fallback}))
    with pytest.raises(grpc.RpcError) as raised:
        without.unary(b"fail:INTERNAL")
    assert raised.value.code() is grpc.StatusCode.INTERNAL and errors == []
    with_ = connect(
        BreakerInterceptor(
            BreakerRegistry(PATIENT),
            fallbacks={UNARY: fallback, CLIENT_STREAM: lambda r, e: b"cs"},
            fallback_on_failure=True,
        )
    )
    assert with_.unary(b"fail:INTERNAL") == b"fallback for fail:INTERNAL after INTERNAL"
    assert isinstance(errors[-1], grpc.RpcError)
    assert with_.unary.future(b"fail:UNAVAILABLE").result() == (
        b"fallback for fail:UNAVAILABLE after UNAVAILABLE"
    )
    with pytest.raises(grpc.RpcError) as not_a_failure:
        with_.unary(b"fail:NOT_FOUND")
    assert not_a_failure.value.code() is grpc.StatusCode.NOT_FOUND
    assert with_.client_stream(iter([b"fail:DATA_LOSS"])) == b"cs"
    assert with_.unary(b"fine") == b"fine"


# ----- bulkhead -----------------------------------------------------------------------------------


def test_bulkhead_rejects_beyond_max_concurrent_calls_without_the_server(
    connect: Callable[..., Client], clock: FakeClock, server: BytesServer
) -> None:
    registry = BreakerRegistry(CONFIG.replace(max_concurrent_calls=2), clock=clock)
    client = connect(BreakerInterceptor(registry))
    in_flight = [client.unary.future(b"block") for _ in range(2)]
    for _ in range(2):
        assert server.entered.acquire(timeout=2)
    with pytest.raises(BulkheadFullError) as raised:
        client.unary(b"x")
    error = raised.value
    assert isinstance(error, grpc.RpcError) and isinstance(error, CallNotPermittedError)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert UNARY in (error.details() or "")
    assert server.count(UNARY) == 2
    server.release.set()
    assert [f.result(timeout=2) for f in in_flight] == [b"block", b"block"]
    assert wait_until(lambda: registry.get(UNARY).snapshot().successful == 2)
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.rejected, snapshot.failed) == (1, 0)
    assert client.unary(b"x") == b"x"


# ----- meshbreaker's own failures never break the RPC ---------------------------------------------


@pytest.mark.parametrize("registry_class", BROKEN_REGISTRIES)
def test_bookkeeping_errors_never_change_the_rpc(
    connect: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
    registry_class: type[BreakerRegistry],
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshbreaker")
    plain = connect()
    guarded = connect(BreakerInterceptor(registry_class(CONFIG)))
    assert [outcome(fn) for fn in scenarios(guarded)] == [outcome(fn) for fn in scenarios(plain)]
    stream = guarded.server_stream(b"forever")
    next(stream)
    stream.cancel()
    del stream
    settle(caplog)
    assert any("meshbreaker" in record.name for record in caplog.records)


def settle(caplog: pytest.LogCaptureFixture) -> None:
    """Waits until grpc's threads stop logging (tracebacks formatted in threads race ast.parse)."""
    count, end = -1, time.monotonic() + 1.0
    while count != len(caplog.records) and time.monotonic() < end:
        count = len(caplog.records)
        time.sleep(0.05)


# ----- construction -------------------------------------------------------------------------------


def test_defaults_and_bad_arguments() -> None:
    assert isinstance(BreakerInterceptor().registry, BreakerRegistry)
    with pytest.raises(ConfigError, match="target"):
        BreakerInterceptor(target="")
    for never_called in ("Unary", "/a/", "/a b/M", "/pkg.S/M\n"):
        with pytest.raises(ConfigError, match="fallbacks"):
            BreakerInterceptor(fallbacks={never_called: lambda r, e: r})
    with pytest.raises(ConfigError, match="fallbacks"):
        BreakerInterceptor(fallbacks={UNARY: "not callable"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="fallbacks: must be a mapping"):
        BreakerInterceptor(fallbacks=[(UNARY, lambda r, e: r)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="failure_codes"):
        BreakerInterceptor(failure_codes=["NOPE"])
    with pytest.raises(ConfigError, match="failure_codes"):
        BreakerInterceptor(failure_codes="UNAVAILABLE")
    with pytest.raises(ConfigError, match="ignored_codes"):
        BreakerInterceptor(failure_codes=["INTERNAL"], ignored_codes=["INTERNAL"])
    with pytest.raises(TypeError, match="registry"):
        BreakerInterceptor(BreakerConfig())  # type: ignore[arg-type]


def test_a_methods_facts_are_looked_up_once_and_at_most_ten_thousand_kept() -> None:
    # The hot path reads the cache directly; dynamic method names must not grow it for ever.
    def cached(request: Any, error: BaseException) -> bytes:
        return b"cached"

    guard = Guard(BreakerRegistry(), target="svc", fallbacks={UNARY: cached})
    info = guard.method_info(UNARY)
    assert (info.name, info.fallback) == (f"svc{UNARY}", cached)
    assert guard.method_info(UNARY) is info and guard.methods[UNARY] is info
    from_aio = guard.method_info(UNARY.encode())  # aio channels name methods in bytes
    assert (from_aio.name, from_aio.fallback) == (f"svc{UNARY}", cached)
    assert guard.methods[UNARY.encode()] is from_aio
    for index in range(10_000):
        guard.method_info(f"/pkg.S/M{index}")
    assert len(guard.methods) == 10_000
    late = guard.method_info("/pkg.S/Late")  # past the bound: right, and not kept
    assert late.name == "svc/pkg.S/Late" and "/pkg.S/Late" not in guard.methods


def test_shadow_mode_never_rejects(connect: Callable[..., Client], clock: FakeClock) -> None:
    registry = BreakerRegistry(CONFIG.replace(mode="shadow"), clock=clock)
    client = connect(BreakerInterceptor(registry))
    trip(client, registry)
    assert client.unary(b"x") == b"x"
    assert registry.get(UNARY).snapshot().shadow_rejected == 1


def test_public_import_paths() -> None:
    import meshbreaker
    from meshbreaker.aio import breaker_interceptors as from_aio

    assert meshbreaker.BreakerInterceptor is BreakerInterceptor
    assert callable(from_aio)


def test_every_call_counts_exactly_once_under_concurrency(
    connect: Callable[..., Client], clock: FakeClock
) -> None:
    # Streams end on the caller's thread and in grpc's done-callback: only one of them may count.
    registry = BreakerRegistry(PATIENT, clock=clock)
    client = connect(BreakerInterceptor(registry))

    def work(index: int) -> None:
        fail = index % 3 == 0
        outcome(lambda: client.unary(b"fail:INTERNAL" if fail else b"ok"))
        outcome(lambda: client.unary.future(b"fail:INTERNAL" if fail else b"ok").result())
        outcome(lambda: list(client.server_stream(b"fail-after:1:INTERNAL" if fail else b"n:2")))
        outcome(lambda: list(client.bidi(iter([b"fail:INTERNAL" if fail else b"ok"]))))

    with futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(60)))
    unary, stream, bidi = (registry.get(m) for m in (UNARY, SERVER_STREAM, BIDI))
    assert wait_until(lambda: unary.snapshot().total == 120)
    assert (unary.snapshot().failed, unary.snapshot().successful) == (40, 80)
    for breaker in (stream, bidi):
        snapshot = breaker.snapshot()
        assert (snapshot.total, snapshot.failed, snapshot.successful) == (60, 20, 40)
