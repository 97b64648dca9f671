"""The web console: a live view of the mesh and its controls, served by the control plane.

`meshbreaker control-plane --console-port PORT` turns it on. Static files in `static/` (no build
step, no third-party script); the JSON API and server-sent event feed in `http`; every read and
write through the gRPC API's own handlers and token check (`bridge`, `api`).
"""

from meshbreaker.control.console.server import ConsoleServer, tls_context

__all__ = ["ConsoleServer", "tls_context"]
