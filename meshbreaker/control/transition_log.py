"""An agent's transitions as an ordered log: numbered, kept until the control plane has them.

Diffing one state report with the next loses every transition that is undone before the next
report (OPEN -> HALF_OPEN -> OPEN looks like nothing happened). So each transition gets the next
sequence number of this process and stays in the log until a report's answer acknowledges it;
a report carries the oldest unacknowledged ones, at most `per_report`, and is resent (with the
same numbers) until they are taken, so the server can publish each exactly once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from meshbreaker.config import State
from meshbreaker.control.convert import state_to_proto
from meshbreaker.v1 import control_plane_pb2 as pb

# Far more than a report interval ever holds; past it the oldest are dropped (and counted).
DEFAULT_CAPACITY = 10_000
# Transitions per report; the server refuses more than its max_transitions_per_report.
PER_REPORT = 500


@dataclass(frozen=True)
class _Entry:
    sequence: int
    name: str
    old: State
    new: State
    at: float


class TransitionLog:
    """Transitions not yet acknowledged, oldest first; append() may be called from any thread."""

    def __init__(self, clock: Callable[[], float], capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._clock = clock
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: deque[_Entry] = deque()
        self._next = 1
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, name: str, old: State, new: State) -> None:
        """Log one transition with the next sequence number (the oldest goes when full)."""
        at = self._clock()
        with self._lock:
            if len(self._entries) >= self._capacity:
                self._entries.popleft()
                self.dropped += 1
            self._entries.append(_Entry(self._next, name, old, new, at))
            self._next += 1

    def pending(self, now: float, limit: int = PER_REPORT) -> list[pb.TransitionRecord]:
        """The oldest `limit` unacknowledged transitions, as report records."""
        with self._lock:
            entries = [entry for _, entry in zip(range(limit), self._entries, strict=False)]
        return [
            pb.TransitionRecord(
                sequence=entry.sequence,
                name=entry.name,
                from_state=state_to_proto(entry.old),
                to_state=state_to_proto(entry.new),
                age=max(0.0, now - entry.at),
            )
            for entry in entries
        ]

    def acknowledge(self, sequence: int) -> None:
        """Forget every transition up to and including `sequence` (the server has them)."""
        with self._lock:
            while self._entries and self._entries[0].sequence <= sequence:
                self._entries.popleft()
