"""Fixtures for the xDS tests: a control plane with --xds, backends, gRPC xDS client processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshbreaker.control.server import ControlPlaneServer, serve
from tests.control.conftest import etcd_server  # noqa: F401  (one real etcd per worker)
from tests.xds.support import Admin, Backend, XdsClientProcess


@pytest.fixture
async def xds_server(tmp_path: Path) -> AsyncIterator[ControlPlaneServer]:
    server = await serve(0, tmp_path / "control-plane.db", xds=True, metrics_port=0)
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def admin(xds_server: ControlPlaneServer) -> AsyncIterator[Admin]:
    stubs = Admin(xds_server.target)
    yield stubs
    await stubs.close()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[int], Awaitable[list[Backend]]]]:
    started: list[Backend] = []

    async def start(count: int) -> list[Backend]:
        new = [await Backend(f"backend-{len(started) + i}").start() for i in range(count)]
        started.extend(new)
        return new

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def xds_client(
    xds_server: ControlPlaneServer, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[XdsClientProcess]]]:
    processes: list[XdsClientProcess] = []

    async def start(target: str, *, caller: str = "", **options: Any) -> XdsClientProcess:
        process = await XdsClientProcess.start(
            target, xds_server, tmp_path, caller=caller, **options
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        await process.close()
