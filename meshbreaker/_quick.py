"""QuickSuccesses: the engine's one lock-free path, for successes that cannot change anything."""

from __future__ import annotations

import math
from typing import Final

# A breaker's log is open for at most this long before a call settles it under the lock: it
# bounds the log by time, at no cost to the hot path (the one `until` comparison serves both).
# At most rate x SLICE durations (a million calls a second: 100,000 floats, about 3 MB). Each
# settle runs cold code under the lock: at 10 ms a sync unary RPC over loopback settled every ~20
# calls and cost 1.5-2 % more wall time than at 0.1 s (bench/grpc_overhead.py, issue 18).
SLICE: Final = 0.1


class QuickSuccesses:
    """Successes logged without the breaker's lock, counted later under it.

    The invariant: the log is open (`now < until`) for one generation only while a success
    of that generation that is not slow can change nothing but counts: the breaker is CLOSED
    or FORCED_CLOSED, the window holds no failure and no slow call, there is no run of failures
    and no listener waits for the CallResult. The breaker opens it only under its lock, and
    closes it and takes the log under its lock before anything reads or changes what those
    successes would have changed. Whether a call may use it is the caller's to decide: a call
    that holds a bulkhead slot never does, since its slot must be given back under the lock.

    Relies on the GIL: list.append, a slice copy and a slice deletion are each one atomic C
    operation, so appends racing a take() are either taken now or left for the next take().
    """

    __slots__ = ("_log", "generation", "slow_from", "until")

    def __init__(self) -> None:
        self._log: list[float] = []
        self.generation = 0
        self.slow_from = math.inf
        self.until = -math.inf

    def log(self, generation: int, duration: float, now: float) -> bool:
        """Log a success lock-free if the log is open for it; whether it was logged.

        The checks and the append are a few bytecodes apart: a transition slipping in between
        makes the next take() count this success in a later window (in the totals exactly once).
        """
        if now < self.until and generation == self.generation and duration < self.slow_from:
            self._log.append(duration)
            return True
        return False

    def open(self, generation: int, until: float, slow_from: float) -> None:
        """Let successes of `generation` faster than `slow_from` log until `until` (lock held)."""
        self.generation = generation
        self.slow_from = slow_from
        self.until = until

    def close(self) -> None:
        """Stop logging (lock held); what is logged stays until take()."""
        self.until = -math.inf

    def take(self) -> list[float] | None:
        """Remove and return every logged duration, oldest first; None if none (lock held)."""
        log = self._log
        count = len(log)
        if not count:
            return None
        taken = log[:count]
        del log[:count]  # appends that land meanwhile sit after `count` and stay
        return taken

    def __len__(self) -> int:
        return len(self._log)
