"""The decider: what the control plane changes in the store on its own, for the whole fleet.

It runs on the server's loop, one pass per `tick` seconds (and at once when `wake()` is called),
and only while `is_leader()` says this replica decides (always, with one SQLite server). Each
pass removes the overrides whose expiry has passed (agents dropped them on their own already;
the store catches up, so `policy list` and `status` stop showing them), then lets the fleet
rules (`FleetRules`) make their decisions. Every change is an ordinary store write by
CONTROL_PLANE_ACTOR, so it reaches every replica and agent like an operator's, shows in
`events`, and a new leader continues from what is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from meshbreaker.control.overrides import CONTROL_PLANE_ACTOR, expires_at, is_empty, set_override
from meshbreaker.control.policies import PolicyIndex
from meshbreaker.control.validate import Refused, without_output_only
from meshbreaker.control.writes import StoreWriter
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
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._index = index
        self._writer = writer
        self._wall_clock = wall_clock
        self._tick = tick
        self._is_leader = is_leader
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # completed passes, for tests that wait for one

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
            if not self._is_leader():
                continue
            try:
                await self.decide()
            except Exception:  # a pass that fails is retried at the next tick
                logger.exception("fleet decider: pass failed")
            self.passes += 1

    async def decide(self) -> None:
        """One pass: remove expired overrides."""
        now = self._wall_clock()
        for policy in self._index.overrides():
            end = expires_at(policy)
            if end is not None and now >= end:
                await self._expire(policy.id, end)

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
