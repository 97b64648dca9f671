"""Safe by default: no open non-loopback control plane by accident; frozen clients reclaimed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshbreaker.control.server import ControlPlaneServer, ServerOptions, is_loopback
from meshbreaker.errors import ConfigError
from tests.control.agent_support import ControlPlaneThread, StartControlPlane


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "cp.internal"])
def test_a_reachable_address_needs_tokens_and_tls(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match=r"without tokens and without TLS.*--insecure"):
        ServerOptions(host=host)
    with pytest.raises(ConfigError, match="without TLS"):
        ServerOptions(host=host, admin_token="a")
    ServerOptions(host=host, insecure=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_nothing(host: str) -> None:
    assert is_loopback(host)
    ServerOptions(host=host)


def test_the_command_refuses_in_one_line() -> None:
    """The command's own process: what a user sees, and nothing the worker's earlier tests left."""
    # Run in the test process, the command shared it with what earlier tests left: a grpc aio
    # server left running and collected by a GC during the command holds it in grpc's aio
    # shutdown (joining a poller thread that never ends) until pytest-timeout fires.
    command = ["control-plane", "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "meshbreaker.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1
    err = done.stderr
    assert err.count("\n") == 1 and "--insecure" in err and "without TLS" in err


async def test_running_insecure_is_one_clear_warning(
    start_control_plane: StartControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="meshbreaker.control.server"):
        server: ControlPlaneServer = await start_control_plane(host="0.0.0.0", insecure=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "without tokens and without TLS (--insecure)" in warnings[0]
    assert server.port > 0


_CLIENT = textwrap.dedent(
    """
    import sys, time, grpc
    from meshbreaker.v1 import control_plane_pb2 as pb, control_plane_pb2_grpc as pb_grpc
    channel = grpc.insecure_channel(sys.argv[1])
    stream = pb_grpc.ControlPlaneStub(channel).WatchConfig(pb.WatchConfigRequest(service="gw"))
    next(stream)
    print("watching", flush=True)
    time.sleep(60)
    """
)


def test_a_frozen_clients_stream_is_reclaimed_within_the_keepalive(
    control_plane_thread: ControlPlaneThread,
) -> None:
    cp = control_plane_thread(keepalive_time=0.3, keepalive_timeout=0.3)
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, cp.target], stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "watching"
        servicer = cp.running.servicer
        assert servicer.mesh_view().watch_streams == 1
        os.kill(client.pid, signal.SIGSTOP)  # alive, connected, silent: no ping is answered
        assert cp.call(_until_no_watchers(servicer), timeout=15)
    finally:
        os.kill(client.pid, signal.SIGKILL)
        client.wait(10)


async def _until_no_watchers(servicer: object) -> bool:
    import asyncio

    for _ in range(200):
        if servicer.mesh_view().watch_streams == 0:  # type: ignore[attr-defined]
            return True
        await asyncio.sleep(0.05)
    return False
