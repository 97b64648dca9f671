"""Policy messages from JSON-like dicts (a --file entry, or the `policy put` flags)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from meshbreaker.cli import arg_types
from meshbreaker.config import BreakerConfig, State
from meshbreaker.control import convert
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

_POLICY_KEYS = frozenset(
    {"id", "selector", "caller", "service", "method", "config", "mode", "override", "description"}
)
# The message fields set one to one from a BreakerConfig field (mode and slow calls are not).
_PROTO_CONFIG_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(BreakerConfig)
    if f.name not in ("mode", "slow_call_duration")
)


def policy_message(entry: dict[str, Any]) -> pb.Policy:
    """A Policy message from a JSON-like dict; only the config fields given are set."""
    unknown = sorted(set(entry) - _POLICY_KEYS)
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
    config = entry.get("config", {})
    if "mode" in entry:
        config = {**(config or {}), "mode": entry["mode"]}
    if config is not None:
        if not isinstance(config, dict):
            raise ConfigError("config", "must be an object of BreakerConfig fields")
        config_message, mode = config_message_from(config)
        message.config.CopyFrom(config_message)
        message.mode = mode
    return message


def _override_word(text: str) -> State | None:
    """An override as JSON spells it; a bad word is a ConfigError naming the field."""
    try:
        return arg_types.forced_state(text)
    except argparse.ArgumentTypeError as error:
        raise ConfigError("override", str(error)) from None


def config_message_from(values: dict[str, Any]) -> tuple[pb.BreakerConfig, pb.Mode.ValueType]:
    """Validate `values` as BreakerConfig fields; the message sets only those fields."""
    # The server reads an unset open_duration_max the same way; the message leaves it unset.
    full = BreakerConfig.from_dict(convert.default_open_duration_max(values))
    message, mode = convert.config_to_proto(full)
    for name in _PROTO_CONFIG_FIELDS:
        if name not in values:
            message.ClearField(name)  # type: ignore[arg-type]
    if "slow_call_duration" not in values:
        message.ClearField("slow_call_duration")
        message.ClearField("slow_calls_disabled")
    return message, mode if "mode" in values else pb.MODE_UNSPECIFIED
