"""Joining the mesh: breaker-guarded channels and the MeshAgent every banking process runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc

from meshbreaker.registry import BreakerRegistry


def guarded_channel(target: str, registry: BreakerRegistry | None) -> grpc.Channel:
    """A channel to `target` with one breaker per method from `registry` (None: a plain channel)."""
    channel = grpc.insecure_channel(target)
    if registry is None:
        return channel
    from meshbreaker.grpc import BreakerInterceptor

    return grpc.intercept_channel(channel, BreakerInterceptor(registry))


def agent_starter(
    args: argparse.Namespace, service: str, registry: BreakerRegistry | None
) -> Callable[[], Callable[[], None] | None] | None:
    """A callable that starts a MeshAgent for this process and returns its stop, if asked for."""
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
        )
        agent.start()
        return agent.stop

    return start
