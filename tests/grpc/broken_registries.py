"""Registries whose breakers fail, to show meshbreaker's own failures never change an RPC."""

from __future__ import annotations

from typing import Any, NoReturn

from meshbreaker.breaker import Outcome
from meshbreaker.config import BreakerConfig, State
from meshbreaker.registry import BreakerRegistry
from tests.grpc.bytes_server import CONFIG


class ExplodingRegistry(BreakerRegistry):
    """Every breaker lookup raises."""

    def get(self, name: str) -> NoReturn:
        raise RuntimeError("registry is broken")


class BrokenPermit:
    """A permit whose every report raises."""

    done = False

    def record(self, outcome: Outcome, duration: float | None = None) -> None:
        raise RuntimeError("permit is broken")

    def ignore(self) -> None:
        raise RuntimeError("permit is broken")

    def elapsed(self) -> float:
        raise RuntimeError("permit is broken")


class BrokenBreaker:
    """A breaker that admits every call with a BrokenPermit."""

    name = "broken"
    config = CONFIG
    state = State.CLOSED
    retry_budget = None

    def acquire(self) -> BrokenPermit:
        return BrokenPermit()


class BrokenPermitRegistry(BreakerRegistry):
    """Every breaker is a BrokenBreaker."""

    def get(self, name: str) -> Any:
        return BrokenBreaker()


class BrokenFreeBreaker(BrokenBreaker):
    """A BrokenBreaker that admits freely (CircuitBreaker.admit_free) and cannot count even that."""

    def clock(self) -> float:
        return 0.0

    def admit_free(self, now: float) -> int:
        return 0

    def finish_free(self, generation: int, start: float) -> None:
        raise RuntimeError("breaker is broken")

    def permit_for(self, generation: int, start: float) -> BrokenPermit:
        return BrokenPermit()


class BrokenFreeRegistry(BreakerRegistry):
    """Every breaker is a BrokenFreeBreaker."""

    def get(self, name: str) -> Any:
        return BrokenFreeBreaker()


BROKEN_REGISTRIES = [ExplodingRegistry, BrokenPermitRegistry, BrokenFreeRegistry]


class UnclassifiableBreaker:
    """A breaker that admits and records fine but whose config cannot be read."""

    name = "broken"
    state = State.CLOSED
    retry_budget = None  # no retries: the call goes the plain way

    @property
    def config(self) -> BreakerConfig:
        raise RuntimeError("config is broken")

    def acquire(self) -> _QuietPermit:
        return _QuietPermit()


class _QuietPermit:
    """A permit that accepts every report."""

    done = False

    def record(self, outcome: Outcome, duration: float | None = None) -> None:
        """Accepts the outcome."""

    def ignore(self) -> None:
        """Accepts the release."""

    def elapsed(self) -> float:
        return 0.0


class UnclassifiableRegistry(BreakerRegistry):
    """Every breaker is an UnclassifiableBreaker: classifying a status raises."""

    def get(self, name: str) -> Any:
        return UnclassifiableBreaker()
