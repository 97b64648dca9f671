"""BreakerConfig: every tunable of a breaker, validated on construction."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshbreaker._names import DEFAULT_FAILURE_CODES, DEFAULT_IGNORED_CODES, GRPC_CODE_NAMES
from meshbreaker._types import ConcurrencyLimit, Mode, State, WindowType
from meshbreaker.errors import ConfigError
from meshbreaker.retry import RetryPolicy
from meshbreaker.throttle import MAX_WINDOW as MAX_THROTTLE_WINDOW

# Re-exported: the vocabulary lives in _types and _names, and configs are written with it.
__all__ = [
    "DEFAULT_FAILURE_CODES",
    "DEFAULT_IGNORED_CODES",
    "GRPC_CODE_NAMES",
    "BreakerConfig",
    "ConcurrencyLimit",
    "Mode",
    "State",
    "WindowType",
    "check_code_sets",
    "check_layer",
    "merge_layers",
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
class FieldSchema:
    """How one BreakerConfig field is spelled outside Python: its proto field, CLI flags and help.

    `kind` says how its values are written (see KINDS); `proto_off` is the proto field that says
    "off" for a field whose None means off, when the proto spells that apart.
    """

    proto: str
    flags: tuple[str, ...]
    kind: str
    help: str
    proto_off: str | None = None


# rate, number: a float; optional_number: a float or None (off; 0 on the wire); seconds: a float
# > 0 (a Duration on the wire); optional_seconds: seconds
# or None (off); seconds_or_off: a float >= 0, 0 = off; count: an int >= 0; optional_count: an int,
# or None (0 on the wire); window_type, mode, concurrency_limit: the enum; codes: a set of gRPC code
# names; retry: a RetryPolicy or None (off); flag: a bool.
KINDS = frozenset(
    {"rate", "number", "optional_number", "seconds", "optional_seconds", "seconds_or_off"}
    | {"count", "optional_count"}
    | {"window_type", "mode", "codes", "concurrency_limit", "retry", "flag"}
)


def _schema(
    proto: str, flags: tuple[str, ...], kind: str, help: str, *, proto_off: str | None = None
) -> dict[str, FieldSchema]:
    """A field's metadata: the one place its proto name, CLI flags and help are written."""
    assert kind in KINDS, kind
    return {"schema": FieldSchema(proto, flags, kind, help, proto_off)}


# The cap's default; a config that leaves it there while opening for longer raises it to that.
_DEFAULT_OPEN_DURATION_MAX = 60.0


@dataclass(frozen=True)
class BreakerConfig:
    """How one breaker decides; immutable, validated on construction.

    `minimum_calls` is the number of calls the window must hold before its rates can open the
    breaker. A COUNT window never holds more than `window_size` calls, so there the effective
    minimum is `min(minimum_calls, window_size)`, as in resilience4j (`effective_minimum_calls`).
    `half_open_max_wait` (seconds, 0 = off) sends a breaker that has not decided within that
    time of entering HALF_OPEN back to OPEN, so an unreported probe cannot hold it forever.
    """

    failure_rate_threshold: float = field(
        default=0.5,
        metadata=_schema(
            "failure_rate_threshold",
            ("--failure-rate", "--failure-rate-threshold"),
            "rate",
            "open when the window's failure rate reaches this (0..1]",
        ),
    )
    slow_call_rate_threshold: float = field(
        default=0.5,
        metadata=_schema(
            "slow_call_rate_threshold",
            ("--slow-call-rate", "--slow-call-rate-threshold"),
            "rate",
            "open when the window's slow-call rate reaches this (0..1]",
        ),
    )
    slow_call_duration: float | None = field(
        default=5.0,
        metadata=_schema(
            "slow_call_duration",
            ("--slow-call-duration",),
            "optional_seconds",
            "seconds from which a call is slow ('off' disables)",
            proto_off="slow_calls_disabled",
        ),
    )
    window_type: WindowType = field(
        default=WindowType.TIME,
        metadata=_schema(
            "window_type",
            ("--window-type",),
            "window_type",
            "'count' (last N calls) or 'time' (last N seconds)",
        ),
    )
    window_size: int = field(
        default=10,
        metadata=_schema(
            "window_size", ("--window-size",), "count", "calls or seconds in the window"
        ),
    )
    minimum_calls: int = field(
        default=10,
        metadata=_schema(
            "minimum_calls", ("--minimum-calls",), "count", "calls in the window before rates count"
        ),
    )
    consecutive_failures: int = field(
        default=5,
        metadata=_schema(
            "consecutive_failures",
            ("--consecutive-failures",),
            "count",
            "failures in a row that open the breaker (0 disables)",
        ),
    )
    open_duration: float = field(
        default=60.0,
        metadata=_schema(
            "open_duration", ("--open-duration",), "seconds", "seconds open before a probe"
        ),
    )
    open_duration_max: float = field(
        default=_DEFAULT_OPEN_DURATION_MAX,
        metadata=_schema(
            "open_duration_max",
            ("--open-duration-max",),
            "seconds",
            "cap of the growing open duration (left at 60 it rises to a longer open duration)",
        ),
    )
    backoff_multiplier: float = field(
        default=2.0,
        metadata=_schema(
            "backoff_multiplier",
            ("--backoff-multiplier",),
            "number",
            "growth of the open duration after a failed probe",
        ),
    )
    open_jitter: float = field(
        default=0.0,
        metadata=_schema(
            "open_jitter", ("--open-jitter",), "number", "spread of the open duration, [0, 1)"
        ),
    )
    half_open_max_calls: int = field(
        default=10,
        metadata=_schema(
            "half_open_max_calls",
            ("--half-open-max-calls",),
            "count",
            "probes in flight at once when half-open",
        ),
    )
    half_open_success_threshold: int = field(
        default=3,
        metadata=_schema(
            "half_open_success_threshold",
            ("--half-open-success-threshold",),
            "count",
            "successful probes that close the breaker",
        ),
    )
    half_open_max_wait: float = field(
        default=60.0,
        metadata=_schema(
            "half_open_max_wait",
            ("--half-open-max-wait",),
            "seconds_or_off",
            "seconds half-open without a decision before opening again ('off' disables)",
        ),
    )
    max_concurrent_calls: int | None = field(
        default=None,
        metadata=_schema(
            "max_concurrent_calls",
            ("--max-concurrent-calls",),
            "optional_count",
            "bulkhead: calls in flight at once ('off' disables)",
        ),
    )
    mode: Mode = field(
        default=Mode.ENFORCE,
        metadata=_schema(
            "mode", ("--mode",), "mode", "'enforce' rejects when open; 'shadow' only reports"
        ),
    )
    failure_codes: frozenset[str] = field(
        default=DEFAULT_FAILURE_CODES,
        metadata=_schema(
            "failure_codes",
            ("--failure-codes",),
            "codes",
            "comma-separated gRPC codes that count as failures",
        ),
    )
    ignored_codes: frozenset[str] = field(
        default=DEFAULT_IGNORED_CODES,
        metadata=_schema(
            "ignored_codes",
            ("--ignored-codes",),
            "codes",
            "comma-separated gRPC codes that are not counted",
        ),
    )

    throttle_k: float | None = field(
        default=None,
        metadata=_schema(
            "throttle_k",
            ("--throttle-k",),
            "optional_number",
            "adaptive throttling: refuse locally when requests exceed K x accepts (2 is the usual"
            " K; 'off' disables)",
        ),
    )
    throttle_window: float = field(
        default=120.0,
        metadata=_schema(
            "throttle_window",
            ("--throttle-window",),
            "seconds",
            "seconds of requests and accepts adaptive throttling looks back over",
        ),
    )

    concurrency_limit: ConcurrencyLimit = field(
        default=ConcurrencyLimit.FIXED,
        metadata=_schema(
            "concurrency_limit",
            ("--concurrency-limit",),
            "concurrency_limit",
            "'fixed' (max_concurrent_calls is the bulkhead) or 'adaptive' (a limit that follows"
            " latency, at most max_concurrent_calls)",
        ),
    )
    retry: RetryPolicy | None = field(
        default=None,
        metadata=_schema(
            "retry",
            ("--retry",),
            "retry",
            "budgeted retries: name=value pairs of RetryPolicy, e.g. 'max_attempts=3,"
            "retryable_codes=UNAVAILABLE' ('off' disables)",
            proto_off="retry_disabled",
        ),
    )
    idempotent: bool = field(
        default=False,
        metadata=_schema(
            "idempotent",
            ("--idempotent",),
            "flag",
            "the method may run twice: retried even after the request may have reached the server",
        ),
    )
    fleet_open_quorum: float | None = field(
        default=None,
        metadata=_schema(
            "fleet_open_quorum",
            ("--fleet-open-quorum",),
            "optional_number",
            "the control plane opens the method on every instance of the caller once this"
            " fraction (0..1] of its live instances have it open ('off' disables); read from"
            " policies",
        ),
    )
    fleet_min_instances: int = field(
        default=3,
        metadata=_schema(
            "fleet_min_instances",
            ("--fleet-min-instances",),
            "count",
            "and once at least this many instances have it open (>= 1)",
        ),
    )

    def __post_init__(self) -> None:
        _coerce_enum(self, "window_type", WindowType)
        _coerce_enum(self, "mode", Mode)
        _coerce_enum(self, "concurrency_limit", ConcurrencyLimit)
        _coerce_retry(self)
        if not isinstance(self.idempotent, bool):
            raise ConfigError("idempotent", f"must be true or false, got {self.idempotent!r}")
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
            if self.open_duration_max != _DEFAULT_OPEN_DURATION_MAX:
                raise ConfigError("open_duration_max", "must be >= open_duration")
            # Left at its default, the cap rises to the open duration: the rule of the CLI and
            # of layered policies too (merge_layers), so BreakerConfig(open_duration=120) works.
            _set(self, "open_duration_max", float(self.open_duration))
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
        if self.throttle_k is not None:
            _check_number(self, "throttle_k")
            if self.throttle_k < 1.0:
                raise ConfigError("throttle_k", "must be >= 1 (2 is usual), or None (off)")
        if self.fleet_open_quorum is not None:
            _check_number(self, "fleet_open_quorum")
            if not 0.0 < self.fleet_open_quorum <= 1.0:
                raise ConfigError("fleet_open_quorum", "must be in (0, 1], or None (off)")
        _check_int(self, "fleet_min_instances", minimum=1)
        _check_positive(self, "throttle_window")
        if not 1.0 <= self.throttle_window <= MAX_THROTTLE_WINDOW:
            raise ConfigError("throttle_window", f"must be in [1, {MAX_THROTTLE_WINDOW:g}] seconds")

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
            elif isinstance(value, RetryPolicy):
                value = value.to_dict()
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

# Field name -> its spellings, in declaration order: what convert, the CLI and JSON derive from.
SCHEMA: Mapping[str, FieldSchema] = {
    f.name: f.metadata["schema"] for f in dataclasses.fields(BreakerConfig)
}

# Some BreakerConfig fields by name, as one policy sets them (a layer of the effective config).
ConfigLayer = Mapping[str, Any]


def merge_layers(base: BreakerConfig, layers: Iterable[ConfigLayer]) -> BreakerConfig:
    """`base` with each layer's fields over it, least specific layer first; validated.

    An open_duration_max that no layer sets rises to the effective open_duration, so a policy
    that only lengthens the open duration never needs to repeat the cap.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer)
    if "open_duration_max" not in values and "open_duration" in values:
        opened = values["open_duration"]
        if isinstance(opened, (int, float)) and not isinstance(opened, bool):
            values["open_duration_max"] = max(base.open_duration_max, opened)
    return base.replace(**values)


def check_layer(values: ConfigLayer) -> dict[str, Any]:
    """Each of `values` validated and normalised; raises ConfigError naming the field.

    A rule between two fields (open_duration_max >= open_duration, no code both failed and
    ignored, the window size for its type) is checked here only when the layer sets both: the
    other may come from another layer, so merge_layers checks the combination.
    """
    checked = dict(values)
    for name, partner in _PARTNERS.items():
        if name in checked and partner[0] not in checked:
            with contextlib.suppress(Exception):  # a bad value is reported below, by its name
                checked[partner[0]] = partner[1](checked[name])
    merged = merge_layers(BreakerConfig(), [checked])
    return {name: getattr(merged, name) for name in _FIELD_ORDER if name in values}


# field -> (the field it is checked against, a value of that one which never conflicts).
_PARTNERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "open_duration_max": ("open_duration", lambda cap: min(cap, BreakerConfig.open_duration)),
    "window_size": (
        "window_type",
        lambda size: WindowType.COUNT if size > 3600 else BreakerConfig.window_type,
    ),
    "failure_codes": ("ignored_codes", lambda codes: frozenset()),
    "ignored_codes": ("failure_codes", lambda codes: frozenset({"UNAVAILABLE"} - set(codes))),
}


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


def _coerce_retry(config: BreakerConfig) -> None:
    value = config.retry
    if value is None or isinstance(value, RetryPolicy):
        return
    if not isinstance(value, Mapping):
        raise ConfigError("retry", "must be a RetryPolicy, a mapping of its fields, or None")
    _set(config, "retry", RetryPolicy.from_values(value))


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
