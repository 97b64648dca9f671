"""TLS and mutual TLS, with a CA and certificates generated in the test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.tls_support import Pem, issue, pem

Start = Callable[..., Awaitable[ControlPlaneServer]]


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    rogue_client: Pem  # signed by another CA


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = issue("meshbreaker test CA", None, ca=True)
    other_ca = issue("rogue CA", None, ca=True)
    return Pki(
        ca=pem(ca),
        server=pem(issue("localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH)),
        client=pem(issue("agent", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)),
        rogue_client=pem(issue("rogue", other_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)),
    )


def _options() -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", "localhost")]


async def _list(channel: grpc.aio.Channel) -> pb.ListPoliciesResponse:
    stub = pb_grpc.ControlPlaneStub(channel)
    return await stub.ListPolicies(pb.ListPoliciesRequest(), timeout=2)


async def _fails(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(channel)
    return caught.value.code()


async def test_tls_from_files(start_control_plane: Start, pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "server.crt").write_bytes(pki.server.cert)
    (tmp_path / "server.key").write_bytes(pki.server.key)
    server = await start_control_plane(
        tls_cert=tmp_path / "server.crt", tls_key=str(tmp_path / "server.key")
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
    async with grpc.aio.secure_channel(server.target, credentials, _options()) as channel:
        assert (await _list(channel)).revision == 0
    # A plaintext client cannot talk to a TLS server.
    async with grpc.aio.insecure_channel(server.target) as channel:
        assert await _fails(channel) == grpc.StatusCode.UNAVAILABLE
    # Nor can a client that does not trust the server's CA.
    untrusted = grpc.ssl_channel_credentials(root_certificates=pki.rogue_client.cert)
    async with grpc.aio.secure_channel(server.target, untrusted, _options()) as channel:
        assert await _fails(channel) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(start_control_plane: Start, pki: Pki) -> None:
    server = await start_control_plane(
        tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert
    )
    good = grpc.ssl_channel_credentials(pki.ca.cert, pki.client.key, pki.client.cert)
    async with grpc.aio.secure_channel(server.target, good, _options()) as channel:
        assert (await _list(channel)).revision == 0
    no_cert = grpc.ssl_channel_credentials(pki.ca.cert)
    async with grpc.aio.secure_channel(server.target, no_cert, _options()) as channel:
        assert await _fails(channel) == grpc.StatusCode.UNAVAILABLE
    rogue = grpc.ssl_channel_credentials(pki.ca.cert, pki.rogue_client.key, pki.rogue_client.cert)
    async with grpc.aio.secure_channel(server.target, rogue, _options()) as channel:
        assert await _fails(channel) == grpc.StatusCode.UNAVAILABLE


async def test_tls_with_tokens(start_control_plane: Start, pki: Pki) -> None:
    server = await start_control_plane(
        tls_cert=pki.server.cert, tls_key=pki.server.key, admin_token="admin-token"
    )
    call_credentials = grpc.access_token_call_credentials("admin-token")
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(pki.ca.cert), call_credentials
    )
    async with grpc.aio.secure_channel(server.target, credentials, _options()) as channel:
        assert (await _list(channel)).revision == 0
    anonymous = grpc.ssl_channel_credentials(pki.ca.cert)
    async with grpc.aio.secure_channel(server.target, anonymous, _options()) as channel:
        assert await _fails(channel) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"tls_cert": b"cert"}, "tls_key"),
        ({"tls_key": b"key"}, "tls_key"),
        ({"tls_client_ca": b"ca"}, "tls_client_ca"),
        ({"tls_cert": "/nonexistent/cert.pem", "tls_key": b"k"}, "tls_cert"),
        ({"tls_cert": b"not a pem", "tls_key": b"not a pem"}, "tls_cert"),
    ],
)
async def test_bad_tls_options(
    start_control_plane: Start, options: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        await start_control_plane(**options)
    assert caught.value.field == field


async def test_a_client_certificate_must_name_the_service_it_speaks_for(
    start_control_plane: Start, pki: Pki
) -> None:
    ca = issue("meshbreaker SAN CA", None, ca=True)
    server_pem = pem(issue("localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH))
    gateway = pem(
        issue(
            "gateway-agent",
            ca,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            uris=("spiffe://bank.example/ns/prod/sa/gateway",),
        )
    )
    server = await start_control_plane(
        tls_cert=server_pem.cert,
        tls_key=server_pem.key,
        tls_client_ca=pem(ca).cert,
        tls_client_names_service=True,
    )
    credentials = grpc.ssl_channel_credentials(pem(ca).cert, gateway.key, gateway.cert)
    async with grpc.aio.secure_channel(server.target, credentials, _options()) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        assert (await stub.GetConfig(pb.GetConfigRequest(service="gateway"))).service == "gateway"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportState(
                pb.ReportStateRequest(instance_id="tx-1", service="transaction"), timeout=2
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "does not name 'transaction'" in (caught.value.details() or "")
