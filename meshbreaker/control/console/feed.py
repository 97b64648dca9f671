"""The console's live feed: the event bus of WatchEvents and mesh reads, brought to an HTTP thread.

`EventPump` subscribes to the same `EventBus` as WatchEvents, on the server's loop, and hands
each event (already turned into JSON-ready data there) to a thread-safe queue. `MeshCache`
shares one mesh read among every open page: a page that saw event N takes a read made after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from meshbreaker.control.console import views
from meshbreaker.control.console.api import MeshRead
from meshbreaker.control.console.bridge import HttpCallContext
from meshbreaker.control.events import EventBus


class EventPump:
    """Every event published from now on, for one reader thread; a stalled reader loses the oldest.

    `lost` counts the events dropped for it, so the page can say its event list has gaps.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: EventBus, size: int) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue(size)
        self.lost = 0
        self._bus = bus
        self._subscribed = threading.Event()
        self._task = asyncio.run_coroutine_threadsafe(self._pump(), loop)

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the subscription is open (events published after this are delivered)."""
        return self._subscribed.wait(timeout)

    async def _pump(self) -> None:
        with self._bus.subscribe() as subscription:
            self._subscribed.set()
            while True:
                self._put(views.event(await subscription.get()))

    def _put(self, item: dict[str, Any]) -> None:
        while True:
            try:
                self.events.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.events.get_nowait()
                    self.lost += 1
                except queue.Empty:
                    pass

    def close(self) -> None:
        """Unsubscribe (from any thread; nothing to do once the loop is closed)."""
        with contextlib.suppress(RuntimeError):
            self._task.cancel()


class MeshCache:
    """The newest mesh read, encoded once and shared by every page within `max_age` seconds."""

    def __init__(
        self,
        read: Callable[[HttpCallContext], Coroutine[Any, Any, MeshRead]],
        loop: asyncio.AbstractEventLoop,
        *,
        max_age: float,
        timeout: float,
    ) -> None:
        self._read = read
        self._loop = loop
        self._max_age = max_age
        self._timeout = timeout
        self._lock = threading.Lock()
        # (newest event sequence the read includes, when it was made, its JSON)
        self._held: tuple[int, float, bytes] | None = None

    def get(self, seen: int, context: HttpCallContext) -> bytes:
        """The mesh as JSON, read after event `seen` and at most `max_age` seconds ago.

        Every page that may read the mesh reads the same one: a read made for one is shared.
        """
        with self._lock:
            held = self._held
            if held is not None and held[0] >= seen and time.monotonic() - held[1] < self._max_age:
                return held[2]
            future = asyncio.run_coroutine_threadsafe(self._read(context), self._loop)
            try:
                read = future.result(self._timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise
            encoded = json.dumps(views.mesh(read.response, read.series)).encode()
            self._held = (read.sequence, time.monotonic(), encoded)
            return encoded
