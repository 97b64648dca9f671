"""The live views' link to the control plane: channel options, reconnect pace, stream failures.

When the control plane goes away both views say so, keep what they had, and reconnect with capped
exponential backoff and jitter.
"""

from __future__ import annotations

import os
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


def quiet_grpc_logs() -> None:
    """Keep grpc core's info lines (e.g. "Got goaway" on a restart) off the user's terminal."""
    # Read when grpc core starts, i.e. at the first channel; a value the user set wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def wait_subscribed(call: EventStream) -> bool:
    """Block until the WatchEvents call is subscribed (True) or has already ended (False)."""
    call.initial_metadata()  # the server sends it once the subscription exists
    return call.is_active()


def is_fatal(error: grpc.RpcError | None) -> bool:
    """Whether `error` is one that reconnecting cannot fix (see FATAL_CODES)."""
    return isinstance(error, grpc.Call) and error.code() in FATAL_CODES


def describe(error: grpc.RpcError | None) -> str:
    """One short line for why a stream or call failed."""
    if error is None:
        return "the event stream ended"
    if not isinstance(error, grpc.Call):
        return " ".join(str(error).split()) or type(error).__name__
    details = " ".join((error.details() or "").split())
    if "failed to connect to all addresses" in details:
        # "...; last error: UNKNOWN: ipv4:127.0.0.1:7070: Failed to connect to remote host:
        # Connection refused" says it all in its last words.
        details = details.rsplit(": ", 1)[-1]
    return f"{error.code().name}: {details}" if details else error.code().name


def unavailable_message(target: str, reason: str, delay: float) -> str:
    """What a view says when it lost the control plane and will try again in `delay` s."""
    return f"control plane at {target} unavailable: {reason}; reconnecting in {delay:.1f}s"
