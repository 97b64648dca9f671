"""The presence seam: records a replica keeps in a shared store on a lease, and every replica's.

Replicas on one networked store (etcd) share what they know of the instances they serve this
way: each writes its records under its own id, attached to a lease it keeps alive, so a replica
that dies takes its records with it once the lease expires. A store that only one replica uses
(SQLite) has no presence: its one replica's instance table is the whole mesh.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PresenceChange:
    """One record of one replica written (value) or gone (None: deleted, or its lease expired)."""

    replica_id: str
    name: str
    value: bytes | None


class PresenceFeed(abc.ABC):
    """Every replica's records: first all of them, then each change; read from one thread."""

    @abc.abstractmethod
    def next(self, timeout: float | None = None) -> tuple[bool, list[PresenceChange]]:
        """(reset, changes): with reset, `changes` is every record there is and replaces them all.

        Returns (False, []) after `timeout`. While the store is unreachable it retries on its own;
        once it is back, the next answer is a reset.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the feed; a `next()` in progress returns at once."""


class Presence(abc.ABC):
    """This replica's records on a lease of `ttl` seconds, kept alive while it runs."""

    replica_id: str
    ttl: int

    @abc.abstractmethod
    def publish(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> bool:
        """Write and delete records of this replica (in bounded transactions).

        Returns False when the lease had been lost (the store dropped every record of this
        replica): a new one is held now, and the caller must write all its records again.
        Raises StoreUnavailableError when the store cannot be reached.
        """

    @abc.abstractmethod
    def campaign(self, name: str) -> bool:
        """Hold `name` on this replica's lease unless another replica holds it (an election).

        True while this replica holds it. The holder keeps it until its lease ends (it stops, or
        its keep-alives stop reaching the store); then the next replica to campaign gets it.
        Raises StoreUnavailableError when the store cannot be reached.
        """

    @abc.abstractmethod
    def feed(self) -> PresenceFeed:
        """Every replica's records (this one's included), then their changes."""

    @abc.abstractmethod
    def close(self) -> None:
        """Give the lease back: this replica's records go at once."""
