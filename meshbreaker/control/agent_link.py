"""What an agent knows of its link to the control plane: its status, its token, RPC errors."""

from __future__ import annotations

import enum
import logging
import os
from pathlib import Path

import grpc

logger = logging.getLogger("meshbreaker.control.agent")


class AgentStatus(str, enum.Enum):
    """What an agent can say about its link to the control plane."""

    CONNECTING = "connecting"  # started, no answer yet
    CONNECTED = "connected"  # the watch stream delivers
    DENIED = "denied"  # the control plane refuses this agent's credentials
    UNREACHABLE = "unreachable"  # no control plane answers, and no policies of one are in force
    STALE = "stale"  # no control plane answers; the last policies applied stay in force


AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class AgentToken:
    """The agent's bearer token: given, or read from a file (again after each refusal)."""

    def __init__(self, token: str | None, token_file: str | os.PathLike[str] | None) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        self._token = token
        self._file = Path(token_file) if token_file is not None else None

    @property
    def source(self) -> str:
        """Where the token comes from, for messages about it (never the token itself)."""
        if self._file is not None:
            return f"token file {self._file}"
        if self._token is not None:
            return "the token given to MeshAgent(token=...)"
        return "no token configured"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token (a token file is read now)."""
        token = self._token
        if self._file is not None:
            try:
                token = self._file.read_text(encoding="utf-8").strip()
            except OSError as error:
                logger.warning(
                    "meshbreaker agent: cannot read token file %s: %s", self._file, error
                )
                token = None
        return (("authorization", f"Bearer {token}"),) if token else ()


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    status = code() if callable(code) else None
    return status if isinstance(status, grpc.StatusCode) else None


def describe(error: grpc.RpcError) -> str:
    """'CODE: details' on one line for a grpc.RpcError (sync or aio)."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    status = code() if callable(code) else None
    text = details() if callable(details) else str(error)
    name = status.name if isinstance(status, grpc.StatusCode) else "ERROR"
    return f"{name}: {' '.join((text or '').split())}"
