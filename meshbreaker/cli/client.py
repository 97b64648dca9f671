"""The command's connection to the control plane: channel, stub, token and timeout."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from meshbreaker.errors import CliError
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class Client:
    """A channel and stub to the control plane, with the token and timeout of the command line."""

    def __init__(
        self, args: argparse.Namespace, extra_options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self.timeout: float = args.timeout
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {args.token}"),) if args.token else ()
        )
        options: list[tuple[str, Any]] = list(extra_options)
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        if args.tls_ca or args.tls_cert or args.tls_key:
            if bool(args.tls_cert) != bool(args.tls_key):
                raise CliError("--tls-cert and --tls-key must be given together")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(args.tls_ca),
                private_key=_read(args.tls_key),
                certificate_chain=_read(args.tls_cert),
            )
            self.channel = grpc.secure_channel(args.target, credentials, options)
        else:
            self.channel = grpc.insecure_channel(args.target, options)
        self.stub = pb_grpc.ControlPlaneStub(self.channel)

    def call(
        self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request
    ) -> _Response:
        """One unary RPC (a method of `stub`) with the command's timeout and token."""
        return method(request, timeout=self.timeout, metadata=self.metadata)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
