"""Argument types for the command line: each turns text into a value or an ArgumentTypeError."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from meshbreaker.config import GRPC_CODE_NAMES, KINDS, ConcurrencyLimit, Mode, State, WindowType
from meshbreaker.control import convert
from meshbreaker.errors import ConfigError
from meshbreaker.retry import RetryPolicy

# What turns an optional setting off (None) on the command line.
_NONE_WORDS = frozenset({"none", "off", "null", ""})
_FORCED_STATES = {
    "open": State.FORCED_OPEN,
    "forced_open": State.FORCED_OPEN,
    "closed": State.FORCED_CLOSED,
    "forced_closed": State.FORCED_CLOSED,
    "none": None,
    "auto": None,
}


def number(text: str) -> float:
    """A float; a trailing "s" (seconds) is allowed."""
    try:
        return float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def optional_number(text: str) -> float | None:
    """A number, or None for "off"/"none"."""
    return None if text.lower() in _NONE_WORDS else number(text)


def integer(text: str) -> int:
    """An int."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def rate(text: str) -> float:
    """A rate in (0, 1]."""
    value = number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate in (0, 1]")
    return value


def rate_or_zero(text: str) -> float:
    """A fraction in [0, 1]."""
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return value


def seconds(text: str) -> float:
    """A positive number of seconds."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def span(text: str) -> float:
    """A positive length of time: seconds, or a number with s, m, h or d ("90s", "10m", "2h")."""
    unit = _UNITS.get(text[-1:].lower(), 0.0)
    try:
        value = float(text[:-1] if unit else text) * (unit or 1.0)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a length of time (e.g. 90s, 10m, 2h, 1d)"
        ) from None
    return value


def seconds_or_off(text: str) -> float:
    """A non-negative number of seconds; 0 (or "off") turns the setting off."""
    if text.lower() in _NONE_WORDS:
        return 0.0
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative (0 or 'off' turns it off)")
    return value


def optional_seconds(text: str) -> float | None:
    """Seconds, or None for "off"/"none"."""
    return None if text.lower() in _NONE_WORDS else seconds(text)


def count(text: str) -> int:
    """A non-negative int."""
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def optional_count(text: str) -> int | None:
    """A count, or None for "off"/"none"."""
    return None if text.lower() in _NONE_WORDS else count(text)


def status_codes(text: str) -> frozenset[str]:
    """Comma-separated gRPC status code names, upper-cased; "none" for no code at all."""
    if text.strip().lower() == "none":
        return frozenset()
    codes = frozenset(part.strip().upper() for part in text.split(",") if part.strip())
    unknown = sorted(codes - GRPC_CODE_NAMES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown gRPC status code name(s): {', '.join(unknown)}")
    return codes


def window_type(text: str) -> WindowType:
    """'count' or 'time'."""
    try:
        return WindowType(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'count' or 'time'") from None


def mode(text: str) -> Mode:
    """'enforce' or 'shadow'."""
    try:
        return Mode(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'enforce' or 'shadow'") from None


def concurrency_limit(text: str) -> ConcurrencyLimit:
    """'fixed' or 'adaptive'."""
    try:
        return ConcurrencyLimit(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'fixed' or 'adaptive'") from None


def retry_policy(text: str) -> RetryPolicy | None:
    """name=value pairs of a RetryPolicy ("max_attempts=3,retryable_codes=A|B"), or "off"."""
    if text.lower() in _NONE_WORDS:
        return None
    try:
        return RetryPolicy.from_text(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(f"{error.field}: {error.message}") from None


def flag(text: str) -> bool:
    """true/false (also yes/no, on/off, 1/0)."""
    key = text.lower()
    if key in ("true", "yes", "on", "1"):
        return True
    if key in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def state_filter(text: str) -> int:
    """A breaker state name, as the proto BreakerState to filter on."""
    try:
        return convert.state_to_proto(State(text.upper()))
    except ValueError:
        names = ", ".join(state.value for state in State)
        raise argparse.ArgumentTypeError(f"{text!r} is not a state ({names})") from None


def forced_state(text: str) -> State | None:
    """An override: open or closed (forced), or none/auto (None)."""
    key = text.lower()
    if key not in _FORCED_STATES:
        raise argparse.ArgumentTypeError(f"{text!r} is not open, closed or none")
    return _FORCED_STATES[key]


# The parser and the help's metavar for each BreakerConfig FieldSchema.kind: the config flags and
# JSON policy files derive from these, so a new field of a known kind needs nothing here.
KIND_PARSERS: dict[str, Callable[[str], Any]] = {
    "rate": rate,
    "number": number,
    "optional_number": optional_number,
    "seconds": seconds,
    "optional_seconds": optional_seconds,
    "seconds_or_off": seconds_or_off,
    "count": count,
    "optional_count": optional_count,
    "window_type": window_type,
    "mode": mode,
    "codes": status_codes,
    "concurrency_limit": concurrency_limit,
    "retry": retry_policy,
    "flag": flag,
}
KIND_METAVARS: dict[str, str] = {
    "rate": "RATE",
    "number": "NUMBER",
    "optional_number": "NUMBER|off",
    "seconds": "SECONDS",
    "optional_seconds": "SECONDS|off",
    "seconds_or_off": "SECONDS|off",
    "count": "N",
    "optional_count": "N|off",
    "window_type": "count|time",
    "mode": "enforce|shadow",
    "codes": "CODES",
    "concurrency_limit": "fixed|adaptive",
    "retry": "NAME=VALUE,...|off",
    "flag": "true|false",
}
assert set(KIND_PARSERS) == set(KIND_METAVARS) == KINDS, "every FieldSchema kind needs a parser"
