"""The live views' link to the control plane: channel options, reconnect pace, stream failures.

When the control plane goes away both views say so, keep what they had, and reconnect with capped
exponential backoff and jitter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import grpc

from meshbreaker._backoff import Backoff
from meshbreaker.v1 import control_plane_pb2 as pb

RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 5.0
# Retrying cannot fix these: the view ends with the error instead of looping on it.
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class EventStream(Protocol):
    """What the views use of a WatchEvents call."""

    def initial_metadata(self) -> Any: ...
    def is_active(self) -> bool: ...
    def cancel(self) -> bool: ...
    def __iter__(self) -> Iterator[pb.Event]: ...


def new_backoff() -> Backoff:
    """The reconnect backoff of the live views."""
    return Backoff(RECONNECT_INITIAL, RECONNECT_MAX)


def channel_options(backoff: Backoff) -> list[tuple[str, Any]]:
    """Channel options for a view that outlives restarts (the reconnect pace follows `backoff`)."""
    # While its connection is down the channel fails calls at once until its own next connect
    # attempt (grpc's backoff: up to 120 s by default), so our retries would keep failing long
    # after the control plane is back: it must try at least as often as we do.
    ceiling = min(backoff.maximum, 1.0)
    return [
        ("grpc.initial_reconnect_backoff_ms", max(1, int(min(backoff.initial, ceiling) * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(ceiling * 1000))),
        # A control plane that vanished without closing the connection is found by pings (the
        # server permits one every 5 s).
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def wait_subscribed(call: EventStream) -> bool:
    """Block until the WatchEvents call is subscribed (True) or has already ended (False)."""
    call.initial_metadata()  # the server sends it once the subscription exists
    return call.is_active()


def is_fatal(error: grpc.RpcError | None) -> bool:
    """Whether `error` is one that reconnecting cannot fix (see FATAL_CODES)."""
    return isinstance(error, grpc.Call) and error.code() in FATAL_CODES


def describe(error: grpc.RpcError | None, *, tls: bool | None = None) -> str:
    """One short line for why a stream or call failed.

    When the caller says whether it connected with TLS (`tls`), a failure that TLS on one side
    only explains says so, with the flag that fixes it.
    """
    if error is None:
        return "the event stream ended"
    if not isinstance(error, grpc.Call):
        return " ".join(str(error).split()) or type(error).__name__
    details = " ".join((error.details() or "").split())
    hint = _tls_hint(details, tls) if tls is not None else None
    if hint is not None:
        return hint
    if "failed to connect to all addresses" in details:
        # "...; last error: UNKNOWN: ipv4:127.0.0.1:7070: Failed to connect to remote host:
        # Connection refused" says it all in its last words.
        details = details.rsplit(": ", 1)[-1]
    return f"{error.code().name}: {details}" if details else error.code().name


def _tls_hint(details: str, tls: bool) -> str | None:
    if tls and "WRONG_VERSION_NUMBER" in details:
        return "it does not speak TLS: drop --tls-ca, --tls-cert and --tls-key"
    if tls and "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            "its certificate is not signed by the CA of --tls-ca "
            "(or names another host: --tls-server-name NAME)"
        )
    if not tls and ("Socket closed" in details or "Connection reset" in details):
        return "it closed the connection at once: if it serves TLS, connect with --tls-ca FILE"
    return None


def unavailable_message(target: str, reason: str, delay: float) -> str:
    """What a view says when it lost the control plane and will try again in `delay` s."""
    return f"control plane at {target} unavailable: {reason}; reconnecting in {delay:.1f}s"
