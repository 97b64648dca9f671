"""How a MeshAgent takes a config snapshot: checked, applied atomically, or NACKed; overrides
expire on time; a cached snapshot is applied at start (fail-static).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent_cache import FailStaticCache
from meshbreaker.control.agent_overrides import OverrideClock
from meshbreaker.control.agent_reports import AgentReports
from meshbreaker.control.layers import ResolvedPolicies, policies_for
from meshbreaker.errors import ConfigError, MeshbreakerError
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb

logger = logging.getLogger("meshbreaker.control.agent")

PolicyCheck = Callable[[ResolvedPolicies], None]


class AgentConfig(AgentReports):
    """The config half of MeshAgent, over its reporting half (MeshAgent sets every attribute)."""

    registry: BreakerRegistry
    service: str
    instance_id: str
    report_interval: float
    _clock: Callable[[], float]
    _wall_clock: Callable[[], float]
    _base_default: BreakerConfig
    _validate: PolicyCheck | None
    _overrides: OverrideClock
    _cache: FailStaticCache | None
    _applied: threading.Condition
    _stopped: bool
    _snapshots_received: int
    _applied_snapshot: pb.ConfigSnapshot | None
    _applied_revision: int
    _applied_at: float | None
    _applied_from_cache: bool
    _applied_policies: Sequence[pb.Policy]
    _applied_store_id: str
    _store_mismatch: pb.StoreMismatch | None
    _last_nack: pb.Nack | None

    async def _handle_snapshot(self, snapshot: pb.ConfigSnapshot) -> None:
        self._snapshots_received += 1
        mismatch = self._mismatch_with(snapshot)
        if mismatch is not None:
            if self._store_mismatch != mismatch:
                logger.warning(
                    "meshbreaker agent: keeping revision %d of store %s: the control plane "
                    "offers %s (store %s, revision %d); an operator decides with "
                    "`meshbreaker store adopt %s`",
                    mismatch.held_revision,
                    mismatch.held_store_id,
                    mismatch.reason,
                    mismatch.offered_store_id,
                    mismatch.offered_revision,
                    mismatch.held_store_id,
                )
            self._store_mismatch = mismatch
            self._acknowledge()
            return
        self._store_mismatch = None
        if (
            snapshot.revision == self._applied_revision
            and snapshot.store_id == self._applied_store_id
            and not self._applied_from_cache
            and self._last_nack is None
            and list(snapshot.policies) == list(self._applied_policies)
        ):
            # The same policies again (a reconnect, another replica): resume, nothing to apply.
            self._acknowledge()
            return
        try:
            self._apply(snapshot)
        except Exception as error:  # whatever the cause (a `validate` hook's bug too): NACK
            reason = str(error) if isinstance(error, (MeshbreakerError, ValueError)) else ""
            reason = reason or f"{type(error).__name__}: {error}"
            logger.warning(
                "meshbreaker agent: rejected config revision %d: %s (keeping revision %d)",
                snapshot.revision,
                reason,
                self._applied_revision,
            )
            self._last_nack = pb.Nack(revision=snapshot.revision, reason=reason)
            self._acknowledge()
        else:
            self._acknowledge()
            if self._cache is not None:
                await asyncio.to_thread(self._cache.save, snapshot, snapshot.store_id)

    def _mismatch_with(self, snapshot: pb.ConfigSnapshot) -> pb.StoreMismatch | None:
        """Why `snapshot` must not replace the policies in force, or None when it may."""
        held, held_revision = self._applied_store_id, self._applied_revision
        offered = snapshot.store_id
        if not held or not offered or held_revision == 0 or held in snapshot.adopted_store_ids:
            return None  # nothing from a store in force, an old server, or an operator's word
        if offered != held:
            reason = "another store"
        elif snapshot.revision < held_revision:
            reason = "a lower revision of the same store"
        else:
            return None
        return pb.StoreMismatch(
            held_store_id=held,
            held_revision=held_revision,
            offered_store_id=offered,
            offered_revision=snapshot.revision,
            reason=reason,
        )

    def _apply(
        self, snapshot: pb.ConfigSnapshot, *, from_cache: bool = False, store_id: str | None = None
    ) -> None:
        """Validate, then apply atomically; raises (with nothing applied) when it cannot."""
        if snapshot.service and snapshot.service != self.service:
            raise ConfigError(
                "snapshot.service", f"is for {snapshot.service!r}, this agent is {self.service!r}"
            )
        resolved = policies_for(
            self.service,
            snapshot.policies,
            "snapshot.policies",
            self._base_default,
            now=self._wall_clock(),
            instance_id=self.instance_id,
        )
        if self._validate is not None:
            self._validate(resolved)
        # Probe periods first: an instance whose turn it is to probe goes from the fleet's
        # FORCED_OPEN straight to OPEN (open_for clears the override, so the registry's clearing
        # finds none): were the override cleared first, its breaker would be CLOSED in between,
        # and a call then would be a probe on top of the period's half_open_max_calls.
        self._overrides.applying(resolved)
        self.registry.replace_policies(
            resolved.policies,
            default=resolved.default or self._base_default,
            overrides=resolved.overrides,
        )
        with self._applied:
            self._applied_snapshot = snapshot
            self._applied_revision = snapshot.revision
            self._applied_at = self._clock()
            self._applied_from_cache = from_cache
            self._applied_policies = tuple(snapshot.policies)
            self._applied_store_id = snapshot.store_id if store_id is None else store_id
            if not from_cache:
                self._last_nack = None
            self._applied.notify_all()

    async def _expiry_loop(self) -> None:
        """Resolve the policies in force again whenever an override of theirs expires.

        Runs whether or not a control plane answers: a forgotten or orphaned override ends on
        time everywhere.
        """
        while not self._stopped:
            await asyncio.sleep(self._overrides.wait(min(self.report_interval, 1.0)))
            snapshot = self._applied_snapshot
            if snapshot is None or not self._overrides.due():
                continue
            nack = self._last_nack  # a NACK of a later snapshot still stands
            try:
                self._apply(
                    snapshot, from_cache=self._applied_from_cache, store_id=self._applied_store_id
                )
                self._last_nack = nack
            except Exception:  # applied once already: only a `validate` hook can refuse now
                logger.exception("meshbreaker agent: an override expired but could not be dropped")
                self._overrides.next_expiry = None
            else:
                logger.info("meshbreaker agent: an override expired; policies resolved again")

    # ----- cache -----------------------------------------------------------------------

    def _load_cache(self) -> None:
        if self._cache is None:
            return
        cached = self._cache.load()
        if cached is None:
            return
        try:
            self._apply(cached.snapshot, from_cache=True, store_id=cached.store_id)
        except Exception as error:  # the cache must never stop the application
            self._cache.warn_ignored(error)
            return
        logger.info(
            "meshbreaker agent: applied cached config revision %d from %s",
            self._applied_revision,
            self._cache.path,
        )
