"""xDS test helpers: backends that say who they are, and a grpcio xDS client in its own process.

* `Backend(name)` — a grpc.aio server on 127.0.0.1:0 in the test's loop. `/test.Echo/Who` answers
  its name, or UNAVAILABLE while `.failing`; `/test.Echo/Hold` answers its name once `.release()`
  is called (`.held` counts the calls waiting).
* `XdsClientProcess(target, bootstrap)` — `tests/xds/xds_client.py` with GRPC_XDS_BOOTSTRAP set:
  gRPC's own xDS client, no meshbreaker code. `await .ask(command)` sends one command and reads
  one reply; `await .read()` reads the next line.
* `put_cluster(server, name, backends, ...)` and `clients(server)` call the XdsAdmin RPCs the
  way the CLI does; `wait_for(predicate)` polls with a generous deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.control.xds.bootstrap import bootstrap
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc

CLIENT_SCRIPT = Path(__file__).with_name("xds_client.py")
GUARDED_SCRIPT = Path(__file__).with_name("guarded_client.py")
ROOT = Path(__file__).resolve().parents[2]
# Generous: the client process, its xDS stream and the backends share two busy cores.
DEADLINE = 30.0


class Backend:
    """A backend that answers with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing = False
        self.flaky = False  # fail every other call: a first attempt fails, its retry succeeds
        self.held = 0
        self.calls = 0
        self._release = asyncio.Event()
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Echo",
                    {
                        "Who": grpc.unary_unary_rpc_method_handler(self._who),
                        "Hold": grpc.unary_unary_rpc_method_handler(self._hold),
                    },
                )
            ]
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    async def start(self) -> Backend:
        await self._server.start()
        return self

    async def stop(self) -> None:
        self._release.set()
        await self._server.stop(grace=0)

    def release(self) -> None:
        """Let every held call (and every later one) answer."""
        self._release.set()

    async def _who(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.calls += 1
        if self.failing or (self.flaky and self.calls % 2):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is failing")
        return self.name.encode()

    async def _hold(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.held += 1
        try:
            await self._release.wait()
        finally:
            self.held -= 1
        return self.name.encode()


class XdsClientProcess:
    """gRPC's own xDS client in a child process, driven line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(
        cls,
        target: str,
        server: ControlPlaneServer,
        tmp_path: Path,
        *,
        caller: str = "",
        script: Path = CLIENT_SCRIPT,
        args: tuple[str, ...] = (),
    ) -> XdsClientProcess:
        path = tmp_path / f"bootstrap-{caller or 'any'}.json"
        path.write_text(
            json.dumps(bootstrap(server.target, f"node-{caller or 'any'}", caller=caller))
        )
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(path), PYTHONPATH=str(ROOT))
        env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            target,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process)

    async def read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), DEADLINE)
        assert line, "the xDS client process ended"
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def send(self, command: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command).encode() + b"\n")
        await self._process.stdin.drain()

    async def send_line(self, text: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(text.encode() + b"\n")
        await self._process.stdin.drain()

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        await self.send(command)
        return await self.read()

    async def close(self) -> None:
        if self._process.returncode is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()


def cluster(
    name: str,
    backends: Iterable[Backend],
    *,
    services: Iterable[str] = (),
    lb_policy: xds_pb2.LbPolicy.ValueType = xds_pb2.LB_POLICY_UNSPECIFIED,
) -> xds_pb2.XdsCluster:
    return xds_pb2.XdsCluster(
        name=name,
        endpoints=[xds_pb2.XdsEndpoint(host="127.0.0.1", port=b.port) for b in backends],
        services=list(services),
        lb_policy=lb_policy,
    )


async def wait_for(predicate: Callable[[], Any], deadline: float = DEADLINE) -> None:
    """Poll `predicate` every 20 ms until it is true; fail after `deadline` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await _value(predicate):
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def _value(predicate: Callable[[], Any]) -> Any:
    result = predicate()
    if asyncio.iscoroutine(result):
        result = await result
    return result


class Admin:
    """XdsAdmin and ControlPlane stubs on an aio channel to the control plane."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.xds = xds_pb2_grpc.XdsAdminStub(self.channel)
        self.control = pb_grpc.ControlPlaneStub(self.channel)

    async def put_cluster(self, message: xds_pb2.XdsCluster) -> xds_pb2.PutClusterResponse:
        return await self.xds.PutCluster(xds_pb2.PutClusterRequest(cluster=message))

    async def put_policy(self, policy: pb.Policy) -> int:
        response = await self.control.PutPolicy(pb.PutPolicyRequest(policies=[policy]))
        return int(response.revision)

    async def resource(self, node_id: str, kind: str) -> xds_pb2.XdsResourceState | None:
        """The named client's state of one resource type, or None."""
        response = await self.xds.ListXdsClients(xds_pb2.ListXdsClientsRequest())
        for client in response.clients:
            if client.node_id == node_id:
                for resource in client.resources:
                    if resource.type == kind:
                        return resource
        return None

    async def close(self) -> None:
        await self.channel.close()
