"""Typed grpc.aio calls where the third-party stubs fall short.

* `await read(call)` — the next message of a server stream. grpc-stubs types `read()` as `object`
  (the EOF sentinel absorbs the message type); the end of the stream fails the test instead.
* `health_stub(channel)` — grpc.health.v1 `HealthStub` on an aio channel;
  types-grpcio-health-checking declares none of its methods.
* `reflection_stub(channel)` — `ServerReflectionStub` on an aio channel; types-grpcio-reflection
  accepts only a sync channel and leaves `ServerReflectionInfo` untyped.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, cast

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

_T = TypeVar("_T")


async def read(call: grpc.aio.UnaryStreamCall[Any, _T] | grpc.aio.StreamStreamCall[Any, _T]) -> _T:
    """The next message of `call`; an assertion error if the stream ended instead."""
    message = await call.read()
    assert message is not grpc.aio.EOF, "the stream ended"
    return cast(_T, message)


class HealthStub(Protocol):
    Check: grpc.aio.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    ]


class ReflectionStub(Protocol):
    ServerReflectionInfo: grpc.aio.StreamStreamMultiCallable[
        reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    ]


def health_stub(channel: grpc.aio.Channel) -> HealthStub:
    """`health_pb2_grpc.HealthStub(channel)`, typed."""
    stub: object = health_pb2_grpc.HealthStub(channel)
    return cast(HealthStub, stub)


def reflection_stub(channel: grpc.aio.Channel) -> ReflectionStub:
    """`reflection_pb2_grpc.ServerReflectionStub(channel)`, typed."""
    # The generated class takes any channel (it only calls channel.stream_stream).
    stub: object = reflection_pb2_grpc.ServerReflectionStub(cast(grpc.Channel, channel))
    return cast(ReflectionStub, stub)
