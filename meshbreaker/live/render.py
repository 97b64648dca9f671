"""The `status --watch` screen, a pure function of what was fetched and seen (tests render it)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshbreaker.config import State
from meshbreaker.control import convert
from meshbreaker.live.table import Column, Segment, line_text, table_lines
from meshbreaker.live.terminal import DASH, ELLIPSIS
from meshbreaker.live.text import (
    elide_end,
    elide_start,
    format_age,
    format_count,
    format_rate,
    nack_text,
)
from meshbreaker.v1 import control_plane_pb2 as pb

_SEVERITY = (State.FORCED_OPEN, State.OPEN, State.HALF_OPEN, State.FORCED_CLOSED, State.CLOSED)
_LETTERS = {
    State.CLOSED: "C",
    State.OPEN: "O",
    State.HALF_OPEN: "H",
    State.FORCED_OPEN: "FO",
    State.FORCED_CLOSED: "FC",
}
_STATE_COLORS = {
    State.CLOSED: "32",
    State.OPEN: "1;31",
    State.HALF_OPEN: "33",
    State.FORCED_OPEN: "1;35",
    State.FORCED_CLOSED: "36",
}
_LEGEND = "INST: C closed, O open, H half-open, FO forced open, FC forced closed"


@dataclass(frozen=True)
class Link:
    """The connection to the control plane, as the header shows it."""

    target: str
    state: str = "connected"  # "connecting", "connected" or "disconnected"
    error: str = ""  # why the last attempt failed
    retry_in: float | None = None  # seconds until the next attempt, when one is scheduled
    fetched_at: float | None = None  # wall-clock time the response was fetched


def _group_state(group: pb.BreakerGroup) -> State | None:
    counts = _state_counts(group)
    return next((state for state in _SEVERITY if counts[state]), None)


def _state_counts(group: pb.BreakerGroup) -> dict[State, int]:
    return {
        State.CLOSED: group.closed,
        State.OPEN: group.open,
        State.HALF_OPEN: group.half_open,
        State.FORCED_OPEN: group.forced_open,
        State.FORCED_CLOSED: group.forced_closed,
    }


def _letter(value: int) -> str:
    state = convert.state_from_proto(value)
    return _LETTERS[state] if state is not None else "new"


def _instances_cell(group: pb.BreakerGroup) -> str:
    counts = _state_counts(group)
    return " ".join(f"{counts[state]}{_LETTERS[state]}" for state in _SEVERITY if counts[state])


def _last_transition(
    group: pb.BreakerGroup, seen: dict[tuple[str, str], pb.Event], now: float, link: Link
) -> str:
    """ "C->O 12s": the latest transition seen as an event, or else from the reported state ages."""
    last: tuple[float, str] | None = None
    event = seen.get((group.service, group.name))
    if event is not None:
        transition = event.transition
        age = now - event.time.ToNanoseconds() / 1e9
        last = (age, f"{_letter(transition.from_state)}->{_letter(transition.to_state)}")
    since_fetch = now - link.fetched_at if link.fetched_at is not None else 0.0
    reported = min(
        (
            (item.snapshot.state_age + item.report_age + since_fetch, _letter(item.snapshot.state))
            for item in group.instance_breakers
        ),
        default=None,
    )
    # A report's age of the same change differs from the event's by milliseconds; it wins only
    # when clearly later (a change whose event was missed, e.g. while disconnected), since it
    # does not know the old state.
    if reported is not None and (last is None or reported[0] < last[0] - 1.0):
        last = (reported[0], f"?->{reported[1]}")
    return f"{last[1]} {format_age(last[0])}" if last is not None else "-"


_BREAKER_COLUMNS = (
    Column("SERVICE", cut=elide_end, min_width=4),
    Column("BREAKER", cut=elide_start, min_width=8, weight=2),
    Column("STATE"),
    Column("INST"),
    Column("FAIL%", right=True),
    Column("SLOW%", right=True),
    Column("CALLS", right=True),
    Column("FAILED", right=True),
    Column("REJ", right=True),
    Column("LAST"),
)

_INSTANCE_COLUMNS = (
    Column("INSTANCE", cut=elide_start, min_width=8, weight=2),
    Column("SERVICE", cut=elide_end, min_width=4),
    Column("REV", right=True),
    Column("BREAKERS", right=True),
    Column("AGE", right=True),
    Column("NACK", cut=elide_end, min_width=4, weight=3),
)


def _header(
    response: pb.ListBreakersResponse | None, link: Link, now: float, width: int
) -> list[Segment]:
    """Address, revision, instances, time and the connection; optional parts go when narrow."""
    if link.state == "connected":
        status: Segment = ("connected", "32")
    elif link.state == "connecting":
        status = (f"connecting{ELLIPSIS}", "33")
    else:
        when = f" in {link.retry_in:.1f}s" if link.retry_in is not None else ELLIPSIS
        status = (f"disconnected {DASH} reconnecting{when}", "1;31")
    parts: list[tuple[int, Segment]] = [(0, (link.target, "1"))]  # (priority to keep, segment)
    if response is not None:
        parts.append((2, (f"rev {response.revision}", None)))
        parts.append((3, (f"{len(response.instances)} instances", None)))
    parts.append((4, (time.strftime("%H:%M:%S", time.localtime(now)), None)))
    parts.append((1, status))
    while len(parts) > 2 and sum(len(s[0]) + 2 for _, s in parts) - 2 > width:
        parts.remove(max(parts, key=lambda part: part[0]))
    line: list[Segment] = []
    for i, (_, segment) in enumerate(parts):
        if i:
            line.append(("  ", None))
        line.append(segment)
    overflow = sum(len(text) for text, _ in line) - width
    if overflow > 0:  # the address gives way before the connection status
        target = elide_end(link.target, max(8, len(link.target) - overflow))
        line[0] = (target, "1")
    return line


def render_status(
    response: pb.ListBreakersResponse | None,
    events: Iterable[pb.Event] = (),
    *,
    now: float,
    link: Link,
    width: int = 80,
    height: int | None = None,
    color: bool = False,
    instances: bool = False,
) -> str:
    """The status screen at wall-clock `now`, every line within `width` (and `height`) cells."""
    width = max(width, 20)
    lines: list[list[Segment]] = [_header(response, link, now, width)]
    if link.state != "connected":
        lines.append([(_stale_note(response, link, now), "33")])
    lines.append([])
    if response is None:
        return "\n".join(line_text(line, width, color) for line in lines)

    table = _breaker_table(response, _latest_transitions(events), now, link, width)
    footer: list[list[Segment]] = []
    shown = [item for item in response.instances if instances or item.HasField("nack")]
    if shown:
        footer.append([])
        footer.extend(_instance_table(shown, width))
    footer.append([])
    footer.append([(_LEGEND if response.groups else "(no breakers reported)", "2")])

    if height is not None and len(lines) + len(table) + len(footer) > height:
        keep = height - len(lines) - len(footer) - 2  # rows besides the title and "more" lines
        if keep >= 0:
            hidden = len(table) - 1 - keep
            more = f"{ELLIPSIS} {hidden} more (narrow with --service, --method or --state)"
            table = [*table[: 1 + keep], [(more, "2")]]
    lines.extend(table)
    lines.extend(footer)
    return "\n".join(line_text(line, width, color) for line in lines)


def _stale_note(response: pb.ListBreakersResponse | None, link: Link, now: float) -> str:
    """Under the header while disconnected: how old the table is, and why."""
    if response is not None and link.fetched_at is not None:
        note = f"STALE: last update {format_age(now - link.fetched_at)} ago"
    else:
        note = "no data yet"
    if link.error:
        note += f" {DASH} {link.error}"
    return note


def _latest_transitions(events: Iterable[pb.Event]) -> dict[tuple[str, str], pb.Event]:
    """The latest transition event of each (service, breaker)."""
    seen: dict[tuple[str, str], pb.Event] = {}
    for event in events:
        if event.WhichOneof("kind") != "transition":
            continue
        key = (event.transition.service, event.transition.name)
        if key not in seen or event.time.ToNanoseconds() >= seen[key].time.ToNanoseconds():
            seen[key] = event
    return seen


def _breaker_table(
    response: pb.ListBreakersResponse,
    seen: dict[tuple[str, str], pb.Event],
    now: float,
    link: Link,
    width: int,
) -> list[list[Segment]]:
    """One row per (service, breaker); the state is coloured, and dimmed while disconnected."""
    stale = link.state != "connected"
    rows: list[list[str]] = []
    colors: list[list[str | None]] = []
    for group in response.groups:
        state = _group_state(group)
        rows.append(
            [
                group.service,
                group.name,
                state.value if state is not None else "-",
                _instances_cell(group) or "-",
                format_rate(group.failure_rate),
                format_rate(group.slow_call_rate),
                format_count(group.total),
                format_count(group.failed),
                format_count(group.rejected),
                _last_transition(group, seen, now, link),
            ]
        )
        state_color = "2" if stale else (_STATE_COLORS[state] if state is not None else None)
        colors.append([None, None, state_color, None, None, None, None, None, None, None])
    return table_lines(_BREAKER_COLUMNS, rows, colors, width)


def _instance_table(shown: Sequence[pb.InstanceStatus], width: int) -> list[list[Segment]]:
    """One row per instance, its NACK (if any) highlighted."""
    rows = [
        [
            item.instance_id,
            item.service,
            str(item.applied_revision),
            str(item.breakers),
            format_age(item.report_age),
            nack_text(item),
        ]
        for item in shown
    ]
    colors: list[list[str | None]] = [[None, None, None, None, None, "33"] for _ in shown]
    return table_lines(_INSTANCE_COLUMNS, rows, colors, width)
