"""Policy stores: the PolicyStore seam (base) and the embedded SQLite implementation."""

from meshbreaker.control.store.base import (
    AuditEntry,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
    selector_key,
)
from meshbreaker.control.store.sqlite import SqliteStore

__all__ = [
    "AuditEntry",
    "PolicyNotFoundError",
    "PolicyStore",
    "RevisionMismatchError",
    "SelectorConflictError",
    "SqliteStore",
    "StoreError",
    "selector_key",
]
