"""Short text for the live views: cut cells, ages, counts, rates, state names and event lines."""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import Message

from meshbreaker.control import convert
from meshbreaker.live.terminal import ELLIPSIS
from meshbreaker.v1 import control_plane_pb2 as pb


def elide_end(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis at the end when cut."""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS if width > 0 else ""


def elide_start(text: str, width: int) -> str:
    """`text` cut to `width` characters from the left, so its end (a method name) stays."""
    if len(text) <= width:
        return text
    return ELLIPSIS + text[len(text) - width + 1 :] if width > 0 else ""


def format_age(seconds: float) -> str:
    """A short age: 12s, 5m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_count(value: int) -> str:
    """A count in at most four characters: 9999, 12k, 1.2M, 34M, 5.6G."""
    if value < 10_000:
        return str(value)
    for unit, size in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        scaled = value / size
        if scaled < 999.5 or unit == "T":
            break
    return f"{scaled:.1f}{unit}" if scaled < 9.95 else f"{scaled:.0f}{unit}"


def format_rate(rate: float) -> str:
    """A rate in [0, 1] as a short percentage: 0%, 2.5%, 50%, 100%."""
    percent = rate * 100
    if percent == 0:
        return "0%"
    return f"{percent:.1f}%" if percent < 9.95 else f"{percent:.0f}%"


def state_name(value: int) -> str:
    """The name of a proto BreakerState ("?" for an unknown one)."""
    state = convert.state_from_proto(value)
    return state.value if state is not None else "?"


def format_event(event: pb.Event) -> str:
    """One line for one mesh event."""
    when = event.time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    prefix = f"{when} #{event.sequence}"
    kind = event.WhichOneof("kind")
    if kind == "transition":
        transition = event.transition
        old = state_name(transition.from_state) if transition.from_state else "NEW"
        return (
            f"{prefix} transition {transition.service}/{transition.instance_id} "
            f"{transition.name} {old} -> {state_name(transition.to_state)}"
        )
    if kind == "policy_change":
        change = event.policy_change
        verb = {change.KIND_PUT: "put", change.KIND_DELETE: "delete"}.get(change.kind, "change")
        return (
            f"{prefix} policy {verb} {change.policy_id} revision {change.revision} "
            f"by {change.actor or '?'}"
        )
    if kind == "nack":
        nack = event.nack
        return (
            f"{prefix} nack {nack.service}/{nack.instance_id} "
            f"revision {nack.nack.revision}: {nack.nack.reason}"
        )
    return f"{prefix} (unknown event)"


def to_json(message: Message) -> str:
    """`message` as JSON with the field names of the proto (what `--json` prints)."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True)


def nack_text(instance: pb.InstanceStatus) -> str:
    """An instance's latest NACK as "rev N: reason", or "" when it has none."""
    if not instance.HasField("nack"):
        return ""
    return f"rev {instance.nack.revision}: {instance.nack.reason}"
