"""`status --watch`: the live status table, kept current by WatchEvents and slow periodic fetches.

An event marks the table out of date and ListBreakers is fetched again once a burst has had
`coalesce` seconds to settle, plus a slow periodic fetch every `interval` seconds so counters,
rates and ages stay current. When the control plane serves xDS, each fetch also lists its xDS
clients, shown below the breakers.
"""

from __future__ import annotations

import contextlib
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import grpc
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from meshbreaker._backoff import Backoff
from meshbreaker.live.connection import (
    EventStream,
    describe,
    is_fatal,
    new_backoff,
    unavailable_message,
    wait_subscribed,
)
from meshbreaker.live.render import Link, render_status
from meshbreaker.live.terminal import render_text, say
from meshbreaker.live.text import to_json
from meshbreaker.live.xds_view import xds_clients_view
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc

COALESCE = 0.25
# The longest a turn of `run` waits for news: how soon Ctrl-C is noticed.
_TURN = 0.2
_UP, _EVENT, _DOWN = "up", "event", "down"


class StatusWatch:
    """`status --watch`: the live table, fetched on events and every `interval`, reconnecting."""

    def __init__(
        self,
        stub: pb_grpc.ControlPlaneStub,
        request: pb.ListBreakersRequest,
        *,
        target: str,
        console: Console,
        err: TextIO,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float = 5.0,
        interval: float = 2.0,
        coalesce: float = COALESCE,
        as_json: bool = False,
        empty: str = "(no breakers reported)",
        instances: bool = False,
        iterations: int = 0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        xds: xds_pb2_grpc.XdsAdminStub | None = None,
    ) -> None:
        self._stub = stub
        # Asked for its xDS clients until it answers UNIMPLEMENTED (not started with --xds).
        self._xds = xds
        self._request = pb.ListBreakersRequest()
        self._request.CopyFrom(request)
        self._request.include_instances = True  # their state ages fill LAST when no event did
        self._events_request = pb.WatchEventsRequest(service=request.service)
        self._target = target
        self._console = console
        self._err = err
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self._interval = interval
        self._coalesce = coalesce
        # Redrawn in place on a terminal that can move its cursor; frame after frame elsewhere.
        self._screen = console.is_terminal and not console.is_dumb_terminal and not as_json
        self._live: Live | None = None
        self._json = as_json
        self._empty = empty
        self._instances = instances
        self._iterations = iterations
        self._backoff = backoff or new_backoff()
        self._clock = clock
        self._wall_clock = wall_clock

        self._queue: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        self._generation = 0  # news from an older stream is ignored
        self._call: EventStream | None = None
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
        self._interrupted = False  # set by Ctrl-C, see _ctrl_c_ends
        self.response: pb.ListBreakersResponse | None = None
        self.xds_clients: xds_pb2.ListXdsClientsResponse | None = None
        self.fetched_at: float | None = None
        self.events = 0  # received from the stream
        self.fetches = 0  # ListBreakers answered
        self.frames = 0  # screens drawn
        self.frame = ""  # the latest screen drawn

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Show the live table until interrupted (exit status 0) or a fatal RpcError."""
        if self._screen:
            # Drawn only when we ask (auto_refresh=False); rich hides the cursor meanwhile and
            # leaves the last frame on the terminal when it stops.
            self._live = Live(console=self._console, auto_refresh=False, vertical_overflow="crop")
            self._live.start()
        try:
            with _ctrl_c_ends(self):
                while not (self._done.is_set() or self._interrupted):
                    self.step(_TURN)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()
            if self._live is not None:
                self._live.stop()
                self._live = None
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
        for generation, kind, payload in self._drain(timeout):
            if generation != self._generation:
                continue
            if kind == _UP:
                self._up = self._need_fetch = True
            elif kind == _EVENT:
                self._dirty = True
                self.events += 1
                if payload.WhichOneof("kind") == "transition":
                    transition = payload.transition
                    self._transitions[(transition.service, transition.name)] = payload
            else:
                self._connection_lost(payload)
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

    def _drain(self, timeout: float) -> list[tuple[int, str, Any]]:
        """Everything the reader thread queued, waiting up to `timeout` s for the first item."""
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

    def _read(self, generation: int, call: EventStream) -> None:
        """The reader thread: UP once subscribed, each EVENT, then DOWN with the error."""
        put = self._queue.put
        try:
            if wait_subscribed(call):
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

    def _connection_lost(self, error: grpc.RpcError | None) -> None:
        """The stream or a fetch failed: keep the last table, schedule a reconnect."""
        if is_fatal(error):
            assert error is not None
            raise error
        self._drop_stream()
        delay = self._backoff.next_delay()
        self._retry_at = self._clock() + delay
        self._error = describe(error)
        news = self._state != "disconnected"
        self._state = "disconnected"
        if not self._screen:
            say(self._err, unavailable_message(self._target, self._error, delay))
        self._render(force=news)

    def _fetch(self) -> None:
        """ListBreakers (and the xDS clients) once: the new table, or a lost connection."""
        try:
            response = self._stub.ListBreakers(
                self._request, timeout=self._timeout, metadata=self._metadata
            )
            xds_clients = self._fetch_xds_clients()
        except grpc.RpcError as error:
            self._connection_lost(error)
            return
        self.response = response
        self.xds_clients = xds_clients
        self.fetched_at = self._wall_clock()
        self._last_fetch = self._clock()
        self._need_fetch = self._dirty = False
        if self._state != "connected":
            if self._ever_connected and not self._screen:
                say(self._err, f"reconnected to the control plane at {self._target}")
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

    def _fetch_xds_clients(self) -> xds_pb2.ListXdsClientsResponse | None:
        """The control plane's xDS clients; None (and never asked again) if it serves no xDS."""
        if self._xds is None or self._json:
            return None
        try:
            response: xds_pb2.ListXdsClientsResponse = self._xds.ListXdsClients(
                xds_pb2.ListXdsClientsRequest(), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.UNIMPLEMENTED:
                self._xds = None
                return None
            raise
        return response

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

    def render(self) -> RenderableType:
        """The screen as it would be drawn now, fitted to the console."""
        size = self._console.size
        status = render_status(
            self.response,
            self._transitions.values(),
            now=self._wall_clock(),
            link=self.link(),
            width=size.width,
            height=size.height if self._screen else None,
            instances=self._instances,
            empty=self._empty,
        )
        if self.xds_clients is None:
            return status
        return Group(status, Text(), xds_clients_view(self.xds_clients, size.width))

    def _render(self, *, force: bool) -> None:
        """Draw the screen; off a terminal only when forced (a fetch, a lost connection)."""
        self._next_tick = self._clock() + 1.0
        if self._json:
            if force and self._state == "connected" and self.response is not None:
                self._console.file.write(to_json(self.response) + "\n")
                self._console.file.flush()
            return
        if not (force or self._screen):
            return
        screen = self.render()
        self.frame = render_text(screen, width=self._console.size.width)
        if self._live is not None:
            self._live.update(screen, refresh=True)
        else:
            if self.frames:
                self._console.line()
            self._console.print(screen)
        self.frames += 1


@contextlib.contextmanager
def _ctrl_c_ends(watch: StatusWatch) -> Iterator[None]:
    """Ctrl-C ends `watch.run` between two turns instead of raising inside one.

    A KeyboardInterrupt raised while rich writes a frame can leave the frame half-written and
    written again (rich clears its buffer after the write): the handler only sets a flag, which
    takes no lock. Off the main thread signals cannot be handled: KeyboardInterrupt it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: object) -> None:
        if watch._interrupted:  # a second Ctrl-C does not wait for the turn to end
            raise KeyboardInterrupt
        watch._interrupted = True

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
