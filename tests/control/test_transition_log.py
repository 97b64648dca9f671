"""Lossless transitions: an ordered, acknowledged log per instance, published once."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from meshbreaker.config import BreakerConfig, State
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.control.transition_log import TransitionLog
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import METHOD, ControlPlaneThread, StartControlPlane, wait_until
from tests.scrape_support import Scrape
from tests.server_support import ServerThread

KEY = "k" * 24


def test_the_log_numbers_bounds_and_forgets_what_is_acknowledged() -> None:
    clock = FakeClock()
    log = TransitionLog(clock, capacity=3)
    for _ in range(4):
        log.append(METHOD, State.CLOSED, State.OPEN)
    assert log.dropped == 1 and len(log) == 3
    clock.advance(2.0)
    records = log.pending(clock())
    assert [r.sequence for r in records] == [2, 3, 4] and records[0].age == 2.0
    assert [r.sequence for r in log.pending(clock(), limit=2)] == [2, 3]
    log.acknowledge(3)
    assert [r.sequence for r in log.pending(clock())] == [4]


def _collect(cp: ServerThread, events: list[pb.Event], stop: threading.Event) -> None:
    channel = grpc.insecure_channel(cp.target)
    call = pb_grpc.ControlPlaneStub(channel).WatchEvents(pb.WatchEventsRequest())
    stopper = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
    stopper.start()
    try:
        for event in call:
            if event.WhichOneof("kind") == "transition":
                events.append(event)
    except grpc.RpcError:
        pass
    finally:
        channel.close()


@pytest.mark.parametrize("cycles", [50, 300])  # 300: more than one report carries
def test_open_half_open_cycles_between_reports_reach_the_stream_in_order(
    control_plane_thread: ControlPlaneThread, cycles: int
) -> None:
    cp = control_plane_thread(metrics_port=0)
    events: list[pb.Event] = []
    stop = threading.Event()
    listener = threading.Thread(target=_collect, args=(cp, events, stop))
    listener.start()
    assert wait_until(lambda: cp.running.servicer.events.subscribers > 0)
    clock = FakeClock()
    registry = BreakerRegistry(
        BreakerConfig(consecutive_failures=1, open_duration=1.0, backoff_multiplier=1.0),
        clock=clock,
    )
    agent = MeshAgent(cp.target, "gateway", registry, report_interval=60.0, clock=clock)
    breaker = registry.get(METHOD)
    try:
        with agent:
            breaker.acquire().failure()  # CLOSED -> OPEN
            for _ in range(cycles):
                clock.advance(1.0)
                breaker.acquire().failure()  # OPEN -> HALF_OPEN, the probe fails: -> OPEN
            assert wait_until(lambda: len(events) >= 2 * cycles + 1, timeout=15)
            assert wait_until(lambda: agent.transitions_pending == 0)
            # A report that repeats nothing publishes nothing more.
            assert agent.report_now()
    finally:
        stop.set()
        listener.join(5)
    moves = [(e.transition.from_state, e.transition.to_state) for e in events]
    assert moves[0] == (pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN)
    assert (
        moves[1:]
        == [
            (pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN),
            (pb.BREAKER_STATE_HALF_OPEN, pb.BREAKER_STATE_OPEN),
        ]
        * cycles
    )
    assert [e.transition.sequence for e in events] == list(range(1, 2 * cycles + 2))
    # /metrics agrees with the stream.
    page = Scrape(f"http://127.0.0.1:{cp.running.metrics_port}/metrics")
    counted = page.by("meshbreaker_state_transitions_total", ("from", "to"), breaker=METHOD)
    assert counted[("OPEN", "HALF_OPEN")] == cycles == moves.count(moves[1])
    assert counted[("HALF_OPEN", "OPEN")] == cycles == moves.count(moves[2])


async def test_a_resent_log_is_published_once_and_acknowledged(
    start_control_plane: StartControlPlane,
) -> None:
    server: ControlPlaneServer = await start_control_plane()
    queue_ready = asyncio.Event()
    received: list[pb.Event] = []

    async def listen() -> None:
        with server.servicer.events.subscribe() as queue:
            queue_ready.set()
            while True:
                received.append(await queue.get())

    listener = asyncio.ensure_future(listen())
    await queue_ready.wait()
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)

        def report(*sequences: int) -> pb.ReportStateRequest:
            return pb.ReportStateRequest(
                instance_id="gw-1",
                service="gateway",
                instance_key=KEY,
                transition_log=[
                    pb.TransitionRecord(
                        sequence=n,
                        name=METHOD,
                        from_state=pb.BREAKER_STATE_CLOSED if n % 2 else pb.BREAKER_STATE_OPEN,
                        to_state=pb.BREAKER_STATE_OPEN if n % 2 else pb.BREAKER_STATE_CLOSED,
                    )
                    for n in sequences
                ],
            )

        first = await stub.ReportState(report(1, 2, 3))
        again = await stub.ReportState(report(2, 3, 4))  # the answer to the first was lost
        assert (first.transitions_acknowledged, again.transitions_acknowledged) == (3, 4)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportState(report(5, 7))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "transition_log[1].sequence" in (caught.value.details() or "")
    await asyncio.sleep(0.05)
    listener.cancel()
    assert [e.transition.sequence for e in received] == [1, 2, 3, 4]


def test_transitions_survive_an_outage_and_are_sent_when_it_ends(
    control_plane_thread: ControlPlaneThread,
) -> None:
    cp = control_plane_thread()
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1))
    with MeshAgent(cp.target, "gateway", registry, report_interval=60.0, backoff_max=0.1) as agent:
        assert wait_until(lambda: agent.connected)
        cp.stop()
        registry.get(METHOD).acquire().failure()  # CLOSED -> OPEN while the server is away
        assert not agent.report_now()
        assert agent.transitions_pending == 1
        cp.start()
        assert wait_until(lambda: agent.report_now() and agent.transitions_pending == 0)
