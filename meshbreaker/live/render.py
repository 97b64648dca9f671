"""The `status --watch` screen, a pure function of what was fetched and seen (tests render it)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.style import Style
from rich.text import Text

from meshbreaker.config import State
from meshbreaker.control import convert
from meshbreaker.live.table import ELLIPSIS, Cell, Column, new_table
from meshbreaker.live.text import (
    STATE_STYLES,
    clean,
    format_age,
    format_count,
    format_left,
    format_rate,
    nack_text,
)
from meshbreaker.v1 import control_plane_pb2 as pb

DASH = "—"
_SEVERITY = (State.FORCED_OPEN, State.OPEN, State.HALF_OPEN, State.FORCED_CLOSED, State.CLOSED)
_LETTERS = {
    State.CLOSED: "C",
    State.OPEN: "O",
    State.HALF_OPEN: "H",
    State.FORCED_OPEN: "FO",
    State.FORCED_CLOSED: "FC",
}
_DIM = Style(dim=True)
_WARN = Style(color="yellow")
_LEGEND = "INST: C closed, O open, H half-open, FO forced open, FC forced closed"
_SHADOW_LEGEND = (
    "shadow: in shadow mode (in N instances): the state it would be in; it never rejects"
)


_CANARY_COLUMNS = (
    Column("POLICY", cut="end"),
    Column("HALF"),
    *(
        Column(title, numeric=True)
        for title in ("INSTANCES", "CALLS", "FAILURE", "REJECTED", "SHADOW REJ")
    ),
)
_OVERRIDE_STATES = {
    pb.OVERRIDE_FORCED_OPEN: State.FORCED_OPEN,
    pb.OVERRIDE_FORCED_CLOSED: State.FORCED_CLOSED,
}
_OVERRIDE_COLUMNS = (
    Column("OVERRIDE"),
    Column("CALLER", cut="end"),
    Column("SELECTOR", cut="start", min_width=8, weight=2),
    Column("LEFT", numeric=True),
    Column("BY", cut="end"),
    Column("REASON", cut="end", weight=2),
)


@dataclass(frozen=True)
class Link:
    """The connection to the control plane, as the header shows it."""

    target: str
    state: str = "connected"  # "connecting", "connected" or "disconnected"
    error: str = ""  # why the last attempt failed
    retry_in: float | None = None  # seconds until the next attempt, when one is scheduled
    fetched_at: float | None = None  # wall-clock time the response was fetched


def group_state(group: pb.BreakerGroup) -> State | None:
    """The most severe state any instance reports for `group` (None: no instance)."""
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
    return _LETTERS[state] if state is not None else "?"


def _instances_cell(group: pb.BreakerGroup) -> str:
    counts = _state_counts(group)
    return " ".join(f"{counts[state]}{_LETTERS[state]}" for state in _SEVERITY if counts[state])


def _last_transition(
    group: pb.BreakerGroup, seen: dict[tuple[str, str], pb.Event], now: float, link: Link
) -> str:
    """ "C->O 12s" for the latest transition seen as an event; "O 40s" (in it for 40 s) when only
    the instances' reports tell how long their state has lasted."""
    last: tuple[float, str] | None = None
    event = seen.get((group.service, group.name))
    if event is not None:
        transition = event.transition
        age = now - event.time.ToNanoseconds() / 1e9
        old = _letter(transition.from_state) if transition.from_state else "new"
        last = (age, f"{old}->{_letter(transition.to_state)}")
    since_fetch = now - link.fetched_at if link.fetched_at is not None else 0.0
    ages = [
        (item.snapshot.state_age + item.report_age + since_fetch, _letter(item.snapshot.state))
        for item in group.instance_breakers
    ]
    reported = min(((age, state) for age, state in ages if math.isfinite(age)), default=None)
    # A report's age of the same change differs from the event's by milliseconds; it wins only
    # when clearly later (a change whose event was missed, e.g. while disconnected), and then it
    # names the state only: a report does not know the one before.
    if reported is not None and (last is None or reported[0] < last[0] - 1.0):
        last = reported
    return f"{last[1]} {format_age(last[0])}" if last is not None else "-"


_BREAKER_COLUMNS = (
    Column("CALLER", cut="end"),
    Column("BREAKER", cut="start", min_width=8, weight=2),
    Column("STATE"),
    Column("INST"),
    Column("FAIL%", numeric=True),
    Column("SLOW%", numeric=True),
    Column("CALLS", numeric=True),
    Column("FAILED", numeric=True),
    Column("REJ", numeric=True),
    Column("LAST"),
)

_INSTANCE_COLUMNS = (
    Column("INSTANCE", cut="start", min_width=8, weight=2),
    Column("CALLER", cut="end"),
    Column("REV", numeric=True),
    Column("BREAKERS", numeric=True),
    Column("AGE", numeric=True),
    Column("NACK", cut="end", weight=3),
)


def _header(response: pb.ListBreakersResponse | None, link: Link, now: float, width: int) -> Text:
    """Address, revision, instances, time and the connection; optional parts go when narrow."""
    if link.state == "connected":
        status = Text("connected", style="green")
    elif link.state == "connecting":
        status = Text(f"connecting{ELLIPSIS}", style="yellow")
    else:
        when = f" in {link.retry_in:.1f}s" if link.retry_in is not None else ELLIPSIS
        status = Text(f"disconnected {DASH} reconnecting{when}", style="bold red")
    target = Text(clean(link.target), style="bold")
    parts: list[tuple[int, Text]] = [(0, target)]  # (priority to keep, part)
    if response is not None:
        parts.append((2, Text(f"rev {response.revision}")))
        parts.append((3, Text(f"{len(response.instances)} instances")))
    parts.append((4, Text(time.strftime("%H:%M:%S", time.localtime(now)))))
    parts.append((1, status))
    while len(parts) > 2 and sum(part.cell_len + 2 for _, part in parts) - 2 > width:
        parts.remove(max(parts, key=lambda part: part[0]))
    overflow = sum(part.cell_len + 2 for _, part in parts) - 2 - width
    if overflow > 0:  # the address gives way before the connection status
        target.truncate(max(8, target.cell_len - overflow), overflow="ellipsis")
    line = Text("  ").join(part for _, part in parts)
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def render_status(
    response: pb.ListBreakersResponse | None,
    events: Iterable[pb.Event] = (),
    *,
    now: float,
    link: Link,
    width: int = 80,
    height: int | None = None,
    instances: bool = False,
    empty: str = "(no breakers reported)",
) -> RenderableType:
    """The status screen at wall-clock `now`, every line within `width` (and `height`) cells.

    `empty` is what the table says when it has no rows (e.g. that a filter matched nothing).
    """
    width = max(width, 20)
    lines: list[RenderableType] = [_header(response, link, now, width)]
    if link.state != "connected":
        lines.append(Text(_stale_note(response, link, now), style=_WARN))
    lines.append(Text())
    if response is None:
        return Group(*lines)

    groups: Sequence[pb.BreakerGroup] = response.groups
    footer: list[RenderableType] = []
    if response.overrides:
        footer.append(Text())
        footer.append(override_table(response.overrides, width))
    if response.canaries:
        footer.append(Text())
        footer.append(canary_table(response.canaries, width))
    shown = [item for item in response.instances if instances or item.HasField("nack")]
    if shown:
        footer.append(Text())
        footer.append(instance_table(shown, width))
    footer.append(Text())
    footer.append(Text(_LEGEND if groups else empty, style=_DIM, no_wrap=True, overflow="ellipsis"))
    if any(group.shadow for group in groups):
        footer.append(Text(_SHADOW_LEGEND, style=_DIM, no_wrap=True, overflow="ellipsis"))
    # Each table counts its title line in `footer`; its rows are added here.
    footer_lines = len(footer) + len(shown) + len(response.overrides) + 2 * len(response.canaries)
    more: Text | None = None
    if height is not None and len(lines) + 1 + len(groups) + footer_lines > height:
        keep = max(0, height - len(lines) - footer_lines - 2)  # rows besides title and "more"
        more = Text(
            f"{ELLIPSIS} {len(groups) - keep} more (narrow with --caller, --method or --state)",
            style=_DIM,
            no_wrap=True,
            overflow="ellipsis",
        )
        groups = groups[:keep]
    lines.append(_breaker_table(groups, _latest_transitions(events), now, link, width))
    if more is not None:
        lines.append(more)
    return Group(*lines, *footer)


def _stale_note(response: pb.ListBreakersResponse | None, link: Link, now: float) -> str:
    """Under the header while disconnected: how old the table is, and why."""
    if response is not None and link.fetched_at is not None:
        note = f"STALE: last update {format_age(now - link.fetched_at)} ago"
    else:
        note = "no data yet"
    if link.error:
        note += f" {DASH} {clean(link.error)}"
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


def _state_cell(group: pb.BreakerGroup, state: State | None, style: Style) -> Text:
    """The group's worst state, marked when some of its instances run it in shadow mode."""
    cell = Text(state.value if state is not None else "-", style=style)
    if group.shadow:
        every = group.shadow == group.instances
        cell.append(" shadow" if every else f" shadow:{group.shadow}", style=_DIM)
    return cell


def shadow_marked(state: Text, mode: int) -> Text:
    """An instance's state, marked when it runs the breaker in shadow mode."""
    if mode == pb.MODE_SHADOW:
        state.append(" (shadow)", style=_DIM)
    return state


def _breaker_table(
    groups: Sequence[pb.BreakerGroup],
    seen: dict[tuple[str, str], pb.Event],
    now: float,
    link: Link,
    width: int,
) -> RenderableType:
    """One row per (caller, breaker); the state is coloured, and dimmed while disconnected."""
    stale = link.state != "connected"
    rows: list[list[Cell]] = []
    for group in groups:
        state = group_state(group)
        state_style = _DIM if stale or state is None else STATE_STYLES[state]
        rows.append(
            [
                group.service,
                group.name,
                _state_cell(group, state, state_style),
                _instances_cell(group) or "-",
                format_rate(group.failure_rate),
                format_rate(group.slow_call_rate),
                format_count(group.total),
                format_count(group.failed),
                format_count(group.rejected),
                _last_transition(group, seen, now, link),
            ]
        )
    return new_table(_BREAKER_COLUMNS, rows, width)


def override_table(overrides: Sequence[pb.ActiveOverride], width: int | None) -> RenderableType:
    """One row per override in force: what, where, the time it has left, who and why."""
    rows: list[list[Cell]] = []
    for item in overrides:
        policy = item.policy
        state = _OVERRIDE_STATES.get(policy.override)
        rows.append(
            [
                Text(state.value, style=STATE_STYLES[state]) if state else "?",
                policy.selector.caller or "*",
                policy.selector.method or policy.selector.service,
                format_left(item.remaining) if item.HasField("remaining") else "until set back",
                "fleet" if policy.HasField("fleet") else policy.updated_by or policy.id,
                policy.override_reason,
            ]
        )
    return new_table(_OVERRIDE_COLUMNS, rows, width)


def canary_table(canaries: Sequence[pb.CanaryStatus], width: int | None) -> RenderableType:
    """Per policy with a canary: the canary and the rest side by side."""
    rows: list[list[Cell]] = []
    for status in canaries:
        for label, half in (("canary", status.canary), ("rest", status.rest)):
            tried = half.total + half.rejected
            rows.append(
                [
                    status.policy_id if label == "canary" else "",
                    f"{label} {status.percent:g}%" if label == "canary" else label,
                    str(half.instances),
                    format_count(half.total),
                    format_rate(half.failed / half.total) if half.total else DASH,
                    format_rate(half.rejected / tried) if tried else DASH,
                    format_count(half.shadow_rejected),
                ]
            )
    return new_table(_CANARY_COLUMNS, rows, width)


def instance_table(shown: Sequence[pb.InstanceStatus], width: int | None) -> RenderableType:
    """One row per instance, its NACK (if any) highlighted."""
    rows: list[list[Cell]] = [
        [
            item.instance_id,
            item.service,
            str(item.applied_revision),
            str(item.breakers),
            format_age(item.report_age),
            Text(nack_text(item), style=_WARN),
        ]
        for item in shown
    ]
    return new_table(_INSTANCE_COLUMNS, rows, width)
