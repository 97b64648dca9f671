"""Replica presence on etcd: each replica's records under mesh/<replica id>/ on its own lease.

A replica writes its records attached to one lease and keeps the lease alive every ttl/3; when
the replica dies the lease expires and etcd deletes every record of it, which every other
replica's feed (an etcd watch on mesh/) sees as deletions.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import queue
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from meshbreaker.control.store.base import StoreUnavailableError
from meshbreaker.control.store.etcd_records import prefix_end
from meshbreaker.control.store.presence import Presence, PresenceChange, PresenceFeed

if TYPE_CHECKING:
    from meshbreaker.control.store.etcd import EtcdStore

logger = logging.getLogger(__name__)

# etcd refuses a request over 1.5 MiB or with more than 128 operations (its defaults): a publish
# is cut into transactions below both.
MAX_TRANSACTION_BYTES = 1024 * 1024
MAX_TRANSACTION_OPS = 100
# Seconds a closing replica waits for etcd to take its lease back.
REVOKE_WAIT = 2.0


class EtcdPresence(Presence):
    """This replica's records under `<prefix>mesh/<replica_id>/`, on a lease kept alive."""

    def __init__(
        self,
        store: EtcdStore,
        replica_id: str,
        ttl: int,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`sleep` is the keepalive's wait between refreshes (a test's fake clock)."""
        if not replica_id or "/" in replica_id:
            raise ValueError("a replica id is a non-empty string without '/'")
        self._store = store
        self._sleep = sleep
        self.replica_id = replica_id
        self.ttl = max(2, int(ttl))
        self._lease: int | None = None
        self._lost = False  # the lease expired under us; the next publish must say so
        self._closed = False
        self._keepalive = asyncio.run_coroutine_threadsafe(self._keep_alive(), store.loop)

    def _record_key(self, name: str) -> bytes:
        return self._store.key("mesh", self.replica_id, name)

    def publish(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> bool:
        """Write `puts` and delete `deletes` on this replica's lease; False if it was lost."""
        return self._store.run(self._publish(dict(puts), list(deletes)))

    async def _publish(self, puts: dict[str, bytes], deletes: builtins.list[str]) -> bool:
        store = self._store
        if self._lease is None:
            lease = await store.call(lambda client: client.lease(self.ttl))
            self._lease = int(lease.id)
            if self._lost:  # the keepalive found it gone: every record went with it
                self._lost = False
                return False
        transactions = store.transactions
        batches: builtins.list[builtins.list[Any]] = [[]]
        size = 0
        for name, value in puts.items():
            if batches[-1] and (
                size + len(value) > MAX_TRANSACTION_BYTES or len(batches[-1]) >= MAX_TRANSACTION_OPS
            ):
                batches.append([])
                size = 0
            batches[-1].append(transactions.put(self._record_key(name), value, lease=self._lease))
            size += len(value)
        for name in deletes:
            if len(batches[-1]) >= MAX_TRANSACTION_OPS:
                batches.append([])
            batches[-1].append(transactions.delete(self._record_key(name)))
        for ops in batches:
            if not ops:
                continue
            try:
                await store.call(self._transaction(ops))
            except StoreUnavailableError:
                raise
            except Exception as error:
                if "lease not found" not in str(error):
                    raise
                logger.warning("replica %s lost its etcd lease; writing again", self.replica_id)
                self._lease = None
                return False
        return True

    def campaign(self, name: str) -> bool:
        """Hold `<prefix>leader/<name>` on this replica's lease unless another replica does."""
        return self._store.run(self._campaign(name))

    async def _campaign(self, name: str) -> bool:
        lease = self._lease
        if lease is None:
            # No lease yet (nothing published), or it was lost: publish() makes the next one
            # and rewrites this replica's records; the election must not do that behind it.
            return False
        store, key, mine = self._store, self._store.key("leader", name), self.replica_id.encode()
        transactions = store.transactions
        try:
            held, responses = await store.call(
                lambda client: client.transaction(
                    compare=[transactions.create(key) == 0],
                    success=[transactions.put(key, mine, lease=lease)],
                    failure=[transactions.get(key)],
                )
            )
        except StoreUnavailableError:
            raise
        except Exception as error:
            if "lease not found" not in str(error):
                raise
            return False  # publish() finds the loss and takes a new lease
        if held:
            return True
        found = responses[0][0] if responses and responses[0] else None
        return found is not None and bytes(found[0]) == mine

    @staticmethod
    def _transaction(ops: builtins.list[Any]) -> Callable[[Any], Awaitable[Any]]:
        return lambda client: client.transaction(compare=[], success=ops, failure=[])

    @staticmethod
    def _refresh(lease: int) -> Callable[[Any], Awaitable[Any]]:
        return lambda client: client.refresh_lease(lease)

    async def _keep_alive(self) -> None:
        """Refresh the lease every ttl/3; a lease etcd no longer knows is dropped (lost)."""
        while not self._closed:
            await self._sleep(self.ttl / 3)
            lease = self._lease
            if lease is None:
                continue
            try:
                reply = await self._store.call(self._refresh(lease))
            except Exception as error:  # etcd away: the next refresh may still be in time
                logger.debug("refreshing replica %s's lease: %r", self.replica_id, error)
                continue
            if reply is None or reply.TTL <= 0:
                logger.warning("replica %s's etcd lease expired", self.replica_id)
                if self._lease == lease:
                    self._lease, self._lost = None, True

    def feed(self) -> PresenceFeed:
        """Every replica's records, then their changes (from an etcd watch on mesh/)."""
        return EtcdPresenceFeed(self._store)

    def close(self) -> None:
        """Stop keeping the lease alive and revoke it, so this replica's records go now."""
        if self._closed:
            return
        self._closed = True
        self._keepalive.cancel()
        lease = self._lease
        if lease is None:
            return

        async def revoke() -> None:
            await self._store.call(lambda client: client.revoke_lease(lease))

        # A stopping replica does not wait long for an etcd that is away: the lease expires anyway.
        future = asyncio.run_coroutine_threadsafe(revoke(), self._store.loop)
        try:
            future.result(REVOKE_WAIT)
        except Exception as error:
            future.cancel()
            logger.warning("revoking replica %s's lease: %r", self.replica_id, error)


class EtcdPresenceFeed(PresenceFeed):
    """Lists mesh/, then follows it with an etcd watch; lists again after any failure."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self._start = store.key("mesh", "")
        self._queue: queue.Queue[tuple[bool, builtins.list[PresenceChange]]] = queue.Queue()
        self._closed = False
        self._task = asyncio.run_coroutine_threadsafe(self._follow(), store.loop)

    def _change(self, key: bytes, value: bytes | None) -> PresenceChange | None:
        replica, slash, name = key[len(self._start) :].decode("utf-8", "replace").partition("/")
        return PresenceChange(replica, name, value) if slash and name else None

    async def _follow(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                await self._list_and_watch()
            except Exception as error:
                if self._closed:
                    return
                log = logger.warning if delay == 0.1 else logger.debug
                log("etcd presence feed: %s; listing again in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
            else:
                delay = 0.1

    async def _list_and_watch(self) -> None:
        store = self._store
        end = prefix_end(self._start)
        # store/id always exists: its read carries the etcd revision the range was read at.
        _, responses = await store.call(
            lambda client: client.transaction(
                compare=[],
                success=[
                    client.transactions.get(store.key("store", "id")),
                    client.transactions.get(self._start, end),
                ],
                failure=[],
            )
        )
        identity, records = responses
        header = int(identity[0][1].header.revision)
        listed = [self._change(meta.key, value) for value, meta in records]
        self._queue.put((True, [change for change in listed if change is not None]))
        watch = await store.call(
            lambda client: client.watch(self._start, range_end=end, start_revision=header + 1)
        )
        try:
            async for event in watch:
                if self._closed:
                    return
                value = event.kv.value if event.kind == "PUT" else None
                change = self._change(event.kv.key, value)
                if change is not None:
                    self._queue.put((False, [change]))
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    def next(self, timeout: float | None = None) -> tuple[bool, builtins.list[PresenceChange]]:
        """The next changes (coalesced; a reset replaces what came before it), or (False, [])."""
        if self._closed:
            return False, []
        try:
            reset, changes = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False, []
        changes = list(changes)
        while True:
            try:
                more_reset, more = self._queue.get_nowait()
            except queue.Empty:
                return reset, changes
            if more_reset:
                reset, changes = True, list(more)
            else:
                changes.extend(more)

    def close(self) -> None:
        """Stop following; wakes a `next()` in progress."""
        self._closed = True
        self._queue.put((False, []))
        self._task.cancel()
