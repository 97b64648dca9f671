"""Registries whose breakers fail, to show meshbreaker's own failures never change an RPC."""

from __future__ import annotations

from typing import Any

from bytes_server import CONFIG

from meshbreaker.config import State
from meshbreaker.registry import BreakerRegistry


class ExplodingRegistry(BreakerRegistry):
    """Every breaker lookup raises."""

    def get(self, name: str) -> Any:
        raise RuntimeError("registry is broken")


class BrokenPermit:
    """A permit whose every report raises."""

    done = False

    def record(self, outcome: Any, duration: Any = None) -> None:
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

    def acquire(self) -> BrokenPermit:
        return BrokenPermit()


class BrokenPermitRegistry(BreakerRegistry):
    """Every breaker is a BrokenBreaker."""

    def get(self, name: str) -> Any:
        return BrokenBreaker()


BROKEN_REGISTRIES = [ExplodingRegistry, BrokenPermitRegistry]
