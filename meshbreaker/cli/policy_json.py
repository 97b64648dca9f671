"""Policy messages from JSON-like dicts (a --file entry, or the `policy put` flags)."""

from __future__ import annotations

import argparse
import enum
from typing import Any

from google.protobuf import json_format

from meshbreaker.cli import arg_types
from meshbreaker.config import SCHEMA, State, check_layer
from meshbreaker.control import convert
from meshbreaker.control.xds.model import outlier_detection_from_json
from meshbreaker.errors import ConfigError
from meshbreaker.retry import RetryPolicy
from meshbreaker.v1 import control_plane_pb2 as pb

# The Policy fields a --file spells its own way (below); every other field is written as protobuf's
# JSON mapping spells it (a Timestamp as RFC 3339 text), so a field added to Policy round-trips
# through `policy list --json` and `policy put --file` with no change here.
_SPELLED_HERE = frozenset(
    {"id", "selector", "config", "mode", "override", "outlier_detection", "canary"}
)
# What the store says about a policy: `policy list --json` prints them, a put ignores them (so its
# output can be put back as it is); compare-and-set is --expected-revision.
READ_ONLY_KEYS = frozenset({"revision", "updated_at", "updated_by"})
# Written as protobuf's JSON mapping: description, override_expires_at, override_reason, fleet...
_MAPPED = frozenset(pb.Policy.DESCRIPTOR.fields_by_name) - _SPELLED_HERE - READ_ONLY_KEYS
# A --file may also name the selector's keys at the top (and the mode beside the config).
_SHORTCUTS = frozenset({"caller", "service", "method"})
_POLICY_KEYS = frozenset(pb.Policy.DESCRIPTOR.fields_by_name) | _SHORTCUTS
_CANARY_KEYS = frozenset(pb.Canary.DESCRIPTOR.fields_by_name)


def policy_message(entry: dict[str, Any]) -> pb.Policy:
    """A Policy message from a JSON-like dict; only the config fields given are set."""
    unknown = sorted(set(entry) - _POLICY_KEYS - READ_ONLY_KEYS)
    if unknown:
        raise ConfigError(unknown[0], "unknown policy key")
    selector = dict(entry.get("selector") or {})
    for key in ("caller", "service", "method"):
        if key in entry:
            selector[key] = entry[key]
    bad = sorted(set(selector) - {"caller", "service", "method"})
    if bad:
        raise ConfigError(f"selector.{bad[0]}", "unknown selector key")
    policy_id = entry.get("id")
    if not policy_id:
        raise ConfigError("id", "a policy needs an id (--id)")
    message = pb.Policy(
        id=str(policy_id),
        selector=pb.Selector(**{key: str(value or "") for key, value in selector.items()}),
    )
    for key in sorted(_MAPPED & set(entry)):
        _parse_mapped(key, entry[key], message)
    override = entry.get("override")
    if isinstance(override, str):
        override = _override_word(override)
    message.override = convert.override_to_proto(override)
    if entry.get("outlier_detection") is not None:
        # The xDS section (docs/DESIGN.md, "xDS"): served to xDS clients and as service config.
        message.outlier_detection.CopyFrom(outlier_detection_from_json(entry["outlier_detection"]))
    config = entry.get("config", {})
    if "mode" in entry:
        config = {**(config or {}), "mode": entry["mode"]}
    if config is not None:
        message.config.CopyFrom(_config_at("config", config))
    if entry.get("canary") is not None:
        message.canary.CopyFrom(_canary_message(entry["canary"]))
    return message


def _parse_mapped(key: str, value: Any, message: pb.Policy) -> None:
    """Set field `key` of `message` from its protobuf JSON spelling; a bad value names the key."""
    if value is None:
        return  # null: not set, as for every optional key of a --file
    try:
        json_format.ParseDict({key: value}, message)
    except json_format.ParseError as error:
        field = pb.Policy.DESCRIPTOR.fields_by_name[key]
        if field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
            raise ConfigError(key, "must be an RFC 3339 time, e.g. 2026-12-01T06:30:00Z") from None
        raise ConfigError(key, str(error).splitlines()[0]) from None


_TIMESTAMP = "google.protobuf.Timestamp"


def _config_at(path: str, config: Any) -> pb.BreakerConfig:
    """The BreakerConfig at `path` of a --file entry (an object of BreakerConfig fields)."""
    if not isinstance(config, dict):
        raise ConfigError(path, "must be an object of BreakerConfig fields")
    try:
        return config_message_from(config)
    except ConfigError as error:
        raise ConfigError(f"{path}.{error.field.removeprefix('config.')}", error.message) from None


def _canary_message(canary: Any) -> pb.Canary:
    """A staged rollout from its --file spelling: percent, config, max_rejection_margin."""
    if not isinstance(canary, dict):
        raise ConfigError("canary", "must be an object with percent, config, max_rejection_margin")
    unknown = sorted(set(canary) - _CANARY_KEYS)
    if unknown:
        raise ConfigError(f"canary.{unknown[0]}", "unknown canary key")
    message = pb.Canary(percent=_number("canary.percent", canary.get("percent")))
    config = canary.get("config", {})
    if config is not None:
        message.config.CopyFrom(_config_at("canary.config", config))
    margin = canary.get("max_rejection_margin")
    if margin is not None:
        message.max_rejection_margin = _number("canary.max_rejection_margin", margin)
    return message


def _number(path: str, value: Any) -> float:
    """A number of a --file (text such as "10%" for a percentage is read too)."""
    if isinstance(value, str):
        value = value.strip().removesuffix("%")
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(path, "must be a number")


def _override_word(text: str) -> State | None:
    """An override as JSON spells it; a bad word is a ConfigError naming the field."""
    try:
        return arg_types.forced_state(text)
    except argparse.ArgumentTypeError as error:
        raise ConfigError("override", str(error)) from None


def config_message_from(values: dict[str, Any]) -> pb.BreakerConfig:
    """Validate `values` as BreakerConfig fields; the message sets only those fields.

    A value given as text is read as its command-line flag reads it ("off", "30s", "A,B").
    """
    unknown = sorted(set(values) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"config.{unknown[0]}", "unknown BreakerConfig field")
    parsed = {}
    for name, value in values.items():
        if isinstance(value, str):
            try:
                value = arg_types.KIND_PARSERS[SCHEMA[name].kind](value)
            except argparse.ArgumentTypeError as error:
                raise ConfigError(f"config.{name}", str(error)) from None
        parsed[name] = value
    try:
        return convert.layer_to_proto(check_layer(parsed))
    except ConfigError as error:
        raise ConfigError(f"config.{error.field}", error.message) from None


def policy_document(policy: pb.Policy) -> dict[str, Any]:
    """A stored policy as a --file entry: `policy_message` of it puts the same policy back."""
    document: dict[str, Any] = {"id": policy.id}
    selector = {
        key: getattr(policy.selector, key)
        for key in ("caller", "service", "method")
        if getattr(policy.selector, key)
    }
    document["selector"] = selector
    document["config"] = _config_document(policy.config) if policy.HasField("config") else None
    if document["config"] is not None and policy.mode != pb.MODE_UNSPECIFIED:
        # From an older client, which set the mode beside the config.
        mode = "shadow" if policy.mode == pb.MODE_SHADOW else "enforce"
        document["config"].setdefault("mode", mode)
    override = convert.override_from_proto(policy.override)
    if override is not None:
        document["override"] = "open" if override is State.FORCED_OPEN else "closed"
    if policy.HasField("outlier_detection"):
        document["outlier_detection"] = json_format.MessageToDict(
            policy.outlier_detection, preserving_proto_field_name=True
        )
    if policy.HasField("canary"):
        canary = policy.canary
        document["canary"] = {
            "percent": canary.percent,
            "config": _config_document(canary.config) if canary.HasField("config") else None,
        }
        if canary.HasField("max_rejection_margin"):
            document["canary"]["max_rejection_margin"] = canary.max_rejection_margin
    mapped = pb.Policy()
    mapped.CopyFrom(policy)
    for name in pb.Policy.DESCRIPTOR.fields_by_name:
        if name not in _MAPPED:
            mapped.ClearField(name)  # type: ignore[arg-type]  # names from the descriptor
    document.update(json_format.MessageToDict(mapped, preserving_proto_field_name=True))
    document["revision"] = policy.revision
    if policy.HasField("updated_at"):
        document["updated_at"] = policy.updated_at.ToJsonString()
    if policy.updated_by:
        document["updated_by"] = policy.updated_by
    return document


def _config_document(config: pb.BreakerConfig) -> dict[str, Any]:
    return {name: _json_value(value) for name, value in convert.layer_from_proto(config).items()}


def _json_value(value: Any) -> Any:
    """A config value as a --file spells it: codes as a sorted list, enums by value, None = off."""
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, RetryPolicy):
        return value.to_dict()
    return value
