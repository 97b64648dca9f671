"""`events --follow`: mesh events as lines, across restarts of the control plane."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TextIO

import grpc
from rich.console import Console

from meshbreaker._backoff import Backoff
from meshbreaker.live.connection import (
    EventStream,
    describe,
    is_fatal,
    new_backoff,
    unavailable_message,
    wait_subscribed,
)
from meshbreaker.live.terminal import say
from meshbreaker.live.text import event_line
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc


class EventFollower:
    """`events --follow`: one line per event; a lost stream is reported and reconnected."""

    def __init__(
        self,
        stub: pb_grpc.ControlPlaneStub,
        request: pb.WatchEventsRequest,
        *,
        target: str,
        console: Console,
        err: TextIO,
        metadata: Sequence[tuple[str, str]] = (),
        max_events: int = 0,
        backoff: Backoff | None = None,
    ) -> None:
        self._stub = stub
        self._request = request
        self._target = target
        self._console = console
        self._err = err
        self._metadata = tuple(metadata)
        self._max_events = max_events
        self._backoff = backoff or new_backoff()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: EventStream | None = None
        self.printed = 0

    def run(self) -> int:
        """Print events until stopped, interrupted or `max_events`; 0, or raise a fatal RpcError."""
        lost = False
        try:
            while not self._stopped.is_set():
                subscribed, error = self._follow_once(reconnected=lost)
                if self._stopped.is_set():
                    break
                if is_fatal(error):
                    assert error is not None
                    raise error
                if subscribed:
                    self._backoff.reset()
                lost = True
                delay = self._backoff.next_delay()
                say(self._err, unavailable_message(self._target, describe(error), delay))
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
            subscribed = wait_subscribed(call)
            if subscribed and reconnected:
                say(
                    self._err,
                    f"reconnected to the control plane at {self._target} "
                    "(events while it was unreachable are not replayed)",
                )
            for event in call:
                print_event(self._console, event)
                self.printed += 1
                if self._max_events and self.printed >= self._max_events:
                    self.stop()
                    break
        except grpc.RpcError as error:
            return subscribed, error
        return subscribed, None


def print_event(console: Console, event: pb.Event) -> None:
    """One event as one line on `console`, never wrapped."""
    console.print(event_line(event), soft_wrap=True)
    console.file.flush()
