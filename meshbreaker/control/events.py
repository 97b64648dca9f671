"""The event bus behind WatchEvents: numbered, timestamped events fanned out to subscribers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterator

from meshbreaker.v1 import control_plane_pb2 as pb

logger = logging.getLogger(__name__)


def concerns(event: pb.Event, caller: str) -> bool:
    """Whether `event` is one a watcher of caller service `caller` ("" = all) is sent."""
    if not caller:
        return True
    kind = event.WhichOneof("kind")
    if kind == "transition":
        return event.transition.service == caller
    if kind == "nack":
        return event.nack.service == caller
    return True  # policy changes concern every caller


class EventBus:
    """Fan-out of events to WatchEvents subscribers, and the last `history` events for ListEvents.

    A slow subscriber loses its oldest events.
    """

    def __init__(
        self, queue_size: int, wall_clock: Callable[[], float], history: int = 1_000
    ) -> None:
        self._queue_size = queue_size
        self._wall_clock = wall_clock
        self._history: collections.deque[pb.Event] = collections.deque(maxlen=history)
        self._sequence = 0
        # Events dropped per subscriber queue, so a stalled reader is logged once, not per event.
        self._subscribers: dict[asyncio.Queue[pb.Event], int] = {}

    def publish(self, event: pb.Event) -> None:
        """Number and timestamp `event`, then queue it for every subscriber."""
        self._sequence += 1
        event.sequence = self._sequence
        event.time.FromNanoseconds(int(self._wall_clock() * 1e9))
        self._history.append(event)
        for queue, dropped in self._subscribers.items():
            if queue.full():
                queue.get_nowait()
                if not dropped:
                    logger.warning("events subscriber too slow; dropping its oldest events")
                self._subscribers[queue] = dropped + 1
            queue.put_nowait(event)

    def recent(self, caller: str = "", limit: int = 0) -> list[pb.Event]:
        """The last `limit` (0 = all) kept events that concern `caller`, oldest first."""
        events = [event for event in self._history if concerns(event, caller)]
        return events[-limit:] if limit > 0 else events

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[pb.Event]]:
        """A queue that receives every event published while the block runs."""
        queue: asyncio.Queue[pb.Event] = asyncio.Queue(self._queue_size)
        self._subscribers[queue] = 0
        try:
            yield queue
        finally:
            dropped = self._subscribers.pop(queue, 0)
            if dropped:
                logger.warning("events subscriber left; %d events were dropped for it", dropped)

    @property
    def sequence(self) -> int:
        """The sequence number of the newest event published (0 before the first)."""
        return self._sequence

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)
