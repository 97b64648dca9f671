"""The mesh: control-plane server (serve, run), policy stores, and the in-process MeshAgent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["MeshAgent", "PolicyStore", "SqliteStore", "serve"]

if TYPE_CHECKING:
    from meshbreaker.control.agent import MeshAgent
    from meshbreaker.control.server import serve
    from meshbreaker.control.store import PolicyStore, SqliteStore

_LAZY = {
    "MeshAgent": "meshbreaker.control.agent",
    "serve": "meshbreaker.control.server",
    "run": "meshbreaker.control.server",
    "ControlPlaneServer": "meshbreaker.control.server",
    "PolicyStore": "meshbreaker.control.store",
    "SqliteStore": "meshbreaker.control.store",
}


def __getattr__(name: str) -> Any:
    # Lazy so importing the agent does not pull in the server (and sqlite3), and vice versa.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshbreaker.control' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
