"""EtcdStore's change feed: range-reads of the audit records, then an etcd watch on them."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import queue
from typing import TYPE_CHECKING

from meshbreaker.control.store.base import AuditEntry, ChangeFeed, CompactedError
from meshbreaker.control.store.etcd_records import audit_entries, prefix_end

if TYPE_CHECKING:
    from meshbreaker.control.store.etcd import EtcdStore

logger = logging.getLogger(__name__)

# A feed reads at most this many revisions per range read, so a far-behind reader goes in steps.
FEED_BATCH_REVISIONS = 1000


class EtcdFeed(ChangeFeed):
    """Range-reads the audit records it missed, then follows them with an etcd watch.

    Runs on the store's loop and hands whole revisions to the reader through a queue. When etcd
    goes away it retries (range read from its last revision, new watch) until closed.
    """

    def __init__(self, store: EtcdStore, since_revision: int) -> None:
        self._store = store
        self._revision = since_revision
        self._queue: queue.Queue[builtins.list[AuditEntry] | BaseException] = queue.Queue()
        self._closed = False
        # The first read runs now, so a compacted history raises here, as SqliteStore's does.
        first = store.run(store.changes_after(since_revision, FEED_BATCH_REVISIONS))
        self._task = asyncio.run_coroutine_threadsafe(self._follow(first), store.loop)

    async def _follow(self, pending: tuple[int, builtins.list[AuditEntry]] | None) -> None:
        store = self._store
        delay = 0.1
        while not self._closed:
            try:
                if pending is None:
                    pending = await store.changes_after(self._revision, FEED_BATCH_REVISIONS)
                header, entries = pending
                pending = None
                before = self._revision
                self._deliver(entries)
                if self._revision - before >= FEED_BATCH_REVISIONS:
                    continue  # a full batch: there may be more to range-read
                await self._watch(header + 1)
            except CompactedError as error:
                self._queue.put(error)
                return
            except Exception as error:
                if self._closed:
                    return
                # One warning per outage; the retries are debug noise.
                log = logger.warning if delay == 0.1 else logger.debug
                log("etcd change feed: %s; retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
            else:
                delay = 0.1

    async def _watch(self, start_revision: int) -> None:
        """Deliver audit records from etcd's watch until it breaks or shows a gap."""
        store = self._store
        start = store.key("audit", "")
        watch = await store.call(
            lambda c: c.watch(start, range_end=prefix_end(start), start_revision=start_revision)
        )
        try:
            async for event in watch:
                if self._closed:
                    return
                if event.kind != "PUT":
                    continue  # compaction deleting old records
                changes = audit_entries(event.kv.value)
                if not changes or changes[0].revision <= self._revision:
                    continue
                if changes[0].revision != self._revision + 1:
                    return  # a gap: range-read what is missing
                self._deliver(changes)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    def _deliver(self, entries: builtins.list[AuditEntry]) -> None:
        fresh = [entry for entry in entries if entry.revision > self._revision]
        if fresh:
            self._revision = fresh[-1].revision
            self._queue.put(fresh)

    def next(self, timeout: float | None = None) -> builtins.list[AuditEntry]:
        """The next whole revisions, or [] after `timeout`."""
        if self._closed:
            return []
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, BaseException):
            raise item
        batch = list(item)
        while True:  # coalesce what is already queued
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if isinstance(more, BaseException):
                self._queue.put(more)
                return batch
            batch.extend(more)

    def close(self) -> None:
        """Stop following; wakes a `next()` in progress."""
        self._closed = True
        self._queue.put([])
        self._task.cancel()
