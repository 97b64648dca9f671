"""Fault injection every banking service serves: failures, latency, outage, hang, late answers,
overload."""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from examples.banking.gen import chaos_pb2, chaos_pb2_grpc

_HANG_POLL = 0.05
# Arrival times of faulted calls kept (ChaosStats.faulted_at): a fleet's probes of a dead service
# are a few dozen; the bound only keeps a long outage under load from growing a list.
_FAULTED_KEPT = 10_000
# Health checks and the chaos API itself are never faulted: the demo must always reach them.
_EXEMPT = ("/grpc.", "/bank.v1.ChaosService/")


class Chaos:
    """The faults currently in force in one service; its interceptor applies them to every call."""

    def __init__(self, health_servicer: health.HealthServicer | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = chaos_pb2.ChaosSettings()
        self._hang_lifted = threading.Event()
        self._hang_lifted.set()
        self._health = health_servicer
        self._random = random.Random()
        self.calls = 0
        self.injected_failures = 0
        self.hung = 0
        self.late = 0
        self.overloaded = 0
        self._waiting = 0  # calls in the overload's queue now
        self._faulted_at: collections.deque[float] = collections.deque(maxlen=_FAULTED_KEPT)

    def set(self, settings: chaos_pb2.ChaosSettings) -> None:
        """Replace all settings at once; rejects out-of-range values with ValueError."""
        for name in ("failure_rate", "late_rate"):
            value = getattr(settings, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0 <= settings.capacity <= 10_000:
            raise ValueError(f"capacity must be in [0, 10000], got {settings.capacity}")
        for name in ("added_latency", "late_delay", "base_latency"):
            value = getattr(settings, name)
            if not 0.0 <= value <= 60.0:
                raise ValueError(f"{name} must be in [0, 60] seconds, got {value}")
        copy = chaos_pb2.ChaosSettings()
        copy.CopyFrom(settings)
        with self._lock:
            self._settings = copy
        if copy.hang:
            self._hang_lifted.clear()
        else:
            self._hang_lifted.set()
        if self._health is not None:
            status = (
                health_pb2.HealthCheckResponse.NOT_SERVING
                if copy.outage
                else health_pb2.HealthCheckResponse.SERVING
            )
            self._health.set("", status)

    def stats(self) -> chaos_pb2.ChaosStats:
        """The settings in force and what they did so far."""
        with self._lock:
            return chaos_pb2.ChaosStats(
                settings=self._settings,
                calls=self.calls,
                injected_failures=self.injected_failures,
                hung=self.hung,
                late=self.late,
                overloaded=self.overloaded,
                faulted_at=self._faulted_at,
            )

    def _applies(self, settings: chaos_pb2.ChaosSettings, method: str) -> bool:
        if not settings.methods:
            return True
        short = method.rpartition("/")[2]
        return any(m in (method, short) for m in settings.methods)

    def before(self, method: str, context: grpc.ServicerContext) -> float:
        """Inject the faults due before the work; returns how long to hold the answer after it."""
        with self._lock:
            settings = self._settings
            if not self._applies(settings, method):
                return 0.0
            self.calls += 1
            fail = settings.failure_rate > 0 and self._random.random() < settings.failure_rate
            late = settings.late_rate > 0 and self._random.random() < settings.late_rate
            if settings.outage or fail:
                self.injected_failures += 1
            if settings.hang:
                self.hung += 1
            if settings.outage or fail or settings.hang:
                self._faulted_at.append(time.time())  # wall clock: other processes compare it
            if late:
                self.late += 1
            draw = self._random.random()
        if settings.capacity > 0:
            self._overload(settings, draw, context)
        if settings.outage:
            # With added_latency, a dying service: it takes that long to say UNAVAILABLE.
            if settings.added_latency > 0:
                time.sleep(settings.added_latency)
            context.abort(grpc.StatusCode.UNAVAILABLE, "chaos: service outage")
        if settings.hang:
            # Hold the call until its caller gives up; a hung request never does any work, so a
            # caller's retry with the same idempotency key is the only way it gets applied.
            while not self._hang_lifted.wait(_HANG_POLL):
                if not context.is_active():
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "chaos: hung")
            if not context.is_active():
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "chaos: hung")
        if settings.added_latency > 0:
            time.sleep(settings.added_latency)
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "chaos: injected failure")
        return settings.late_delay if late else 0.0

    def _overload(
        self, settings: chaos_pb2.ChaosSettings, draw: float, context: grpc.ServicerContext
    ) -> None:
        """Queue behind the calls already waiting; shed this one if the queue overflows."""
        with self._lock:
            self._waiting += 1
            load = self._waiting
        shed = False
        try:
            capacity = settings.capacity
            time.sleep(settings.base_latency * max(1.0, load / capacity))
            overflow = min(0.95, max(0.0, (load - 2 * capacity) / (2 * capacity)))
            shed = draw < overflow
        finally:
            with self._lock:
                self._waiting -= 1
                if shed:
                    self.overloaded += 1
        if shed:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "chaos: overloaded")


class ChaosInterceptor(grpc.ServerInterceptor):
    """Applies a service's Chaos around every business call, so no handler has to remember to."""

    def __init__(self, chaos: Chaos) -> None:
        self._chaos = chaos

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(_EXEMPT):
            return handler
        behavior = handler.unary_unary
        chaos = self._chaos

        def faulty(request: Any, context: grpc.ServicerContext) -> Any:
            hold = chaos.before(method, context)
            response = behavior(request, context)
            if hold > 0:
                # The work is done and committed; only the answer is late.
                time.sleep(hold)
            return response

        return grpc.unary_unary_rpc_method_handler(
            faulty,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ChaosServicer(chaos_pb2_grpc.ChaosServiceServicer):
    """gRPC face of a Chaos object."""

    def __init__(self, chaos: Chaos) -> None:
        self._chaos = chaos

    def SetChaos(
        self, request: chaos_pb2.ChaosSettings, context: grpc.ServicerContext
    ) -> chaos_pb2.ChaosStats:
        try:
            self._chaos.set(request)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return self._chaos.stats()

    def GetChaos(
        self, request: chaos_pb2.GetChaosRequest, context: grpc.ServicerContext
    ) -> chaos_pb2.ChaosStats:
        return self._chaos.stats()
