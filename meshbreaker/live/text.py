"""Short, safe text for the operator's views: cleaned strings, ages, counts, rates, event lines.

Every string a remote process reported (breaker names, services, instance ids, NACK reasons, error
details) passes through `clean` before it reaches a terminal, so none can move the cursor, change
colours or ring the bell there.
"""

from __future__ import annotations

import math

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.style import Style
from rich.text import Text

from meshbreaker.config import State
from meshbreaker.control import convert
from meshbreaker.v1 import control_plane_pb2 as pb


def _shown(char: str) -> str:
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str) -> str:
    """`text` with every character a terminal would not print as itself shown as its escape.

    str.isprintable() is False for the C0 and C1 controls (ESC among them), DEL, the format
    characters that reorder or hide text (bidi overrides, zero-width marks), line separators and
    unassigned code points: each becomes \\x1b, \\u202e and so on.
    """
    if text.isprintable():
        return text
    return "".join(_shown(char) for char in text)


def format_age(seconds: float) -> str:
    """A short age: 12s, 5m, 3h, 2d ("?" for one that is not a number)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_left(seconds: float) -> str:
    """Time left to the second, in two units: 42s, 9m58s, 2h05m, 3d04h ("?" when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    whole = math.ceil(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    for big, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{big}{(whole % size) // small_size:02d}{small}"
    return f"{whole // 60}m{whole % 60:02d}s"


def format_seconds(seconds: float) -> str:
    """An age with a tenth of a second: 1.5s ("?" for one that is not finite)."""
    return f"{seconds:.1f}s" if math.isfinite(seconds) else "?"


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
    """A rate in [0, 1] as a short percentage: 0%, 2.5%, 50%, 100% ("?" for any other value)."""
    if not 0.0 <= rate <= 1.0:  # NaN too: a reported rate is not trusted to be one
        return "?"
    percent = rate * 100
    if percent == 0:
        return "0%"
    return f"{percent:.1f}%" if percent < 9.95 else f"{percent:.0f}%"


def state_name(value: int) -> str:
    """The name of a proto BreakerState ("?" for an unknown one)."""
    state = convert.state_from_proto(value)
    return state.value if state is not None else "?"


STATE_STYLES = {
    State.CLOSED: Style(color="green"),
    State.OPEN: Style(color="red", bold=True),
    State.HALF_OPEN: Style(color="yellow"),
    State.FORCED_OPEN: Style(color="magenta", bold=True),
    State.FORCED_CLOSED: Style(color="cyan"),
}


def state_text(value: int) -> Text:
    """A proto BreakerState's name in its colour."""
    state = convert.state_from_proto(value)
    return Text(state_name(value), style=STATE_STYLES[state] if state is not None else "")


def event_line(event: pb.Event) -> Text:
    """One line for one mesh event (its new state coloured), the reported strings cleaned."""
    when = event.time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    line = Text(f"{when} #{event.sequence} ", no_wrap=True, end="")
    kind = event.WhichOneof("kind")
    if kind == "transition":
        transition = event.transition
        old = state_name(transition.from_state) if transition.from_state else "NEW"
        line.append(
            clean(
                f"transition {transition.service}/{transition.instance_id} "
                f"{transition.name} {old} -> "
            )
        )
        line.append_text(state_text(transition.to_state))
    elif kind == "policy_change":
        change = event.policy_change
        verb = {change.KIND_PUT: "put", change.KIND_DELETE: "delete"}.get(change.kind, "change")
        line.append(
            clean(
                f"policy {verb} {change.policy_id} revision {change.revision} "
                f"by {change.actor or '?'}"
            )
        )
        after = change.after
        if after.HasField("fleet"):
            line.append(
                clean(
                    f": fleet decision, open period {after.fleet.period}, probers "
                    f"{','.join(after.fleet.probers) or 'none'}; {after.override_reason}"
                ),
                style="magenta",
            )
        elif change.before.HasField("fleet") and not after.HasField("fleet"):
            line.append(": fleet decision ended", style="magenta")
    elif kind == "nack":
        nack = event.nack
        line.append(
            clean(
                f"nack {nack.service}/{nack.instance_id} "
                f"revision {nack.nack.revision}: {nack.nack.reason}"
            ),
            style="yellow",
        )
    else:
        line.append("(unknown event)")
    return line


def format_event(event: pb.Event) -> str:
    """One line of plain text for one mesh event."""
    return event_line(event).plain


def to_json(message: Message) -> str:
    """`message` as JSON with the field names of the proto (what `--json` prints).

    Every non-ASCII character is escaped, and JSON escapes the ASCII controls, so the text is
    safe on a terminal whatever the message holds.
    """
    return json_format.MessageToJson(message, preserving_proto_field_name=True, ensure_ascii=True)


def nack_text(instance: pb.InstanceStatus) -> str:
    """An instance's latest NACK as "rev N: reason" (cleaned), or "" when it has none."""
    if not instance.HasField("nack"):
        return ""
    return clean(f"rev {instance.nack.revision}: {instance.nack.reason}")
