"""Policy messages from JSON-like dicts (a --file entry, or the `policy put` flags)."""

from __future__ import annotations

import argparse
from typing import Any

from meshbreaker.cli import arg_types
from meshbreaker.config import SCHEMA, State, check_layer
from meshbreaker.control import convert
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

_POLICY_KEYS = frozenset(
    {"id", "selector", "caller", "service", "method", "config", "mode", "override", "description"}
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
