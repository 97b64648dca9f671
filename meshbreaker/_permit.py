"""Permit: leave to make one call, its outcome reported exactly once."""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Final

from meshbreaker._types import Outcome

if TYPE_CHECKING:
    from meshbreaker._admission import BreakerAdmission

_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED


class Permit:
    """Leave to make one call; report how it ended exactly once (later reports are no-ops)."""

    # `_unreported` exists until the first report deletes it: deleting a slot is one C
    # operation under the GIL, so exactly one of any number of racing reports wins, lock-free.
    # `_done` turns True right after that deletion, set by the report that won; `done` reads
    # it because reading a deleted slot raises (and formats) an AttributeError, dearer than the
    # rest of a report. It may read False for a few bytecodes after a racing report won (a
    # report made meanwhile is the no-op it always was), never True before one won.
    __slots__ = ("_breaker", "_done", "_generation", "_holds_slot", "_start", "_unreported")

    def __init__(
        self, breaker: BreakerAdmission, generation: int, start: float, holds_slot: bool
    ) -> None:
        self._breaker = breaker
        self._generation = generation
        self._start = start
        self._holds_slot = holds_slot
        self._unreported = True
        self._done = False

    def success(self, duration: float | None = None) -> None:
        """The call succeeded; `duration` defaults to the time since acquire."""
        self._breaker._finish(self, _SUCCESS, duration)

    def failure(self, duration: float | None = None) -> None:
        """The call failed; `duration` defaults to the time since acquire."""
        self._breaker._finish(self, _FAILURE, duration)

    def ignore(self) -> None:
        """The call ended in a way that says nothing about the dependency (e.g. cancelled)."""
        self._breaker._finish(self, _IGNORED, 0.0)

    def record(self, outcome: Outcome, duration: float | None = None) -> None:
        """Report `outcome`; same as calling success(), failure() or ignore()."""
        self._breaker._finish(self, outcome, duration)

    def elapsed(self) -> float:
        """Seconds since the permit was granted, by the breaker's clock."""
        return self._breaker._clock() - self._start

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        breaker = self._breaker
        breaker._finish(self, _SUCCESS if exc is None else breaker._classify(exc), None)

    if TYPE_CHECKING:

        @property
        def done(self) -> bool:
            """Whether an outcome has been reported."""

    else:
        # A C getter: read on every guarded call, and a Python property would push a frame.
        done = property(attrgetter("_done"), doc="Whether an outcome has been reported.")
