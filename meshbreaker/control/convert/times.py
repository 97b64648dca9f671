"""Durations and timestamps in control-plane messages, as float seconds."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from meshbreaker.errors import ConfigError

# Timestamps an override may expire at: after 2000-01-01 and before 3000-01-01 (unix seconds).
_EARLIEST_EXPIRY, _LATEST_EXPIRY = 946_684_800.0, 32_503_680_000.0


def duration_seconds(value: Duration, path: str) -> float:
    """A Duration as seconds; ConfigError naming `path` when it is not a valid one."""
    if not -315_576_000_000 <= value.seconds <= 315_576_000_000 or not (
        -999_999_999 <= value.nanos <= 999_999_999
    ):
        raise ConfigError(path, "is not a valid google.protobuf.Duration")
    if (value.seconds > 0 and value.nanos < 0) or (value.seconds < 0 and value.nanos > 0):
        raise ConfigError(path, "is not a valid google.protobuf.Duration (mixed signs)")
    return value.seconds + value.nanos / 1e9


def seconds_to_duration(seconds: float) -> Duration:
    """A google.protobuf.Duration for float seconds (to the nearest nanosecond)."""
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def timestamp_seconds(message: Timestamp, path: str) -> float:
    """A Timestamp an override may expire at, as unix seconds."""
    seconds = message.seconds + message.nanos / 1e9
    if not 0 <= message.nanos < 1_000_000_000 or not (_EARLIEST_EXPIRY <= seconds < _LATEST_EXPIRY):
        raise ConfigError(path, "must be a time between the years 2000 and 3000")
    return seconds


def seconds_to_timestamp(seconds: float) -> Timestamp:
    """Unix seconds as a Timestamp."""
    message = Timestamp()
    message.FromNanoseconds(round(seconds * 1e9))
    return message
