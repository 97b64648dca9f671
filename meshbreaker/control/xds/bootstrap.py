"""gRPC xDS bootstrap files: what a gRPC process reads (GRPC_XDS_BOOTSTRAP) to find this server.

The node's `cluster` names the caller service: the xDS server shapes clusters with the policies
that apply to that caller, as agents of that service get them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from meshbreaker.control.convert import check_caller
from meshbreaker.errors import ConfigError

MAX_NODE_ID_LENGTH = 256


def check_server_address(value: str, path: str = "server") -> str:
    """`value` if it is HOST:PORT ([IPV6]:PORT); else ConfigError."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(path, f"{value[:80]!r} is not HOST:PORT")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            raise ConfigError(path, f"{value[:80]!r}: {host} is not an IPv6 address") from None
    return value


def bootstrap(
    server: str,
    node_id: str,
    *,
    caller: str = "",
    ca_certificate_file: str | Path | None = None,
    certificate_file: str | Path | None = None,
    private_key_file: str | Path | None = None,
) -> dict[str, Any]:
    """A bootstrap for one xDS server; with `ca_certificate_file` it speaks TLS (mutual TLS when
    a certificate and key are given too), else plaintext."""
    check_server_address(server)
    if not node_id or len(node_id) > MAX_NODE_ID_LENGTH or not node_id.isprintable():
        raise ConfigError("node_id", f"must be 1..{MAX_NODE_ID_LENGTH} printable characters")
    check_caller(caller, "caller", required=False)
    if (certificate_file is None) != (private_key_file is None):
        raise ConfigError("private_key_file", "a certificate and its key go together")
    if certificate_file is not None and ca_certificate_file is None:
        raise ConfigError("ca_certificate_file", "mutual TLS needs the server's CA too")
    credentials: dict[str, Any] = {"type": "insecure"}
    if ca_certificate_file is not None:
        config = {"ca_certificate_file": str(Path(ca_certificate_file).resolve())}
        if certificate_file is not None and private_key_file is not None:
            config["certificate_file"] = str(Path(certificate_file).resolve())
            config["private_key_file"] = str(Path(private_key_file).resolve())
        credentials = {"type": "tls", "config": config}
    node: dict[str, Any] = {"id": node_id}
    if caller:
        node["cluster"] = caller
    return {
        "xds_servers": [
            {
                "server_uri": server,
                "channel_creds": [credentials],
                "server_features": ["xds_v3"],
            }
        ],
        "node": node,
    }
