"""The embedded policy store: one SQLite file, safe to share between threads."""

from __future__ import annotations

import builtins
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from google.protobuf import json_format

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
    check_since,
    registered_by_cluster,
    selector_key,
)
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2

logger = logging.getLogger(__name__)

# 2: selectors in a table of their own, so a put checks uniqueness without reading every policy.
SCHEMA_VERSION = 2
# A feed reads at most this many revisions per batch, so a far-behind reader is fed in steps.
FEED_BATCH_REVISIONS = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identity (store_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    revision INTEGER NOT NULL,
    policy_id TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    at REAL NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX IF NOT EXISTS audit_revision ON audit (revision);
CREATE TABLE IF NOT EXISTS xds_clusters (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS xds_endpoints (
    cluster TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    body BLOB NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (cluster, host, port)
);
CREATE TABLE IF NOT EXISTS selectors (
    caller TEXT NOT NULL,
    service TEXT NOT NULL,
    method TEXT NOT NULL,
    policy_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (caller, service, method)
);
"""


def _to_json(policy: pb.Policy | None) -> str | None:
    if policy is None:
        return None
    return json_format.MessageToJson(policy, preserving_proto_field_name=True, indent=None)


def _from_json(text: str | None) -> pb.Policy | None:
    if text is None:
        return None
    return json_format.Parse(text, pb.Policy())


def explain_open_error(path: str, error: sqlite3.Error) -> str:
    """Why SQLite could not open `path` as a store, and what to do about it."""
    message = str(error)
    if os.path.isdir(path):
        return "is a directory: give the path of a file, e.g. --db DIR/meshbreaker.db"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"directory {parent} does not exist: create it, or choose another path"
    if "not a database" in message:
        return "is not an SQLite database: give a new file or an existing meshbreaker store"
    if "readonly" in message or not os.access(parent, os.W_OK):
        return (
            f"cannot be written ({message}): the store needs the file and its directory "
            "writable (SQLite keeps its -wal and -shm files beside it)"
        )
    if "unable to open" in message:
        return f"cannot be opened ({message}): check the permissions of the file and its directory"
    return message


class SqliteStore(PolicyStore):
    """SQLite in WAL mode with synchronous=FULL: a put that returned survives a SIGKILL or crash."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        wall_clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
    ) -> None:
        self.path = os.fspath(path)
        self._wall_clock = wall_clock
        # Feeds wake at once on this store's own commits; another process's are seen by polling.
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._committed = threading.Condition()
        self._commits = 0
        try:
            self._open()
        except (sqlite3.Error, StoreError) as error:
            if hasattr(self, "_db"):
                self._db.close()
            if isinstance(error, StoreError):
                raise
            raise StoreError(f"{self.path}: {explain_open_error(self.path, error)}") from None

    def _open(self) -> None:
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("SQLite store %s is not in WAL mode (%s)", self.path, mode)
        self._db.execute("PRAGMA synchronous = FULL")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 0)")
            elif row[0] > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {row[0]} is newer than this meshbreaker's "
                    f"({SCHEMA_VERSION}): upgrade meshbreaker, or use another file"
                )
            elif row[0] < SCHEMA_VERSION:
                self._index_selectors()
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
                )
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('compacted', 0)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('xds_revision', 0)")
            # Created once with the store; a file from before store ids gets one on first open.
            identity = self._db.execute("SELECT store_id FROM identity").fetchone()
            if identity is None:
                identity = (str(uuid.uuid4()),)
                self._db.execute("INSERT INTO identity VALUES (?)", identity)
            self._store_id = str(identity[0])

    def _index_selectors(self) -> None:
        """Fill the selectors table from the policies (a file from schema version 1)."""
        self._db.execute("DELETE FROM selectors")
        for policy_id, body in self._db.execute("SELECT id, body FROM policies").fetchall():
            self._db.execute(
                "INSERT INTO selectors VALUES (?, ?, ?, ?)",
                (*selector_key(pb.Policy.FromString(body)), policy_id),
            )

    @property
    def store_id(self) -> str:
        """The id created with this file."""
        return self._store_id

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        with self._committed:
            self._commits += 1
            self._committed.notify_all()

    def _revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0])

    def _check_revision(self, expected: int | None) -> int:
        current = self._revision()
        if expected is not None and expected != current:
            raise RevisionMismatchError(expected, current)
        return current

    def _load(self, policy_id: str) -> pb.Policy | None:
        row = self._db.execute("SELECT body FROM policies WHERE id = ?", (policy_id,)).fetchone()
        return None if row is None else pb.Policy.FromString(row[0])

    def _audit(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit (revision, policy_id, action, actor, at, before, after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                entry.revision,
                entry.policy_id,
                entry.action,
                entry.actor,
                entry.time,
                _to_json(entry.before),
                _to_json(entry.after),
            ),
        )

    def list(self) -> tuple[int, list[pb.Policy]]:
        """The store revision and every policy, sorted by id, read consistently."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                revision = self._revision()
                rows = self._db.execute("SELECT body FROM policies ORDER BY id").fetchall()
            finally:
                self._db.execute("COMMIT")
        return revision, [pb.Policy.FromString(row[0]) for row in rows]

    def get(self, policy_id: str) -> pb.Policy | None:
        """The policy with that id, or None."""
        with self._lock:
            return self._load(policy_id)

    def revision(self) -> int:
        """The global store revision."""
        with self._lock:
            return self._revision()

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
        now = self._wall_clock()
        with self._transaction():
            revision = self._check_revision(expected_revision) + 1
            claimed: dict[tuple[str, str, str], str] = {}
            for policy in policies:
                key = selector_key(policy)
                row = self._db.execute(
                    "SELECT policy_id FROM selectors"
                    " WHERE caller = ? AND service = ? AND method = ?",
                    key,
                ).fetchone()
                if row is not None and row[0] not in ids:
                    raise SelectorConflictError(policy.id, str(row[0]))
                if key in claimed:
                    raise SelectorConflictError(policy.id, claimed[key])
                claimed[key] = policy.id
            # Every policy of the put lets go of its old selector before any takes its new one.
            self._db.executemany(
                "DELETE FROM selectors WHERE policy_id = ?", [(policy_id,) for policy_id in ids]
            )
            self._db.executemany(
                "INSERT INTO selectors VALUES (?, ?, ?, ?)",
                [(*key, policy_id) for key, policy_id in claimed.items()],
            )
            entries = []
            for policy in policies:
                stored = pb.Policy()
                stored.CopyFrom(policy)
                stored.revision = revision
                stored.updated_at.FromNanoseconds(int(now * 1e9))
                stored.updated_by = actor
                before = self._load(policy.id)
                self._db.execute(
                    "INSERT OR REPLACE INTO policies (id, revision, body) VALUES (?, ?, ?)",
                    (policy.id, revision, stored.SerializeToString(deterministic=True)),
                )
                entry = AuditEntry(revision, policy.id, "put", actor, now, before, stored)
                self._audit(entry)
                entries.append(entry)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))
        return entries

    def delete(
        self, policy_id: str, *, expected_revision: int | None = None, actor: str = ""
    ) -> AuditEntry:
        """Delete one policy at a new revision."""
        now = self._wall_clock()
        with self._transaction():
            revision = self._check_revision(expected_revision) + 1
            before = self._load(policy_id)
            if before is None:
                raise PolicyNotFoundError(policy_id)
            self._db.execute("DELETE FROM policies WHERE id = ?", (policy_id,))
            self._db.execute("DELETE FROM selectors WHERE policy_id = ?", (policy_id,))
            entry = AuditEntry(revision, policy_id, "delete", actor, now, before, None)
            self._audit(entry)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))
        return entry

    def audit_log(self, *, since_revision: int = 0, limit: int = 1000) -> builtins.list[AuditEntry]:
        """Changes with a revision > since_revision, oldest first, at most `limit`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT revision, policy_id, action, actor, at, before, after FROM audit"
                " WHERE revision > ? ORDER BY seq LIMIT ?",
                (since_revision, limit),
            ).fetchall()
        return [_entry(row) for row in rows]

    def _xds_revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'xds_revision'").fetchone()
        return int(row[0])

    def xds_clusters(self) -> tuple[int, builtins.list[xds_pb2.XdsCluster]]:
        """The registry revision and every cluster, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                revision = self._xds_revision()
                rows = self._db.execute("SELECT body FROM xds_clusters ORDER BY name").fetchall()
                endpoints = self._db.execute("SELECT cluster, body FROM xds_endpoints").fetchall()
            finally:
                self._db.execute("COMMIT")
        registered = registered_by_cluster(
            (name, xds_pb2.XdsEndpoint.FromString(body)) for name, body in endpoints
        )
        clusters = [xds_pb2.XdsCluster.FromString(row[0]) for row in rows]
        for cluster in clusters:
            cluster.registered_endpoints.extend(registered.get(cluster.name, ()))
        return revision, clusters

    def put_xds_cluster(
        self, cluster: xds_pb2.XdsCluster, *, actor: str = ""
    ) -> xds_pb2.XdsCluster:
        """Store `cluster` at a new registry revision."""
        if not cluster.name:
            raise StoreError("an xDS cluster needs a name")
        stored = xds_pb2.XdsCluster()
        stored.CopyFrom(cluster)
        with self._transaction():
            stored.revision = self._xds_revision() + 1
            stored.updated_at.FromNanoseconds(int(self._wall_clock() * 1e9))
            stored.updated_by = actor
            self._db.execute(
                "INSERT OR REPLACE INTO xds_clusters VALUES (?, ?)",
                (stored.name, stored.SerializeToString(deterministic=True)),
            )
            self._set_xds_revision(stored.revision)
        return stored

    def delete_xds_cluster(self, name: str, *, actor: str = "") -> int:
        """Delete the cluster `name` at a new registry revision."""
        with self._transaction():
            deleted = self._db.execute("DELETE FROM xds_clusters WHERE name = ?", (name,))
            if deleted.rowcount == 0:
                raise ClusterNotFoundError(name)
            self._db.execute("DELETE FROM xds_endpoints WHERE cluster = ?", (name,))
            revision = self._xds_revision() + 1
            self._set_xds_revision(revision)
        return revision

    def register_xds_endpoint(
        self, cluster: str, endpoint: xds_pb2.XdsEndpoint, ttl: int, *, max_endpoints: int
    ) -> tuple[bool, int]:
        """Register or renew `endpoint` until ttl seconds from now (the store's wall clock)."""
        body = endpoint.SerializeToString(deterministic=True)
        key = (cluster, endpoint.host, endpoint.port)
        with self._transaction():
            row = self._db.execute(
                "SELECT body FROM xds_clusters WHERE name = ?", (cluster,)
            ).fetchone()
            if row is None:
                raise ClusterNotFoundError(cluster)
            found = self._db.execute(
                "SELECT body FROM xds_endpoints WHERE cluster = ? AND host = ? AND port = ?", key
            ).fetchone()
            if found is None:
                listed = len(xds_pb2.XdsCluster.FromString(row[0]).endpoints)
                (count,) = self._db.execute(
                    "SELECT count(*) FROM xds_endpoints WHERE cluster = ?", (cluster,)
                ).fetchone()
                if listed + count >= max_endpoints:
                    raise EndpointLimitError(cluster, max_endpoints)
            self._db.execute(
                "INSERT OR REPLACE INTO xds_endpoints VALUES (?, ?, ?, ?, ?)",
                (*key, body, self._wall_clock() + ttl),
            )
            revision = self._xds_revision()
            changed = found is None or bytes(found[0]) != body
            if changed:
                revision += 1
                self._set_xds_revision(revision)
        return changed, revision

    def deregister_xds_endpoint(self, cluster: str, host: str, port: int) -> int | None:
        """Remove a registered endpoint at a new registry revision; None if absent."""
        with self._transaction():
            deleted = self._db.execute(
                "DELETE FROM xds_endpoints WHERE cluster = ? AND host = ? AND port = ?",
                (cluster, host, port),
            )
            if deleted.rowcount == 0:
                return None
            revision = self._xds_revision() + 1
            self._set_xds_revision(revision)
        return revision

    def sweep_xds_endpoints(self) -> int:
        """Delete the registrations past their expiry time, at one new registry revision."""
        now = self._wall_clock()
        with self._lock:
            due = self._db.execute(
                "SELECT 1 FROM xds_endpoints WHERE expires <= ? LIMIT 1", (now,)
            ).fetchone()
        if due is None:  # the usual answer: no write, no wake-up for the feeds
            return 0
        with self._transaction():
            swept = self._db.execute("DELETE FROM xds_endpoints WHERE expires <= ?", (now,))
            if swept.rowcount:
                self._set_xds_revision(self._xds_revision() + 1)
        return int(swept.rowcount)

    def _set_xds_revision(self, revision: int) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'xds_revision'", (revision,))

    def watch(self, since_revision: int) -> ChangeFeed:
        """The changes after `since_revision`, then every later one."""
        self._changes_after(since_revision)  # CompactedError now rather than at the first next()
        return _SqliteFeed(self, since_revision)

    def compact(self, revision: int) -> None:
        """Delete the audit rows up to `revision`; feeds from before it get CompactedError."""
        with self._transaction():
            compacted = min(revision, self._revision())
            self._db.execute("DELETE FROM audit WHERE revision <= ?", (compacted,))
            self._db.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = 'compacted'", (compacted,)
            )

    def _changes_after(self, since_revision: int) -> builtins.list[AuditEntry]:
        """Whole revisions after `since_revision`, at most FEED_BATCH_REVISIONS of them."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()
                check_since(since_revision, int(row[0]))
                rows = self._db.execute(
                    "SELECT revision, policy_id, action, actor, at, before, after FROM audit"
                    " WHERE revision > ? AND revision <= ? ORDER BY seq",
                    (since_revision, since_revision + FEED_BATCH_REVISIONS),
                ).fetchall()
            finally:
                self._db.execute("COMMIT")
        return [_entry(row) for row in rows]

    def _wait_for_commit(self, seen: int, timeout: float, closed: Callable[[], bool]) -> int:
        """Wait until a commit after `seen`, `closed()` or `timeout`; the commit count now."""
        with self._committed:
            self._committed.wait_for(lambda: self._commits != seen or closed(), timeout)
            return self._commits

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    revision, policy_id, action, actor, at, before, after = row
    return AuditEntry(revision, policy_id, action, actor, at, _from_json(before), _from_json(after))


class _SqliteFeed(ChangeFeed):
    """Reads the audit table after the last revision it returned; wakes on commits or polls."""

    def __init__(self, store: SqliteStore, since_revision: int) -> None:
        self._store = store
        self._revision = since_revision
        self._closed = False

    def next(self, timeout: float | None = None) -> builtins.list[AuditEntry]:
        """The next whole revisions, or [] after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            with self._store._committed:
                seen = self._store._commits
            entries = self._store._changes_after(self._revision)
            if entries:
                self._revision = entries[-1].revision
                return entries
            wait = self._store.poll_interval
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            self._store._wait_for_commit(seen, wait, lambda: self._closed)
        return []

    def close(self) -> None:
        """Stop the feed; wakes a `next()` in progress."""
        self._closed = True
        with self._store._committed:
            self._store._committed.notify_all()
