"""The live views (`status --watch`, `events --follow`) against real control planes on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rich.console import Console

from meshbreaker import live
from meshbreaker._backoff import Backoff
from meshbreaker.cli import main
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.server_support import ControlPlane, wait_until

METHOD = "/bank.v1.AccountService/GetBalance"
AUDIT = "/bank.v1.AuditService/Record"
LONG = "accounts-eu/very.long.package.v1.SomeExtremelyLongServiceName/AndAnEvenLongerMethodName"
LONG_SERVICE = "a-really-long-caller-service-name"
CONSOLE_SCRIPT = Path(sys.executable).parent / "meshbreaker"
CLOSED, OPEN, HALF_OPEN = pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    server = ControlPlane(tmp_path / "cp.db")
    yield server
    server.close()


def fast_backoff() -> Backoff:
    """Reconnect attempts every 10-50 ms, so a restart is noticed within the test's patience."""
    return Backoff(0.01, 0.05)


def snapshot(name: str, state: pb.BreakerState.ValueType, **fields: Any) -> pb.BreakerSnapshot:
    return pb.BreakerSnapshot(name=name, state=state, **fields)


def report(
    plane: ControlPlane, instance: str, service: str, *breakers: pb.BreakerSnapshot, **extra: Any
) -> None:
    """What an agent sends: one instance's breaker snapshots."""
    plane.stub.ReportState(
        pb.ReportStateRequest(instance_id=instance, service=service, breakers=breakers, **extra),
        timeout=30,
        wait_for_ready=True,  # the channel may still be reconnecting after a restart
    )


def put_policy(plane: ControlPlane, policy_id: str) -> None:
    method = f"/bank.v1.AccountService/{policy_id}"
    policy = pb.Policy(id=policy_id, selector=pb.Selector(method=method))
    plane.stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]), timeout=30, wait_for_ready=True)


HIDE_CURSOR, SHOW_CURSOR, CURSOR_UP = "\x1b[?25l", "\x1b[?25h", "\x1b[1A"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def visible_lines(text: str) -> list[str]:
    return strip_ansi(text).splitlines()


def screen(
    response: pb.ListBreakersResponse | None,
    events: Iterable[pb.Event] = (),
    *,
    width: int = 80,
    height: int | None = None,
    color: bool = False,
    **options: Any,
) -> str:
    """The status screen as a recording console `width` cells wide shows it."""
    console = Console(
        record=True,
        width=width,
        height=height or 25,
        file=io.StringIO(),
        color_system="standard" if color else None,
        force_terminal=color,
    )
    console.print(live.render_status(response, events, width=width, height=height, **options))
    return console.export_text(styles=color).rstrip("\n")


def row_of(text: str, name_end: str) -> list[str]:
    """The words of the breaker table row whose BREAKER cell ends with `name_end`."""
    return next(line.split() for line in visible_lines(text) if f"{name_end} " in line)


class EventLog:
    """A WatchEvents subscription read by a thread: the events the live view would see."""

    def __init__(self, plane: ControlPlane) -> None:
        self.events: list[pb.Event] = []
        self._call = plane.stub.WatchEvents(pb.WatchEventsRequest())
        self._call.initial_metadata()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._call:
                self.events.append(event)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


def scripted_mesh(plane: ControlPlane) -> tuple[pb.ListBreakersResponse, list[pb.Event]]:
    """Three instances report; tx-1 sees METHOD open; gw-0 reports a NACK."""
    log = EventLog(plane)
    try:
        report(
            plane, "tx-0", "transaction",
            snapshot(METHOD, CLOSED, total=1234, failed=5, failure_rate=0.004, state_age=30.0),
            snapshot(LONG, CLOSED, total=12, state_age=30.0),
        )  # fmt: skip
        report(plane, "tx-1", "transaction", snapshot(METHOD, CLOSED, total=99))
        report(
            plane, "tx-1", "transaction",
            snapshot(METHOD, OPEN, total=15234, failed=9800, rejected=123456, failure_rate=0.75,
                     slow_call_rate=0.1, state_age=0.1),
        )  # fmt: skip
        report(
            plane, "gw-0", LONG_SERVICE, snapshot(AUDIT, HALF_OPEN, total=50, failed=2),
            nack=pb.Nack(revision=3, reason="policy.config.window_size: must be >= 1"),
        )  # fmt: skip
        # Transitions: tx-1 CLOSED -> OPEN, gw-0 NEW -> HALF_OPEN; plus gw-0's NACK.
        assert wait_until(lambda: len(log.events) == 3), log.events
    finally:
        log.close()
    response = plane.stub.ListBreakers(pb.ListBreakersRequest(include_instances=True), timeout=5)
    return response, log.events


# ---------------------------------------------------------------------------------------------
# Rendering: a pure function, fed with what a real control plane answered


def test_the_table_fits_80_columns_and_shows_the_reported_state(plane: ControlPlane) -> None:
    response, events = scripted_mesh(plane)
    link = live.Link(plane.target, fetched_at=time.time())
    now = max(event.time.ToNanoseconds() for event in events) / 1e9 + 5.0  # 5 s after the last
    text = screen(response, events, now=now, link=link, width=80)

    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "\x1b[" not in text
    assert lines[0].startswith(f"{plane.target}  rev 0  3 instances  ")
    assert lines[0].endswith("  connected")
    assert lines[2].split() == [
        "CALLER", "BREAKER", "STATE", "INST", "FAIL%", "SLOW%", "CALLS", "FAILED", "REJ", "LAST"
    ]  # fmt: skip

    # tx-0 closed, tx-1 open: the worst state, both counts, mean rates, summed counters, and
    # the transition seen 5 s ago.
    service, breaker, *rest = row_of(text, "GetBalance")
    assert service.endswith("…") and "transaction".startswith(service[:-1])
    assert breaker.startswith("…") and METHOD.endswith(breaker[1:]) and len(breaker) >= 12
    assert rest == ["OPEN", "1O", "1C", "38%", "5.0%", "16k", "9805", "123k", "C->O", "5s"]
    # The long breaker is elided from the left: its method stays visible.
    service, breaker, *rest = row_of(text, "MethodName")
    assert breaker.startswith("…") and LONG.endswith(breaker[1:]) and len(breaker) < len(LONG)
    # No event for it (first seen CLOSED): the age comes from its report's state age.
    assert rest[:3] == ["CLOSED", "1C", "0%"] and rest[-2] == "C" and rest[-1] in ("34s", "35s")
    service, breaker, *rest = row_of(text, "Record")
    assert service.endswith("…") and LONG_SERVICE.startswith(service[:-1])
    assert rest == ["HALF_OPEN", "1H", "0%", "0%", "50", "2", "0", "new->H", "5s"]
    # The NACK shows under the table, with its instance; instances without one do not.
    nack = next(line for line in lines if line.startswith("gw-0 "))
    assert "rev 3: policy.config.window" in nack
    assert not any(line.startswith("tx-") for line in lines)
    assert lines[-1].startswith("INST: C closed, O open, H half-open")


def test_colours_only_when_asked_and_every_width_fits(plane: ControlPlane) -> None:
    response, events = scripted_mesh(plane)
    now = time.time()
    link = live.Link(plane.target, fetched_at=now)
    plain = screen(response, events, now=now, link=link, width=80)
    colored = screen(response, events, now=now, link=link, width=80, color=True)
    assert strip_ansi(colored) == plain
    assert "\x1b[1;31mOPEN" in colored and "\x1b[33mHALF_OPEN" in colored
    assert "\x1b[32mCLOSED" in colored and "\x1b[32mconnected" in colored
    for width in (40, 60, 79, 80, 100, 132, 200):
        for color in (False, True):
            text = screen(
                response, events, now=now, link=link, width=width, color=color, instances=True
            )
            lines = visible_lines(text)
            assert all(len(line) <= width for line in lines), (width, lines)
            assert any("tx-1" in line for line in lines)  # the instances table, when asked
    wide = screen(response, events, now=now, link=link, width=200)
    assert LONG in wide and LONG_SERVICE in wide  # nothing is cut when there is room


def test_disconnected_header_keeps_the_table_marked_stale(plane: ControlPlane) -> None:
    response, events = scripted_mesh(plane)
    fetched = time.time()
    link = live.Link(
        plane.target,
        state="disconnected",
        error="UNAVAILABLE: Connection refused",
        retry_in=2.14,
        fetched_at=fetched,
    )
    text = screen(response, events, now=fetched + 75, link=link, color=True)
    lines = visible_lines(text)
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert lines[0].endswith("disconnected — reconnecting in 2.1s")
    assert lines[1] == "STALE: last update 1m ago — UNAVAILABLE: Connection refused"
    assert row_of(text, "GetBalance")[2] == "OPEN"  # the last table stays
    assert "\x1b[2mOPEN" in text and "\x1b[1;31mOPEN" not in text  # dimmed: it may be old

    never = live.Link(plane.target, state="disconnected", error="UNAVAILABLE: x", retry_in=0.5)
    assert visible_lines(screen(None, (), now=fetched, link=never))[1] == (
        "no data yet — UNAVAILABLE: x"
    )


def test_a_tall_table_is_cut_to_the_terminal_height(plane: ControlPlane) -> None:
    names = [f"/bank.v1.AccountService/Method{i:02d}" for i in range(30)]
    report(plane, "tx-0", "transaction", *(snapshot(name, CLOSED) for name in names))
    response = plane.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5)
    link = live.Link(plane.target, fetched_at=time.time())
    lines = screen(response, (), now=time.time(), link=link, height=24).splitlines()
    assert len(lines) == 24
    shown = [line for line in lines if "/Method" in line]
    assert lines[lines.index(shown[-1]) + 1] == (
        f"… {30 - len(shown)} more (narrow with --caller, --method or --state)"
    )


# ---------------------------------------------------------------------------------------------
# status --watch: the loop, driven turn by turn


@pytest.fixture
def make_watch(plane: ControlPlane) -> Iterator[Callable[..., live.StatusWatch]]:
    channels: list[grpc.Channel] = []

    def make(**options: Any) -> live.StatusWatch:
        backoff = options.setdefault("backoff", fast_backoff())
        channel = grpc.insecure_channel(plane.target, options=live.channel_options(backoff))
        channels.append(channel)
        out = options.pop("out", io.StringIO())
        options.setdefault("console", Console(file=out, width=80, height=24))
        options.setdefault("err", io.StringIO())
        return live.StatusWatch(
            pb_grpc.ControlPlaneStub(channel),
            pb.ListBreakersRequest(),
            target=plane.target,
            **options,
        )

    yield make
    for channel in channels:
        channel.close()


def drive(watch: live.StatusWatch, until: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Turn the watch loop (each turn waits at most 50 ms) until `until()` or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch.step(0.05)
        if until():
            return True
    return until()


def test_watch_fetches_once_per_burst_and_periodically(
    plane: ControlPlane, make_watch: Callable[..., live.StatusWatch]
) -> None:
    clock, out = FakeClock(), io.StringIO()
    watch = make_watch(clock=clock, interval=2.0, coalesce=0.25, out=out)
    assert drive(watch, lambda: watch.fetches == 1)  # subscribed, then fetched at once
    assert "(no breakers reported)" in watch.frame

    names = [f"/bank.v1.AccountService/M{i}" for i in range(10)]
    for name in names:  # ten reports, ten transitions (NEW -> OPEN)
        report(plane, "tx-0", "transaction", snapshot(name, OPEN))
    assert drive(watch, lambda: watch.events == 10)
    assert watch.fetches == 1  # the burst waits for the coalescing delay
    clock.advance(0.3)
    watch.step(0.05)
    assert watch.fetches == 2  # one fetch for the whole burst
    assert all(row_of(watch.frame, name.rsplit("/", 1)[1])[2] == "OPEN" for name in names)
    assert row_of(watch.frame, "M7")[-2] == "new->O"

    watch.step(0.05)
    assert watch.fetches == 2  # nothing new, not yet time
    report(plane, "tx-0", "transaction", snapshot("/bank.v1.AuditService/Record", CLOSED))
    clock.advance(2.1)  # first seen CLOSED is no event: the periodic refresh finds it
    watch.step(0.05)
    assert watch.fetches == 3
    assert row_of(watch.frame, "/Record")[2] == "CLOSED"
    assert row_of(watch.frame, "/Record")[-2] == "C"  # no event: in C since its reported age
    assert watch.frames == 3 and out.getvalue().count(plane.target) == 3  # a frame per fetch


def test_watch_survives_a_control_plane_restart(
    plane: ControlPlane, make_watch: Callable[..., live.StatusWatch]
) -> None:
    put_policy(plane, "p1")
    report(plane, "tx-0", "transaction", snapshot(METHOD, CLOSED, total=7))
    err = io.StringIO()
    watch = make_watch(interval=0.5, coalesce=0.05, err=err)
    assert drive(watch, lambda: watch.frame.startswith(plane.target) and watch.fetches >= 1)
    assert row_of(watch.frame, "GetBalance")[2] == "CLOSED" and "rev 1" in watch.frame

    report(plane, "tx-0", "transaction", snapshot(METHOD, OPEN, total=9))
    assert drive(watch, lambda: row_of(watch.frame, "GetBalance")[2] == "OPEN")
    assert row_of(watch.frame, "GetBalance")[-2] == "C->O"

    plane.stop()
    assert drive(watch, lambda: "disconnected — reconnecting" in watch.frame)
    note = watch.frame.splitlines()[1]
    assert note.startswith("STALE: last update ") and "UNAVAILABLE" in note
    assert row_of(watch.frame, "GetBalance")[2] == "OPEN"  # the last table, kept
    message = err.getvalue().splitlines()[0]
    assert message.startswith(f"meshbreaker: control plane at {plane.target} unavailable: ")
    assert "; reconnecting in " in message

    plane.start()  # same port, same SQLite file
    report(plane, "tx-0", "transaction", snapshot(METHOD, HALF_OPEN, total=42))
    assert drive(watch, lambda: watch.frame.splitlines()[0].endswith("  connected"))
    assert drive(watch, lambda: "GetBalance" in watch.frame)
    row = row_of(watch.frame, "GetBalance")
    assert row[2] == "HALF_OPEN" and "42" in row  # fresh data from the new server
    assert "rev 1" in watch.frame.splitlines()[0]  # the policy stored before the restart
    assert "STALE" not in watch.frame
    assert f"reconnected to the control plane at {plane.target}" in err.getvalue()


def test_watch_ends_on_an_error_retrying_cannot_fix(tmp_path: Path) -> None:
    secured = ControlPlane(tmp_path / "auth.db", admin_token="root", agent_token="agent")
    try:
        started = time.monotonic()
        status = main(["--target", secured.target, "status", "--watch"])
        assert status == 1 and time.monotonic() - started < 5
        status = main(["--target", secured.target, "events", "--follow"])
        assert status == 1
    finally:
        secured.close()


def test_watch_as_json_prints_one_document_per_refresh(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    report(plane, "tx-0", "transaction", snapshot(METHOD, OPEN))
    args = ["--target", plane.target, "status", "--watch", "--json", "--interval", "0.05"]
    assert main([*args, "--iterations", "2"]) == 0
    out, decoder, documents = capsys.readouterr().out.strip(), json.JSONDecoder(), []
    while out:
        document, end = decoder.raw_decode(out)
        documents.append(document)
        out = out[end:].strip()
    assert len(documents) == 2
    assert all(doc["groups"][0]["name"] == METHOD for doc in documents)


# ---------------------------------------------------------------------------------------------
# events --follow


def test_follow_survives_a_control_plane_restart(plane: ControlPlane) -> None:
    channel = grpc.insecure_channel(plane.target, options=live.channel_options(fast_backoff()))
    out, err = io.StringIO(), io.StringIO()
    follower = live.EventFollower(
        pb_grpc.ControlPlaneStub(channel),
        pb.WatchEventsRequest(),
        target=plane.target,
        console=Console(file=out),
        err=err,
        backoff=fast_backoff(),
    )
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(follower.run()))
    thread.start()

    def subscribed() -> bool:
        return plane.server is not None and plane.server.servicer.events.subscribers > 0

    try:
        assert wait_until(subscribed)
        put_policy(plane, "p1")
        assert wait_until(lambda: " policy put p1 revision 1 by " in out.getvalue())

        plane.stop()
        message = f"meshbreaker: control plane at {plane.target} unavailable: UNAVAILABLE"
        assert wait_until(lambda: message in err.getvalue())
        lines = err.getvalue().splitlines()
        assert lines[0].startswith(message) and "; reconnecting in " in lines[0]

        plane.start()  # same port, same SQLite file
        assert wait_until(subscribed)
        assert wait_until(lambda: "reconnected to the control plane at" in err.getvalue())
        put_policy(plane, "p2")
        assert wait_until(lambda: " policy put p2 revision 2 by " in out.getvalue())
    finally:
        follower.stop()
        thread.join(5)
        channel.close()
    assert results == [0]
    assert len(out.getvalue().splitlines()) == 2  # one line per event, nothing else


# ---------------------------------------------------------------------------------------------
# Ctrl-C, as a user presses it: the real command in a terminal


# Every wait below ends on its condition. The deadlines only catch a hang: beside a CPU hog, a
# fresh Python importing grpc and rich can take many seconds to start (a 15 s wait ran out).
PATIENCE = 60.0


def _read_until(fd: int, wanted: Callable[[bytes], bool]) -> bytes:
    """Read `fd` until `wanted(all read so far)`, its end, or PATIENCE; the caller checks which."""
    data = b""
    deadline = time.monotonic() + PATIENCE
    while not wanted(data) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a terminal whose other side closed: Linux says EIO
                break
            if not chunk:
                break
            data += chunk
    return data


def _read_to_end(fd: int) -> bytes:
    return _read_until(fd, lambda _: False)


@pytest.mark.timeout(4 * PATIENCE)
@pytest.mark.parametrize("no_color", [False, True])
def test_ctrl_c_ends_status_watch_and_restores_the_terminal(
    plane: ControlPlane, no_color: bool
) -> None:
    report(plane, "tx-0", "transaction", snapshot(LONG, OPEN, total=3))
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    env.update(COLUMNS="80", LINES="24", TERM="xterm", **({"NO_COLOR": "1"} if no_color else {}))
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "--target", plane.target, "status", "--watch"],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(terminal)  # the child holds the only other end: its exit ends our reads

    def drawn(data: bytes) -> bool:
        return b"connected" in data and b"INST:" in data

    try:
        screen = _read_until(controller, drawn)
        assert drawn(screen), screen
        process.send_signal(signal.SIGINT)
        screen += _read_to_end(controller)
        assert process.wait(PATIENCE) == 0
    finally:
        process.kill()
        os.close(controller)
    stderr = process.stderr.read().decode() if process.stderr else ""
    text = screen.decode()
    assert stderr == ""  # no traceback
    assert text.startswith(HIDE_CURSOR)  # rich's Live hides the cursor while it draws ...
    assert text.endswith(SHOW_CURSOR)  # ... and shows it again when Ctrl-C ends the view
    assert ("\x1b[1;31mOPEN" in text) is not no_color
    assert ("\x1b[32mconnected" in text) is not no_color
    lines = strip_ansi(text).replace("\r\n", "\n").replace("\r", "\n").splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    last_frame = strip_ansi(text.rsplit(CURSOR_UP, 1)[-1])  # redrawn in place: up, then over
    assert "LongerMethodName" in last_frame and LONG not in last_frame


@pytest.mark.timeout(4 * PATIENCE)
def test_ctrl_c_ends_events_follow_with_status_0(plane: ControlPlane) -> None:
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "--target", plane.target, "events", "--follow"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        servicer = plane.running.servicer
        assert wait_until(lambda: servicer.events.subscribers > 0, timeout=PATIENCE)
        put_policy(plane, "p1")
        line = _read_until(process.stdout.fileno(), lambda data: b"\n" in data)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=PATIENCE)
    finally:
        process.kill()
    # stderr in the message: this exited 1 once in a full run at load ~70 and the cause was lost
    assert process.returncode == 0, err.decode(errors="replace")
    assert err == b""
    assert b" policy put p1 revision 1 by " in line and line.endswith(b"\n") and out == b""
