"""Operators' policy writes: PutPolicy, DeletePolicy and ForceState, checked and then stored.

Each write runs inside the store writer's `serialized` section, so its checks against the policies
in memory (bounds, taken ids, a fleet decision carried back) and its compare-and-set see no other
write land in between.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from meshbreaker.control import convert, validate
from meshbreaker.control.limits import Limits
from meshbreaker.control.overrides import MAX_OVERRIDE_SECONDS, set_override
from meshbreaker.control.policies import PolicyIndex
from meshbreaker.control.store import AuditEntry, RevisionMismatchError
from meshbreaker.control.validate import Refused
from meshbreaker.control.writes import StoreWriter
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb


class PolicyWrites:
    """The write RPCs' work, given who asks (`actor`); the servicer turns refusals into aborts."""

    def __init__(
        self,
        index: PolicyIndex,
        writer: StoreWriter,
        *,
        limits: Limits,
        wall_clock: Callable[[], float],
        revision: Callable[[], int],
    ) -> None:
        self._index = index
        self._writer = writer
        self._limits = limits
        self._wall_clock = wall_clock
        self._revision = revision  # the store revision the servicer has applied

    async def put(self, request: pb.PutPolicyRequest, actor: str) -> pb.PutPolicyResponse:
        """Create or replace policies atomically (compare-and-set on the store revision)."""
        policies = validate.check_put(request, self._limits)
        expected = validate.expected_revision(request)

        async def work() -> list[AuditEntry]:
            for index, policy in enumerate(policies):
                check_fleet_unchanged(policy, self._index.by_id(policy.id), index)
            new_ids = [policy.id for policy in policies if not self._index.has(policy.id)]
            if len(self._index) + len(new_ids) > self._limits.max_policies:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"policies: the store holds at most {self._limits.max_policies} policies",
                )
            caller, size = self._index.largest_snapshot_bytes(policies)
            if size > self._limits.max_message_bytes:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"policies: the config snapshot of {caller or 'every caller'} would be about"
                    f" {size} bytes, over limits.max_message_bytes"
                    f" ({self._limits.max_message_bytes})",
                )
            return await self._writer.put(policies, expected, actor)

        entries = await self._writer.serialized(work)
        return pb.PutPolicyResponse(
            policies=[entry.after for entry in entries if entry.after is not None],
            revision=entries[0].revision,
        )

    async def delete(self, request: pb.DeletePolicyRequest, actor: str) -> pb.DeletePolicyResponse:
        """Delete one policy (compare-and-set on the store revision)."""
        convert.check_policy_id(request.id, "id")
        expected = validate.expected_revision(request)
        entry = await self._writer.serialized(
            lambda: self._writer.delete(request.id, expected, actor)
        )
        return pb.DeletePolicyResponse(revision=entry.revision)

    async def force(self, request: pb.ForceStateRequest, actor: str) -> pb.ForceStateResponse:
        """Set (or clear) the override of the policy with exactly this selector."""
        selector = convert.selector_from_proto(request.selector, "selector")
        if not selector.registry_selector:
            raise ConfigError("selector", "needs a service or a method")
        override = convert.override_from_proto(request.override, "override")
        if request.policy_id:
            convert.check_policy_id(request.policy_id, "policy_id")
        expires_at = None
        if override is not None and request.HasField("duration"):
            duration = convert.duration_seconds(request.duration, "duration")
            if not 0 < duration <= MAX_OVERRIDE_SECONDS:
                raise ConfigError("duration", "must be > 0 and at most 366 days")
            expires_at = self._wall_clock() + duration
        reason = convert.check_reason(request.reason, "reason")
        expected = validate.expected_revision(request)
        wanted = (selector.caller, selector.service, selector.method)

        async def work() -> pb.ForceStateResponse:
            existing = self._index.by_selector(wanted)
            if existing is None and override is None:
                revision = self._revision()
                if expected is not None and expected != revision:
                    mismatch = RevisionMismatchError(expected, revision)
                    raise Refused(grpc.StatusCode.ABORTED, str(mismatch))
                return pb.ForceStateResponse(revision=revision)
            if existing is not None and override is None and not existing.HasField("config"):
                # An override-only policy without its override does nothing: remove it.
                entry = await self._writer.delete(existing.id, expected, actor)
                return pb.ForceStateResponse(revision=entry.revision)
            if existing is not None:
                policy = validate.without_output_only(existing)
            else:
                policy = pb.Policy(
                    id=request.policy_id or _forced_policy_id(selector), selector=request.selector
                )
                if self._index.has(policy.id):
                    raise Refused(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"policy_id: {policy.id!r} is taken by a policy with another selector",
                    )
            set_override(policy, override, expires_at=expires_at, reason=reason)
            entries = await self._writer.put([policy], expected, actor)
            return pb.ForceStateResponse(policy=entries[0].after, revision=entries[0].revision)

        return await self._writer.serialized(work)


def check_fleet_unchanged(policy: pb.Policy, stored: pb.Policy | None, index: int) -> None:
    """Refuse a put that makes or changes a fleet decision: only the decider writes those.

    One that carries the stored decision back unchanged passes, so the policies `policy list
    --json` prints can be put back as they are.
    """
    if not policy.HasField("fleet"):
        return
    if stored is None or not stored.HasField("fleet") or stored.fleet != policy.fleet:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"policies[{index}].fleet: fleet decisions are written by the control plane's decider"
            " only; a put may carry back only the one stored now (list the policies again, or"
            " leave fleet out)",
        )


def _forced_policy_id(selector: convert.Selector) -> str:
    target = selector.method.lstrip("/").replace("/", ".") or selector.service
    caller = selector.caller or "all"
    return f"force.{caller}.{target}"[:128]
