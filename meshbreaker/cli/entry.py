"""The entry point: parse, run the command's handler, turn errors into one line and a status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import grpc

from meshbreaker.cli.parser import build_parser
from meshbreaker.errors import MeshbreakerError
from meshbreaker.live.connection import describe
from meshbreaker.live.terminal import say


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv` (default sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except grpc.RpcError as error:
        _error(_rpc_message(args, error))
    except MeshbreakerError as error:  # bad input or an unusable store: the user's to fix
        _error(str(error))
    except OSError as error:
        _error(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
    return 1


def _error(message: str) -> None:
    say(sys.stderr, f"error: {' '.join(message.split())}")


def _rpc_message(args: argparse.Namespace, error: grpc.RpcError) -> str:
    """A failed RPC in the user's terms: which control plane could not be reached, and why."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    name = code.name if code is not None else "ERROR"
    if code is grpc.StatusCode.UNAVAILABLE:
        tls = bool(args.tls_ca or args.tls_cert)
        return f"cannot reach the control plane at {args.target}: {describe(error, tls=tls)}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from the control plane at {args.target} within {args.timeout}s"
    return f"{name}: {details}"
