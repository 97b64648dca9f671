"""A fake clock that notes whether a lock is taken at each read: the seam for missing-lock tests.

A lock left out can only be seen by a race; this sees it deterministically instead. An operation
that reads the clock inside its critical section shows, at that read, whether another thread
could have run into the section meanwhile.
"""

from __future__ import annotations

import threading
from typing import Protocol

from meshbreaker.testing import FakeClock


class Lockable(Protocol):
    """What the probe needs of a Lock or an RLock."""

    def acquire(self, blocking: bool = ...) -> bool: ...

    def release(self) -> None: ...


def taken_elsewhere(lock: Lockable) -> bool:
    """Whether another thread finds `lock` taken right now (it never waits for it)."""
    found: list[bool] = []

    def probe() -> None:
        got = lock.acquire(blocking=False)
        if got:
            lock.release()
        found.append(not got)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return found[0]


class LockWatchingClock(FakeClock):
    """A FakeClock that, while `watch(lock)` is on, notes at each read whether `lock` is taken."""

    def __init__(self) -> None:
        super().__init__()
        self._watched: Lockable | None = None
        self.taken: list[bool] = []

    def watch(self, lock: Lockable | None) -> None:
        """Note `lock` at each read from now on (None: stop), forgetting earlier notes."""
        self._watched = lock
        self.taken = []

    def __call__(self) -> float:
        if self._watched is not None:
            self.taken.append(taken_elsewhere(self._watched))
        return super().__call__()
