"""Who may open an ADS stream when the control plane has tokens: the agent token, a client
certificate verified by mutual TLS (what gRPC's own xDS client presents from its bootstrap), or,
only when the operator says so (--xds-allow-anonymous), no token at all."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshbreaker.control.server import ServerOptions, serve
from meshbreaker.control.xds.ads import MAX_NAME_LENGTH
from meshbreaker.control.xds.bootstrap import bootstrap
from meshbreaker.control.xds.resources import CLUSTER
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc
from tests.tls_support import issue, pem
from tests.xds.support import CLIENT_SCRIPT, DEADLINE, ROOT, Backend, XdsClientProcess, cluster

ADMIN, AGENT = "admin-secret", "agent-secret"


def ads_stream(
    target: str, token: str | None, names: tuple[str, ...] = ("accounts",)
) -> discovery_pb2.DiscoveryResponse:
    """Subscribe to clusters (one) on a plaintext channel and return the first answer."""
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    requests.put(
        discovery_pb2.DiscoveryRequest(node={"id": "n"}, type_url=CLUSTER, resource_names=names)
    )
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            iter(requests.get, None), timeout=DEADLINE, metadata=metadata
        )
        try:
            return next(stream)
        finally:
            requests.put(None)
            stream.cancel()


async def test_with_tokens_an_ads_stream_needs_the_agent_token(tmp_path: Path) -> None:
    server = await serve(0, tmp_path / "cp.db", xds=True, admin_token=ADMIN, agent_token=AGENT)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(ads_stream, server.target, None)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "client certificate (mutual TLS) or the agent token" in str(caught.value.details())
        assert "--xds-allow-anonymous" in str(caught.value.details())
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(ads_stream, server.target, "wrong")
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        answer = await asyncio.to_thread(ads_stream, server.target, AGENT)
        assert answer.type_url == CLUSTER
        # Registering clusters is an admin's job.
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = xds_pb2_grpc.XdsAdminStub(channel)
            put = xds_pb2.PutClusterRequest(cluster=xds_pb2.XdsCluster(name="accounts"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.PutCluster(put, metadata=(("authorization", f"Bearer {AGENT}"),))
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            await stub.PutCluster(put, metadata=(("authorization", f"Bearer {ADMIN}"),))
    finally:
        await server.stop(grace=0)


async def test_a_resource_name_longer_than_the_bound_ends_the_stream(tmp_path: Path) -> None:
    server = await serve(0, tmp_path / "cp.db", xds=True)
    try:
        longest = "a" * MAX_NAME_LENGTH
        answer = await asyncio.to_thread(ads_stream, server.target, None, (longest,))
        assert answer.type_url == CLUSTER
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(ads_stream, server.target, None, (longest + "a",))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        expected = f"resource_names: a name is longer than {MAX_NAME_LENGTH}"
        assert str(caught.value.details()) == expected
    finally:
        await server.stop(grace=0)


async def test_grpcs_xds_client_authenticates_with_the_bootstrap_certificate(
    tmp_path: Path, backends: Callable[[int], Awaitable[list[Backend]]]
) -> None:
    authority = issue("test-ca", None, ca=True)
    server_pem = pem(issue("control-plane", authority, usage=ExtendedKeyUsageOID.SERVER_AUTH))
    client_pem = pem(issue("gateway-1", authority, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem"
    ca_file.write_bytes(pem(authority).cert)
    cert_file.write_bytes(client_pem.cert)
    key_file.write_bytes(client_pem.key)
    server = await serve(
        0,
        tmp_path / "cp.db",
        xds=True,
        admin_token=ADMIN,
        agent_token=AGENT,
        tls_cert=server_pem.cert,
        tls_key=server_pem.key,
        tls_client_ca=pem(authority).cert,
    )
    (backend,) = await backends(1)
    process = None
    try:
        await asyncio.to_thread(server.store.put_xds_cluster, cluster("accounts", [backend]))
        await server.xds.reload()  # type: ignore[union-attr]
        path = tmp_path / "bootstrap.json"
        path.write_text(
            json.dumps(
                bootstrap(
                    server.target,
                    "gateway-1",
                    caller="gateway",
                    ca_certificate_file=ca_file,
                    certificate_file=cert_file,
                    private_key_file=key_file,
                )
            )
        )
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(path), PYTHONPATH=str(ROOT))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT_SCRIPT),
            "xds:///accounts",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stdin is not None and process.stdout is not None
        command = {"op": "call", "n": 2, "method": "/test.Echo/Who", "wait": True}
        process.stdin.write(json.dumps(command).encode() + b"\n")
        await process.stdin.drain()
        reply = json.loads(await asyncio.wait_for(process.stdout.readline(), DEADLINE))
        assert reply["results"] == ["backend-0", "backend-0"]
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await server.stop(grace=0)


def test_anonymous_xds_needs_xds() -> None:
    with pytest.raises(ConfigError, match="xds_allow_anonymous: needs xds"):
        ServerOptions(xds_allow_anonymous=True)


async def test_allow_anonymous_lets_grpcs_xds_client_in_and_keeps_the_rest_behind_tokens(
    tmp_path: Path, backends: Callable[[int], Awaitable[list[Backend]]]
) -> None:
    server = await serve(
        0,
        tmp_path / "cp.db",
        xds=True,
        xds_allow_anonymous=True,
        admin_token=ADMIN,
        agent_token=AGENT,
    )
    (backend,) = await backends(1)
    client = None
    try:
        admin = (("authorization", f"Bearer {ADMIN}"),)
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = xds_pb2_grpc.XdsAdminStub(channel)
            put = xds_pb2.PutClusterRequest(cluster=cluster("accounts", [backend]))
            await stub.PutCluster(put, metadata=admin)
            # Only the ADS stream opens: the admin and agent RPCs beside it still need tokens.
            calls = (
                stub.PutCluster(put),
                stub.ListClusters(xds_pb2.ListClustersRequest()),
                stub.ListXdsClients(xds_pb2.ListXdsClientsRequest()),
            )
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # A token that is there but wrong is refused: it is a mistake, not an anonymous client.
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(ads_stream, server.target, "wrong")
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "invalid token" in str(caught.value.details())
        assert (await asyncio.to_thread(ads_stream, server.target, None)).type_url == CLUSTER
        # gRPC's own xDS client, from a plain bootstrap without credentials.
        client = await XdsClientProcess.start("xds:///accounts", server, tmp_path, caller="gw")
        reply = await client.ask({"op": "call", "n": 2, "method": "/test.Echo/Who", "wait": True})
        assert reply["results"] == ["backend-0", "backend-0"]
    finally:
        if client is not None:
            await client.close()
        await server.stop(grace=0)
