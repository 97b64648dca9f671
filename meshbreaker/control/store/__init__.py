"""Policy stores: the PolicyStore seam (base) and the embedded SQLite implementation."""

from meshbreaker.control.store.base import (
    AuditEntry,
    ChangeFeed,
    ClusterNotFoundError,
    CompactedError,
    EndpointLimitError,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
    StoreUnavailableError,
    selector_key,
)
from meshbreaker.control.store.sqlite import SqliteStore

__all__ = [
    "AuditEntry",
    "ChangeFeed",
    "ClusterNotFoundError",
    "CompactedError",
    "EndpointLimitError",
    "PolicyNotFoundError",
    "PolicyStore",
    "RevisionMismatchError",
    "SelectorConflictError",
    "SqliteStore",
    "StoreError",
    "StoreUnavailableError",
    "selector_key",
]
