"""The cluster registry: named groups of endpoints that the xDS server serves as CDS and EDS.

`ClusterRegistry` is the seam; `SqliteClusterRegistry` keeps its table in the policy store's SQLite
file, with its own revision that only grows. Writes are checked before they are stored.
"""

from __future__ import annotations

import abc
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from meshbreaker.control.store import PolicyStore, SqliteStore, StoreError
from meshbreaker.control.xds.model import MAX_CLUSTERS, check_cluster, sorted_clusters
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import xds_pb2


class ClusterNotFoundError(StoreError):
    """No cluster has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no xDS cluster named {name!r}")
        self.name = name


class ClusterRegistry(abc.ABC):
    """Where registered clusters live; every method may be called from any one thread at a time."""

    @abc.abstractmethod
    def clusters(self) -> tuple[int, list[xds_pb2.XdsCluster]]:
        """The registry revision and every cluster, sorted by name, read consistently."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The registry revision (0 before the first write)."""

    @abc.abstractmethod
    def put(self, cluster: xds_pb2.XdsCluster, *, actor: str = "") -> xds_pb2.XdsCluster:
        """Create or replace a cluster at a new revision; returns it as stored."""

    @abc.abstractmethod
    def delete(self, name: str, *, actor: str = "") -> int:
        """Delete a cluster (ClusterNotFoundError); returns the new revision."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS xds_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS xds_clusters (name TEXT PRIMARY KEY, body BLOB NOT NULL);
"""


class SqliteClusterRegistry(ClusterRegistry):
    """The registry as two tables in a SQLite file (WAL, synchronous=FULL, like SqliteStore)."""

    def __init__(
        self, path: str | os.PathLike[str], *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.path = os.fspath(path)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT OR IGNORE INTO xds_meta VALUES ('revision', 0)")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _revision(self) -> int:
        row = self._db.execute("SELECT value FROM xds_meta WHERE key = 'revision'").fetchone()
        return int(row[0])

    def _set_revision(self, revision: int) -> None:
        self._db.execute("UPDATE xds_meta SET value = ? WHERE key = 'revision'", (revision,))

    def revision(self) -> int:
        """The registry revision."""
        with self._lock:
            return self._revision()

    def clusters(self) -> tuple[int, list[xds_pb2.XdsCluster]]:
        """The revision and every cluster, in one read transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                revision = self._revision()
                rows = self._db.execute("SELECT body FROM xds_clusters ORDER BY name").fetchall()
            finally:
                self._db.execute("COMMIT")
        return revision, sorted_clusters(xds_pb2.XdsCluster.FromString(row[0]) for row in rows)

    def put(self, cluster: xds_pb2.XdsCluster, *, actor: str = "") -> xds_pb2.XdsCluster:
        """Check, then store `cluster` at a new revision."""
        check_cluster(cluster)
        stored = xds_pb2.XdsCluster()
        stored.CopyFrom(cluster)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM xds_clusters WHERE name = ?", (cluster.name,)
                ).fetchone()
                if exists is None:
                    (count,) = self._db.execute("SELECT COUNT(*) FROM xds_clusters").fetchone()
                    if count >= MAX_CLUSTERS:
                        raise ConfigError("cluster", f"the registry holds at most {MAX_CLUSTERS}")
                revision = self._revision() + 1
                stored.revision = revision
                stored.updated_at.FromNanoseconds(int(self._wall_clock() * 1e9))
                stored.updated_by = actor
                self._db.execute(
                    "INSERT OR REPLACE INTO xds_clusters VALUES (?, ?)",
                    (stored.name, stored.SerializeToString(deterministic=True)),
                )
                self._db.execute(
                    "UPDATE xds_meta SET value = ? WHERE key = 'revision'", (revision,)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return stored

    def delete(self, name: str, *, actor: str = "") -> int:
        """Delete the cluster `name` at a new revision."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.execute("DELETE FROM xds_clusters WHERE name = ?", (name,))
                if deleted.rowcount == 0:
                    raise ClusterNotFoundError(name)
                revision = self._revision() + 1
                self._db.execute(
                    "UPDATE xds_meta SET value = ? WHERE key = 'revision'", (revision,)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return revision

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def registry_for(store: PolicyStore) -> ClusterRegistry:
    """The cluster registry kept beside `store`; ConfigError when that store cannot keep one."""
    if isinstance(store, SqliteStore):
        return SqliteClusterRegistry(store.path)
    raise ConfigError(
        "xds", f"the xDS cluster registry needs a SQLite store, not {type(store).__name__}"
    )
