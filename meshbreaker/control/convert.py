"""Conversions between meshbreaker.v1 protos and the engine's types, with validation.

Every validation error is a ConfigError whose `field` is the proto field path, e.g.
"policy.config.failure_rate_threshold", so the server can answer INVALID_ARGUMENT naming it and the
agent can NACK with it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

# The name checks are _names'; re-exported for the server's request checks.
from meshbreaker._names import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from meshbreaker._names import check_method as check_method
from meshbreaker._names import check_method_selector, check_service_selector, method_service
from meshbreaker._names import check_service as check_service
from meshbreaker.breaker import BreakerSnapshot, CircuitBreaker
from meshbreaker.config import (
    KINDS,
    SCHEMA,
    BreakerConfig,
    ConcurrencyLimit,
    ConfigLayer,
    FieldSchema,
    Mode,
    State,
    WindowType,
    check_layer,
    merge_layers,
)
from meshbreaker.errors import ConfigError
from meshbreaker.histogram import MAX_BUCKETS, HistogramSnapshot
from meshbreaker.retry import RetryPolicy
from meshbreaker.v1 import control_plane_pb2 as pb

MAX_CODES = 32
MAX_DESCRIPTION_LENGTH = 1024
MAX_REASON_LENGTH = 256
MAX_PROBERS = 64
# Timestamps an override may expire at: after 2000-01-01 and before 3000-01-01 (unix seconds).
_EARLIEST_EXPIRY, _LATEST_EXPIRY = 946_684_800.0, 32_503_680_000.0
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CALLER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

_WINDOW_FROM_PROTO: dict[int, WindowType | None] = {
    pb.WINDOW_TYPE_UNSPECIFIED: None,
    pb.WINDOW_TYPE_COUNT: WindowType.COUNT,
    pb.WINDOW_TYPE_TIME: WindowType.TIME,
}
_WINDOW_TO_PROTO = {WindowType.COUNT: pb.WINDOW_TYPE_COUNT, WindowType.TIME: pb.WINDOW_TYPE_TIME}
_MODE_FROM_PROTO: dict[int, Mode | None] = {
    pb.MODE_UNSPECIFIED: None,
    pb.MODE_ENFORCE: Mode.ENFORCE,
    pb.MODE_SHADOW: Mode.SHADOW,
}
_MODE_TO_PROTO = {Mode.ENFORCE: pb.MODE_ENFORCE, Mode.SHADOW: pb.MODE_SHADOW}
_LIMIT_FROM_PROTO: dict[int, ConcurrencyLimit | None] = {
    pb.CONCURRENCY_LIMIT_UNSPECIFIED: None,
    pb.CONCURRENCY_LIMIT_FIXED: ConcurrencyLimit.FIXED,
    pb.CONCURRENCY_LIMIT_ADAPTIVE: ConcurrencyLimit.ADAPTIVE,
}
_LIMIT_TO_PROTO = {
    ConcurrencyLimit.FIXED: pb.CONCURRENCY_LIMIT_FIXED,
    ConcurrencyLimit.ADAPTIVE: pb.CONCURRENCY_LIMIT_ADAPTIVE,
}
# RetryPolicy fields by how they are written in the RetryPolicy message.
_RETRY_SECONDS = ("initial_backoff", "max_backoff", "budget_ttl")
_RETRY_SCALARS = ("max_attempts", "multiplier", "budget_ratio", "budget_min_per_second")
_OVERRIDE_FROM_PROTO: dict[int, State | None] = {
    pb.OVERRIDE_NONE: None,
    pb.OVERRIDE_FORCED_OPEN: State.FORCED_OPEN,
    pb.OVERRIDE_FORCED_CLOSED: State.FORCED_CLOSED,
}
_OVERRIDE_TO_PROTO = {
    None: pb.OVERRIDE_NONE,
    State.FORCED_OPEN: pb.OVERRIDE_FORCED_OPEN,
    State.FORCED_CLOSED: pb.OVERRIDE_FORCED_CLOSED,
}
_STATE_TO_PROTO = {
    State.CLOSED: pb.BREAKER_STATE_CLOSED,
    State.OPEN: pb.BREAKER_STATE_OPEN,
    State.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
    State.FORCED_OPEN: pb.BREAKER_STATE_FORCED_OPEN,
    State.FORCED_CLOSED: pb.BREAKER_STATE_FORCED_CLOSED,
}
_STATE_FROM_PROTO: dict[int, State] = {value: key for key, value in _STATE_TO_PROTO.items()}


@dataclass(frozen=True)
class Selector:
    """Which calls a policy applies to; empty strings match everything."""

    caller: str = ""
    service: str = ""
    method: str = ""

    @property
    def registry_selector(self) -> str:
        """The key for BreakerRegistry policies: "/pkg.Svc/Method", "pkg.Svc", or "" for all."""
        return self.method or self.service

    def applies_to(self, caller: str) -> bool:
        """Whether this selector covers calls made by `caller`."""
        return not self.caller or self.caller == caller


@dataclass(frozen=True)
class FleetSpec:
    """A validated FleetDecision: who probes this open period, and from when (unix seconds)."""

    probers: frozenset[str]
    open_until: float
    period: int
    decided_at: float


@dataclass(frozen=True)
class CanarySpec:
    """A validated Canary: on which share of the instances, what they run, when to roll back."""

    percent: float
    config: ConfigLayer | None
    max_rejection_margin: float | None = None


@dataclass(frozen=True)
class PolicySpec:
    """A validated Policy: selector, the config fields it sets (a layer), optional override.

    `override_expires_at` (unix seconds, None = never) bounds the override; `fleet` marks it a
    fleet decision.
    """

    id: str
    selector: Selector
    config: ConfigLayer | None = None
    override: State | None = None
    description: str = ""
    override_expires_at: float | None = None
    override_reason: str = ""
    fleet: FleetSpec | None = None
    canary: CanarySpec | None = None

    def override_at(self, now: float | None) -> State | None:
        """The override in force at unix time `now` (None = whatever the time)."""
        expires = self.override_expires_at
        if now is not None and expires is not None and now >= expires:
            return None
        return self.override

    @property
    def layer_name(self) -> str:
        """Where this policy sits among the layers, for `policy explain`."""
        selector = self.selector
        scope = (
            f"method {selector.method}"
            if selector.method
            else f"service {selector.service}"
            if selector.service
            else "mesh default"
        )
        return f"{scope} (policy {self.id})"


# ---------------------------------------------------------------------------------------------
# Names


def check_policy_id(value: str, path: str = "policy.id") -> str:
    """Validate a policy id; raises ConfigError naming `path`."""
    if not value:
        raise ConfigError(path, "must not be empty")
    if not _ID_RE.fullmatch(value):
        raise ConfigError(
            path, f"{value!r} must be 1..128 of [A-Za-z0-9._-], starting with a letter or digit"
        )
    return value


def check_caller(value: str, path: str, *, required: bool) -> str:
    """Validate a caller (mesh) service name like "transaction"; empty allowed unless required."""
    if not value:
        if required:
            raise ConfigError(path, "must not be empty")
        return value
    if not _CALLER_RE.fullmatch(value):
        raise ConfigError(
            path, f"{value!r} must be 1..128 of [A-Za-z0-9._:-], starting with a letter or digit"
        )
    return value


# ---------------------------------------------------------------------------------------------
# Selector, config, policy


def selector_from_proto(message: pb.Selector, path: str = "policy.selector") -> Selector:
    """Validate a Selector message; the method must belong to the service when both are set."""
    caller = check_caller(message.caller, f"{path}.caller", required=False)
    service = check_service_selector(message.service, f"{path}.service")
    method = check_method_selector(message.method, f"{path}.method")
    if service and method and method_service(method) != service:
        raise ConfigError(f"{path}.method", f"{method!r} is not a method of service {service!r}")
    return Selector(caller, service, method)


def selector_to_proto(selector: Selector) -> pb.Selector:
    """The Selector message for `selector`."""
    return pb.Selector(caller=selector.caller, service=selector.service, method=selector.method)


def _has(message: Message, name: str) -> bool:
    """HasField for a field name held in a variable (the typed stubs only take literals)."""
    return message.HasField(name)


def duration_seconds(value: Duration, path: str) -> float:
    """A Duration as seconds; ConfigError naming `path` when it is not a valid one."""
    if not -315_576_000_000 <= value.seconds <= 315_576_000_000 or not (
        -999_999_999 <= value.nanos <= 999_999_999
    ):
        raise ConfigError(path, "is not a valid google.protobuf.Duration")
    if (value.seconds > 0 and value.nanos < 0) or (value.seconds < 0 and value.nanos > 0):
        raise ConfigError(path, "is not a valid google.protobuf.Duration (mixed signs)")
    return value.seconds + value.nanos / 1e9


def layer_from_proto(message: pb.BreakerConfig, path: str = "policy.config") -> dict[str, Any]:
    """The config fields `message` sets, validated; ConfigError names the proto field path."""
    values: dict[str, Any] = {}
    for name, schema in SCHEMA.items():
        value = _DECODERS[schema.kind](message, schema, f"{path}.{schema.proto}")
        if value is not _UNSET:
            values[name] = value
    try:
        return check_layer(values)
    except ConfigError as error:
        raise ConfigError(f"{path}.{_proto_name(error.field)}", error.message) from None


def layer_to_proto(layer: ConfigLayer) -> pb.BreakerConfig:
    """The BreakerConfig message that sets exactly the fields of `layer` (validated values)."""
    message = pb.BreakerConfig()
    for name, value in layer.items():
        schema = SCHEMA[name]
        _ENCODERS[schema.kind](message, schema, value)
    return message


def config_from_proto(message: pb.BreakerConfig, path: str = "policy.config") -> BreakerConfig:
    """A validated BreakerConfig: the fields `message` sets over the defaults."""
    layer = layer_from_proto(message, path)
    try:
        return merge_layers(BreakerConfig(), [layer])
    except ConfigError as error:
        raise ConfigError(f"{path}.{_proto_name(error.field)}", error.message) from None


def config_to_proto(config: BreakerConfig) -> pb.BreakerConfig:
    """The BreakerConfig message with every field set explicitly."""
    return layer_to_proto({name: getattr(config, name) for name in SCHEMA})


def seconds_to_duration(seconds: float) -> Duration:
    """A google.protobuf.Duration for float seconds (to the nearest nanosecond)."""
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _mode_from_proto(mode: int, path: str) -> Mode:
    found = _MODE_FROM_PROTO.get(mode)
    if found is None:
        raise ConfigError(path, f"unknown Mode value {mode}")
    return found


def _proto_name(field_name: str) -> str:
    schema = SCHEMA.get(field_name)
    return schema.proto if schema is not None else field_name


# One decoder and one encoder per FieldSchema.kind: adding a config field of a known kind needs
# nothing here. A decoder returns _UNSET for a field the message does not set.
_UNSET: Any = object()
_Decoder = Callable[[Message, FieldSchema, str], Any]
_Encoder = Callable[[Message, FieldSchema, Any], None]


def _decode_scalar(message: Message, schema: FieldSchema, path: str) -> Any:
    return getattr(message, schema.proto) if _has(message, schema.proto) else _UNSET


def _decode_optional_count(message: Message, schema: FieldSchema, path: str) -> Any:
    value = _decode_scalar(message, schema, path)
    return None if value == 0 else value


def _decode_seconds(message: Message, schema: FieldSchema, path: str) -> Any:
    if not _has(message, schema.proto):
        return _UNSET
    return duration_seconds(getattr(message, schema.proto), path)


def _decode_optional_seconds(message: Message, schema: FieldSchema, path: str) -> Any:
    assert schema.proto_off is not None
    if getattr(message, schema.proto_off):
        if _has(message, schema.proto):
            off_path = path.rsplit(".", 1)[0] + "." + schema.proto_off
            raise ConfigError(off_path, f"cannot be set together with {schema.proto}")
        return None
    return _decode_seconds(message, schema, path)


def _enum_decoder(table: Mapping[int, Any], kind: str) -> _Decoder:
    def decode(message: Message, schema: FieldSchema, path: str) -> Any:
        if not _has(message, schema.proto):
            return _UNSET
        value = getattr(message, schema.proto)
        if table.get(value) is None:
            raise ConfigError(path, f"unknown or unspecified {kind} value {value}")
        return table[value]

    return decode


def _decode_codes(message: Message, schema: FieldSchema, path: str) -> Any:
    if not _has(message, schema.proto):
        return _UNSET
    codes = list(getattr(message, schema.proto).codes)
    if len(codes) > MAX_CODES:
        raise ConfigError(path, f"at most {MAX_CODES} codes")
    return codes


def _decode_retry(message: Message, schema: FieldSchema, path: str) -> Any:
    assert schema.proto_off is not None
    if getattr(message, schema.proto_off):
        if _has(message, schema.proto):
            off_path = path.rsplit(".", 1)[0] + "." + schema.proto_off
            raise ConfigError(off_path, f"cannot be set together with {schema.proto}")
        return None
    if not _has(message, schema.proto):
        return _UNSET
    policy: pb.RetryPolicy = getattr(message, schema.proto)
    values: dict[str, Any] = {}
    for name in _RETRY_SCALARS:
        if _has(policy, name):
            values[name] = getattr(policy, name)
    for name in _RETRY_SECONDS:
        if _has(policy, name):
            values[name] = duration_seconds(getattr(policy, name), f"{path}.{name}")
    if policy.HasField("retryable_codes"):
        codes = list(policy.retryable_codes.codes)
        if len(codes) > MAX_CODES:
            raise ConfigError(f"{path}.retryable_codes", f"at most {MAX_CODES} codes")
        values["retryable_codes"] = frozenset(codes)
    try:
        return RetryPolicy.from_values(values)
    except ConfigError as error:  # "retry.<name>" -> the proto path
        raise ConfigError(f"{path}.{error.field.removeprefix('retry.')}", error.message) from None


def _encode_scalar(message: Message, schema: FieldSchema, value: Any) -> None:
    setattr(message, schema.proto, value)


def _encode_optional_count(message: Message, schema: FieldSchema, value: Any) -> None:
    setattr(message, schema.proto, 0 if value is None else value)


def _encode_seconds(message: Message, schema: FieldSchema, value: Any) -> None:
    getattr(message, schema.proto).CopyFrom(seconds_to_duration(value))


def _encode_optional_seconds(message: Message, schema: FieldSchema, value: Any) -> None:
    if value is None:
        assert schema.proto_off is not None
        setattr(message, schema.proto_off, True)
    else:
        _encode_seconds(message, schema, value)


def _encode_retry(message: Message, schema: FieldSchema, value: Any) -> None:
    if value is None:
        assert schema.proto_off is not None
        setattr(message, schema.proto_off, True)
        return
    policy: pb.RetryPolicy = getattr(message, schema.proto)
    for name in _RETRY_SCALARS:
        setattr(policy, name, getattr(value, name))
    for name in _RETRY_SECONDS:
        getattr(policy, name).CopyFrom(seconds_to_duration(getattr(value, name)))
    policy.retryable_codes.CopyFrom(pb.CodeList(codes=sorted(value.retryable_codes)))


def _enum_encoder(table: Mapping[Any, int]) -> _Encoder:
    def encode(message: Message, schema: FieldSchema, value: Any) -> None:
        setattr(message, schema.proto, table[value])

    return encode


def _encode_codes(message: Message, schema: FieldSchema, value: Any) -> None:
    getattr(message, schema.proto).CopyFrom(pb.CodeList(codes=sorted(value)))


_DECODERS: dict[str, _Decoder] = {
    "rate": _decode_scalar,
    "number": _decode_scalar,
    "optional_number": _decode_optional_count,  # 0 = off, as for counts
    "count": _decode_scalar,
    "optional_count": _decode_optional_count,
    "seconds": _decode_seconds,
    "optional_seconds": _decode_optional_seconds,
    "seconds_or_off": _decode_seconds,
    "window_type": _enum_decoder(_WINDOW_FROM_PROTO, "WindowType"),
    "mode": _enum_decoder(_MODE_FROM_PROTO, "Mode"),
    "codes": _decode_codes,
    "concurrency_limit": _enum_decoder(_LIMIT_FROM_PROTO, "ConcurrencyLimit"),
    "retry": _decode_retry,
    "flag": _decode_scalar,
}
_ENCODERS: dict[str, _Encoder] = {
    "rate": _encode_scalar,
    "number": _encode_scalar,
    "optional_number": _encode_optional_count,
    "count": _encode_scalar,
    "optional_count": _encode_optional_count,
    "seconds": _encode_seconds,
    "optional_seconds": _encode_optional_seconds,
    "seconds_or_off": _encode_seconds,
    "window_type": _enum_encoder(_WINDOW_TO_PROTO),
    "mode": _enum_encoder(_MODE_TO_PROTO),
    "codes": _encode_codes,
    "concurrency_limit": _enum_encoder(_LIMIT_TO_PROTO),
    "retry": _encode_retry,
    "flag": _encode_scalar,
}
assert set(_DECODERS) == set(_ENCODERS) == KINDS, "every FieldSchema kind needs a codec"


def policy_from_proto(message: pb.Policy, path: str = "policy") -> PolicySpec:
    """Validate a Policy message (output-only fields are ignored)."""
    policy_id = check_policy_id(message.id, f"{path}.id")
    selector = selector_from_proto(message.selector, f"{path}.selector")
    config: ConfigLayer | None = None
    if message.HasField("config"):
        layer = layer_from_proto(message.config, f"{path}.config")
        if "mode" not in layer and message.mode != pb.MODE_UNSPECIFIED:
            layer["mode"] = _mode_from_proto(message.mode, f"{path}.mode")  # older clients
        config = MappingProxyType(layer)
    elif message.mode != pb.MODE_UNSPECIFIED:
        raise ConfigError(
            f"{path}.mode", "needs a config (an empty config means every default applies)"
        )
    override = override_from_proto(message.override, f"{path}.override")
    if override is not None and not selector.registry_selector:
        raise ConfigError(f"{path}.override", "needs a selector with a service or a method")
    if len(message.description) > MAX_DESCRIPTION_LENGTH:
        raise ConfigError(f"{path}.description", f"at most {MAX_DESCRIPTION_LENGTH} characters")
    expires_at = None
    if message.HasField("override_expires_at"):
        if override is None:
            raise ConfigError(f"{path}.override_expires_at", "needs an override")
        expires_at = timestamp_seconds(message.override_expires_at, f"{path}.override_expires_at")
    reason = check_reason(message.override_reason, f"{path}.override_reason")
    fleet = None
    if message.HasField("fleet"):
        fleet = _fleet_from_proto(message, f"{path}.fleet")
    canary = (
        _canary_from_proto(message.canary, f"{path}.canary") if message.HasField("canary") else None
    )
    return PolicySpec(
        policy_id, selector, config, override, message.description, expires_at, reason, fleet,
        canary,
    )  # fmt: skip


def _canary_from_proto(message: pb.Canary, path: str) -> CanarySpec:
    if not 0 < message.percent < 100:
        raise ConfigError(f"{path}.percent", "must be between 0 and 100 (exclusive)")
    config = None
    if message.HasField("config"):
        config = MappingProxyType(layer_from_proto(message.config, f"{path}.config"))
    margin = None
    if message.HasField("max_rejection_margin"):
        margin = message.max_rejection_margin
        if not 0 <= margin <= 1:
            raise ConfigError(f"{path}.max_rejection_margin", "must be in [0, 1]")
    return CanarySpec(message.percent, config, margin)


def check_reason(reason: str, path: str) -> str:
    """An override's reason: at most MAX_REASON_LENGTH printable characters."""
    if len(reason) > MAX_REASON_LENGTH:
        raise ConfigError(path, f"at most {MAX_REASON_LENGTH} characters")
    if not reason.isprintable():
        raise ConfigError(path, "must be printable text (no control characters)")
    return reason


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


def _fleet_from_proto(message: pb.Policy, path: str) -> FleetSpec:
    fleet = message.fleet
    if message.override != pb.OVERRIDE_FORCED_OPEN or not message.HasField("override_expires_at"):
        raise ConfigError(path, "needs override FORCED_OPEN with override_expires_at")
    if not message.selector.caller or not message.selector.method:
        raise ConfigError(path, "needs a selector with a caller and a method")
    if len(fleet.probers) > MAX_PROBERS:
        raise ConfigError(f"{path}.probers", f"at most {MAX_PROBERS}")
    for index, prober in enumerate(fleet.probers):
        if not 0 < len(prober) <= MAX_NAME_LENGTH or not prober.isprintable():
            raise ConfigError(f"{path}.probers[{index}]", "must be an instance id")
    if fleet.period < 1:
        raise ConfigError(f"{path}.period", "must be >= 1")
    return FleetSpec(
        frozenset(fleet.probers),
        timestamp_seconds(fleet.open_until, f"{path}.open_until"),
        fleet.period,
        timestamp_seconds(fleet.decided_at, f"{path}.decided_at"),
    )


def policy_to_proto(spec: PolicySpec) -> pb.Policy:
    """The Policy message for `spec` (output-only fields unset)."""
    message = pb.Policy(
        id=spec.id,
        selector=selector_to_proto(spec.selector),
        override=_OVERRIDE_TO_PROTO[spec.override],
        description=spec.description,
        override_reason=spec.override_reason,
    )
    if spec.config is not None:
        message.config.CopyFrom(layer_to_proto(spec.config))
    if spec.override_expires_at is not None:
        message.override_expires_at.CopyFrom(seconds_to_timestamp(spec.override_expires_at))
    fleet = spec.fleet
    if fleet is not None:
        message.fleet.CopyFrom(
            pb.FleetDecision(
                probers=sorted(fleet.probers),
                open_until=seconds_to_timestamp(fleet.open_until),
                period=fleet.period,
                decided_at=seconds_to_timestamp(fleet.decided_at),
            )
        )
    return message


def override_from_proto(value: int, path: str = "override") -> State | None:
    """FORCED_OPEN / FORCED_CLOSED / None (automatic) for a pb.Override value."""
    if value not in _OVERRIDE_FROM_PROTO:
        raise ConfigError(path, f"unknown Override value {value}")
    return _OVERRIDE_FROM_PROTO[value]


def override_to_proto(state: State | None) -> pb.Override.ValueType:
    """The pb.Override value for FORCED_OPEN / FORCED_CLOSED / None."""
    if state not in _OVERRIDE_TO_PROTO:
        raise ConfigError("override", f"{state} is not an override state")
    return _OVERRIDE_TO_PROTO[state]


# ---------------------------------------------------------------------------------------------
# Filtering (the server's; the agent resolves with meshbreaker.control.layers)


def applicable(caller: str, policies: Iterable[pb.Policy]) -> list[pb.Policy]:
    """The policies whose selector covers calls made by `caller`, sorted by id."""
    return sorted(
        (p for p in policies if not p.selector.caller or p.selector.caller == caller),
        key=lambda p: p.id,
    )


# ---------------------------------------------------------------------------------------------
# States and snapshots


def state_to_proto(state: State) -> pb.BreakerState.ValueType:
    """The pb.BreakerState value for an engine State."""
    return _STATE_TO_PROTO[state]


def state_from_proto(value: int) -> State | None:
    """The engine State for a pb.BreakerState value (None for UNSPECIFIED or unknown)."""
    return _STATE_FROM_PROTO.get(value)


def snapshot_to_proto(
    snapshot: BreakerSnapshot,
    now: float,
    transitions: Mapping[tuple[State, State], int] | None = None,
    histogram: HistogramSnapshot | None = None,
) -> pb.BreakerSnapshot:
    """The report message for a breaker snapshot; `now` is the breaker clock's current reading.

    `transitions` and `histogram` are what the breaker's observe() returns with the snapshot.
    """
    message = pb.BreakerSnapshot(
        name=snapshot.name,
        state=_STATE_TO_PROTO[snapshot.state],
        total=snapshot.total,
        successful=snapshot.successful,
        failed=snapshot.failed,
        ignored=snapshot.ignored,
        slow=snapshot.slow,
        rejected=snapshot.rejected,
        shadow_rejected=snapshot.shadow_rejected,
        failure_rate=snapshot.failure_rate,
        slow_call_rate=snapshot.slow_call_rate,
        window_calls=snapshot.window_calls,
        mean_duration=snapshot.mean_duration,
        consecutive_failures=snapshot.consecutive_failures,
        state_age=max(0.0, now - snapshot.state_since),
        times_opened=snapshot.times_opened,
        half_open_in_flight=snapshot.half_open_in_flight,
        half_open_successes=snapshot.half_open_successes,
        throttled=snapshot.throttled,
        throttle_probability=snapshot.throttle_probability,
    )
    if snapshot.concurrency_limit is not None:
        message.concurrency_limit = snapshot.concurrency_limit
    if snapshot.open_until is not None:
        message.open_remaining = max(0.0, snapshot.open_until - now)
    if transitions:
        message.transitions.extend(
            pb.TransitionCount(
                from_state=_STATE_TO_PROTO[old], to_state=_STATE_TO_PROTO[new], count=count
            )
            for (old, new), count in sorted(transitions.items())
        )
    if histogram is not None:
        message.duration_histogram.bounds.extend(histogram.bounds)
        message.duration_histogram.counts.extend(histogram.counts)
        message.duration_histogram.sum = histogram.sum
    return message


def breaker_to_proto(
    breaker: CircuitBreaker, now: float, *, with_config: bool = True
) -> pb.BreakerSnapshot:
    """The report message for a breaker: snapshot, transition counts, histogram (and config)."""
    observed = breaker.observe()
    message = snapshot_to_proto(observed.snapshot, now, observed.transitions, observed.durations)
    if with_config:
        message.config.CopyFrom(_config_message(breaker.config))
    return message


@functools.lru_cache(maxsize=256)
def _config_message(config: BreakerConfig) -> pb.BreakerConfig:
    """config_to_proto, cached: a fleet's breakers share a few configs (never mutate the result)."""
    return config_to_proto(config)


def transitions_from_proto(
    messages: Iterable[pb.TransitionCount],
) -> dict[tuple[State, State], int]:
    """{(from, to): count} for reported transitions (unknown states are left out)."""
    result = {}
    for message in messages:
        old = _STATE_FROM_PROTO.get(message.from_state)
        new = _STATE_FROM_PROTO.get(message.to_state)
        if old is not None and new is not None:
            result[(old, new)] = message.count
    return result


def histogram_from_proto(message: pb.BreakerSnapshot) -> HistogramSnapshot | None:
    """The reported duration histogram, or None when the report has none."""
    if not message.HasField("duration_histogram"):
        return None
    histogram = message.duration_histogram
    return HistogramSnapshot(tuple(histogram.bounds), tuple(histogram.counts), histogram.sum)


def check_transitions(messages: Sequence[pb.TransitionCount], path: str) -> None:
    """Raise ConfigError (naming `path[i]`) unless every entry is a distinct real transition."""
    seen = set()
    for index, message in enumerate(messages):
        pair = (message.from_state, message.to_state)
        if pair[0] not in _STATE_FROM_PROTO or pair[1] not in _STATE_FROM_PROTO:
            raise ConfigError(f"{path}[{index}]", "states must be known and set")
        if pair[0] == pair[1]:
            raise ConfigError(f"{path}[{index}]", "from_state and to_state must differ")
        if pair in seen:
            raise ConfigError(f"{path}[{index}]", "the same transition is listed twice")
        if message.count < 0:
            raise ConfigError(f"{path}[{index}].count", "must be >= 0")
        seen.add(pair)


def check_histogram(message: pb.DurationHistogram, path: str) -> None:
    """Raise ConfigError (naming the field under `path`) unless the histogram is well formed."""
    bounds = message.bounds
    if not 1 <= len(bounds) <= MAX_BUCKETS:
        raise ConfigError(f"{path}.bounds", f"must hold 1..{MAX_BUCKETS} bounds")
    # Every comparison with NaN is False, so NaN is refused along with the rest.
    if not (bounds[0] > 0.0 and bounds[-1] < math.inf) or not all(
        earlier < later for earlier, later in pairwise(bounds)
    ):
        raise ConfigError(f"{path}.bounds", "must be finite, > 0 and strictly increasing")
    counts = message.counts
    if len(counts) != len(bounds) + 1:
        raise ConfigError(f"{path}.counts", "must hold one count per bound plus one for +Inf")
    if min(counts) < 0:
        raise ConfigError(f"{path}.counts", "must be >= 0")
    if not 0.0 <= message.sum < math.inf:
        raise ConfigError(f"{path}.sum", "must be a finite number >= 0")
