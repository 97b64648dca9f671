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

_POLICY_KEYS = frozenset(
    {
        *("id", "selector", "caller", "service", "method", "config", "mode", "override"),
        *("description", "outlier_detection"),
    }
)
# What the store says about a policy: `policy list --json` prints them, a put ignores them (so its
# output can be put back as it is); compare-and-set is --expected-revision.
READ_ONLY_KEYS = frozenset({"revision", "updated_at", "updated_by"})


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
        description=str(entry.get("description") or ""),
    )
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
        if not isinstance(config, dict):
            raise ConfigError("config", "must be an object of BreakerConfig fields")
        message.config.CopyFrom(config_message_from(config))
    return message


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
    if policy.HasField("config"):
        layer = convert.layer_from_proto(policy.config)
        document["config"] = {name: _json_value(value) for name, value in layer.items()}
        if "mode" not in layer and policy.mode != pb.MODE_UNSPECIFIED:  # from an older client
            document["config"]["mode"] = "shadow" if policy.mode == pb.MODE_SHADOW else "enforce"
    else:
        document["config"] = None  # an override alone
    override = convert.override_from_proto(policy.override)
    if override is not None:
        document["override"] = "open" if override is State.FORCED_OPEN else "closed"
    if policy.description:
        document["description"] = policy.description
    if policy.HasField("outlier_detection"):
        document["outlier_detection"] = json_format.MessageToDict(
            policy.outlier_detection, preserving_proto_field_name=True
        )
    document["revision"] = policy.revision
    if policy.HasField("updated_at"):
        document["updated_at"] = policy.updated_at.ToJsonString()
    if policy.updated_by:
        document["updated_by"] = policy.updated_by
    return document


def _json_value(value: Any) -> Any:
    """A config value as a --file spells it: codes as a sorted list, enums by value, None = off."""
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, RetryPolicy):
        return value.to_dict()
    return value
