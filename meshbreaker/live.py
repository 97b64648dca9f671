"""Live views of the mesh: `status --watch` and `events --follow`, both outliving restarts.

`status --watch` is driven by WatchEvents: an event marks the table out of date and ListBreakers is
fetched again once a burst has had `coalesce` seconds to settle, plus a slow periodic fetch every
`interval` seconds so counters, rates and ages stay current. `render_status` is a pure function of
what was fetched and seen, so tests render to a string. When the control plane goes away both views
say so, keep what they had, and reconnect with capped exponential backoff and jitter.
"""

from __future__ import annotations

import math
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import grpc
from google.protobuf import json_format

from meshbreaker.config import State
from meshbreaker.control import convert
from meshbreaker.control.agent import Backoff
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

PROG = "meshbreaker"
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 5.0
COALESCE = 0.25
# Retrying cannot fix these: the view ends with the error instead of looping on it.
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
CLEAR_SCREEN = "\x1b[2J"
HOME = "\x1b[H"
CLEAR_LINE_END = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
RESET = "\x1b[0m"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ELLIPSIS = "…"
_DASH = "—"

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


# ---------------------------------------------------------------------------------------------
# Small shared helpers


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
        t = event.transition
        return (
            f"{prefix} transition {t.service}/{t.instance_id} {t.name} "
            f"{state_name(t.from_state) if t.from_state else 'NEW'} -> {state_name(t.to_state)}"
        )
    if kind == "policy_change":
        change = event.policy_change
        verb = {change.KIND_PUT: "put", change.KIND_DELETE: "delete"}.get(change.kind, "change")
        return (
            f"{prefix} policy {verb} {change.policy_id} revision {change.revision} "
            f"by {change.actor or '?'}"
        )
    if kind == "nack":
        n = event.nack
        return (
            f"{prefix} nack {n.service}/{n.instance_id} revision {n.nack.revision}: {n.nack.reason}"
        )
    return f"{prefix} (unknown event)"


def channel_options(backoff: Backoff) -> list[tuple[str, Any]]:
    """Channel options for a view that outlives restarts (the reconnect pace follows `backoff`)."""
    # While its connection is down the channel fails calls at once until its own next connect
    # attempt (grpc's backoff: up to 120 s by default), so our retries would keep failing long
    # after the control plane is back: it must try at least as often as we do.
    ceiling = min(backoff.maximum, 1.0)
    return [
        ("grpc.initial_reconnect_backoff_ms", max(1, int(min(backoff.initial, ceiling) * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(ceiling * 1000))),
        # A control plane that vanished without closing the connection is found by pings (the
        # server permits one every 5 s).
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def new_backoff() -> Backoff:
    """The reconnect backoff of the live views."""
    return Backoff(RECONNECT_INITIAL, RECONNECT_MAX)


def quiet_grpc_logs() -> None:
    """Keep grpc core's info lines (e.g. "Got goaway" on a restart) off the user's terminal."""
    # Read when grpc core starts, i.e. at the first channel; a value the user set wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def use_color(stream: TextIO) -> bool:
    """ANSI colours only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return is_terminal(stream) and not os.environ.get("NO_COLOR")


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that understands cursor movement."""
    try:
        tty = stream.isatty()
    except ValueError:  # closed
        return False
    return tty and os.environ.get("TERM") != "dumb"


def describe(error: grpc.RpcError | None) -> str:
    """One short line for why a stream or call failed."""
    if error is None:
        return "the event stream ended"
    if not isinstance(error, grpc.Call):
        return " ".join(str(error).split()) or type(error).__name__
    details = " ".join((error.details() or "").split())
    if "failed to connect to all addresses" in details:
        # "...; last error: UNKNOWN: ipv4:127.0.0.1:7070: Failed to connect to remote host:
        # Connection refused" says it all in its last words.
        details = details.rsplit(": ", 1)[-1]
    return f"{error.code().name}: {details}" if details else error.code().name


def _is_fatal(error: grpc.RpcError | None) -> bool:
    return isinstance(error, grpc.Call) and error.code() in FATAL_CODES


def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences (what the terminal shows)."""
    return _ANSI.sub("", text)


def elide_end(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis at the end when cut."""
    if len(text) <= width:
        return text
    return text[: width - 1] + _ELLIPSIS if width > 0 else ""


def elide_start(text: str, width: int) -> str:
    """`text` cut to `width` characters from the left, so its end (a method name) stays."""
    if len(text) <= width:
        return text
    return _ELLIPSIS + text[len(text) - width + 1 :] if width > 0 else ""


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


# ---------------------------------------------------------------------------------------------
# Rendering (pure)


@dataclass(frozen=True)
class Link:
    """The connection to the control plane, as the header shows it."""

    target: str
    state: str = "connected"  # "connecting", "connected" or "disconnected"
    error: str = ""  # why the last attempt failed
    retry_in: float | None = None  # seconds until the next attempt, when one is scheduled
    fetched_at: float | None = None  # wall-clock time the response was fetched


# A line is a list of (text, SGR code or None) segments, coloured only when asked.
_Segment = tuple[str, str | None]


@dataclass(frozen=True)
class _Column:
    title: str
    right: bool = False  # numbers align right
    cut: Callable[[str, int], str] | None = None  # how a cell shrinks; None = never
    min_width: int = 0
    weight: int = 1  # when shrinking, a column of weight 2 keeps about twice the width


def _layout(columns: Sequence[_Column], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """Column widths, then the separator, that fit `width`: cut columns shrink, widest first."""
    widths = [
        max([len(column.title), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    separator = 2 if sum(widths) + 2 * (len(widths) - 1) <= width else 1
    excess = sum(widths) + separator * (len(widths) - 1) - width
    while excess > 0:
        candidates = [
            i for i, column in enumerate(columns) if column.cut and widths[i] > column.min_width
        ]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i] / columns[i].weight)
        widths[widest] -= 1
        excess -= 1
    return [*widths, separator]


def _table(
    columns: Sequence[_Column],
    rows: Sequence[Sequence[str]],
    colors: Sequence[Sequence[str | None]],
    width: int,
) -> list[list[_Segment]]:
    """A header line and one line per row, each cell cut and padded to its column."""
    *widths, separator = _layout(columns, rows, width)
    gap = " " * separator
    lines: list[list[_Segment]] = []
    header: list[_Segment] = []
    for i, column in enumerate(columns):
        title = elide_end(column.title, widths[i])
        header.append(((gap if i else "") + _pad(title, widths[i], column.right), "1"))
    lines.append(header)
    for row, row_colors in zip(rows, colors, strict=True):
        line: list[_Segment] = []
        for i, column in enumerate(columns):
            cell = row[i]
            if len(cell) > widths[i]:
                cell = (column.cut or elide_end)(cell, widths[i])
            if i:
                line.append((gap, None))
            line.append((_pad(cell, widths[i], column.right), row_colors[i]))
        lines.append(line)
    return lines


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _emit(line: Sequence[_Segment], width: int, color: bool) -> str:
    """The line as text of at most `width` visible characters, coloured when asked."""
    plain = "".join(text for text, _ in line).rstrip()
    cut = len(plain) > width
    budget = width - 1 if cut else len(plain)
    parts: list[str] = []
    used = 0
    for text, code in line:
        if used >= budget:
            break
        piece = text[: budget - used]
        used += len(piece)
        parts.append(f"\x1b[{code}m{piece}{RESET}" if color and code and piece.strip() else piece)
    if cut:
        parts.append(_ELLIPSIS)
    return "".join(parts)


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
        t = event.transition
        age = now - event.time.ToNanoseconds() / 1e9
        last = (age, f"{_letter(t.from_state)}->{_letter(t.to_state)}")
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
    _Column("SERVICE", cut=elide_end, min_width=4),
    _Column("BREAKER", cut=elide_start, min_width=8, weight=2),
    _Column("STATE"),
    _Column("INST"),
    _Column("FAIL%", right=True),
    _Column("SLOW%", right=True),
    _Column("CALLS", right=True),
    _Column("FAILED", right=True),
    _Column("REJ", right=True),
    _Column("LAST"),
)

_INSTANCE_COLUMNS = (
    _Column("INSTANCE", cut=elide_start, min_width=8, weight=2),
    _Column("SERVICE", cut=elide_end, min_width=4),
    _Column("REV", right=True),
    _Column("BREAKERS", right=True),
    _Column("AGE", right=True),
    _Column("NACK", cut=elide_end, min_width=4, weight=3),
)


def _header(
    response: pb.ListBreakersResponse | None, link: Link, now: float, width: int
) -> list[_Segment]:
    """Address, revision, instances, time and the connection; optional parts go when narrow."""
    if link.state == "connected":
        status: _Segment = ("connected", "32")
    elif link.state == "connecting":
        status = (f"connecting{_ELLIPSIS}", "33")
    else:
        when = f" in {link.retry_in:.1f}s" if link.retry_in is not None else _ELLIPSIS
        status = (f"disconnected {_DASH} reconnecting{when}", "1;31")
    parts: list[tuple[int, _Segment]] = [(0, (link.target, "1"))]  # (priority to keep, segment)
    if response is not None:
        parts.append((2, (f"rev {response.revision}", None)))
        parts.append((3, (f"{len(response.instances)} instances", None)))
    parts.append((4, (time.strftime("%H:%M:%S", time.localtime(now)), None)))
    parts.append((1, status))
    while len(parts) > 2 and sum(len(s[0]) + 2 for _, s in parts) - 2 > width:
        parts.remove(max(parts, key=lambda part: part[0]))
    line: list[_Segment] = []
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
    lines: list[list[_Segment]] = [_header(response, link, now, width)]
    if link.state != "connected":
        if response is not None and link.fetched_at is not None:
            note = f"STALE: last update {format_age(now - link.fetched_at)} ago"
        else:
            note = "no data yet"
        if link.error:
            note += f" {_DASH} {link.error}"
        lines.append([(note, "33")])
    lines.append([])
    if response is None:
        return "\n".join(_emit(line, width, color) for line in lines)

    seen: dict[tuple[str, str], pb.Event] = {}
    for event in events:
        if event.WhichOneof("kind") != "transition":
            continue
        key = (event.transition.service, event.transition.name)
        if key not in seen or event.time.ToNanoseconds() >= seen[key].time.ToNanoseconds():
            seen[key] = event
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
    table = _table(_BREAKER_COLUMNS, rows, colors, width)

    footer: list[list[_Segment]] = []
    shown = [item for item in response.instances if instances or item.HasField("nack")]
    if shown:
        footer.append([])
        footer.extend(
            _table(
                _INSTANCE_COLUMNS,
                [
                    [
                        item.instance_id,
                        item.service,
                        str(item.applied_revision),
                        str(item.breakers),
                        format_age(item.report_age),
                        f"rev {item.nack.revision}: {item.nack.reason}"
                        if item.HasField("nack")
                        else "",
                    ]
                    for item in shown
                ],
                [[None, None, None, None, None, "33"] for _ in shown],
                width,
            )
        )
    footer.append([])
    footer.append([(_LEGEND if rows else "(no breakers reported)", "2")])

    if height is not None and len(lines) + len(table) + len(footer) > height:
        keep = height - len(lines) - len(footer) - 2  # rows besides the title and "more" lines
        if keep >= 0:
            hidden = len(table) - 1 - keep
            more = f"{_ELLIPSIS} {hidden} more (narrow with --service, --method or --state)"
            table = [*table[: 1 + keep], [(more, "2")]]
    lines.extend(table)
    lines.extend(footer)
    return "\n".join(_emit(line, width, color) for line in lines)


# ---------------------------------------------------------------------------------------------
# events --follow and the stream under both views


class _EventStream(Protocol):
    """What the views use of a WatchEvents call."""

    def initial_metadata(self) -> Any: ...
    def is_active(self) -> bool: ...
    def cancel(self) -> bool: ...
    def __iter__(self) -> Iterator[pb.Event]: ...


class EventFollower:
    """`events --follow`: one line per event; a lost stream is reported and reconnected."""

    def __init__(
        self,
        stub: pb_grpc.ControlPlaneStub,
        request: pb.WatchEventsRequest,
        *,
        target: str,
        out: TextIO,
        err: TextIO,
        metadata: Sequence[tuple[str, str]] = (),
        max_events: int = 0,
        backoff: Backoff | None = None,
    ) -> None:
        self._stub = stub
        self._request = request
        self._target = target
        self._out = out
        self._err = err
        self._metadata = tuple(metadata)
        self._max_events = max_events
        self._backoff = backoff or new_backoff()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: _EventStream | None = None
        self.printed = 0

    def run(self) -> int:
        """Print events until stopped, interrupted or `max_events`; 0, or raise a fatal RpcError."""
        lost = False
        try:
            while not self._stopped.is_set():
                subscribed, error = self._follow_once(reconnected=lost)
                if self._stopped.is_set():
                    break
                if _is_fatal(error):
                    assert error is not None
                    raise error
                if subscribed:
                    self._backoff.reset()
                lost = True
                delay = self._backoff.next_delay()
                self._say(
                    f"control plane at {self._target} unavailable: {describe(error)}; "
                    f"reconnecting in {delay:.1f}s"
                )
                self._stopped.wait(delay)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        """End `run` (from any thread)."""
        self._stopped.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def _follow_once(self, *, reconnected: bool) -> tuple[bool, grpc.RpcError | None]:
        """One stream until it ends: (whether it was subscribed, the error it ended with)."""
        call = self._stub.WatchEvents(self._request, metadata=self._metadata)
        with self._lock:
            self._call = call
            if self._stopped.is_set():
                call.cancel()
        subscribed = False
        try:
            call.initial_metadata()  # the server sends it once the subscription exists
            if call.is_active():
                subscribed = True
                if reconnected:
                    self._say(
                        f"reconnected to the control plane at {self._target} "
                        "(events while it was unreachable are not replayed)"
                    )
            for event in call:
                print(format_event(event), file=self._out, flush=True)
                self.printed += 1
                if self._max_events and self.printed >= self._max_events:
                    self.stop()
                    break
        except grpc.RpcError as error:
            return subscribed, error
        return subscribed, None

    def _say(self, message: str) -> None:
        print(f"{PROG}: {message}", file=self._err, flush=True)


# ---------------------------------------------------------------------------------------------
# status --watch

_UP, _EVENT, _DOWN = "up", "event", "down"


class StatusWatch:
    """`status --watch`: the live table, fetched on events and every `interval`, reconnecting."""

    def __init__(
        self,
        stub: pb_grpc.ControlPlaneStub,
        request: pb.ListBreakersRequest,
        *,
        target: str,
        out: TextIO,
        err: TextIO,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float = 5.0,
        interval: float = 2.0,
        coalesce: float = COALESCE,
        tty: bool = False,
        color: bool = False,
        as_json: bool = False,
        instances: bool = False,
        iterations: int = 0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        terminal_size: Callable[[], os.terminal_size] = shutil.get_terminal_size,
    ) -> None:
        self._stub = stub
        self._request = pb.ListBreakersRequest()
        self._request.CopyFrom(request)
        self._request.include_instances = True  # their state ages fill LAST when no event did
        self._events_request = pb.WatchEventsRequest(service=request.service)
        self._target = target
        self._out = out
        self._err = err
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self._interval = interval
        self._coalesce = coalesce
        self._screen = tty and not as_json  # redraw in place
        self._color = color
        self._json = as_json
        self._instances = instances
        self._iterations = iterations
        self._backoff = backoff or new_backoff()
        self._clock = clock
        self._wall_clock = wall_clock
        self._terminal_size = terminal_size
        self._ascii = not _encodes(out, _ELLIPSIS + _DASH)

        self._queue: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        self._generation = 0  # news from an older stream is ignored
        self._call: _EventStream | None = None
        self._up = False  # the event stream is subscribed
        self._state = "connecting"
        self._ever_connected = False
        self._error = ""
        self._retry_at = clock()
        self._need_fetch = False
        self._dirty = False
        self._last_fetch = -math.inf
        self._next_tick = clock()
        self._transitions: dict[tuple[str, str], pb.Event] = {}
        self._done = threading.Event()
        self.response: pb.ListBreakersResponse | None = None
        self.fetched_at: float | None = None
        self.events = 0  # received from the stream
        self.fetches = 0  # ListBreakers answered
        self.frames = 0  # screens drawn
        self.frame = ""  # the latest screen drawn

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Show the live table until interrupted (exit status 0) or a fatal RpcError."""
        try:
            if self._screen:
                self._write(HIDE_CURSOR + CLEAR_SCREEN)
            while not self._done.is_set():
                self.step(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()
            if self._screen:
                self._write(RESET + SHOW_CURSOR + "\n")
        return 0

    def stop(self) -> None:
        """End `run` after its current turn (from any thread)."""
        self._done.set()

    def close(self) -> None:
        """Cancel the event stream."""
        self._drop_stream()

    def step(self, wait: float) -> None:
        """One turn of `run`: take stream news (waiting up to `wait` s), fetch and draw if due."""
        now = self._clock()
        if self._call is None and now >= self._retry_at:
            self._subscribe()
        timeout = max(0.0, min(wait, self._next_deadline(now) - now))
        for generation, kind, payload in self._take(timeout):
            if generation != self._generation:
                continue
            if kind == _UP:
                self._up = self._need_fetch = True
            elif kind == _EVENT:
                self._dirty = True
                self.events += 1
                if payload.WhichOneof("kind") == "transition":
                    t = payload.transition
                    self._transitions[(t.service, t.name)] = payload
            else:
                self._lost(payload)
        now = self._clock()
        if self._up and (
            self._need_fetch
            or (self._dirty and now >= self._last_fetch + self._coalesce)
            or now >= self._last_fetch + self._interval
        ):
            self._fetch()
        elif self._screen and now >= self._next_tick:
            self._render(force=True)  # the clock and the ages move on

    def _next_deadline(self, now: float) -> float:
        deadlines = []
        if self._call is None:
            deadlines.append(self._retry_at)
        if self._up:
            deadlines.append(self._last_fetch + self._interval)
            if self._need_fetch:
                deadlines.append(now)
            elif self._dirty:
                deadlines.append(self._last_fetch + self._coalesce)
        if self._screen:
            deadlines.append(self._next_tick)
        return min(deadlines, default=math.inf)

    def _take(self, timeout: float) -> list[tuple[int, str, Any]]:
        items = []
        try:
            items.append(self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait())
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return items

    # -- the connection --------------------------------------------------------------------

    def _subscribe(self) -> None:
        """Open WatchEvents before fetching, so no transition falls between the two."""
        self._generation += 1
        call = self._stub.WatchEvents(self._events_request, metadata=self._metadata)
        self._call = call
        threading.Thread(
            target=self._read, args=(self._generation, call), name="meshbreaker-events", daemon=True
        ).start()

    def _read(self, generation: int, call: _EventStream) -> None:
        """The reader thread: UP once subscribed, each EVENT, then DOWN with the error."""
        put = self._queue.put
        try:
            call.initial_metadata()  # the server sends it once the subscription exists
            if call.is_active():
                put((generation, _UP, None))
            for event in call:
                put((generation, _EVENT, event))
            put((generation, _DOWN, None))
        except grpc.RpcError as error:
            put((generation, _DOWN, error))

    def _drop_stream(self) -> None:
        call, self._call = self._call, None
        self._generation += 1
        self._up = False
        if call is not None:
            call.cancel()

    def _lost(self, error: grpc.RpcError | None) -> None:
        """The stream or a fetch failed: keep the last table, schedule a reconnect."""
        if _is_fatal(error):
            assert error is not None
            raise error
        self._drop_stream()
        delay = self._backoff.next_delay()
        self._retry_at = self._clock() + delay
        self._error = describe(error)
        news = self._state != "disconnected"
        self._state = "disconnected"
        if not self._screen:
            self._say(
                f"control plane at {self._target} unavailable: {self._error}; "
                f"reconnecting in {delay:.1f}s"
            )
        self._render(force=news)

    def _fetch(self) -> None:
        try:
            response = self._stub.ListBreakers(
                self._request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            self._lost(error)
            return
        self.response = response
        self.fetched_at = self._wall_clock()
        self._last_fetch = self._clock()
        self._need_fetch = self._dirty = False
        if self._state != "connected":
            if self._ever_connected and not self._screen:
                self._say(f"reconnected to the control plane at {self._target}")
            self._state = "connected"
            self._ever_connected = True
            self._error = ""
            self._backoff.reset()
        live = {(group.service, group.name) for group in response.groups}
        for key in [key for key in self._transitions if key not in live]:
            del self._transitions[key]
        self.fetches += 1
        self._render(force=True)
        if self._iterations and self.fetches >= self._iterations:
            self.stop()

    # -- output ----------------------------------------------------------------------------

    def link(self) -> Link:
        """The connection as the header shows it now."""
        retry_in = None
        if self._state == "disconnected" and self._call is None:
            retry_in = max(0.0, self._retry_at - self._clock())
        return Link(
            target=self._target,
            state=self._state,
            error=self._error,
            retry_in=retry_in,
            fetched_at=self.fetched_at,
        )

    def render(self) -> str:
        """The screen as it would be drawn now."""
        size = self._terminal_size()
        text = render_status(
            self.response,
            self._transitions.values(),
            now=self._wall_clock(),
            link=self.link(),
            width=size.columns,
            height=size.lines if self._screen else None,
            color=self._color,
            instances=self._instances,
        )
        if self._ascii:
            text = text.replace(_ELLIPSIS, "~").replace(_DASH, "-")
        return text

    def _render(self, *, force: bool) -> None:
        """Draw the screen; off a terminal only when forced (a fetch, a lost connection)."""
        self._next_tick = self._clock() + 1.0
        if self._json:
            if force and self._state == "connected" and self.response is not None:
                document = json_format.MessageToJson(
                    self.response, preserving_proto_field_name=True
                )
                self._write(document + "\n")
            return
        if not (force or self._screen):
            return
        self.frame = self.render()
        if self._screen:
            body = self.frame.replace("\n", CLEAR_LINE_END + "\n")
            self._write(HOME + body + CLEAR_LINE_END + CLEAR_BELOW)
        else:
            self._write(("\n" if self.frames else "") + self.frame + "\n")
        self.frames += 1

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _say(self, message: str) -> None:
        print(f"{PROG}: {message}", file=self._err, flush=True)


def _encodes(stream: TextIO, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
