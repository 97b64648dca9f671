"""MeshAgent's lifecycle edges: one watch however often it is started, why a watch ended, TTL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshbreaker.control.agent import AgentError, MeshAgent
from meshbreaker.control.agent_loop import AgentLoop
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.agent_support import ControlPlaneThread, wait_until
from tests.tls_support import issue, pem


class CountingControlPlane(pb_grpc.ControlPlaneServicer):
    """Counts watch streams; sends one snapshot, then holds the stream or, if `end`, ends it."""

    def __init__(self, end: bool) -> None:
        self.end = end
        self.watchers = 0
        self.peers: set[str] = set()  # the client connections the watches came on
        self.lock = threading.Lock()

    def WatchConfig(
        self, request: pb.WatchConfigRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ConfigSnapshot]:
        with self.lock:
            self.watchers += 1
            self.peers.add(context.peer())
        if self.end:
            return  # a clean end: status OK, no snapshot
        yield pb.ConfigSnapshot(revision=1, service=request.service)
        ended = threading.Event()
        context.add_callback(ended.set)
        ended.wait(10)

    def ReportState(
        self, request: pb.ReportStateRequest, context: grpc.ServicerContext
    ) -> pb.ReportStateResponse:
        return pb.ReportStateResponse()


def serve(servicer: CountingControlPlane) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ControlPlaneServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def holding() -> Iterator[tuple[CountingControlPlane, str]]:
    servicer = CountingControlPlane(end=False)  # type: ignore[abstract]
    server, target = serve(servicer)
    yield servicer, target
    server.stop(None)


@pytest.fixture
def ending() -> Iterator[tuple[CountingControlPlane, str]]:
    servicer = CountingControlPlane(end=True)  # type: ignore[abstract]
    server, target = serve(servicer)
    yield servicer, target
    server.stop(None)


def test_starting_twice_runs_one_watch(holding: tuple[CountingControlPlane, str]) -> None:
    servicer, target = holding
    agent = MeshAgent(target, "transaction", BreakerRegistry(), report_interval=60.0)
    try:
        assert agent.start() is agent
        assert agent.start() is agent  # already running: nothing more starts
        assert agent.wait_for_revision(1)  # no timeout: applying it wakes the waiter
        assert agent.report_now()  # a round trip on the agent's loop after both starts
        assert servicer.watchers == 1
    finally:
        agent.stop()


def test_a_watch_the_server_ends_cleanly_is_named_as_the_last_error(
    ending: tuple[CountingControlPlane, str],
) -> None:
    servicer, target = ending
    agent = MeshAgent(
        target, "transaction", BreakerRegistry(), report_interval=60.0, backoff_max=0.1
    )
    with agent:
        assert wait_until(lambda: servicer.watchers >= 3, timeout=10)  # it tries again
        assert agent.last_error == "the control plane closed the watch stream"
        assert not agent.connected
    assert len(servicer.peers) == 1  # one channel to the target, kept across the watches


def test_an_agent_never_started_stops_and_stays_stopped() -> None:
    agent = MeshAgent("127.0.0.1:1", "transaction", BreakerRegistry())
    agent.stop()
    agent.stop()
    with pytest.raises(AgentError, match="a stopped MeshAgent cannot be started again"):
        agent.start()


def test_report_now_before_start_and_after_stop_answers_false(
    holding: tuple[CountingControlPlane, str],
) -> None:
    """report_now() reports only while the agent runs: before start() and after stop(), False."""
    _, target = holding
    agent = MeshAgent(target, "transaction", BreakerRegistry(), report_interval=60.0)
    assert agent.report_now() is False
    with agent:
        assert agent.report_now() is True
    assert agent.report_now() is False


@pytest.mark.parametrize(
    ("report_interval", "warned"),
    [(2.0, True), (1.0, True), (0.5, False)],
    ids=["longer", "equal", "shorter"],
)
def test_the_report_ttl_warning_comes_once_and_only_when_reports_are_too_rare(
    control_plane_thread: ControlPlaneThread,
    caplog: pytest.LogCaptureFixture,
    report_interval: float,
    warned: bool,
) -> None:
    cp = control_plane_thread(report_ttl=1.0)
    registry = BreakerRegistry()
    with (
        caplog.at_level(logging.WARNING, logger="meshbreaker.control.agent"),
        MeshAgent(cp.target, "transaction", registry, report_interval=report_interval) as agent,
    ):
        assert wait_until(lambda: agent.reports_sent >= 1, timeout=10)
        assert agent.report_now() and agent.report_now()  # more reports, no more warnings
    warnings = [r.getMessage() for r in caplog.records if "report TTL" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)


def test_report_now_on_the_agents_own_loop_is_refused_not_a_deadlock(
    holding: tuple[CountingControlPlane, str],
) -> None:
    _, target = holding
    with MeshAgent(target, "transaction", BreakerRegistry(), report_interval=60.0) as agent:
        assert agent.wait_for_revision(1, timeout=10)

        async def on_the_loop() -> bool:
            return agent.report_now()

        with pytest.raises(AgentError, match="another thread"):
            AgentLoop.shared().submit(on_the_loop()).result(timeout=10)


def test_an_agent_watches_over_tls(control_plane_thread: ControlPlaneThread) -> None:
    ca = issue("meshbreaker test CA", None, ca=True)
    server = pem(issue("localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH))
    cp = control_plane_thread(tls_cert=server.cert, tls_key=server.key)
    credentials = grpc.ssl_channel_credentials(root_certificates=pem(ca).cert)
    registry = BreakerRegistry()
    with MeshAgent(cp.target, "transaction", registry, credentials=credentials) as agent:
        assert wait_until(lambda: agent.connected, timeout=10)
        assert agent.report_now()
