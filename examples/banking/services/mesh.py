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


# An account server SIGKILLed leaves xDS this long after its last renewal (it comes back on the
# same port sooner, and renews its own registration then).
REGISTRATION_TTL = 5.0


def guarded_channel(target: str, registry: BreakerRegistry | None) -> grpc.Channel:
    """A channel to `target` with one breaker per method from `registry` (None: a plain channel)."""
    channel = grpc.insecure_channel(target, options=RECONNECT)
    if registry is None:
        return channel
    from meshbreaker.grpc import BreakerInterceptor

    return grpc.intercept_channel(channel, BreakerInterceptor(registry))


def endpoint_registrar(
    args: argparse.Namespace, cluster: str | None
) -> Callable[[int], Callable[[], None]] | None:
    """A callable that keeps this server's 127.0.0.1:PORT in xDS cluster `cluster`, if asked for.

    The server registers itself through the control plane (any replica) with the agent token
    and renews every few seconds; it returns the registration's stop, which deregisters.
    """
    if not cluster or not args.control_plane:
        return None
    # Several replicas (all on loopback here): gRPC's ipv4: resolver fails over between them.
    target = args.control_plane if "," not in args.control_plane else f"ipv4:{args.control_plane}"

    def start(port: int) -> Callable[[], None]:
        from meshbreaker.control.xds.registration import EndpointRegistration

        registration = EndpointRegistration(
            target, cluster, f"127.0.0.1:{port}", token=args.token, ttl=REGISTRATION_TTL
        )
        return registration.start().stop

    return start


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
