"""The mesh: control-plane server (serve, run), policy stores, and the in-process MeshAgent."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AgentStatus",
    "ControlPlaneServer",
    "Limits",
    "MeshAgent",
    "PolicyStore",
    "ServerOptions",
    "SqliteStore",
    "run",
    "serve",
]

if TYPE_CHECKING:
    from meshbreaker.control.agent import AgentStatus, MeshAgent
    from meshbreaker.control.limits import Limits
    from meshbreaker.control.server import ControlPlaneServer, ServerOptions, run, serve
    from meshbreaker.control.store import PolicyStore, SqliteStore

_LAZY = {
    "AgentStatus": "meshbreaker.control.agent",
    "MeshAgent": "meshbreaker.control.agent",
    "ControlPlaneServer": "meshbreaker.control.server",
    "Limits": "meshbreaker.control.limits",
    "ServerOptions": "meshbreaker.control.server",
    "run": "meshbreaker.control.server",
    "serve": "meshbreaker.control.server",
    "PolicyStore": "meshbreaker.control.store",
    "SqliteStore": "meshbreaker.control.store",
}


def __getattr__(name: str) -> Any:
    # Lazy, so importing the agent does not pull in the server (and sqlite3), nor the reverse.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshbreaker.control' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
