"""The test etcd (EtcdServer) when another process holds its port: at a first start it runs on
other ports, whatever that process answers to the health probe; a restart names the port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshbreaker.control.store.etcd_server import EtcdServer, PortTakenError


@contextlib.contextmanager
def squatter(port: int = 0) -> Iterator[int]:
    """A listener on a loopback port (another process's) answering with a bad status line."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    listener.settimeout(0.1)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    connection.recv(4096)
                    connection.sendall(b"not http at all\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def healthy(server: EtcdServer) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.client_port}/health", timeout=10) as r:
        return bool(json.loads(r.read())["health"] == "true")


def test_a_first_start_on_a_port_another_process_holds_runs_on_other_ports(
    tmp_path: Path,
) -> None:
    """The probe reads the other process's garbage as "not up yet"; etcd moves to free ports."""
    with squatter() as taken:
        server = EtcdServer(tmp_path / "etcd")
        server.client_port = taken
        with server:
            assert server.client_port != taken and healthy(server)


def test_a_restart_on_a_port_another_process_took_says_which_port(tmp_path: Path) -> None:
    """A restart keeps its ports (its data names them), so a taken one is a clear error."""
    with EtcdServer(tmp_path / "etcd") as server:
        port = server.client_port
    with squatter(port), pytest.raises(PortTakenError, match=f"port {port} .* is taken"):
        server.start()
    with server:  # once the port is free again, it resumes
        assert server.client_port == port and healthy(server)


def test_a_start_that_times_out_leaves_no_etcd_running(tmp_path: Path) -> None:
    """A failed start kills the etcd it ran: the next start gets the ports and data back."""
    server = EtcdServer(tmp_path / "etcd")
    port = server.client_port
    with pytest.raises(RuntimeError, match="not healthy within 0"):
        server.start(timeout=0)  # etcd cannot answer before the first probe
    left = running_on(server.data_dir)
    for pid in left:  # (only were the failed start to leave one: not to outlive the test)
        os.kill(pid, signal.SIGKILL)
    assert left == []
    with server:  # on its own ports: none is held by the etcd of the failed start
        assert server.client_port == port and healthy(server)
        assert len(running_on(server.data_dir)) == 1


def running_on(data_dir: Path) -> list[int]:
    """The processes running etcd with their data in `data_dir` (from /proc)."""
    wanted = f"--data-dir={data_dir / 'data'}".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if wanted in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
    return found
