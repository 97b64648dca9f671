"""The PolicyStore seam: what every policy store offers the control plane, and its errors.

A store holds validated `meshbreaker.v1.Policy` messages, a global revision that only grows, and an
audit log of every change. Writes are compare-and-set on that revision. Each store has an id created
with it (`store_id`), so a client can tell one store from another that happens to share revisions.
The server calls a store from one worker thread at a time.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshbreaker.control.store.presence import Presence

# The store's errors live in the one tree of meshbreaker.errors; re-exported for the stores.
from meshbreaker.errors import ClusterNotFoundError as ClusterNotFoundError
from meshbreaker.errors import CompactedError as CompactedError
from meshbreaker.errors import EndpointLimitError as EndpointLimitError
from meshbreaker.errors import PolicyNotFoundError as PolicyNotFoundError
from meshbreaker.errors import RevisionMismatchError as RevisionMismatchError
from meshbreaker.errors import SelectorConflictError as SelectorConflictError
from meshbreaker.errors import StoreError as StoreError
from meshbreaker.errors import StoreUnavailableError as StoreUnavailableError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2


@dataclass(frozen=True)
class AuditEntry:
    """One change: at which revision, to which policy, by whom, when (unix time), before/after."""

    revision: int
    policy_id: str
    action: str  # "put" or "delete"
    actor: str
    time: float
    before: pb.Policy | None
    after: pb.Policy | None


def selector_key(policy: pb.Policy) -> tuple[str, str, str]:
    """The identity of a policy's selector; two stored policies never share one."""
    return (policy.selector.caller, policy.selector.service, policy.selector.method)


class PolicyStore(abc.ABC):
    """Where policies live; a networked implementation can replace SqliteStore for replicas."""

    @property
    @abc.abstractmethod
    def store_id(self) -> str:
        """The id this store got when it was created; the same for every replica reading it."""

    @abc.abstractmethod
    def list(self) -> tuple[int, list[pb.Policy]]:
        """The store revision and every policy, sorted by id, read consistently."""

    @abc.abstractmethod
    def get(self, policy_id: str) -> pb.Policy | None:
        """The policy with that id, or None."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The global store revision (0 for an empty, never written store)."""

    @abc.abstractmethod
    def put(
        self,
        policies: Sequence[pb.Policy],
        *,
        expected_revision: int | None = None,
        actor: str = "",
    ) -> builtins.list[AuditEntry]:
        """Create or replace `policies` atomically at one new revision; returns one entry each.

        The stored copies get `revision`, `updated_at` and `updated_by` set. Raises
        RevisionMismatchError, or SelectorConflictError when two policies would share a selector.
        """

    @abc.abstractmethod
    def delete(
        self, policy_id: str, *, expected_revision: int | None = None, actor: str = ""
    ) -> AuditEntry:
        """Delete one policy at a new revision (PolicyNotFoundError, RevisionMismatchError)."""

    @abc.abstractmethod
    def xds_clusters(self) -> tuple[int, builtins.list[xds_pb2.XdsCluster]]:
        """The xDS cluster registry's revision and every cluster, sorted by name, read consistently.

        The registry has its own revision (0 before its first write), apart from the policies'.
        Each cluster's `registered_endpoints` are filled in, sorted by host and port.
        """

    @abc.abstractmethod
    def put_xds_cluster(
        self, cluster: xds_pb2.XdsCluster, *, actor: str = ""
    ) -> xds_pb2.XdsCluster:
        """Create or replace a cluster (checked by the caller) at a new registry revision.

        Returns it as stored, with `revision`, `updated_at` and `updated_by` set.
        """

    @abc.abstractmethod
    def delete_xds_cluster(self, name: str, *, actor: str = "") -> int:
        """Delete a cluster at a new registry revision, returned (ClusterNotFoundError)."""

    @abc.abstractmethod
    def register_xds_endpoint(
        self, cluster: str, endpoint: xds_pb2.XdsEndpoint, ttl: int, *, max_endpoints: int
    ) -> tuple[bool, int]:
        """Register `endpoint` (checked, host canonical) in `cluster` for `ttl` s, or renew it.

        Returns (changed, registry revision): a new address or weight moves the revision, a
        renewal does not. Raises ClusterNotFoundError, or EndpointLimitError when the cluster
        holds `max_endpoints` endpoints (listed and registered) and this one is new.
        """

    @abc.abstractmethod
    def deregister_xds_endpoint(self, cluster: str, host: str, port: int) -> int | None:
        """Remove a registered endpoint at a new registry revision (returned); None if absent."""

    @abc.abstractmethod
    def sweep_xds_endpoints(self) -> int:
        """Remove the registrations whose ttl ran out, at one new registry revision; how many.

        Every replica calls it every second or so; it writes only when something ran out.
        """

    @abc.abstractmethod
    def watch(self, since_revision: int) -> ChangeFeed:
        """The changes after `since_revision`, in order, then every later one as it is made.

        Raises CompactedError at once, or from the feed later, when that history is gone.
        """

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Forget the history up to and including `revision` (the policies stay)."""

    @abc.abstractmethod
    def audit_log(self, *, since_revision: int = 0, limit: int = 1000) -> builtins.list[AuditEntry]:
        """Changes with a revision > since_revision, oldest first, at most `limit`."""

    def presence(self, replica_id: str, ttl: int) -> Presence | None:
        """Records this replica shares with the others on the store, or None (one replica only)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the store is unusable afterwards."""


class ChangeFeed(abc.ABC):
    """A store's changes in revision order, whole revisions at a time; read from one thread."""

    @abc.abstractmethod
    def next(self, timeout: float | None = None) -> list[AuditEntry]:
        """The next changes (one or more whole revisions, oldest first); [] after `timeout`.

        Raises CompactedError when the history this feed needs is gone (re-list, watch again).
        While the store is unreachable it keeps retrying on its own and returns [] meanwhile.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the feed; a `next()` in progress returns []."""

    def __enter__(self) -> ChangeFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_since(since_revision: int, compacted: int) -> None:
    """Raise CompactedError unless the changes after `since_revision` are all in the history."""
    if since_revision < compacted:
        raise CompactedError(since_revision, compacted)


def registered_by_cluster(
    found: Iterable[tuple[str, xds_pb2.XdsEndpoint]],
) -> dict[str, builtins.list[xds_pb2.XdsEndpoint]]:
    """Registered endpoints grouped by cluster, each group sorted by host and port."""
    grouped: dict[str, builtins.list[xds_pb2.XdsEndpoint]] = {}
    for cluster, endpoint in found:
        grouped.setdefault(cluster, []).append(endpoint)
    for endpoints in grouped.values():
        endpoints.sort(key=lambda endpoint: (endpoint.host, endpoint.port))
    return grouped
