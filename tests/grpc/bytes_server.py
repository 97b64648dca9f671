"""A real gRPC test server on 127.0.0.1 with bytes in and out, scripted by the request bytes."""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from meshbreaker.config import BreakerConfig, WindowType
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock

SERVICE = "test.Svc"
UNARY = f"/{SERVICE}/Unary"
OTHER = f"/{SERVICE}/Other"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
BIDI = f"/{SERVICE}/Bidi"
TRAILER = ("x-test-trailer", "server")
INITIAL = ("x-test-initial", "server")

# Trips after 2 failures in a row, stays open 30 s, probes with at most 2 calls, one success closes.
CONFIG = BreakerConfig(
    window_type=WindowType.COUNT,
    window_size=20,
    minimum_calls=100,
    consecutive_failures=2,
    open_duration=30.0,
    open_duration_max=30.0,
    half_open_max_calls=2,
    half_open_success_threshold=1,
    slow_call_duration=5.0,
)
# CONFIG that rates never trip within a test's calls: a COUNT window's effective minimum_calls is
# min(minimum_calls, window_size), so CONFIG's window of 20 would trip on 10 failures that happen
# to finish together (as concurrent calls under load do).
PATIENT = CONFIG.replace(consecutive_failures=0, window_size=1000, minimum_calls=1000)


class BytesServer:
    """Counts calls per method; requests script the answer.

    b"fail:CODE" aborts with CODE, b"drop" aborts UNAVAILABLE as a balancer's drop words it,
    b"block" waits for `release`, b"deadline" waits for the RPC to end, b"n:K" streams K
    messages, b"fail-after:K:CODE" streams K then aborts, b"forever" streams until cancelled;
    b"flaky:K:CODE" aborts with CODE the first K times it is sent, then
    echoes; b"pushback:MS" aborts UNAVAILABLE with grpc-retry-pushback-ms MS (b"flaky:K:CODE:MS"
    adds that to each abort); anything else is echoed. With a FakeClock, b"tick" advances it by
    `tick` seconds before answering, b"tick-first" streams after advancing it, and b"long-lived"
    streams one message, waits for `release`, advances it, then streams two more. A client
    stream's requests are answered in order once it has them all (`streams` keeps each one's).
    """

    def __init__(self, clock: FakeClock | None = None, tick: float = 10.0) -> None:
        self.clock = clock
        self.tick = tick
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.time_remaining: list[float | None] = []
        self.seen: collections.Counter[bytes] = collections.Counter()
        self.streams: list[list[bytes]] = []  # each client stream's requests, as received
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=48))
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "Unary": grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, UNARY)),
            "Other": grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, OTHER)),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def start(self) -> BytesServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.stop(None)

    def expect_entries(self) -> None:
        """Forget earlier entries, so `entered` counts only the calls that start from now on."""
        self.entered = threading.Semaphore(0)

    def count(self, method: str) -> int:
        with self.lock:
            return self.calls[method]

    def total(self) -> int:
        with self.lock:
            return sum(self.calls.values())

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] += 1
            self.time_remaining.append(context.time_remaining())
        self.entered.release()

    def _answer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request.startswith(b"flaky:"):
            _, times, code, *pushback = request.decode().split(":")
            with self.lock:
                self.seen[request] += 1
                seen = self.seen[request]
            if seen <= int(times):
                if pushback:
                    context.set_trailing_metadata((("grpc-retry-pushback-ms", pushback[0]),))
                context.abort(grpc.StatusCode[code], f"boom {code}")
            return request
        if request.startswith(b"pushback:"):
            context.set_trailing_metadata((("grpc-retry-pushback-ms", request[9:].decode()),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "boom UNAVAILABLE")
        if request == b"drop":
            context.abort(grpc.StatusCode.UNAVAILABLE, "circuit breaker drop")
        if request.startswith(b"fail:"):
            context.set_trailing_metadata((TRAILER,))
            context.abort(grpc.StatusCode[request[5:].decode()], f"boom {request[5:].decode()}")
        if request == b"block":
            self.release.wait(5)
        if request == b"tick" and self.clock is not None:
            self.clock.advance(self.tick)
        if request == b"deadline":
            ended = threading.Event()
            if context.add_callback(ended.set):  # False: the RPC has already ended
                ended.wait(5)
        return request

    def _unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter(method, context)
        context.send_initial_metadata((INITIAL,))
        context.set_trailing_metadata((TRAILER,))
        return self._answer(request, context)

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter(SERVER_STREAM, context)
        if request.startswith(b"flaky:"):
            yield self._answer(request, context)  # aborts the first K times, then one message
        elif request.startswith(b"n:"):
            for index in range(int(request[2:])):
                yield b"m%d" % index
        elif request.startswith(b"fail-after:"):
            _, count, code = request.decode().split(":")
            for index in range(int(count)):
                yield b"m%d" % index
            context.abort(grpc.StatusCode[code], f"boom {code}")
        elif request == b"tick-first":
            if self.clock is not None:
                self.clock.advance(self.tick)
            yield b"m0"
        elif request == b"long-lived":
            yield b"m0"
            self.release.wait(5)
            if self.clock is not None:
                self.clock.advance(self.tick)
            yield b"m1"
            yield b"m2"
        elif request == b"forever":
            end = time.monotonic() + 5
            index = 0
            while context.is_active() and time.monotonic() < end:
                yield b"m%d" % index
                index += 1
                time.sleep(0.002)
        else:
            yield self._answer(request, context)

    def _client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._enter(CLIENT_STREAM, context)
        received: list[bytes] = []
        with self.lock:
            self.streams.append(received)
        for request in requests:
            with self.lock:
                received.append(request)
        # Answered once the client has sent them all: an abort racing the client's writes ends
        # the call INTERNAL or CANCELLED on grpc.aio instead of with the code aborted with.
        for request in received:
            self._answer(request, context)
        return b"count:%d" % len(received)

    def _bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._enter(BIDI, context)
        for request in requests:
            yield self._answer(request, context)


@pytest.fixture
def server(clock: FakeClock) -> Iterator[BytesServer]:
    """A started BytesServer whose b"tick" requests advance the test's fake clock."""
    bytes_server = BytesServer(clock).start()
    yield bytes_server
    bytes_server.stop()


@pytest.fixture
def registry(clock: FakeClock) -> BreakerRegistry:
    """A registry on the fake clock with CONFIG as its default."""
    return BreakerRegistry(CONFIG, clock=clock)
