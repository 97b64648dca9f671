"""Nothing a remote process reports may put a control character on the operator's terminal.

Instance ids, breaker names and NACK reasons reach the control plane from agents, and from there
every view of the CLI. Each view is rendered here with a recording console (colour on, so rich's
own SGR sequences are there and told apart) and must show every hostile character as its escape,
and survive ages and rates that are not numbers.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.text import Text

from meshbreaker import live
from meshbreaker.cli import main, policy_table, status_view
from meshbreaker.live.table import ELLIPSIS, keep_end
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.server_support import ControlPlane, wait_until

HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202eevil\r\x00"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours rich itself writes when asked to
METHOD = "/bank.v1.AccountService/GetBalance"


def unsafe_characters(text: str) -> set[str]:
    """The characters of `text` a terminal would act on, besides newlines and rich's colours."""
    return {char for char in SGR.sub("", text) if not (char.isprintable() or char == "\n")}


def recorded(renderable: RenderableType, width: int = 100) -> str:
    console = Console(
        record=True, width=width, file=io.StringIO(), color_system="standard", force_terminal=True
    )
    console.print(renderable)
    return console.export_text(styles=True)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    server = ControlPlane(tmp_path / "cp.db")
    yield server
    server.close()


def test_clean_shows_each_control_character_as_its_escape() -> None:
    assert live.clean("plain name /a.B/C") == "plain name /a.B/C"
    assert live.clean("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert live.clean("\u202eabc\u200b\x9b\x7f") == "\\u202eabc\\u200b\\x9b\\x7f"
    assert live.clean("é☃ 漢字") == "é☃ 漢字"  # printable text stays as it is


def test_say_cleans_what_it_is_given() -> None:
    stream = io.StringIO()
    live.say(stream, f"cannot reach {HOSTILE}")
    assert not unsafe_characters(stream.getvalue())
    assert stream.getvalue().startswith("meshbreaker: cannot reach \\x1b[2J")


def test_every_cli_view_of_a_hostile_report_is_safe(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: what agents sent reaches `status`, `status --watch` and `events` escaped."""
    events: list[tuple[int, str, str]] = []

    def follow() -> None:
        status = main(["--target", plane.target, "events", "--follow", "--max-events", "2"])
        captured = capsys.readouterr()
        events.append((status, captured.out, captured.err))

    follower = threading.Thread(target=follow)
    follower.start()
    assert wait_until(lambda: plane.running.servicer.events.subscribers > 0)
    plane.stub.ReportState(
        pb.ReportStateRequest(
            instance_id=f"tx{HOSTILE}",
            service="transaction",
            nack=pb.Nack(revision=1, reason=f"bad{HOSTILE}"),
            # The server refuses control characters in breaker names and non-finite ages
            # (tests/control/test_bounds.py); an instance id and a NACK reason still carry them.
            breakers=[pb.BreakerSnapshot(name=METHOD, state=pb.BREAKER_STATE_OPEN, state_age=1.0)],
        ),
        timeout=5,
    )
    follower.join(5)
    assert events and events[0][0] == 0, events
    assert "\\x1b[2J" in events[0][1] and not unsafe_characters(events[0][1] + events[0][2])

    for args in (
        ["status"],
        ["status", "--instances"],
        ["status", "--watch", "--instances", "--iterations", "1"],
        ["status", "--json"],
    ):
        assert main(["--target", plane.target, *args]) == 0
        out = capsys.readouterr().out
        assert not unsafe_characters(out), (args, out)
        assert "\\x1b[2J" in out or "\\u001b[2J" in out, (args, out)  # shown, escaped


_TEXT = st.text(max_size=40)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_COUNT = st.integers(min_value=0, max_value=2**63 - 1)
_STATE = st.sampled_from([0, 1, 2, 3, 4, 5, 99])


@st.composite
def responses(draw: st.DrawFn) -> pb.ListBreakersResponse:
    """A ListBreakersResponse with anything in its strings and numbers."""
    response = pb.ListBreakersResponse(revision=draw(_COUNT))
    for _ in range(draw(st.integers(0, 3))):
        group = response.groups.add(
            service=draw(_TEXT), name=draw(_TEXT), instances=draw(_COUNT), open=draw(_COUNT),
            forced_open=draw(_COUNT), failure_rate=draw(_FLOAT), slow_call_rate=draw(_FLOAT),
            total=draw(_COUNT), failed=draw(_COUNT), rejected=draw(_COUNT),
        )  # fmt: skip
        for _ in range(draw(st.integers(0, 2))):
            group.instance_breakers.add(
                instance_id=draw(_TEXT),
                report_age=draw(_FLOAT),
                snapshot=pb.BreakerSnapshot(
                    name=draw(_TEXT),
                    state=draw(_STATE),  # type: ignore[arg-type]
                    state_age=draw(_FLOAT),
                    failure_rate=draw(_FLOAT),
                ),
            )
    for _ in range(draw(st.integers(0, 2))):
        instance = response.instances.add(
            instance_id=draw(_TEXT), service=draw(_TEXT), report_age=draw(_FLOAT)
        )
        if draw(st.booleans()):
            instance.nack.CopyFrom(pb.Nack(revision=draw(_COUNT), reason=draw(_TEXT)))
    return response


def named(text: str) -> pb.ListBreakersResponse:
    """A response whose breaker name, service and instance id are all `text`."""
    response = pb.ListBreakersResponse(revision=1)
    group = response.groups.add(service=text, name=text, instances=1, total=5)
    group.instance_breakers.add(
        instance_id=text,
        report_age=1.0,
        snapshot=pb.BreakerSnapshot(name=text, state=pb.BREAKER_STATE_OPEN),
    )
    response.instances.add(instance_id=text, service=text, report_age=1.0)
    response.instances[0].nack.CopyFrom(pb.Nack(revision=1, reason=text))
    return response


# Text whose cells are not the sum of its characters' (rich counts graphemes), or that joins or
# hides: emoji with VS16 after Hangul jamo or combining marks, wide CJK, zero-width characters.
_GRAPHEMES = [
    "\u2764\ufe0f" * 12,
    "\u1100\u2764\ufe0f" * 8,
    "\u1161\u2764\ufe0f" * 8,
    "\u2764\u0301\ufe0f" * 8,
    "\u1100\u1161\u11a8" * 10,
    "e\u0301\u0308" * 12,
    "\u6f22\u5b57" * 12,
    "a\u200b\u200d\u00ad" * 10,
    "\U0001f1fa\U0001f1f8\U0001f3fb" * 8,
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=responses(), width=st.integers(20, 160), now=_FLOAT)
@example(response=named(_GRAPHEMES[0]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[0]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[1]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[1]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[2]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[2]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[3]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[3]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[4]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[4]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[5]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[5]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[6]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[6]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[7]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[7]), width=33, now=1.8e9)
@example(response=named(_GRAPHEMES[8]), width=20, now=1.8e9)
@example(response=named(_GRAPHEMES[8]), width=33, now=1.8e9)
def test_any_response_renders_safely_within_the_width(
    response: pb.ListBreakersResponse, width: int, now: float
) -> None:
    now = now if math.isfinite(now) and abs(now) < 1e10 else 1.8e9
    link = live.Link(f"host{HOSTILE}:1", state="disconnected", error=HOSTILE, fetched_at=now - 3)
    screens = [
        live.render_status(response, (), now=now, link=link, width=width, instances=True),
        status_view(response, width=width, instances=True),
    ]
    for renderable in screens:
        text = recorded(renderable, width)
        assert not unsafe_characters(text)
        assert all(cell_len(line) <= width for line in SGR.sub("", text).splitlines())


_GRAPHEME_TEXT = st.text(
    alphabet=st.sampled_from("\u1100\u1161\u11a8\u0301\u0308\u200b\u00ad\u2764\ufe0f\u6f22a/."),
    max_size=40,
)


@example(text="\u2764\ufe0f" * 12, width=10)  # 1 + 0 cells apart, 2 together
@example(text="\u1100\u2764\ufe0f" * 4, width=2)
@example(text="a\u0301" * 8, width=3)  # the mark must not join the ellipsis
@given(text=_GRAPHEME_TEXT, width=st.integers(0, 30))
def test_a_cell_cut_from_its_start_fits_its_width_in_cells(text: str, width: int) -> None:
    kept = keep_end(Text(text), width).plain
    assert cell_len(kept) <= width
    if kept != text and kept:
        assert kept.startswith(ELLIPSIS) and text.endswith(kept[1:])
        assert kept == ELLIPSIS or cell_len(kept[1]) > 0


def test_a_wide_address_gives_way_before_the_connection_status() -> None:
    # 17 characters, 32 cells: counted in characters, the line kept parts that did not fit.
    link = live.Link("\u6f22" * 15 + ":1", state="connected", error="", fetched_at=1.8e9)
    screen = live.render_status(named("x"), (), now=1.8e9, link=link, width=40)
    header = SGR.sub("", recorded(screen, 40)).splitlines()[0]
    assert header.endswith("  connected") and cell_len(header) <= 40


@settings(max_examples=30, deadline=None)
@given(texts=st.lists(_TEXT, min_size=5, max_size=5))
def test_policies_and_events_render_safely(texts: list[str]) -> None:
    policies = pb.ListPoliciesResponse(
        policies=[
            pb.Policy(
                id=texts[0],
                selector=pb.Selector(caller=texts[1], service=texts[2], method=texts[3]),
                override=pb.OVERRIDE_FORCED_OPEN,
            )
        ]
    )
    assert not unsafe_characters(recorded(policy_table(policies, 80), 80))
    for event in (
        pb.Event(
            transition=pb.BreakerTransition(service=texts[0], instance_id=texts[1], name=texts[2])
        ),
        pb.Event(policy_change=pb.PolicyChange(policy_id=texts[3], actor=texts[4])),
        pb.Event(nack=pb.ConfigNack(service=texts[0], nack=pb.Nack(reason=texts[4]))),
    ):
        assert not unsafe_characters(recorded(live.event_line(event)))
