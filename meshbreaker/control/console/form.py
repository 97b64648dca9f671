"""The console's policy form: every field of a policy file entry, read from the Policy message.

Which inputs the form has is derived, not listed: a BreakerConfig anywhere in a Policy is a
section of `config.SCHEMA`'s fields, spelled as their command-line flags; any other message
(Canary, OutlierDetection) is a section of its own fields, spelled as the policy file (protobuf's
JSON mapping) spells them; every other field is one text input. A section is present or absent
as a whole (a checkbox: an OutlierDetection with every field at its default is not the same
policy as none). Only what the form leaves alone is named here, so a field added to Policy,
Canary, OutlierDetection or BreakerConfig is in the form with no change, and a put from the page
sends back every field it was shown (docs/DESIGN.md, "Web console").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from meshbreaker.cli import arg_types
from meshbreaker.cli.policy_json import READ_ONLY_KEYS
from meshbreaker.config import SCHEMA
from meshbreaker.control import convert
from meshbreaker.control.layers import describe_value
from meshbreaker.v1 import control_plane_pb2 as pb

# Inputs of their own at the top of the form.
FIXED = frozenset({"id", "selector"})
# ForceState's (and the fleet decider's): a put from the page keeps them as stored.
KEPT_BY_PUT = frozenset({"override", "override_expires_at", "override_reason"})
OWNED = KEPT_BY_PUT | {"fleet"}
# Read only into config.mode (policy_document), never written.
DEPRECATED = frozenset({"mode"})
NOT_IN_FORM = FIXED | OWNED | DEPRECATED | READ_ONLY_KEYS

_CONFIG = pb.BreakerConfig.DESCRIPTOR.full_name
_METAVARS = {
    FieldDescriptor.TYPE_DOUBLE: "NUMBER",
    FieldDescriptor.TYPE_FLOAT: "NUMBER",
    FieldDescriptor.TYPE_STRING: "TEXT",
    FieldDescriptor.TYPE_BOOL: "true|false",
}
_WELL_KNOWN_METAVARS = {
    "google.protobuf.Duration": "SECONDS, e.g. 10s",
    "google.protobuf.Timestamp": "RFC 3339 time",
}


@dataclass(frozen=True)
class Section:
    """The inputs of one message of a Policy: "" for the Policy's own fields, else a dotted path."""

    path: str
    fields: tuple[dict[str, str], ...]
    config: bool  # a BreakerConfig: SCHEMA's fields, in their flag spelling


def _section_of(field: FieldDescriptor) -> Descriptor | None:
    """The message a field holds when it is a section of the form (not a Duration, a Timestamp or
    a list, which are one input each)."""
    message = field.message_type
    if message is None or message.full_name.startswith("google.protobuf.") or field.is_repeated:
        return None
    return message


def _leaf(path: str, field: FieldDescriptor) -> dict[str, str]:
    if field.message_type is not None:
        metavar = _WELL_KNOWN_METAVARS.get(field.message_type.full_name, "JSON")
    else:
        metavar = _METAVARS.get(field.type, "N")
    return {"path": path, "name": field.name, "metavar": metavar, "help": ""}


def _sections(descriptor: Descriptor, path: str) -> Iterator[Section]:
    if descriptor.full_name == _CONFIG:
        yield Section(path, tuple(_config_fields(path)), config=True)
        return
    prefix = f"{path}." if path else ""
    kept = [field for field in descriptor.fields if path or field.name not in NOT_IN_FORM]
    leaves = tuple(_leaf(prefix + f.name, f) for f in kept if _section_of(f) is None)
    yield Section(path, leaves, config=False)
    for field in kept:
        message = _section_of(field)
        if message is not None:
            yield from _sections(message, prefix + field.name)


def _config_fields(path: str) -> Iterator[dict[str, str]]:
    for name, field in SCHEMA.items():
        yield {
            "path": f"{path}.{name}",
            "name": name,
            "metavar": arg_types.KIND_METAVARS[field.kind],
            "help": field.help,
        }


SECTIONS: tuple[Section, ...] = tuple(_sections(pb.Policy.DESCRIPTOR, ""))


def schema() -> dict[str, Any]:
    """The form's sections and their inputs, in the Policy message's order."""
    return {
        "sections": [{"path": section.path, "fields": list(section.fields)} for section in SECTIONS]
    }


def _message_at(policy: pb.Policy, path: str) -> Message | None:
    """The message at dotted `path` of `policy`, or None when it (or one above it) is unset."""
    message: Message = policy
    for name in path.split(".") if path else ():
        if not message.HasField(name):
            return None
        message = getattr(message, name)
    return message


def values(policy: pb.Policy) -> tuple[dict[str, str], list[str]]:
    """The text of every input `policy` sets, by path, and the sections it holds."""
    texts: dict[str, str] = {}
    present: list[str] = []
    for section in SECTIONS:
        message = _message_at(policy, section.path)
        if message is None:
            continue
        if section.path:
            present.append(section.path)
        prefix = f"{section.path}." if section.path else ""
        if section.config:
            assert isinstance(message, pb.BreakerConfig)
            for name, value in convert.layer_from_proto(message).items():
                texts[prefix + name] = describe_value(value)
            continue
        mapped = json_format.MessageToDict(message, preserving_proto_field_name=True)
        for field in section.fields:
            value = mapped.get(field["name"])
            if value is not None:
                texts[field["path"]] = _text(value)
    return texts, present


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def keep_owned(policy: pb.Policy, stored: pb.Policy) -> None:
    """Give `policy` the override, its expiry and its reason of `stored` (ForceState's)."""
    kept = pb.Policy()
    kept.CopyFrom(stored)
    for field in pb.Policy.DESCRIPTOR.fields:
        if field.name not in KEPT_BY_PUT:
            kept.ClearField(field.name)  # type: ignore[arg-type]  # names from the descriptor
    for name in KEPT_BY_PUT:
        policy.ClearField(name)  # type: ignore[arg-type]
    policy.MergeFrom(kept)
