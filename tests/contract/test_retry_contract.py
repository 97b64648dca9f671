"""Budgeted retries through the sync and aio interceptors, against a real server (DESIGN.md §4)."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc.aio._interceptor import _InterceptedStreamRequestMixin

from meshbreaker import BreakerConfig, BreakerRegistry, CallNotPermittedError, ThrottledError
from meshbreaker._adapter.retrying import next_delay
from meshbreaker.aio import breaker_interceptors
from meshbreaker.aio import guarded_channel as aio_guarded_channel
from meshbreaker.aio.interceptors import WRITES_CODE, replayable
from meshbreaker.grpc import BreakerInterceptor
from meshbreaker.grpc._retry_future import Timer
from meshbreaker.grpc.interceptor import BLOCKING_OUTCOMES
from meshbreaker.retry import RetryBudget, RetryPolicy, RetryRun
from meshbreaker.testing import FakeClock
from tests.contract.drivers import Driver, Seen
from tests.grpc.bytes_server import BIDI, CLIENT_STREAM, PATIENT, SERVER_STREAM, UNARY, BytesServer
from tests.server_support import wait_until

# Backoffs of a millisecond at most: the tests wait for nothing but the server.
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)


@pytest.fixture
def driver(any_driver: Driver) -> Driver:
    """Each flavour, and sync .future() calls (retried from callbacks and the timer thread)."""
    return any_driver


def retrying(clock: FakeClock, policy: RetryPolicy = FAST, **fields: object) -> BreakerRegistry:
    config = PATIENT.replace(retry=policy, idempotent=True).replace(**fields)
    return BreakerRegistry(config, clock=clock)


async def test_an_idempotent_call_is_retried_until_it_succeeds(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    registry = retrying(clock)
    driver.connect(registry)
    seen = await driver.unary(b"flaky:2:UNAVAILABLE")
    assert (seen.value, seen.code) == (b"flaky:2:UNAVAILABLE", grpc.StatusCode.OK)
    assert server.count(UNARY) == 3
    snapshot = registry.get(UNARY).snapshot()
    assert (snapshot.failed, snapshot.successful) == (2, 1)  # every attempt went through it


async def test_the_last_failure_is_what_the_caller_gets(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(retrying(clock))
    seen = await driver.unary(b"flaky:9:UNAVAILABLE")
    assert (seen.code, seen.details) == (grpc.StatusCode.UNAVAILABLE, "boom UNAVAILABLE")
    assert server.count(UNARY) == 3  # max_attempts


async def test_a_retry_waits_out_the_servers_pushback(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(retrying(clock))
    for call, request in (
        (driver.unary, b"flaky:1:UNAVAILABLE:300"),
        (driver.server_stream, b"flaky:1:UNAVAILABLE:301"),
    ):
        started = time.monotonic()
        seen = await call(request)  # refused once with a pushback of 300 ms, then answered
        assert seen.code is grpc.StatusCode.OK
        assert time.monotonic() - started >= 0.3  # a lower bound, not a speed check
    assert server.count(UNARY) == server.count(SERVER_STREAM) == 2


def test_a_retried_future_that_failed_tells_its_last_attempts_error(
    clock: FakeClock, server: BytesServer
) -> None:
    registry = retrying(clock)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target), BreakerInterceptor(registry)
    )
    try:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        future: Any = multi.future(b"flaky:9:UNAVAILABLE")
        error = future.exception(timeout=30)
        assert isinstance(error, grpc.RpcError) and error.code() is grpc.StatusCode.UNAVAILABLE
        assert future.traceback(timeout=30) is not None
        assert future.traceback() is error.__traceback__
        assert server.count(UNARY) == 3
    finally:
        channel.close()


@pytest.mark.parametrize("method", [UNARY, SERVER_STREAM])
async def test_only_retryable_codes_are_retried(
    driver: Driver, clock: FakeClock, server: BytesServer, method: str
) -> None:
    driver.connect(retrying(clock))
    seen = await send(driver, method, b"flaky:1:INTERNAL")
    assert (seen.code, seen.details) == (grpc.StatusCode.INTERNAL, "boom INTERNAL")
    assert server.count(method) == 1


async def test_calls_made_while_the_policy_allows_one_attempt_earn_no_retries(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    # A retry costs two calls' deposits and there is no reserve; raising max_attempts keeps
    # the method's budget, so the failure after it finds only its own call's deposit.
    one = RetryPolicy(
        max_attempts=1, initial_backoff=0.001, budget_ratio=0.5, budget_min_per_second=0
    )
    registry = retrying(clock, one)
    driver.connect(registry)
    for _ in range(4):
        assert (await driver.unary(b"hello")).code is grpc.StatusCode.OK
    three = dataclasses.replace(one, max_attempts=3)
    registry.set_policy(UNARY, registry.get(UNARY).config.replace(retry=three))
    seen = await driver.unary(b"flaky:1:UNAVAILABLE")
    assert seen.code is grpc.StatusCode.UNAVAILABLE and server.count(UNARY) == 5


async def test_a_call_that_reached_the_server_is_not_retried_unless_idempotent(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(retrying(clock, idempotent=False))
    seen = await driver.unary(b"flaky:1:UNAVAILABLE")
    assert seen.code is grpc.StatusCode.UNAVAILABLE and server.count(UNARY) == 1


async def test_a_call_that_never_left_is_retried_even_if_not_idempotent(
    driver: Driver, clock: FakeClock
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    registry = retrying(clock, idempotent=False)
    driver.connect(registry, address=closed)
    seen = await driver.unary(b"hello", timeout=10)
    assert seen.code is grpc.StatusCode.UNAVAILABLE
    assert registry.get(UNARY).snapshot().failed == 3  # three attempts, none reached a server


@pytest.mark.parametrize(("pushback", "attempts"), [("0", 3), ("-1", 1), ("soon", 1)])
async def test_pushback_is_honoured(
    driver: Driver, clock: FakeClock, server: BytesServer, pushback: str, attempts: int
) -> None:
    driver.connect(retrying(clock))
    seen = await driver.unary(b"pushback:" + pushback.encode())
    assert seen.code is grpc.StatusCode.UNAVAILABLE and server.count(UNARY) == attempts


async def test_a_pushback_past_the_deadline_ends_the_call(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(retrying(clock))
    seen = await driver.unary(b"pushback:60000", timeout=5)
    assert seen.code is grpc.StatusCode.UNAVAILABLE and server.count(UNARY) == 1


# A retry waits out a pushback of PAUSE s, so whatever the load it starts with at most
# TIMEOUT - PAUSE s left; given a fresh timeout it would reach the server with nearly TIMEOUT s.
# The bound halfway between leaves room for grpc's rounding of the grpc-timeout header (10 ms
# below 10 s) and for a server slow to read it: no comparison of two measured times.
TIMEOUT, PAUSE = 4.0, 1.0


@pytest.mark.parametrize("method", [UNARY, SERVER_STREAM])
async def test_attempts_share_the_callers_deadline(
    driver: Driver, clock: FakeClock, server: BytesServer, method: str
) -> None:
    driver.connect(retrying(clock))
    call = driver.unary if method == UNARY else driver.server_stream
    seen = await call(b"flaky:1:UNAVAILABLE:%d" % (PAUSE * 1000), timeout=TIMEOUT)
    assert seen.code is grpc.StatusCode.OK and server.count(method) == 2
    retried = server.time_remaining[-1]
    assert retried is not None and retried < TIMEOUT - PAUSE / 2  # what was left, not a fresh one


def assert_last_attempts_status(seen: Seen) -> None:
    """The caller got the failure the server sent (gRFC A6), not the local refusal of a retry."""
    assert (seen.code, seen.details) == (grpc.StatusCode.UNAVAILABLE, "boom UNAVAILABLE")
    assert not isinstance(seen.error, CallNotPermittedError)
    assert all(key != "x-meshbreaker-state" for key, _ in seen.trailing)


async def send(driver: Driver, method: str, request: bytes) -> Seen:
    """One call of `method`'s kind carrying `request` (a request stream: it alone)."""
    if method == SERVER_STREAM:
        return await driver.server_stream(request)
    if method == CLIENT_STREAM:
        return await driver.client_stream([request])
    return await driver.unary(request, method)


@pytest.mark.parametrize("method", [UNARY, SERVER_STREAM, CLIENT_STREAM])
async def test_a_rejected_retry_ends_with_the_last_attempts_status(
    driver: Driver, clock: FakeClock, server: BytesServer, method: str
) -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.001)
    registry = retrying(clock, policy, consecutive_failures=2)
    driver.connect(registry)
    seen = await send(driver, method, b"flaky:9:UNAVAILABLE")
    assert_last_attempts_status(seen)  # the third attempt met an open breaker
    assert server.count(method) == 2
    assert registry.get(method).snapshot().rejected == 1  # refused, and never retried


def throttling(clock: FakeClock) -> BreakerRegistry:
    """Retries, and a throttle that refuses every call it may (p = 1/2 after one failure)."""
    config = PATIENT.replace(retry=FAST, idempotent=True, throttle_k=1.0)
    return BreakerRegistry(config, clock=clock, rng=lambda: 0.0)


async def test_a_throttled_retry_ends_with_the_last_attempts_status(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    registry = throttling(clock)
    driver.connect(registry)
    seen = await driver.unary(b"flaky:9:UNAVAILABLE")
    assert_last_attempts_status(seen)
    assert server.count(UNARY) == 1
    assert registry.get(UNARY).snapshot().throttled == 1


async def test_a_first_attempt_refused_is_the_rejection(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(throttling(clock))
    await driver.unary(b"flaky:1:UNAVAILABLE")  # sent once; its retry throttled
    seen = await driver.unary(b"hello")
    assert isinstance(seen.error, ThrottledError)  # nothing was sent: the refusal is the answer
    assert server.count(UNARY) == 1


async def test_the_budget_bounds_retries_across_calls(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    policy = RetryPolicy(
        max_attempts=3,
        initial_backoff=0.001,
        max_backoff=0.001,
        budget_ratio=0.0,
        budget_min_per_second=1,
        budget_ttl=1.0,
    )  # one retry in all
    driver.connect(retrying(clock, policy))
    for _ in range(3):
        await driver.unary(b"flaky:9:UNAVAILABLE")
    assert server.count(UNARY) == 4


async def test_a_request_stream_is_retried_replaying_every_message(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    registry = retrying(clock)
    driver.connect(registry)
    requests = [b"a", b"flaky:2:UNAVAILABLE", b"b", b"c"]
    seen = await driver.client_stream(requests)
    assert (seen.value, seen.code) == (b"count:4", grpc.StatusCode.OK), (seen, server.streams)
    assert server.count(CLIENT_STREAM) == 3
    assert server.streams[-1] == requests  # the last attempt sent them all, in order
    assert all(stream[:2] == requests[:2] for stream in server.streams)
    snapshot = registry.get(CLIENT_STREAM).snapshot()
    assert (snapshot.failed, snapshot.successful) == (2, 1)  # every attempt went through it


# Past gRFC A6's per-RPC buffer (256 KiB) a call is committed: its requests are not kept.
LARGE = [b"x" * 100_000] * 3


@pytest.mark.parametrize(("requests", "attempts"), [(LARGE[:2], 3), (LARGE, 1)])
async def test_a_request_stream_past_the_buffer_limit_is_not_retried(
    driver: Driver, clock: FakeClock, server: BytesServer, requests: list[bytes], attempts: int
) -> None:
    driver.connect(retrying(clock))
    seen = await driver.client_stream([*requests, b"fail:UNAVAILABLE"])
    assert seen.code is grpc.StatusCode.UNAVAILABLE
    assert server.count(CLIENT_STREAM) == attempts  # 200 kB kept and replayed; 300 kB committed


@pytest.mark.parametrize("guarded", [False, True], ids=["interceptors", "guarded"])
async def test_aio_requests_written_with_write_are_sent_once(
    clock: FakeClock, server: BytesServer, guarded: bool
) -> None:
    # grpc.aio reads write()s only once the interceptors have returned the call: not replayable.
    registry = retrying(clock)
    if guarded:
        channel = aio_guarded_channel(grpc.aio.insecure_channel(server.target), registry)
    else:
        interceptors = breaker_interceptors(registry)
        channel = grpc.aio.insecure_channel(server.target, interceptors=interceptors)
    try:
        multi: Any = channel.stream_unary(CLIENT_STREAM)
        call = multi(timeout=30)  # a hang would end DEADLINE_EXCEEDED, failing the test
        await call.write(b"a")
        await call.write(b"flaky:1:UNAVAILABLE")
        await call.done_writing()  # the server aborts once it has them all
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert server.count(CLIENT_STREAM) == 1
    finally:
        await channel.close()


def test_grpcs_write_proxy_is_known() -> None:
    """The generator grpc.aio makes of write()s is recognised (else no request stream retries)."""
    assert WRITES_CODE is not None
    writes = _InterceptedStreamRequestMixin()._proxy_writes_as_request_iterator()  # type: ignore[no-untyped-call]
    assert not replayable(writes)
    assert replayable(iter([b"a"]))


async def test_a_request_stream_that_reached_the_server_is_not_retried_unless_idempotent(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(retrying(clock, idempotent=False))
    seen = await driver.client_stream([b"a", b"flaky:1:UNAVAILABLE"])
    assert seen.code is grpc.StatusCode.UNAVAILABLE and server.count(CLIENT_STREAM) == 1


async def test_no_retry_policy_means_one_attempt(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(BreakerRegistry(BreakerConfig(idempotent=True), clock=clock))
    await driver.unary(b"flaky:1:UNAVAILABLE")
    assert server.count(UNARY) == 1


def test_a_balancers_drop_is_never_retried() -> None:
    run = RetryRun(FAST, RetryBudget(), idempotent=True, deadline=None)
    drop = "circuit breaker drop"  # how grpc's xds_cluster_impl words it
    assert next_delay(run, grpc.StatusCode.UNAVAILABLE, drop, (), ()) is None
    assert next_delay(run, grpc.StatusCode.UNAVAILABLE, "boom", (), ()) is not None


async def test_a_response_stream_is_retried_until_its_first_message(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    registry = retrying(clock)
    driver.connect(registry)
    seen = await driver.server_stream(b"flaky:2:UNAVAILABLE")
    assert (seen.value, seen.code) == ([b"flaky:2:UNAVAILABLE"], grpc.StatusCode.OK)
    assert server.count(SERVER_STREAM) == 3
    snapshot = registry.get(SERVER_STREAM).snapshot()
    assert (snapshot.failed, snapshot.successful) == (2, 1)


async def test_a_response_stream_is_not_retried_after_a_message(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(retrying(clock))
    seen = await driver.server_stream(b"fail-after:1:UNAVAILABLE")
    assert seen.code is grpc.StatusCode.UNAVAILABLE and server.count(SERVER_STREAM) == 1


async def test_bidi_streams_are_never_retried(
    driver: Driver, clock: FakeClock, server: BytesServer
) -> None:
    driver.connect(retrying(clock))
    seen = await driver.bidi([b"flaky:1:UNAVAILABLE"])  # its requests cannot be sent again
    assert seen.code is grpc.StatusCode.UNAVAILABLE and server.count(BIDI) == 1


@contextlib.contextmanager
def _future_waiting_to_retry(clock: FakeClock, server: BytesServer) -> Iterator[Any]:
    """A .future() whose first attempt failed with a minute's pushback: it waits to retry."""
    registry = retrying(clock, RetryPolicy(max_attempts=3, initial_backoff=0.001))
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target), BreakerInterceptor(registry)
    )
    try:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        future: Any = multi.future(b"pushback:60000")
        assert wait_until(lambda: registry.get(UNARY).snapshot().failed == 1)
        yield future
    finally:
        channel.close()


def test_a_future_cancelled_while_waiting_to_retry_ends_at_once(
    clock: FakeClock, server: BytesServer
) -> None:
    with _future_waiting_to_retry(clock, server) as future:
        ended = threading.Event()
        future.add_done_callback(lambda done: ended.set() if done is future else None)
        assert future.running() and not future.done() and not ended.is_set()
        assert future.is_active() is True  # a retry's wait is part of the call
        assert future.cancel()
        assert ended.is_set() and future.done() and future.cancelled()
        assert future.is_active() is False
        late: list[Any] = []
        future.add_done_callback(late.append)  # on a done future: called at once
        assert late == [future]
        assert future.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
        assert not future.cancel()  # over
        assert server.count(UNARY) == 1


def test_a_future_waiting_to_retry_answers_with_its_final_status(
    clock: FakeClock, server: BytesServer
) -> None:
    # Between attempts the future is not over: its status questions wait for the end, and do
    # not answer with the attempt that failed.
    with _future_waiting_to_retry(clock, server) as future:
        read: list[Any] = []
        readers = [
            threading.Thread(target=lambda ask=ask: read.append(ask()))
            for ask in (future.code, future.details)
        ]
        for reader in readers:
            reader.start()
        readers[0].join(0.2)  # time to read, were the answer there
        assert future.cancel()
        for reader in readers:
            reader.join(10)
        assert sorted(read, key=str) == sorted(
            [grpc.StatusCode.CANCELLED, "Locally cancelled while waiting to retry"], key=str
        )
        assert server.count(UNARY) == 1


def test_a_future_cancelled_in_flight_is_not_retried(clock: FakeClock, server: BytesServer) -> None:
    registry = retrying(clock)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target), BreakerInterceptor(registry)
    )
    try:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        future: Any = multi.future(b"deadline")  # answers when the call ends
        assert wait_until(lambda: server.count(UNARY) == 1)
        assert future.cancel()
        assert wait_until(future.done)
        assert future.cancelled() and future.code() is grpc.StatusCode.CANCELLED
        assert server.count(UNARY) == 1
        assert registry.get(UNARY).snapshot().failed == 0  # a cancelled call is ignored
    finally:
        channel.close()


def test_the_timer_runs_callables_in_order_of_their_due_time() -> None:
    clock = FakeClock(0.0)
    timer, ran = Timer(clock), []
    done = threading.Event()

    def last() -> None:
        ran.append("last")
        done.set()

    timer.call_later(0.06, last)
    timer.call_later(0.0, lambda: ran.append("first"))
    assert wait_until(lambda: ran == ["first"])  # due now; the others wait for the clock
    timer.call_later(0.03, lambda: ran.append("second"))
    timer.call_later(0.03, lambda: ran.append("third"))  # a tie runs in the order scheduled
    clock.advance(1.0)
    assert done.wait(30)
    assert ran == ["first", "second", "third", "last"]


class _Peek(grpc.UnaryUnaryClientInterceptor):
    """Notes what the continuation hands an interceptor, and the thread each call is made on."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.threads: list[int] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.threads.append(threading.get_ident())
        call = continuation(details, request)
        self.seen.append(call)
        return call


def test_grpcs_blocking_outcome_types(server: BytesServer) -> None:
    """Blocking calls hand interceptors one of BLOCKING_OUTCOMES; futures never do."""
    assert len(BLOCKING_OUTCOMES) == 4  # grpc's three and the guarded channel's FailedCall
    peek = _Peek()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.target), peek)
    try:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        multi(b"hello")
        with pytest.raises(grpc.RpcError):
            multi(b"fail:UNAVAILABLE")
        future: Any = multi.future(b"fail:UNAVAILABLE")
        assert wait_until(future.done)  # ended, and still not a blocking outcome
        assert [isinstance(call, BLOCKING_OUTCOMES) for call in peek.seen] == [True, True, False]
        assert not isinstance(multi.future(b"hello"), BLOCKING_OUTCOMES)
    finally:
        channel.close()


def test_a_blocking_call_is_retried_in_its_callers_thread(
    clock: FakeClock, server: BytesServer
) -> None:
    # The caller waits anyway; the shared timer thread is for futures, and a blocking attempt
    # started there would hold up every other future's retries until it ended.
    peek = _Peek()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target), BreakerInterceptor(retrying(clock)), peek
    )
    try:
        multi: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(UNARY)
        response, call = multi.with_call(b"flaky:2:UNAVAILABLE")
        assert response == b"flaky:2:UNAVAILABLE" and call.code() is grpc.StatusCode.OK
        assert peek.threads == [threading.get_ident()] * 3
    finally:
        channel.close()
