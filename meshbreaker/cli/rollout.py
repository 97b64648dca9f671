"""Staged rollout commands: `policy put --canary N%`, `policy promote ID`, `policy rollback ID`.

Each reads the stored policy and writes it back with a compare-and-set on the store revision, so
a change made meanwhile by someone else is refused (ABORTED) rather than overwritten.
"""

from __future__ import annotations

import argparse

from meshbreaker.cli.client import Client
from meshbreaker.errors import CliError
from meshbreaker.v1 import control_plane_pb2 as pb


def percent(text: str) -> float:
    """A canary size: "10%" or "10" (percent of the matching instances), in (0, 100)."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = -1.0
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a percentage between 0 and 100 (e.g. 10%)"
        ) from None
    return value


def put_canary(args: argparse.Namespace, policies: list[pb.Policy]) -> int:
    """`policy put --canary N%`: the new config on N% of the instances, the stored one elsewhere."""
    if len(policies) != 1:
        raise CliError("--canary puts one policy at a time")
    (wanted,) = policies
    with Client(args) as client:
        listing = client.call(client.stub.ListPolicies, pb.ListPoliciesRequest())
        stored = next((p for p in listing.policies if p.id == wanted.id), None)
        if stored is not None and stored.selector != wanted.selector:
            raise CliError(
                f"policy {wanted.id} has another selector; a canary changes only the config"
            )
        staged = pb.Policy()
        staged.CopyFrom(stored if stored is not None else wanted)
        for output_only in ("revision", "updated_at", "updated_by"):
            staged.ClearField(output_only)
        if stored is None:
            staged.ClearField("config")  # nothing runs elsewhere until it is promoted
        staged.canary.CopyFrom(pb.Canary(percent=args.canary))
        if wanted.HasField("config"):
            staged.canary.config.CopyFrom(wanted.config)
        if args.canary_max_rejection_margin is not None:
            staged.canary.max_rejection_margin = args.canary_max_rejection_margin
        request = pb.PutPolicyRequest(policies=[staged], expected_revision=listing.revision)
        response = client.call(client.stub.PutPolicy, request)
    print(
        f"policy {wanted.id}: canary on {args.canary:g}% of its instances at revision"
        f" {response.revision}; `meshbreaker status` compares it with the rest;"
        f" `meshbreaker policy promote {wanted.id}` or `policy rollback {wanted.id}`"
    )
    return 0


def promote(args: argparse.Namespace) -> int:
    """`policy promote ID`: the canary's config becomes the policy's, on every instance."""
    return _finish(args, promote=True)


def rollback(args: argparse.Namespace) -> int:
    """`policy rollback ID`: the canary ends; every instance runs the policy's own config."""
    return _finish(args, promote=False)


def _finish(args: argparse.Namespace, *, promote: bool) -> int:
    with Client(args) as client:
        listing = client.call(client.stub.ListPolicies, pb.ListPoliciesRequest())
        stored = next((p for p in listing.policies if p.id == args.policy_id), None)
        if stored is None:
            raise CliError(f"no policy {args.policy_id!r}")
        if not stored.HasField("canary"):
            raise CliError(f"policy {args.policy_id} has no canary to promote or roll back")
        policy = pb.Policy()
        policy.CopyFrom(stored)
        for output_only in ("revision", "updated_at", "updated_by"):
            policy.ClearField(output_only)
        if promote:
            policy.ClearField("config")
            if stored.canary.HasField("config"):
                policy.config.CopyFrom(stored.canary.config)
        policy.ClearField("canary")
        empty = (
            policy.override == pb.OVERRIDE_NONE
            and not policy.HasField("config")
            and not policy.HasField("outlier_detection")
        )
        if empty:
            request = pb.DeletePolicyRequest(id=policy.id, expected_revision=listing.revision)
            revision = client.call(client.stub.DeletePolicy, request).revision
        else:
            put = pb.PutPolicyRequest(policies=[policy], expected_revision=listing.revision)
            revision = client.call(client.stub.PutPolicy, put).revision
    action = "promoted to every instance" if promote else "rolled back"
    print(f"policy {args.policy_id}: canary {action}; store revision {revision}")
    return 0
