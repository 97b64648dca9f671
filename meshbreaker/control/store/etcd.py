"""EtcdStore: the policy store on etcd v3 through aetcd (the `etcd` extra), shared by replicas.

Layout under the prefix (default "/meshbreaker/"):

    store/id          the store id, created with the store
    store/revision    the store revision, a decimal; every write is a transaction on its version
    store/compacted   the revision up to which the audit history was compacted
    policy/<id>       a Policy, serialized
    selector/<key>    the id of the policy holding that selector (caller, service, method)
    audit/<revision>  one JSON record per revision (zero-padded, so keys sort by revision)
    xds/revision      the xDS cluster registry's own revision, a decimal
    xds/cluster/<name>  an XdsCluster, serialized

A write reads what it needs, then commits only if `store/revision` has not moved since (etcd
compare on its version): store revisions stay contiguous and writes serializable whichever
replica makes them. aetcd is asyncio-only; the store runs it on a private loop in one thread, so
the PolicyStore seam stays synchronous like SqliteStore's and the server's loop never waits on it.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import concurrent.futures
import contextlib
import importlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from meshbreaker.control.store.base import (
    AuditEntry,
    ChangeFeed,
    ClusterNotFoundError,
    CompactedError,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
    StoreUnavailableError,
    check_since,
    selector_key,
)
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_PREFIX = "/meshbreaker/"
# A feed reads at most this many revisions per range read, so a far-behind reader goes in steps.
FEED_BATCH_REVISIONS = 1000


@dataclass(frozen=True)
class Endpoint:
    """One etcd member's client address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _aetcd() -> Any:
    try:
        return importlib.import_module("aetcd")
    except ImportError:
        raise ConfigError("store", "etcd needs aetcd: install meshbreaker[etcd]") from None


def _audit_record(
    revision: int, actor: str, at: float, write_id: str, changes: Sequence[AuditEntry]
) -> bytes:
    def encode(policy: pb.Policy | None) -> str | None:
        return None if policy is None else base64.b64encode(policy.SerializeToString()).decode()

    return json.dumps(
        {
            "revision": revision,
            "actor": actor,
            "time": at,
            "write_id": write_id,
            "changes": [
                {
                    "policy_id": entry.policy_id,
                    "action": entry.action,
                    "before": encode(entry.before),
                    "after": encode(entry.after),
                }
                for entry in changes
            ],
        },
        separators=(",", ":"),
    ).encode()


def _entries(value: bytes) -> list[AuditEntry]:
    record = json.loads(value)

    def decode(text: str | None) -> pb.Policy | None:
        return None if text is None else pb.Policy.FromString(base64.b64decode(text))

    return [
        AuditEntry(
            int(record["revision"]),
            change["policy_id"],
            change["action"],
            record["actor"],
            float(record["time"]),
            decode(change["before"]),
            decode(change["after"]),
        )
        for change in record["changes"]
    ]


class EtcdStore(PolicyStore):
    """Policies in etcd: every replica on the same endpoints and prefix sees one store."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint | tuple[str, int]],
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        aetcd = _aetcd()
        if not endpoints:
            raise ConfigError("store", "etcd needs at least one HOST:PORT")
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ConfigError(
                "store", f"the etcd prefix must start and end with '/', got {prefix!r}"
            )
        self.endpoints = tuple(e if isinstance(e, Endpoint) else Endpoint(*e) for e in endpoints)
        self.prefix = prefix
        self._errors = aetcd
        self._wall_clock = wall_clock
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="meshbreaker-etcd", daemon=True
        )
        self._thread.start()
        options = {
            # Dead members are found by pings, not by waiting for a write that never returns.
            "grpc.keepalive_time_ms": 10_000,
            "grpc.keepalive_timeout_ms": 5_000,
            "grpc.keepalive_permit_without_calls": 1,
            "grpc.initial_reconnect_backoff_ms": 100,
            "grpc.max_reconnect_backoff_ms": 2_000,
        }
        self._clients = [
            aetcd.Client(host=e.host, port=e.port, timeout=timeout, options=options)
            for e in self.endpoints
        ]
        self._current = 0
        self._closed = False
        try:
            self._store_id = self._run(self._init())
        except BaseException:
            self.close()
            raise

    # ----- plumbing ---------------------------------------------------------------------

    def _key(self, *parts: str) -> bytes:
        return (self.prefix + "/".join(parts)).encode()

    def _audit_key(self, revision: int) -> bytes:
        return self._key("audit", f"{revision:020d}")

    def _selector_key(self, policy: pb.Policy) -> bytes:
        return self._key("selector", "\x1f".join(selector_key(policy)))

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the store's loop and wait for it (from any other thread)."""
        if self._closed:
            coroutine.close()
            raise StoreUnavailableError("the etcd store is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            # Each etcd call has its own timeout; this bounds a call that retries endpoints.
            return future.result(self._timeout * (len(self._clients) + 1) + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreUnavailableError(f"etcd at {self._where()} did not answer in time") from None

    def _where(self) -> str:
        return ",".join(str(endpoint) for endpoint in self.endpoints)

    def _unreachable(self, error: BaseException) -> bool:
        errors = self._errors
        return isinstance(error, (errors.ConnectionFailedError, errors.ConnectionTimeoutError))

    async def _call(self, operation: Callable[[Any], Awaitable[_T]]) -> _T:
        """`operation(client)` on the current endpoint, moving on to the next when unreachable."""
        last: BaseException | None = None
        for _ in range(len(self._clients)):
            client = self._clients[self._current]
            try:
                return await operation(client)
            except Exception as error:
                if not self._unreachable(error):
                    raise
                last = error
                self._current = (self._current + 1) % len(self._clients)
        raise StoreUnavailableError(f"etcd at {self._where()} is unavailable: {last}")

    async def _read(self, *ops: Any) -> list[Any]:
        """Several reads in one transaction (one consistent etcd revision)."""
        _, responses = await self._call(
            lambda c: c.transaction(compare=[], success=list(ops), failure=[])
        )
        return list(responses)

    def _get(self, key: bytes, range_end: bytes | None = None) -> Any:
        return self._clients[0].transactions.get(key, range_end)

    async def _init(self) -> str:
        id_key = self._key("store", "id")

        async def create(client: Any) -> Any:
            fresh = str(uuid.uuid4()).encode()
            return await client.transaction(
                compare=[client.transactions.create(id_key) == 0],
                success=[client.transactions.put(id_key, fresh)],
                failure=[client.transactions.get(id_key)],
            )

        created, responses = await self._call(create)
        if created:
            return str(await self._read_value(id_key, ""))
        return str(responses[0][0][0].decode())

    async def _read_value(self, key: bytes, default: str) -> str:
        got = await self._call(lambda c: c.get(key))
        return default if got is None else str(got.value.decode())

    # ----- the seam ---------------------------------------------------------------------

    @property
    def store_id(self) -> str:
        """The id created with the store (the first replica to open an empty prefix makes it)."""
        return self._store_id

    def list(self) -> tuple[int, builtins.list[pb.Policy]]:
        """The store revision and every policy, sorted by id, read at one etcd revision."""
        return self._run(self._list())

    async def _list(self) -> tuple[int, builtins.list[pb.Policy]]:
        start = self._key("policy", "")
        revision, policies = await self._read(
            self._get(self._key("store", "revision")), self._get(start, _prefix_end(start))
        )
        current = int(revision[0][0]) if revision else 0
        found = [pb.Policy.FromString(value) for value, _ in policies]
        return current, sorted(found, key=lambda policy: policy.id)

    def get(self, policy_id: str) -> pb.Policy | None:
        """The policy with that id, or None."""

        async def get() -> pb.Policy | None:
            got = await self._call(lambda c: c.get(self._key("policy", policy_id)))
            return None if got is None else pb.Policy.FromString(got.value)

        return self._run(get())

    def revision(self) -> int:
        """The global store revision."""
        return self._run(self._revision())

    async def _revision(self) -> int:
        return int(await self._read_value(self._key("store", "revision"), "0"))

    def put(
        self,
        policies: Sequence[pb.Policy],
        *,
        expected_revision: int | None = None,
        actor: str = "",
    ) -> builtins.list[AuditEntry]:
        """Create or replace `policies` atomically at one new revision; returns one entry each."""
        ids = {policy.id for policy in policies}
        if not policies or len(ids) != len(policies) or "" in ids:
            raise StoreError("put needs 1..N policies with distinct, non-empty ids")
        return self._run(self._put(list(policies), expected_revision, actor))

    async def _put(
        self, policies: builtins.list[pb.Policy], expected: int | None, actor: str
    ) -> builtins.list[AuditEntry]:
        ids = {policy.id for policy in policies}
        while True:
            reads = [self._get(self._key("store", "revision"))]
            reads += [self._get(self._key("policy", policy.id)) for policy in policies]
            reads += [self._get(self._selector_key(policy)) for policy in policies]
            results = await self._read(*reads)
            version, current = _counter(results[0])
            if expected is not None and expected != current:
                raise RevisionMismatchError(expected, current)
            befores = [
                pb.Policy.FromString(found[0][0]) if found else None
                for found in results[1 : 1 + len(policies)]
            ]
            claimed: dict[tuple[str, str, str], str] = {}
            for policy, owner in zip(policies, results[1 + len(policies) :], strict=True):
                key = selector_key(policy)
                holder = owner[0][0].decode() if owner else None
                if holder is not None and holder not in ids:
                    raise SelectorConflictError(policy.id, holder)
                if key in claimed:
                    raise SelectorConflictError(policy.id, claimed[key])
                claimed[key] = policy.id
            revision = current + 1
            now = self._wall_clock()
            entries = []
            for policy, before in zip(policies, befores, strict=True):
                stored = pb.Policy()
                stored.CopyFrom(policy)
                stored.revision = revision
                stored.updated_at.FromNanoseconds(int(now * 1e9))
                stored.updated_by = actor
                entries.append(AuditEntry(revision, policy.id, "put", actor, now, before, stored))
            released = {
                self._selector_key(before)
                for before in befores
                if before is not None and selector_key(before) not in claimed
            }
            ops: builtins.list[Any] = []
            for entry in entries:
                assert entry.after is not None
                ops.append(self._op_put(self._key("policy", entry.policy_id), entry.after))
                ops.append(self._op_put_raw(self._selector_key(entry.after), entry.policy_id))
            ops += [self._clients[0].transactions.delete(key) for key in sorted(released)]
            if await self._commit(version, revision, actor, now, entries, ops):
                return entries
            if expected is not None:
                raise RevisionMismatchError(expected, await self._revision())

    def delete(
        self, policy_id: str, *, expected_revision: int | None = None, actor: str = ""
    ) -> AuditEntry:
        """Delete one policy at a new revision."""
        return self._run(self._delete(policy_id, expected_revision, actor))

    async def _delete(self, policy_id: str, expected: int | None, actor: str) -> AuditEntry:
        while True:
            counter, found = await self._read(
                self._get(self._key("store", "revision")), self._get(self._key("policy", policy_id))
            )
            version, current = _counter(counter)
            if expected is not None and expected != current:
                raise RevisionMismatchError(expected, current)
            if not found:
                raise PolicyNotFoundError(policy_id)
            before = pb.Policy.FromString(found[0][0])
            now = self._wall_clock()
            entry = AuditEntry(current + 1, policy_id, "delete", actor, now, before, None)
            deletes = self._clients[0].transactions.delete
            ops = [deletes(self._key("policy", policy_id)), deletes(self._selector_key(before))]
            if await self._commit(version, current + 1, actor, now, [entry], ops):
                return entry
            if expected is not None:
                raise RevisionMismatchError(expected, await self._revision())

    def _op_put(self, key: bytes, policy: pb.Policy) -> Any:
        return self._clients[0].transactions.put(key, policy.SerializeToString(deterministic=True))

    def _op_put_raw(self, key: bytes, value: str) -> Any:
        return self._clients[0].transactions.put(key, value.encode())

    async def _commit(
        self,
        version: int,
        revision: int,
        actor: str,
        now: float,
        entries: Sequence[AuditEntry],
        ops: builtins.list[Any],
    ) -> bool:
        """Apply `ops` plus the counter and audit record if the counter is unchanged."""
        counter_key = self._key("store", "revision")
        audit_key = self._audit_key(revision)
        write_id = uuid.uuid4().hex
        transactions = self._clients[0].transactions
        ops = [
            transactions.put(counter_key, str(revision).encode()),
            transactions.put(audit_key, _audit_record(revision, actor, now, write_id, entries)),
            *ops,
        ]
        try:
            succeeded, _ = await self._call(
                lambda c: c.transaction(
                    compare=[c.transactions.version(counter_key) == version],
                    success=ops,
                    failure=[],
                )
            )
            return bool(succeeded)
        except StoreUnavailableError:
            # The commit may have happened before the connection went: the audit record says.
            try:
                got = await self._call(lambda c: c.get(audit_key))
            except StoreUnavailableError:
                raise StoreUnavailableError(
                    f"etcd at {self._where()} is unavailable; the write at revision {revision}"
                    " may or may not have been applied"
                ) from None
            if got is not None and json.loads(got.value).get("write_id") == write_id:
                return True
            raise

    def xds_clusters(self) -> tuple[int, builtins.list[xds_pb2.XdsCluster]]:
        """The registry revision and every cluster, read at one etcd revision."""

        async def read() -> tuple[int, builtins.list[xds_pb2.XdsCluster]]:
            start = self._key("xds", "cluster", "")
            counter, found = await self._read(
                self._get(self._key("xds", "revision")), self._get(start, _prefix_end(start))
            )
            clusters = [xds_pb2.XdsCluster.FromString(value) for value, _ in found]
            return _counter(counter)[1], sorted(clusters, key=lambda cluster: cluster.name)

        return self._run(read())

    def put_xds_cluster(
        self, cluster: xds_pb2.XdsCluster, *, actor: str = ""
    ) -> xds_pb2.XdsCluster:
        """Store `cluster` at a new registry revision (a transaction on the registry counter)."""
        if not cluster.name:
            raise StoreError("an xDS cluster needs a name")

        async def put() -> xds_pb2.XdsCluster:
            while True:
                version, current = _counter(
                    (await self._read(self._get(self._key("xds", "revision"))))[0]
                )
                stored = xds_pb2.XdsCluster()
                stored.CopyFrom(cluster)
                stored.revision = current + 1
                stored.updated_at.FromNanoseconds(int(self._wall_clock() * 1e9))
                stored.updated_by = actor
                body = stored.SerializeToString(deterministic=True)
                put = self._clients[0].transactions.put
                if await self._commit_xds(
                    version, stored.revision, [put(self._key("xds", "cluster", stored.name), body)]
                ):
                    return stored

        return self._run(put())

    def delete_xds_cluster(self, name: str, *, actor: str = "") -> int:
        """Delete the cluster `name` at a new registry revision."""

        async def delete() -> int:
            key = self._key("xds", "cluster", name)
            while True:
                counter, found = await self._read(
                    self._get(self._key("xds", "revision")), self._get(key)
                )
                if not found:
                    raise ClusterNotFoundError(name)
                version, current = _counter(counter)
                ops = [self._clients[0].transactions.delete(key)]
                if await self._commit_xds(version, current + 1, ops):
                    return current + 1

        return self._run(delete())

    async def _commit_xds(self, version: int, revision: int, ops: builtins.list[Any]) -> bool:
        """Apply `ops` and move the registry counter to `revision` if the counter is unchanged."""
        counter_key = self._key("xds", "revision")
        put = self._clients[0].transactions.put
        ops = [put(counter_key, str(revision).encode()), *ops]
        succeeded, _ = await self._call(
            lambda c: c.transaction(
                compare=[c.transactions.version(counter_key) == version], success=ops, failure=[]
            )
        )
        return bool(succeeded)

    def compact(self, revision: int) -> None:
        """Delete the audit records up to `revision`; feeds from before it get CompactedError."""

        async def compact() -> None:
            current = await self._revision()
            upto = min(revision, current)
            compacted = self._key("store", "compacted")
            previous = int(await self._read_value(compacted, "0"))
            if upto <= previous:
                return
            transactions = self._clients[0].transactions
            ops = [
                transactions.put(compacted, str(upto).encode()),
                transactions.delete(self._audit_key(0), self._audit_key(upto + 1)),
            ]
            await self._call(lambda c: c.transaction(compare=[], success=ops, failure=[]))

        self._run(compact())

    def audit_log(self, *, since_revision: int = 0, limit: int = 1000) -> builtins.list[AuditEntry]:
        """Changes with a revision > since_revision, oldest first, at most `limit`."""
        entries = self._run(self._changes_after(since_revision, limit, check=False))[1]
        return entries[:limit]

    async def _changes_after(
        self, since_revision: int, revisions: int, *, check: bool = True
    ) -> tuple[int, builtins.list[AuditEntry]]:
        """(etcd revision of the read, whole store revisions after `since_revision`)."""
        start = self._audit_key(since_revision + 1)
        end = self._audit_key(since_revision + revisions + 1)
        # store/id always exists: its read carries the etcd revision the whole read was made at.
        identity, compacted, records = await self._read(
            self._get(self._key("store", "id")),
            self._get(self._key("store", "compacted")),
            self._get(start, end),
        )
        if check:
            check_since(since_revision, int(compacted[0][0]) if compacted else 0)
        entries = [entry for value, _ in records for entry in _entries(value)]
        return int(identity[0][1].header.revision), entries

    def watch(self, since_revision: int) -> ChangeFeed:
        """The changes after `since_revision`, then every later one, from etcd's watch."""
        return _EtcdFeed(self, since_revision)

    def close(self) -> None:
        """Close the etcd connections and stop the store's loop."""
        if self._closed:
            return

        async def close_all() -> None:
            for client in self._clients:
                try:
                    await client.close()
                except Exception as error:  # closing must go on for the others
                    logger.debug("closing an etcd client: %r", error)

        if self._thread.is_alive() and hasattr(self, "_clients"):
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _counter(found: Any) -> tuple[int, int]:
    """(version, value) of the store revision key from a transaction read; (0, 0) when unset."""
    if not found:
        return 0, 0
    value, kv = found[0]
    return int(kv.version), int(value)


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class _EtcdFeed(ChangeFeed):
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
        first = store._run(store._changes_after(since_revision, FEED_BATCH_REVISIONS))
        self._task = asyncio.run_coroutine_threadsafe(self._follow(first), store._loop)

    async def _follow(self, pending: tuple[int, builtins.list[AuditEntry]] | None) -> None:
        store = self._store
        delay = 0.1
        while not self._closed:
            try:
                if pending is None:
                    pending = await store._changes_after(self._revision, FEED_BATCH_REVISIONS)
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
        start = store._key("audit", "")
        watch = await store._call(
            lambda c: c.watch(start, range_end=_prefix_end(start), start_revision=start_revision)
        )
        try:
            async for event in watch:
                if self._closed:
                    return
                if event.kind != "PUT":
                    continue  # compaction deleting old records
                changes = _entries(event.kv.value)
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
