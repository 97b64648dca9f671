"""One handler per command: each takes the parsed arguments, prints, and returns the exit status."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from rich.console import Console, Group
from rich.text import Text

from meshbreaker.cli import rollout
from meshbreaker.cli.client import Client
from meshbreaker.cli.policy_flags import policies_from_args
from meshbreaker.cli.policy_json import policy_document
from meshbreaker.cli.tables import policy_table, status_view
from meshbreaker.cli.xds import xds_status
from meshbreaker.errors import CliError
from meshbreaker.live.connection import channel_options, new_backoff
from meshbreaker.live.follow import EventFollower, print_event
from meshbreaker.live.terminal import console_for, emit, say
from meshbreaker.live.text import format_left, state_name, to_json
from meshbreaker.live.watch import StatusWatch
from meshbreaker.live.xds_view import xds_clients_view
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2_grpc

_FORCE_ACTIONS = {
    "open": pb.OVERRIDE_FORCED_OPEN,
    "closed": pb.OVERRIDE_FORCED_CLOSED,
    "auto": pb.OVERRIDE_NONE,
}


def control_plane(args: argparse.Namespace) -> int:
    """`control-plane`: serve until interrupted."""
    from meshbreaker.control.server import run

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if bool(args.server_tls_cert) != bool(args.server_tls_key):
        raise CliError("--tls-cert and --tls-key must be given together")
    if args.tls_client_ca and not args.server_tls_cert:
        raise CliError("--tls-client-ca needs --tls-cert and --tls-key")
    with contextlib.suppress(KeyboardInterrupt):
        run(
            port=args.port,
            db=args.db,
            store=args.store,
            host=args.host,
            admin_token=args.admin_token,
            agent_token=args.agent_token,
            agent_token_file=args.agent_token_file,
            tls_client_names_service=args.tls_client_names_service,
            insecure=args.insecure,
            tls_cert=args.server_tls_cert,
            tls_key=args.server_tls_key,
            tls_client_ca=args.tls_client_ca,
            report_ttl=args.report_ttl,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            metrics_instance_breakers=args.metrics_instance_breakers,
            console_port=args.console_port,
            console_host=args.console_host,
            xds=args.xds,
            xds_allow_anonymous=args.xds_allow_anonymous,
        )
    return 0


def status(args: argparse.Namespace) -> int:
    """`status`: the breakers across the mesh, once or (--watch) live."""
    request = pb.ListBreakersRequest(
        service=args.caller,
        method=args.method,
        state=args.state or pb.BREAKER_STATE_UNSPECIFIED,
        include_instances=args.instances,
    )
    if args.watch:
        return _run_live_view(
            args,
            StatusWatch,
            request,
            stubs=lambda channel: {"xds": xds_pb2_grpc.XdsAdminStub(channel)},
            timeout=args.timeout,
            interval=args.interval,
            as_json=args.json,
            instances=args.instances,
            iterations=args.iterations,
            empty=_no_breakers(args),
        )
    with Client(args) as client:
        response = client.call(client.stub.ListBreakers, request)
        xds = None if args.json else xds_status(client)
    if args.json:
        print(to_json(response))
    else:
        console = console_for(sys.stdout)
        width = _table_width(console)
        view = status_view(
            response, width=width, instances=args.instances, empty=_no_breakers(args)
        )
        if xds is not None:  # the control plane serves xDS: its clients beside the agents
            view = Group(view, Text(), xds_clients_view(xds, width))
        emit(console, view)
    return 0


def _table_width(console: Console) -> int | None:
    """Tables fit a terminal; in a pipe or a file nothing is cut."""
    return console.width if console.is_terminal else None


def _no_breakers(args: argparse.Namespace) -> str:
    """What an empty status table says: that the filters matched nothing, or nothing reported."""
    filters = [
        f"{flag} {value}"
        for flag, value in (
            ("--caller", args.caller),
            ("--method", args.method),
            ("--state", state_name(args.state) if args.state else ""),
        )
        if value
    ]
    if filters:
        return f"(no breakers match {' '.join(filters)})"
    return "(no breakers reported: no instance with an agent has reported yet)"


def events(args: argparse.Namespace) -> int:
    """`events`: the recent events the control plane kept, or (--follow) new ones until Ctrl-C."""
    if args.follow:
        request = pb.WatchEventsRequest(service=args.caller)
        return _run_live_view(args, EventFollower, request, max_events=args.max_events)
    with Client(args) as client:
        response = client.call(
            client.stub.ListEvents,
            pb.ListEventsRequest(service=args.caller, limit=min(args.limit, 2**31 - 1)),
        )
    console = console_for(sys.stdout)
    for event in response.events:
        print_event(console, event)
    if not response.events:
        say(sys.stderr, "no events yet (the control plane keeps the recent ones since it started)")
    return 0


class _LiveView(Protocol):
    """StatusWatch or EventFollower, as `_run_live_view` uses them."""

    def run(self) -> int: ...


def _run_live_view(
    args: argparse.Namespace,
    view: Callable[..., _LiveView],
    request: Message,
    stubs: Callable[[grpc.Channel], dict[str, Any]] | None = None,
    **options: Any,
) -> int:
    """Run the live view class `view` on a channel reconnecting at its pace; Ctrl-C ends it, 0.

    `stubs` makes the view's further stubs (keyword arguments) on the same channel.
    """
    backoff = new_backoff()
    try:
        with Client(args, channel_options(backoff)) as client:
            if stubs is not None:
                options.update(stubs(client.channel))
            return view(
                client.stub,
                request,
                target=args.target,
                console=console_for(sys.stdout),
                err=sys.stderr,
                metadata=client.metadata,
                backoff=backoff,
                **options,
            ).run()
    except KeyboardInterrupt:
        return 0


def policy_put(args: argparse.Namespace) -> int:
    """`policy put`: create or replace policies from --file and flags."""
    policies = policies_from_args(args)
    if args.canary is not None:
        return rollout.put_canary(args, policies)
    if args.canary_max_rejection_margin is not None:
        raise CliError("--canary-max-rejection-margin needs --canary")
    # expected_revision=None leaves the field unset: no compare-and-set.
    request = pb.PutPolicyRequest(policies=policies, expected_revision=args.expected_revision)
    with Client(args) as client:
        response = client.call(client.stub.PutPolicy, request)
    for policy in response.policies:
        print(f"put policy {policy.id} at revision {policy.revision}")
    print(f"store revision {response.revision}")
    return 0


def policy_list(args: argparse.Namespace) -> int:
    """`policy list`: the stored policies, as a table or JSON."""
    with Client(args) as client:
        response = client.call(client.stub.ListPolicies, pb.ListPoliciesRequest(caller=args.caller))
    if args.json:
        # The --file format: what this prints, `policy put --file` takes back as it is.
        document = {
            "revision": response.revision,
            "policies": [policy_document(policy) for policy in response.policies],
        }
        print(json.dumps(document, indent=2, ensure_ascii=True))
        return 0
    console = console_for(sys.stdout)
    emit(console, policy_table(response, _table_width(console)))
    console.print(f"\nstore revision {response.revision}")
    return 0


def policy_delete(args: argparse.Namespace) -> int:
    """`policy delete`: remove one policy."""
    request = pb.DeletePolicyRequest(id=args.policy_id, expected_revision=args.expected_revision)
    with Client(args) as client:
        response = client.call(client.stub.DeletePolicy, request)
    print(f"deleted policy {args.policy_id}; store revision {response.revision}")
    return 0


def force(args: argparse.Namespace) -> int:
    """`force`: force the selected breakers open or closed, or hand them back to automatic."""
    if not args.service and not args.method:
        raise CliError("force needs --service or --method")
    request = pb.ForceStateRequest(
        selector=pb.Selector(caller=args.caller, service=args.service, method=args.method),
        override=_FORCE_ACTIONS[args.action],
        policy_id=args.policy_id,
        expected_revision=args.expected_revision,
        reason=args.reason,
    )
    if args.duration is not None:
        if args.action == "auto":
            raise CliError("--for needs open or closed (auto ends an override now)")
        request.duration.FromNanoseconds(round(args.duration * 1e9))
    with Client(args) as client:
        response = client.call(client.stub.ForceState, request)
    target = " ".join(
        f"{key}={value}"
        for key, value in (
            ("caller", args.caller),
            ("service", args.service),
            ("method", args.method),
        )
        if value
    )
    if args.action == "auto":
        print(f"{target}: back to automatic; store revision {response.revision}")
    else:
        holder = f" (policy {response.policy.id})" if response.HasField("policy") else ""
        until = "" if args.duration is None else f" for {format_left(args.duration)}"
        print(f"{target}: forced {args.action}{until}{holder}; store revision {response.revision}")
    return 0
