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
    xds/registered/<cluster>/<host>/<port>  an endpoint a server registered (XdsEndpoint)
    xds/alive/<cluster>/<host>/<port>  empty, on the registration's lease: renewing refreshes
                      the lease; once it expires, a replica's sweep drops the registered key
    mesh/<replica>/...  what each replica shares of its instances, on its lease (etcd_presence)

A write reads what it needs, then commits only if `store/revision` has not moved since (etcd
compare on its version): store revisions stay contiguous and writes serializable whichever
replica makes them. aetcd is asyncio-only; the store runs it on a private loop in one thread, so
the PolicyStore seam stays synchronous like SqliteStore's and the server's loop never waits on it.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import importlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from meshbreaker.control.store.base import (
    AuditEntry,
    ChangeFeed,
    ClusterNotFoundError,
    EndpointLimitError,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
    StoreUnavailableError,
    check_since,
    registered_by_cluster,
    selector_key,
)
from meshbreaker.control.store.etcd_feed import EtcdFeed
from meshbreaker.control.store.etcd_presence import EtcdPresence
from meshbreaker.control.store.etcd_records import (
    Endpoint,
    audit_entries,
    audit_record,
    prefix_end,
    read_counter,
)
from meshbreaker.control.store.presence import Presence
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_PREFIX = "/meshbreaker/"
# Seconds closing the store waits for its tasks (feeds, keepalives) to end once cancelled.
CLOSE_WAIT = 2.0
# Registrations one sweep drops at most (one transaction, below etcd's 128 operations).
SWEEP_BATCH = 50


def _aetcd() -> Any:
    try:
        return importlib.import_module("aetcd")
    except ImportError:
        raise ConfigError("store", "etcd needs aetcd: install meshbreaker[etcd]") from None


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
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="meshbreaker-etcd", daemon=True
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
            self._store_id = self.run(self._init())
        except BaseException:
            self.close()
            raise

    # ----- plumbing ---------------------------------------------------------------------

    def key(self, *parts: str) -> bytes:
        return (self.prefix + "/".join(parts)).encode()

    def _audit_key(self, revision: int) -> bytes:
        return self.key("audit", f"{revision:020d}")

    def _selector_key(self, policy: pb.Policy) -> bytes:
        return self.key("selector", "\x1f".join(selector_key(policy)))

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the store's loop and wait for it (from any other thread)."""
        if self._closed:
            coroutine.close()
            raise StoreUnavailableError("the etcd store is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            # Each etcd call has its own timeout; this bounds a call that retries endpoints.
            return future.result(self._timeout * (len(self._clients) + 1) + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreUnavailableError(f"etcd at {self._where()} did not answer in time") from None

    @property
    def transactions(self) -> Any:
        """aetcd's builders of transaction operations (put, get, delete, compares)."""
        return self._clients[0].transactions

    def _where(self) -> str:
        return ",".join(str(endpoint) for endpoint in self.endpoints)

    def _unreachable(self, error: BaseException) -> bool:
        errors = self._errors
        return isinstance(error, (errors.ConnectionFailedError, errors.ConnectionTimeoutError))

    async def call(self, operation: Callable[[Any], Awaitable[_T]]) -> _T:
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
        _, responses = await self.call(
            lambda c: c.transaction(compare=[], success=list(ops), failure=[])
        )
        return list(responses)

    def _get(self, key: bytes, range_end: bytes | None = None) -> Any:
        return self.transactions.get(key, range_end)

    async def _init(self) -> str:
        id_key = self.key("store", "id")

        async def create(client: Any) -> Any:
            fresh = str(uuid.uuid4()).encode()
            return await client.transaction(
                compare=[client.transactions.create(id_key) == 0],
                success=[client.transactions.put(id_key, fresh)],
                failure=[client.transactions.get(id_key)],
            )

        created, responses = await self.call(create)
        if created:
            return str(await self._read_value(id_key, ""))
        return str(responses[0][0][0].decode())

    async def _read_value(self, key: bytes, default: str) -> str:
        got = await self.call(lambda c: c.get(key))
        return default if got is None else str(got.value.decode())

    # ----- the seam ---------------------------------------------------------------------

    @property
    def store_id(self) -> str:
        """The id created with the store (the first replica to open an empty prefix makes it)."""
        return self._store_id

    def list(self) -> tuple[int, builtins.list[pb.Policy]]:
        """The store revision and every policy, sorted by id, read at one etcd revision."""
        return self.run(self._list())

    async def _list(self) -> tuple[int, builtins.list[pb.Policy]]:
        start = self.key("policy", "")
        revision, policies = await self._read(
            self._get(self.key("store", "revision")), self._get(start, prefix_end(start))
        )
        current = int(revision[0][0]) if revision else 0
        found = [pb.Policy.FromString(value) for value, _ in policies]
        return current, sorted(found, key=lambda policy: policy.id)

    def get(self, policy_id: str) -> pb.Policy | None:
        """The policy with that id, or None."""

        async def get() -> pb.Policy | None:
            got = await self.call(lambda c: c.get(self.key("policy", policy_id)))
            return None if got is None else pb.Policy.FromString(got.value)

        return self.run(get())

    def revision(self) -> int:
        """The global store revision."""
        return self.run(self._revision())

    async def _revision(self) -> int:
        return int(await self._read_value(self.key("store", "revision"), "0"))

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
        return self.run(self._put(list(policies), expected_revision, actor))

    async def _put(
        self, policies: builtins.list[pb.Policy], expected: int | None, actor: str
    ) -> builtins.list[AuditEntry]:
        ids = {policy.id for policy in policies}
        while True:
            reads = [self._get(self.key("store", "revision"))]
            reads += [self._get(self.key("policy", policy.id)) for policy in policies]
            reads += [self._get(self._selector_key(policy)) for policy in policies]
            results = await self._read(*reads)
            version, current = read_counter(results[0])
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
                ops.append(self._op_put(self.key("policy", entry.policy_id), entry.after))
                ops.append(self._op_put_raw(self._selector_key(entry.after), entry.policy_id))
            ops += [self.transactions.delete(key) for key in sorted(released)]
            if await self._commit(version, revision, actor, now, entries, ops):
                return entries
            if expected is not None:
                raise RevisionMismatchError(expected, await self._revision())

    def delete(
        self, policy_id: str, *, expected_revision: int | None = None, actor: str = ""
    ) -> AuditEntry:
        """Delete one policy at a new revision."""
        return self.run(self._delete(policy_id, expected_revision, actor))

    async def _delete(self, policy_id: str, expected: int | None, actor: str) -> AuditEntry:
        while True:
            counter, found = await self._read(
                self._get(self.key("store", "revision")), self._get(self.key("policy", policy_id))
            )
            version, current = read_counter(counter)
            if expected is not None and expected != current:
                raise RevisionMismatchError(expected, current)
            if not found:
                raise PolicyNotFoundError(policy_id)
            before = pb.Policy.FromString(found[0][0])
            now = self._wall_clock()
            entry = AuditEntry(current + 1, policy_id, "delete", actor, now, before, None)
            deletes = self.transactions.delete
            ops = [deletes(self.key("policy", policy_id)), deletes(self._selector_key(before))]
            if await self._commit(version, current + 1, actor, now, [entry], ops):
                return entry
            if expected is not None:
                raise RevisionMismatchError(expected, await self._revision())

    def _op_put(self, key: bytes, policy: pb.Policy) -> Any:
        return self.transactions.put(key, policy.SerializeToString(deterministic=True))

    def _op_put_raw(self, key: bytes, value: str) -> Any:
        return self.transactions.put(key, value.encode())

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
        counter_key = self.key("store", "revision")
        audit_key = self._audit_key(revision)
        write_id = uuid.uuid4().hex
        transactions = self.transactions
        ops = [
            transactions.put(counter_key, str(revision).encode()),
            transactions.put(audit_key, audit_record(revision, actor, now, write_id, entries)),
            *ops,
        ]
        try:
            succeeded, _ = await self.call(
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
                got = await self.call(lambda c: c.get(audit_key))
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
            start = self.key("xds", "cluster", "")
            registered_start = self.key("xds", "registered", "")
            counter, found, registrations = await self._read(
                self._get(self.key("xds", "revision")),
                self._get(start, prefix_end(start)),
                self._get(registered_start, prefix_end(registered_start)),
            )
            registered = registered_by_cluster(
                (
                    bytes(meta.key)[len(registered_start) :].decode().partition("/")[0],
                    xds_pb2.XdsEndpoint.FromString(value),
                )
                for value, meta in registrations
            )
            clusters = [xds_pb2.XdsCluster.FromString(value) for value, _ in found]
            for cluster in clusters:
                cluster.registered_endpoints.extend(registered.get(cluster.name, ()))
            return read_counter(counter)[1], sorted(clusters, key=lambda cluster: cluster.name)

        return self.run(read())

    def put_xds_cluster(
        self, cluster: xds_pb2.XdsCluster, *, actor: str = ""
    ) -> xds_pb2.XdsCluster:
        """Store `cluster` at a new registry revision (a transaction on the registry counter)."""
        if not cluster.name:
            raise StoreError("an xDS cluster needs a name")

        async def put() -> xds_pb2.XdsCluster:
            while True:
                version, current = read_counter(
                    (await self._read(self._get(self.key("xds", "revision"))))[0]
                )
                stored = xds_pb2.XdsCluster()
                stored.CopyFrom(cluster)
                stored.revision = current + 1
                stored.updated_at.FromNanoseconds(int(self._wall_clock() * 1e9))
                stored.updated_by = actor
                body = stored.SerializeToString(deterministic=True)
                put = self.transactions.put
                if await self._commit_xds(
                    version, stored.revision, [put(self.key("xds", "cluster", stored.name), body)]
                ):
                    return stored

        return self.run(put())

    def delete_xds_cluster(self, name: str, *, actor: str = "") -> int:
        """Delete the cluster `name` at a new registry revision."""

        async def delete() -> int:
            key = self.key("xds", "cluster", name)
            while True:
                counter, found = await self._read(
                    self._get(self.key("xds", "revision")), self._get(key)
                )
                if not found:
                    raise ClusterNotFoundError(name)
                version, current = read_counter(counter)
                delete_range = self.transactions.delete
                ops = [delete_range(key)]
                for kind in ("registered", "alive"):
                    start = self.key("xds", kind, name, "")
                    ops.append(delete_range(start, prefix_end(start)))
                if await self._commit_xds(version, current + 1, ops):
                    return current + 1

        return self.run(delete())

    def _endpoint_key(self, kind: str, cluster: str, host: str, port: int) -> bytes:
        return self.key("xds", kind, cluster, host, str(port))

    def register_xds_endpoint(
        self, cluster: str, endpoint: xds_pb2.XdsEndpoint, ttl: int, *, max_endpoints: int
    ) -> tuple[bool, int]:
        """Register `endpoint`, its alive key on a new lease of `ttl` s, or refresh that lease."""
        body = endpoint.SerializeToString(deterministic=True)
        registered = self._endpoint_key("registered", cluster, endpoint.host, endpoint.port)
        alive = self._endpoint_key("alive", cluster, endpoint.host, endpoint.port)
        siblings = self.key("xds", "registered", cluster, "")

        async def register() -> tuple[bool, int]:
            while True:
                counter, found_cluster, found, living, others = await self._read(
                    self._get(self.key("xds", "revision")),
                    self._get(self.key("xds", "cluster", cluster)),
                    self._get(registered),
                    self._get(alive),
                    self._get(siblings, prefix_end(siblings)),
                )
                if not found_cluster:
                    raise ClusterNotFoundError(cluster)
                version, current = read_counter(counter)
                same = bool(found) and bytes(found[0][0]) == body
                if same and living:
                    reply = await self.call(self._refresh_lease(int(living[0][1].lease)))
                    if reply is not None and int(reply.TTL) == ttl:
                        return False, current  # renewed: the same lease lives on
                if not found:
                    listed = len(xds_pb2.XdsCluster.FromString(found_cluster[0][0]).endpoints)
                    if listed + len(others) >= max_endpoints:
                        raise EndpointLimitError(cluster, max_endpoints)
                lease = await self.call(lambda client: client.lease(ttl))
                put = self.transactions.put
                ops = [put(alive, b"", lease=lease.id)]
                if not same:
                    ops.append(put(registered, body))
                    if await self._commit_xds(version, current + 1, ops):
                        return True, current + 1
                elif await self._commit_xds(version, current, ops, bump=False):
                    return False, current
                await self._revoke(int(lease.id))

        return self.run(register())

    @staticmethod
    def _refresh_lease(lease_id: int) -> Callable[[Any], Awaitable[Any]]:
        return lambda client: client.refresh_lease(lease_id)

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self.call(lambda client: client.revoke_lease(lease_id))
        except Exception as error:  # it expires on its own
            logger.debug("revoking an unused registration lease: %r", error)

    def deregister_xds_endpoint(self, cluster: str, host: str, port: int) -> int | None:
        """Delete a registration and its alive key at a new registry revision; None if absent."""
        registered = self._endpoint_key("registered", cluster, host, port)
        alive = self._endpoint_key("alive", cluster, host, port)

        async def deregister() -> int | None:
            while True:
                counter, found = await self._read(
                    self._get(self.key("xds", "revision")), self._get(registered)
                )
                if not found:
                    return None
                version, current = read_counter(counter)
                delete = self.transactions.delete
                if await self._commit_xds(
                    version, current + 1, [delete(registered), delete(alive)]
                ):
                    return current + 1

        return self.run(deregister())

    def sweep_xds_endpoints(self) -> int:
        """Drop registrations whose alive key went with its lease, at one new registry revision."""
        return self.run(self._sweep_xds_endpoints())

    async def _sweep_xds_endpoints(self) -> int:
        """The sweep on the store's loop; of sweeps that race (replicas), one drops and counts."""
        registered_start = self.key("xds", "registered", "")
        alive_start = self.key("xds", "alive", "")
        counter, registered, living = await self._read(
            self._get(self.key("xds", "revision")),
            self._get(registered_start, prefix_end(registered_start)),
            self._get(alive_start, prefix_end(alive_start)),
        )
        alive = {bytes(meta.key)[len(alive_start) :] for _, meta in living}
        orphans = [
            bytes(meta.key)[len(registered_start) :]
            for _, meta in registered
            if bytes(meta.key)[len(registered_start) :] not in alive
        ][:SWEEP_BATCH]
        if not orphans:
            return 0
        version, current = read_counter(counter)
        transactions = self.transactions
        # Each still without its alive key when this commits: a renewal in between wins.
        compare = [transactions.create(alive_start + name) == 0 for name in orphans]
        ops = [transactions.delete(registered_start + name) for name in orphans]
        committed = await self._commit_xds(version, current + 1, ops, compare=compare)
        return len(orphans) if committed else 0

    async def _commit_xds(
        self,
        version: int,
        revision: int,
        ops: builtins.list[Any],
        *,
        bump: bool = True,
        compare: Sequence[Any] = (),
    ) -> bool:
        """Apply `ops` (moving the registry counter to `revision` unless not `bump`) if the
        counter is unchanged and every other `compare` holds."""
        counter_key = self.key("xds", "revision")
        if bump:
            ops = [self.transactions.put(counter_key, str(revision).encode()), *ops]
        succeeded, _ = await self.call(
            lambda c: c.transaction(
                compare=[c.transactions.version(counter_key) == version, *compare],
                success=ops,
                failure=[],
            )
        )
        return bool(succeeded)

    def compact(self, revision: int) -> None:
        """Delete the audit records up to `revision`; feeds from before it get CompactedError."""

        async def compact() -> None:
            current = await self._revision()
            upto = min(revision, current)
            compacted = self.key("store", "compacted")
            previous = int(await self._read_value(compacted, "0"))
            if upto <= previous:
                return
            transactions = self.transactions
            ops = [
                transactions.put(compacted, str(upto).encode()),
                transactions.delete(self._audit_key(0), self._audit_key(upto + 1)),
            ]
            await self.call(lambda c: c.transaction(compare=[], success=ops, failure=[]))

        self.run(compact())

    def audit_log(self, *, since_revision: int = 0, limit: int = 1000) -> builtins.list[AuditEntry]:
        """Changes with a revision > since_revision, oldest first, at most `limit`."""
        entries = self.run(self.changes_after(since_revision, limit, check=False))[1]
        return entries[:limit]

    async def changes_after(
        self, since_revision: int, revisions: int, *, check: bool = True
    ) -> tuple[int, builtins.list[AuditEntry]]:
        """(etcd revision of the read, whole store revisions after `since_revision`)."""
        start = self._audit_key(since_revision + 1)
        end = self._audit_key(since_revision + revisions + 1)
        # store/id always exists: its read carries the etcd revision the whole read was made at.
        identity, compacted, records = await self._read(
            self._get(self.key("store", "id")),
            self._get(self.key("store", "compacted")),
            self._get(start, end),
        )
        if check:
            check_since(since_revision, int(compacted[0][0]) if compacted else 0)
        entries = [entry for value, _ in records for entry in audit_entries(value)]
        return int(identity[0][1].header.revision), entries

    def presence(self, replica_id: str, ttl: int) -> Presence:
        """This replica's records under mesh/<replica_id>/ on a lease of `ttl` seconds."""
        return EtcdPresence(self, replica_id, ttl)

    def watch(self, since_revision: int) -> ChangeFeed:
        """The changes after `since_revision`, then every later one, from etcd's watch."""
        return EtcdFeed(self, since_revision)

    def close(self) -> None:
        """Close the etcd connections and stop the store's loop."""
        if self._closed:
            return

        async def close_all() -> None:
            # Feeds and lease keepalives still running end with the store, and are waited
            # for: a task left pending on the closed loop is "destroyed but pending" at exit.
            await _end_tasks()
            for client in self._clients:
                try:
                    await client.close()
                except Exception as error:  # closing must go on for the others
                    logger.debug("closing an etcd client: %r", error)
            await _end_tasks()  # any the clients' closing started

        if self._thread.is_alive() and hasattr(self, "_clients"):
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(4 * CLOSE_WAIT + 10)
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _end_tasks() -> None:
    """Cancel every other task on the running loop and give them CLOSE_WAIT to end."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT)
        if pending:
            logger.warning("closing the etcd store: %d tasks did not end", len(pending))
