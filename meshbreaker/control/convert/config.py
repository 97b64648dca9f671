"""BreakerConfig messages <-> the engine's config: one codec per FieldSchema kind.

A config message converts to a layer (the fields it sets, validated) or a whole BreakerConfig (the
layer over the defaults); errors name the proto field path, as in
"policy.config.failure_rate_threshold".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import Message

from meshbreaker.config import (
    KINDS,
    SCHEMA,
    BreakerConfig,
    ConcurrencyLimit,
    ConfigLayer,
    FieldSchema,
    Mode,
    WindowType,
    check_layer,
    merge_layers,
)
from meshbreaker.control.convert.times import duration_seconds, seconds_to_duration
from meshbreaker.errors import ConfigError
from meshbreaker.retry import RetryPolicy
from meshbreaker.v1 import control_plane_pb2 as pb

MAX_CODES = 32

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


def _has(message: Message, name: str) -> bool:
    """HasField for a field name held in a variable (the typed stubs only take literals)."""
    return message.HasField(name)


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


def mode_from_proto(mode: int, path: str) -> Mode:
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


def _switched_off(message: Message, schema: FieldSchema, path: str) -> bool:
    """Whether the field's `proto_off` flag is set (refused together with the field itself)."""
    assert schema.proto_off is not None
    if not getattr(message, schema.proto_off):
        return False
    if _has(message, schema.proto):
        off_path = path.rsplit(".", 1)[0] + "." + schema.proto_off
        raise ConfigError(off_path, f"cannot be set together with {schema.proto}")
    return True


def _decode_optional_seconds(message: Message, schema: FieldSchema, path: str) -> Any:
    if _switched_off(message, schema, path):
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
    if _switched_off(message, schema, path):
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
