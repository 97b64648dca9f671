"""The decider: what the control plane changes in the store on its own, for the whole fleet.

It runs on the server's loop, one pass per `tick` seconds (and at once when `wake()` is called),
and only while `is_leader()` says this replica decides: replicas on etcd hold an election on
their presence leases; with one SQLite server (no `is_leader`) that server decides. Each
pass removes the overrides whose expiry has passed (agents dropped them on their own already;
the store catches up, so `policy list` and `status` stop showing them), then lets the fleet
rules (`FleetRules`) make their decisions. Every change is an ordinary store write by
CONTROL_PLANE_ACTOR, so it reaches every replica and agent like an operator's, shows in
`events`, and a new leader continues from what is stored.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from meshbreaker._backoff import OpenBackoff
from meshbreaker._names import split_breaker_name
from meshbreaker.config import BreakerConfig, State
from meshbreaker.control import convert
from meshbreaker.control.canary import rejection_rate, should_roll_back, side_by_side
from meshbreaker.control.layers import explain
from meshbreaker.control.overrides import CONTROL_PLANE_ACTOR, expires_at, is_empty, set_override
from meshbreaker.control.policies import PolicyIndex
from meshbreaker.control.quorum import FleetCount, LiveInstance, QuorumCounter, choose_prober
from meshbreaker.control.validate import Refused, without_output_only
from meshbreaker.control.writes import StoreWriter
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

logger = logging.getLogger(__name__)

DEFAULT_TICK = 1.0


class FleetDecider:
    """One task on the server's loop that expires overrides and runs the fleet rules."""

    def __init__(
        self,
        index: PolicyIndex,
        writer: StoreWriter,
        *,
        wall_clock: Callable[[], float],
        tick: float = DEFAULT_TICK,
        is_leader: Callable[[], Awaitable[bool]] | None = None,
        live_instances: Callable[[], Iterable[LiveInstance]] = tuple,
        probe_wait: float = 30.0,
    ) -> None:
        self._index = index
        self._writer = writer
        self._wall_clock = wall_clock
        self._tick = tick
        self._is_leader = is_leader
        self._live_instances = live_instances
        self._probe_wait = probe_wait
        self._quorum = QuorumCounter()  # brought up to date at each pass
        # (service, method, period) -> State.CLOSED or State.OPEN: how a prober's probe ended.
        self._outcomes: dict[tuple[str, str, int], State] = {}
        # (service, method, action) -> count: opened, reopened, reassigned, closed.
        self.decisions: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # completed passes, for tests that wait for one
        self.leading = is_leader is None  # whether this replica decided at its latest look

    def start(self) -> None:
        """Start deciding (call on the server's loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop deciding; a write in progress finishes (the writer drains it)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Run a pass now rather than at the next tick (call on the loop)."""
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._tick)
            self._wakeup.clear()
            leading = True if self._is_leader is None else await self._is_leader()
            if leading != self.leading:
                self.leading = leading
                logger.info(
                    "fleet decider: this replica %s",
                    "decides now" if leading else "no longer decides",
                )
            if not leading:
                continue
            try:
                await self.decide()
            except Exception:  # a pass that fails is retried at the next tick
                logger.exception("fleet decider: pass failed")
            self.passes += 1

    def observe(self, event: pb.Event) -> None:
        """A published event (on the loop): a prober's probe outcome, or a breaker opening."""
        if event.WhichOneof("kind") != "transition":
            return
        transition = event.transition
        if transition.to_state == pb.BREAKER_STATE_OPEN:
            self.wake()  # a quorum may be reached
        if transition.from_state != pb.BREAKER_STATE_HALF_OPEN:
            return
        method = split_breaker_name(transition.name)[2]
        policy = self._index.by_selector((transition.service, "", method))
        if policy is None or not policy.HasField("fleet"):
            return
        if transition.instance_id not in policy.fleet.probers:
            return
        outcome = {pb.BREAKER_STATE_CLOSED: State.CLOSED, pb.BREAKER_STATE_OPEN: State.OPEN}.get(
            transition.to_state
        )
        if outcome is not None:
            self._outcomes[(transition.service, method, policy.fleet.period)] = outcome
            self.wake()

    async def decide(self) -> None:
        """One pass: follow the fleet decisions, open by quorum, remove expired overrides."""
        now = self._wall_clock()
        quorum = self._quorum
        quorum.update(self._live_instances())
        decided: set[tuple[str, str]] = set()
        for policy in self._index.overrides():
            if policy.HasField("fleet"):
                key = (policy.selector.caller, policy.selector.method)
                decided.add(key)
                await self._follow(policy, quorum.count(*key), now)
        for key in quorum.open_keys():
            count = quorum.count(*key)
            if key not in decided and count is not None:
                await self._consider(count, now)
        for policy in self._index.canaries():
            if policy.canary.HasField("max_rejection_margin"):
                await self._watch_canary(policy)
        for policy in self._index.overrides():
            end = expires_at(policy)
            if end is not None and now >= end:
                await self._expire(policy.id, end)

    async def _watch_canary(self, policy: pb.Policy) -> None:
        """Roll a canary back when it refuses more calls than the rest by more than its margin."""
        status = side_by_side(policy, self._live_instances())
        margin = policy.canary.max_rejection_margin
        if not should_roll_back(status, margin):
            return

        async def work() -> bool:
            current = self._index.by_id(policy.id)
            if current is None or current != policy:
                return False
            kept = without_output_only(current)
            kept.ClearField("canary")
            if is_empty(kept):
                await self._writer.delete(policy.id, self._index.revision, CONTROL_PLANE_ACTOR)
            else:
                await self._writer.put([kept], self._index.revision, CONTROL_PLANE_ACTOR)
            return True

        try:
            rolled_back = await self._writer.serialized(work)
        except Refused as refusal:
            logger.debug("fleet decider: rolling back %s: %s", policy.id, refusal.details)
            return
        if rolled_back:
            selector = policy.selector
            target = selector.method or selector.service or "*"
            self.decisions[(selector.caller or "*", target, "rolled_back")] += 1
            logger.warning(
                "canary of policy %s rolled back: it refused %.1f%% of its calls, the rest"
                " %.1f%% (max_rejection_margin %g)",
                policy.id,
                100 * rejection_rate(status.canary),
                100 * rejection_rate(status.rest),
                margin,
            )

    def _config(self, service: str, method: str) -> BreakerConfig | None:
        """The method's config as the policies for `service` layer it (None when they clash)."""
        try:
            return explain(service, method, self._index.policies(service)).config
        except ConfigError:
            return None

    async def _consider(self, count: FleetCount, now: float) -> None:
        """Open the method on the whole fleet when its quorum is reached."""
        config = self._config(count.service, count.method)
        if config is None or config.fleet_open_quorum is None:
            return
        quorum, least = config.fleet_open_quorum, config.fleet_min_instances
        if not count.reached(quorum, least):
            return
        existing = self._index.by_selector((count.service, "", count.method))
        if existing is not None and existing.override != pb.OVERRIDE_NONE:
            return  # an operator's override of this very selector wins
        reason = count.reason(quorum, least)
        decision = self._period(count, config, now, period=1, decided_at=now)
        if await self._write_decision(count.service, count.method, decision, reason, now):
            self.decisions[(count.service, count.method, "opened")] += 1
            logger.warning(
                "fleet decision: %s opened for %s: %s", count.method, count.service, reason
            )

    def _period(
        self,
        count: FleetCount | None,
        config: BreakerConfig,
        now: float,
        *,
        period: int,
        decided_at: float,
        previous: Sequence[str] = (),
    ) -> pb.FleetDecision:
        # One prober: no jitter is needed to spread the fleet's probes (the middle of the range).
        duration = OpenBackoff.of(config).duration(period - 1, 0.5)
        return pb.FleetDecision(
            probers=choose_prober(count, previous),
            open_until=convert.seconds_to_timestamp(now + duration),
            period=period,
            decided_at=convert.seconds_to_timestamp(decided_at),
        )

    async def _follow(self, policy: pb.Policy, count: FleetCount | None, now: float) -> None:
        """Close the fleet after a good probe, reopen it after a bad one or none at all."""
        service, method, fleet = policy.selector.caller, policy.selector.method, policy.fleet
        outcome = self._outcomes.pop((service, method, fleet.period), None)
        open_until = convert.timestamp_seconds(fleet.open_until, "fleet.open_until")
        # A leader that missed the transition still sees the prober's breaker closed.
        states = count.states if count is not None and now >= open_until else {}
        if outcome is None and any(
            states.get(prober) == pb.BREAKER_STATE_CLOSED for prober in fleet.probers
        ):
            outcome = State.CLOSED
        if outcome is State.CLOSED:
            if await self._end_decision(policy):
                self.decisions[(service, method, "closed")] += 1
                logger.info("fleet decision: %s closed for %s: the probes passed", method, service)
            return
        if outcome is None and now < open_until + self._probe_wait:
            return
        config = self._config(service, method)
        if config is None:
            return
        action = "reopened" if outcome is State.OPEN else "reassigned"
        decided_at = convert.timestamp_seconds(fleet.decided_at, "fleet.decided_at")
        decision = self._period(
            count, config, now, period=fleet.period + 1, decided_at=decided_at,
            previous=fleet.probers,
        )  # fmt: skip
        reason = policy.override_reason
        if await self._write_decision(service, method, decision, reason, now, expected=policy):
            self.decisions[(service, method, action)] += 1

    async def _write_decision(
        self,
        service: str,
        method: str,
        decision: pb.FleetDecision,
        reason: str,
        now: float,
        *,
        expected: pb.Policy | None = None,
    ) -> bool:
        """Store `decision` as the override of (service, method); False when another write won."""
        open_until = convert.timestamp_seconds(decision.open_until, "open_until")
        # Instances that hear nothing more fall back to their own breakers by then.
        ends = open_until + 2 * self._probe_wait

        async def work() -> bool:
            current = self._index.by_selector((service, "", method))
            if expected is not None and (current is None or current != expected):
                return False  # changed meanwhile: the next pass looks again
            if current is not None:
                policy = without_output_only(current)
            else:
                policy = pb.Policy(
                    id=self._free_id(service, method),
                    selector=pb.Selector(caller=service, method=method),
                )
            set_override(policy, State.FORCED_OPEN, expires_at=ends, reason=reason, fleet=decision)
            await self._writer.put([policy], self._index.revision, CONTROL_PLANE_ACTOR)
            return True

        try:
            return await self._writer.serialized(work)
        except Refused as refusal:
            logger.debug("fleet decider: deciding %s for %s: %s", method, service, refusal.details)
            return False

    async def _end_decision(self, policy: pb.Policy) -> bool:
        async def work() -> bool:
            current = self._index.by_id(policy.id)
            if current is None or current != policy:
                return False
            cleared = without_output_only(current)
            set_override(cleared, None)
            if is_empty(cleared):
                await self._writer.delete(policy.id, self._index.revision, CONTROL_PLANE_ACTOR)
            else:
                await self._writer.put([cleared], self._index.revision, CONTROL_PLANE_ACTOR)
            return True

        try:
            return await self._writer.serialized(work)
        except Refused as refusal:
            logger.debug("fleet decider: closing %s: %s", policy.id, refusal.details)
            return False

    def _free_id(self, service: str, method: str) -> str:
        base = f"fleet.{service}.{method.lstrip('/').replace('/', '.')}"[:120]
        candidate, suffix = base, 1
        while self._index.has(candidate):
            suffix += 1
            candidate = f"{base}.{suffix}"
        return candidate

    async def _expire(self, policy_id: str, end: float) -> None:
        async def work() -> None:
            policy = self._index.by_id(policy_id)
            if policy is None or expires_at(policy) != end:
                return  # changed meanwhile (an operator, another replica): not ours to remove
            cleared = without_output_only(policy)
            set_override(cleared, None)
            expected = self._index.revision
            if is_empty(cleared):
                await self._writer.delete(policy_id, expected, CONTROL_PLANE_ACTOR)
            else:
                await self._writer.put([cleared], expected, CONTROL_PLANE_ACTOR)
            logger.info("override of policy %s expired; removed", policy_id)

        try:
            await self._writer.serialized(work)
        except Refused as refusal:  # a concurrent write won: the next pass looks again
            logger.debug("fleet decider: expiring %s: %s", policy_id, refusal.details)


def decision_of(policy: pb.Policy) -> pb.FleetDecision | None:
    """The fleet decision `policy` holds, or None."""
    return policy.fleet if policy.HasField("fleet") else None
