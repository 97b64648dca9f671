"""BreakerConfig: every tunable of a breaker, validated on construction."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshbreaker._names import DEFAULT_FAILURE_CODES, DEFAULT_IGNORED_CODES, GRPC_CODE_NAMES
from meshbreaker._types import Mode, State, WindowType
from meshbreaker.errors import ConfigError

# Re-exported: the vocabulary lives in _types and _names, and configs are written with it.
__all__ = [
    "DEFAULT_FAILURE_CODES",
    "DEFAULT_IGNORED_CODES",
    "GRPC_CODE_NAMES",
    "BreakerConfig",
    "Mode",
    "State",
    "WindowType",
    "check_code_sets",
]


def check_code_sets(
    failure_codes: frozenset[str] | None, ignored_codes: frozenset[str] | None
) -> None:
    """Raise ConfigError if OK is a failure or a code is both failed and ignored (None = unset)."""
    if failure_codes is not None and "OK" in failure_codes:
        raise ConfigError("failure_codes", "OK cannot be a failure")
    if failure_codes is not None and ignored_codes is not None:
        overlap = failure_codes & ignored_codes
        if overlap:
            raise ConfigError("ignored_codes", f"codes both failed and ignored: {sorted(overlap)}")


@dataclass(frozen=True)
class BreakerConfig:
    """How one breaker decides; immutable, validated on construction.

    `minimum_calls` is the number of calls the window must hold before its rates can open the
    breaker. A COUNT window never holds more than `window_size` calls, so there the effective
    minimum is `min(minimum_calls, window_size)`, as in resilience4j (`effective_minimum_calls`).
    `half_open_max_wait` (seconds, 0 = off) sends a breaker that has not decided within that
    time of entering HALF_OPEN back to OPEN, so an unreported probe cannot hold it forever.
    """

    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 0.5
    slow_call_duration: float | None = 5.0
    window_type: WindowType = WindowType.TIME
    window_size: int = 10
    minimum_calls: int = 10
    consecutive_failures: int = 5
    open_duration: float = 60.0
    open_duration_max: float = 60.0
    backoff_multiplier: float = 2.0
    open_jitter: float = 0.0
    half_open_max_calls: int = 10
    half_open_success_threshold: int = 3
    half_open_max_wait: float = 60.0
    max_concurrent_calls: int | None = None
    mode: Mode = Mode.ENFORCE
    failure_codes: frozenset[str] = field(default=DEFAULT_FAILURE_CODES)
    ignored_codes: frozenset[str] = field(default=DEFAULT_IGNORED_CODES)

    def __post_init__(self) -> None:
        _coerce_enum(self, "window_type", WindowType)
        _coerce_enum(self, "mode", Mode)
        _coerce_codes(self, "failure_codes")
        _coerce_codes(self, "ignored_codes")
        _check_rate(self, "failure_rate_threshold")
        _check_rate(self, "slow_call_rate_threshold")
        if self.slow_call_duration is not None:
            _check_positive(self, "slow_call_duration")
        _check_int(self, "window_size", minimum=1)
        if self.window_type is WindowType.TIME and self.window_size > 3600:
            raise ConfigError("window_size", "a time window is at most 3600 seconds")
        if self.window_type is WindowType.COUNT and self.window_size > 1_000_000:
            raise ConfigError("window_size", "a count window is at most 1000000 calls")
        _check_int(self, "minimum_calls", minimum=1)
        _check_int(self, "consecutive_failures", minimum=0)
        _check_positive(self, "open_duration")
        _check_positive(self, "open_duration_max")
        if self.open_duration_max < self.open_duration:
            raise ConfigError("open_duration_max", "must be >= open_duration")
        _check_number(self, "backoff_multiplier")
        if self.backoff_multiplier < 1.0:
            raise ConfigError("backoff_multiplier", "must be >= 1.0")
        _check_number(self, "open_jitter")
        if not 0.0 <= self.open_jitter < 1.0:
            raise ConfigError("open_jitter", "must be in [0, 1)")
        _check_int(self, "half_open_max_calls", minimum=1)
        _check_int(self, "half_open_success_threshold", minimum=1)
        _check_number(self, "half_open_max_wait")
        if self.half_open_max_wait < 0:
            raise ConfigError("half_open_max_wait", "must be >= 0 (0 turns it off)")
        if self.max_concurrent_calls is not None:
            _check_int(self, "max_concurrent_calls", minimum=1)
        check_code_sets(self.failure_codes, self.ignored_codes)

    @property
    def effective_minimum_calls(self) -> int:
        """The calls a window must hold before its rates count (capped by a COUNT window's size)."""
        if self.window_type is WindowType.COUNT:
            return min(self.minimum_calls, self.window_size)
        return self.minimum_calls

    def replace(self, **changes: Any) -> BreakerConfig:
        """A copy with `changes` applied and validated; unknown names raise ConfigError."""
        unknown = set(changes) - _FIELD_NAMES
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown BreakerConfig field")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: enums by value, code sets as sorted lists."""
        out: dict[str, Any] = {}
        for name in _FIELD_ORDER:
            value = getattr(self, name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, frozenset):
                value = sorted(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BreakerConfig:
        """Inverse of to_dict; missing fields take defaults, unknown ones raise ConfigError."""
        unknown = set(data) - _FIELD_NAMES
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown BreakerConfig field")
        return cls(**dict(data))


_FIELD_ORDER: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BreakerConfig))
_FIELD_NAMES: frozenset[str] = frozenset(_FIELD_ORDER)


def _set(config: BreakerConfig, name: str, value: object) -> None:
    object.__setattr__(config, name, value)  # normalising a frozen dataclass in __post_init__


def _coerce_enum(config: BreakerConfig, name: str, kind: type[enum.Enum]) -> None:
    value = getattr(config, name)
    if isinstance(value, kind):
        return
    try:
        _set(config, name, kind(value))
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in kind)
        raise ConfigError(name, f"{value!r} is not one of {allowed}") from None


def _coerce_codes(config: BreakerConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(name, "must be a collection of gRPC code names")
    codes = []
    for code in value:
        if not isinstance(code, str) or code.upper() not in GRPC_CODE_NAMES:
            raise ConfigError(name, f"{code!r} is not a gRPC status code name")
        codes.append(code.upper())
    _set(config, name, frozenset(codes))


def _check_number(config: BreakerConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(name, "must be finite")
    _set(config, name, float(value))


def _check_positive(config: BreakerConfig, name: str) -> None:
    _check_number(config, name)
    if getattr(config, name) <= 0:
        raise ConfigError(name, "must be > 0")


def _check_rate(config: BreakerConfig, name: str) -> None:
    _check_number(config, name)
    if not 0.0 < getattr(config, name) <= 1.0:
        raise ConfigError(name, "must be in (0, 1]")


def _check_int(config: BreakerConfig, name: str, *, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}")
