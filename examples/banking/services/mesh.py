"""Joining the mesh: breaker-guarded channels and the MeshAgent every banking process runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc

from meshbreaker.registry import BreakerRegistry

# A restarted peer comes back on the same port: retry the connection every 0.1-0.5 s, not with
# gRPC's default backoff of up to two minutes. (Not grpc.min_reconnect_backoff_ms: it is also the
# connect timeout, and a short one fails connections to a busy machine.)
RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


def guarded_channel(target: str, registry: BreakerRegistry | None) -> grpc.Channel:
    """A channel to `target` with one breaker per method from `registry` (None: a plain channel)."""
    channel = grpc.insecure_channel(target, options=RECONNECT)
    if registry is None:
        return channel
    from meshbreaker.grpc import BreakerInterceptor

    return grpc.intercept_channel(channel, BreakerInterceptor(registry))


def agent_starter(
    args: argparse.Namespace, service: str, registry: BreakerRegistry | None, wait_for: int = 0
) -> Callable[[], Callable[[], None] | None] | None:
    """A callable that starts a MeshAgent for this process and returns its stop, if asked for.

    With `wait_for`, it returns only once the policies at that revision are applied (or 30 s).
    The agent caches its policies next to the process's database, so a restarted process
    applies them at once, whether or not the control plane answers.
    """
    if not args.control_plane:
        return None

    def start() -> Callable[[], None]:
        from meshbreaker.control.agent import MeshAgent

        agent = MeshAgent(
            args.control_plane,
            service,
            registry if registry is not None else BreakerRegistry(),
            instance_id=args.instance_id,
            token=args.token,
            report_interval=0.5,
            cache_path=f"{args.db}.policies.json",
        )
        agent.start()
        if wait_for and not agent.wait_for_revision(wait_for, timeout=30):
            raise RuntimeError(f"{service}: no policies at revision {wait_for} within 30 s")
        return agent.stop

    return start
