"""The layers hold: the engine imports without grpc or protobuf, live/ never reaches into the
control plane's server or agent, and every exception is in the one tree of meshbreaker.errors."""

from __future__ import annotations

import ast
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import meshbreaker
from meshbreaker.errors import MeshbreakerError

PACKAGE = Path(meshbreaker.__file__).parent
ENGINE = [
    "meshbreaker",
    "meshbreaker._types",
    "meshbreaker._names",
    "meshbreaker._quick",
    "meshbreaker._admission",
    "meshbreaker._backoff",
    "meshbreaker._machine",
    "meshbreaker._permit",
    "meshbreaker.breaker",
    "meshbreaker.concurrency",
    "meshbreaker.config",
    "meshbreaker.decorate",
    "meshbreaker.errors",
    "meshbreaker.events",
    "meshbreaker.histogram",
    "meshbreaker.registry",
    "meshbreaker.retry",
    "meshbreaker.snapshot",
    "meshbreaker.testing",
    "meshbreaker.throttle",
    "meshbreaker.window",
]
# Adapters that are single modules (integrations behind extras); the engine never imports them.
TOP_LEVEL_ADAPTERS = ["meshbreaker.db", "meshbreaker.httpx"]

# Runs in a fresh interpreter: a finder that refuses grpc and google.* is installed first.
_BLOCKED_IMPORT = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("grpc", "google"):
            raise ImportError(f"the engine imported {name}")
        return None

sys.meta_path.insert(0, Blocker())
for module in sys.argv[1:]:
    __import__(module)
cb = sys.modules["meshbreaker"].CircuitBreaker("x")
cb.call(lambda: None)
print("ok")
"""


def test_the_engine_imports_and_runs_with_grpc_and_protobuf_blocked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT, *ENGINE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_interceptor_loads_from_the_package_when_asked_for() -> None:
    from meshbreaker.grpc import BreakerInterceptor

    assert meshbreaker.BreakerInterceptor is BreakerInterceptor


def test_every_engine_module_is_listed() -> None:
    top_level = {
        f"meshbreaker.{info.name}"
        for info in pkgutil.iter_modules([str(PACKAGE)])
        if not info.ispkg
    }
    assert top_level == set(ENGINE + TOP_LEVEL_ADAPTERS) - {"meshbreaker"}


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """What `path` imports; with top_level_only, what importing it runs (no lazy or typing-only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_live_views_never_import_the_control_plane_server_or_agent() -> None:
    forbidden = ("meshbreaker.control.server", "meshbreaker.control.agent")
    for path in sorted((PACKAGE / "live").rglob("*.py")):
        for name in _imports(path):
            assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_the_engine_never_imports_the_adapters_or_the_mesh() -> None:
    outer = (
        "grpc",
        "google",
        "meshbreaker.grpc",
        "meshbreaker.aio",
        "meshbreaker._adapter",
        "meshbreaker.control",
        "meshbreaker.cli",
        "meshbreaker.live",
        "meshbreaker.metrics",
        *TOP_LEVEL_ADAPTERS,
    )
    for module in ENGINE:
        path = PACKAGE / ("__init__.py" if module == "meshbreaker" else f"{module[12:]}.py")
        # meshbreaker/__init__.py loads BreakerInterceptor lazily, on first use: not at import.
        for name in _imports(path, top_level_only=True):
            assert not name.startswith(outer), f"{module} imports {name}"


# A response stream is a grpc.RpcError because grpc's own streams are, and a FailedCall because
# grpc's _FailureOutcome is (it carries the caller's own exception); none of them is raised.
_NOT_RAISED = {
    "meshbreaker.grpc._calls.TrackedStream",
    "meshbreaker.grpc._calls.RetryingStream",
    "meshbreaker.grpc._calls.FailedCall",
}


def test_every_exception_is_in_the_one_tree() -> None:
    for info in pkgutil.walk_packages([str(PACKAGE)], "meshbreaker."):
        if info.name.startswith(("meshbreaker.v1", "meshbreaker.cli.__main__")):
            continue
        module = __import__(info.name, fromlist=["_"])
        for _, value in inspect.getmembers(module, inspect.isclass):
            name = f"{info.name}.{value.__name__}"
            if value.__module__ == info.name and issubclass(value, BaseException):
                if name in _NOT_RAISED:
                    continue
                assert issubclass(value, MeshbreakerError), f"{info.name}.{value.__name__}"
