"""WatchConfig streams: the current snapshot per watched caller, pushed to agents, paced by ACKs.

Every agent of a caller service gets the same snapshot, encoded once in the policy follower's
thread (policies.EncodedSnapshot); the stream's serializer hands its bytes over as they are, so a
change costs the loop one write per agent.

A stream never runs more than one unacknowledged revision ahead of its agent: after sending a
snapshot it waits for the agent's report to ACK (or NACK) it before sending a newer one, and
then sends the newest, skipping any in between (coalesce, don't queue). An agent that never
acknowledges (an older one, or one whose reports fail) still gets the newest after `ack_wait`.

A change is installed for every caller at once, but its streams are woken `WAKE_BATCH` at a
time, one batch per turn of the loop: a change every agent watches does not hold the loop for
hundreds of sends in a row, and the RPCs that arrive meanwhile (the write's own answer, GetConfig,
reports) are served between the batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Executor

from meshbreaker.control.policies import EncodedSnapshot, PolicyIndex

# Real seconds a stream waits for an ACK before it sends a newer snapshot anyway.
DEFAULT_ACK_WAIT = 5.0
# Streams woken per turn of the event loop when a change reaches many.
WAKE_BATCH = 32


class ConfigStreams:
    """The current snapshot per watched caller and the streams that carry it (loop-side state)."""

    def __init__(
        self,
        index: PolicyIndex,
        acknowledged: Callable[[str, int], bool],
        *,
        executor: Executor,
        ack_wait: float = DEFAULT_ACK_WAIT,
    ) -> None:
        self._index = index
        self._executor = executor  # where first snapshots are built, off the loop
        self._acknowledged = acknowledged  # (instance_id, revision) -> ACKed or NACKed it?
        self._ack_wait = ack_wait
        self._current: dict[str, EncodedSnapshot] = {}
        # Callers whose snapshot of a revision already applied is being built: a new stream of
        # one waits for it (up to ack_wait), so it starts from every write answered before.
        self._coming: set[str] = set()
        self._wakes: dict[str, set[asyncio.Event]] = {}
        self._by_instance: dict[str, set[asyncio.Event]] = {}
        self.streams = 0

    def current(self, caller: str) -> EncodedSnapshot | None:
        """The snapshot streams of `caller` carry now (None: nobody watches it)."""
        return self._current.get(caller)

    def coming(self, callers: frozenset[str]) -> None:
        """The snapshots of `callers` are out of date: newer ones follow in an update()."""
        self._coming |= callers

    def update(self, snapshots: Mapping[str, EncodedSnapshot]) -> None:
        """Install newer snapshots and wake the streams of their callers, a batch per turn."""
        woken: list[asyncio.Event] = []
        for caller, snapshot in snapshots.items():
            self._coming.discard(caller)
            wakes = self._wakes.get(caller)
            old = self._current.get(caller)
            if wakes is None or (old is not None and old.revision > snapshot.revision):
                continue  # no watcher left, or an older one
            self._current[caller] = snapshot
            woken += wakes
        if woken:
            wake_in_batches(woken)

    def acknowledged(self, instance_id: str) -> None:
        """An instance reported: wake its streams waiting for an ACK."""
        for wake in self._by_instance.get(instance_id, ()):
            wake.set()

    async def stream(self, caller: str, instance_id: str) -> AsyncIterator[EncodedSnapshot]:
        """The current snapshot at once, then each newer one as the agent keeps up."""
        wake = asyncio.Event()
        self._wakes.setdefault(caller, set()).add(wake)
        if instance_id:
            self._by_instance.setdefault(instance_id, set()).add(wake)
        self.streams += 1
        try:
            loop = asyncio.get_running_loop()
            if caller in self._coming:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._built(caller, wake), self._ack_wait)
            if caller not in self._current:
                first = await loop.run_in_executor(self._executor, self._index.watch, caller)
                if caller not in self._current:  # else another stream of this caller was quicker
                    self.update({caller: first})
            sent: EncodedSnapshot | None = None
            sent_at = 0.0
            while True:
                wake.clear()
                snapshot = self._current[caller]
                timeout: float | None = None
                if snapshot is not sent:  # replaced: a newer revision, or adopted stores
                    waited = loop.time() - sent_at
                    if (
                        sent is None
                        or not instance_id
                        or waited >= self._ack_wait
                        or self._acknowledged(instance_id, sent.revision)
                    ):
                        sent, sent_at = snapshot, loop.time()
                        yield snapshot
                        continue
                    timeout = self._ack_wait - waited
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
        finally:
            self.streams -= 1
            self._leave(caller, instance_id, wake)

    async def _built(self, caller: str, wake: asyncio.Event) -> None:
        while caller in self._coming:
            wake.clear()
            await wake.wait()

    def _leave(self, caller: str, instance_id: str, wake: asyncio.Event) -> None:
        wakes = self._wakes.get(caller)
        if wakes is not None:
            wakes.discard(wake)
            if not wakes:
                del self._wakes[caller]
                self._current.pop(caller, None)
                self._index.unwatch(caller)
        streams = self._by_instance.get(instance_id)
        if streams is not None:
            streams.discard(wake)
            if not streams:
                del self._by_instance[instance_id]


def wake_in_batches(wakes: list[asyncio.Event], start: int = 0) -> None:
    """Wake a batch of streams, and the next batch on the loop's next turn."""
    end = start + WAKE_BATCH
    for wake in wakes[start:end]:
        wake.set()
    if end < len(wakes):
        asyncio.get_running_loop().call_soon(wake_in_batches, wakes, end)
