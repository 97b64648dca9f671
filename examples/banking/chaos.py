"""Fault injection every banking service serves: failure rate, added latency, outage, hang."""

from __future__ import annotations

import random
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2

from examples.banking.gen import chaos_pb2, chaos_pb2_grpc

_HANG_POLL = 0.05


class Chaos:
    """The faults currently in force in one service; business handlers call apply() first."""

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

    def set(self, settings: chaos_pb2.ChaosSettings) -> None:
        """Replace all settings at once; rejects out-of-range values with ValueError."""
        if not 0.0 <= settings.failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in [0, 1], got {settings.failure_rate}")
        if not 0.0 <= settings.added_latency <= 60.0:
            raise ValueError(
                f"added_latency must be in [0, 60] seconds, got {settings.added_latency}"
            )
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
            )

    def apply(self, context: grpc.ServicerContext) -> None:
        """Inject the configured faults into this call; aborts the call when one fires."""
        with self._lock:
            settings = self._settings
            self.calls += 1
            fail = settings.failure_rate > 0 and self._random.random() < settings.failure_rate
            if settings.outage or fail:
                self.injected_failures += 1
            if settings.hang:
                self.hung += 1
        if settings.outage:
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
