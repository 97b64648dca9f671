"""How a MeshAgent reports: its breakers' snapshots, its transition log, and ACK/NACKs.

A breaker transition (the caller's thread) only logs it and, when no wake-up is pending, schedules
one on the agents' loop (`call_soon_threadsafe`); the reporter then waits a few milliseconds so a
burst of transitions coalesces into one report. Reports go every `report_interval` besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import grpc

from meshbreaker.config import BreakerConfig, State
from meshbreaker.control.agent_link import AUTH_CODES, AgentToken, describe, status_code
from meshbreaker.control.agent_loop import AgentLoop
from meshbreaker.control.agent_overrides import OverrideClock
from meshbreaker.control.convert import breaker_to_proto
from meshbreaker.control.transition_log import TransitionLog
from meshbreaker.errors import AgentError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

logger = logging.getLogger("meshbreaker.control.agent")

# Breakers per ReportState call (the server refuses more than its limit, 2000 by default); a
# process with more sends its report in several parts.
MAX_BREAKERS_PER_REPORT = 1000


class AgentReports:
    """The reporting half of MeshAgent (a mixin: MeshAgent sets every attribute below)."""

    registry: BreakerRegistry
    service: str
    instance_id: str
    report_interval: float
    _instance_key: str
    _clock: Callable[[], float]
    _rng: random.Random
    _ack_spread: float
    _report_coalesce: float
    _rpc_timeout: float
    _metadata: tuple[tuple[str, str], ...]
    _token: AgentToken
    _overrides: OverrideClock
    _transitions: TransitionLog
    _reported_configs: dict[str, BreakerConfig]
    _report_event: asyncio.Event | None
    _report_pending: bool
    _loop: AgentLoop | None
    _stub: pb_grpc.ControlPlaneAsyncStub | None
    _stopped: bool
    _report_denied: str | None
    _reports_sent: int
    _warned_ttl: bool
    _applied_revision: int
    _applied_store_id: str
    _store_mismatch: pb.StoreMismatch | None
    _last_nack: pb.Nack | None

    def _on_transition(self, name: str, old: State, new: State) -> None:
        # Runs in the caller's thread right after a transition: never blocks (one short lock to
        # log it). Only the first transition of a burst schedules a wake-up; the rest find one
        # pending.
        self._overrides.transition(name, old, new)
        self._transitions.append(name, old, new)
        if self._report_pending or self._loop is None:
            return
        self._report_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is gone at interpreter exit
            self._loop.loop.call_soon_threadsafe(self._wake_reporter)

    def _acknowledge(self) -> None:
        """Report the ACK/NACK soon, at a random moment within `ack_spread` seconds."""
        # Every agent of the fleet gets the same snapshot at the same instant: spread their
        # ACKs so they do not hit the control plane (nor, in one process, the loop) at once.
        delay = self._rng.uniform(0.0, self._ack_spread)
        asyncio.get_running_loop().call_later(delay, self._wake_reporter)

    def _wake_reporter(self) -> None:
        self._report_pending = True
        if self._report_event is not None:
            self._report_event.set()

    async def _report_loop(self) -> None:
        assert self._report_event is not None
        event = self._report_event
        while not self._stopped:
            try:
                await asyncio.wait_for(event.wait(), self.report_interval)
            except asyncio.TimeoutError:
                pass  # the periodic report
            else:
                if self._report_coalesce > 0 and not self._stopped:
                    await asyncio.sleep(self._report_coalesce)  # let a burst settle
            if self._stopped:
                return
            event.clear()
            self._report_pending = False
            try:
                if self._stub is not None:
                    await self._report_once(self._stub)
            except Exception:  # a bug must not stop the reports (nor the watch with them)
                logger.exception("meshbreaker agent: report failed")

    async def _report_once(self, stub: pb_grpc.ControlPlaneAsyncStub) -> bool:
        response = None
        acknowledged = sent = 0
        requests, configs = self._build_reports()
        try:
            for request in requests:
                if request.transition_log:
                    sent = request.transition_log[-1].sequence
                response = await stub.ReportState(
                    request, timeout=self._rpc_timeout, metadata=self._metadata
                )
                acknowledged = max(acknowledged, response.transitions_acknowledged)
        except grpc.RpcError as error:
            if status_code(error) in AUTH_CODES:
                if self._report_denied is None:
                    logger.warning(
                        "meshbreaker agent: the control plane refused a report of instance %s "
                        "(%s): authentication problem with %s",
                        self.instance_id,
                        describe(error),
                        self._token.source,
                    )
                self._report_denied = describe(error)
            else:
                logger.debug("meshbreaker agent: report failed: %s", describe(error))
            return False
        assert response is not None
        self._report_denied = None
        if response.resend_configs:
            self._reported_configs = {}
            self._wake_reporter()
        else:
            self._reported_configs.update(configs)
        self._transitions.acknowledge(acknowledged)
        if sent and acknowledged >= sent and len(self._transitions):
            # The server took all this report carried and more is logged: send the rest now.
            # (A server that acknowledges nothing, an older one, gets them with each report.)
            self._wake_reporter()
        self._reports_sent += 1
        ttl = response.report_ttl.ToTimedelta().total_seconds()
        if ttl and self.report_interval >= ttl and not self._warned_ttl:
            self._warned_ttl = True
            logger.warning(
                "meshbreaker agent: report_interval %.1fs >= the server's report TTL %.1fs: "
                "this instance will drop out of ListBreakers between reports",
                self.report_interval,
                ttl,
            )
        return True

    def report_now(self, timeout: float = 10.0) -> bool:
        """Send one report and wait for it; False (logged) when it was not accepted."""
        if self._loop is None or self._stub is None or self._stopped:
            return False
        if self._loop.in_loop():
            raise AgentError("report_now() blocks: call it from another thread")
        return self._loop.submit(self._report_once(self._stub)).result(timeout)

    def _build_reports(
        self,
    ) -> tuple[list[pb.ReportStateRequest], dict[str, BreakerConfig]]:
        """One report (beyond MAX_BREAKERS_PER_REPORT breakers, a full one and merged parts),
        and the configs it carries."""
        now = self._clock()
        breakers = sorted(self.registry, key=lambda breaker: breaker.name)
        reported = self._reported_configs
        configs = {
            breaker.name: breaker.config
            for breaker in breakers
            if reported.get(breaker.name) is not breaker.config
        }
        snapshots = [
            breaker_to_proto(breaker, now, with_config=breaker.name in configs)
            for breaker in breakers
        ]
        requests = []
        for start in range(0, max(1, len(snapshots)), MAX_BREAKERS_PER_REPORT):
            request = pb.ReportStateRequest(
                instance_id=self.instance_id,
                service=self.service,
                applied_revision=self._applied_revision,
                breakers=snapshots[start : start + MAX_BREAKERS_PER_REPORT],
                full=start == 0,  # the first part replaces what the server knew; the rest merge
                instance_key=self._instance_key,
                applied_store_id=self._applied_store_id,
                transitions_dropped=self._transitions.dropped,
            )
            if start == 0:
                request.transition_log.extend(self._transitions.pending(now))
            if self._store_mismatch is not None:
                request.store_mismatch.CopyFrom(self._store_mismatch)
            nack = self._last_nack
            if nack is not None:
                request.nack.CopyFrom(nack)
            requests.append(request)
        return requests, configs
