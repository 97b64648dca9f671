"""`meshbreaker xds ...`: the cluster registry, the xDS clients, bootstrap files, service config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from meshbreaker.cli.client import Client
from meshbreaker.control.xds.bootstrap import bootstrap as make_bootstrap
from meshbreaker.control.xds.model import (
    LB_POLICY_BY_NAME,
    LB_POLICY_NAMES,
    check_cluster,
    format_endpoint,
    parse_endpoint,
)
from meshbreaker.errors import CliError, ConfigError
from meshbreaker.live.terminal import console_for, emit, say
from meshbreaker.live.text import clean, to_json
from meshbreaker.live.xds_view import xds_clients_view
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc

_Subcommands: TypeAlias = "argparse._SubParsersAction[Any]"


def add_xds_commands(subcommands: _Subcommands, connection: argparse.ArgumentParser) -> None:
    """Add `xds` and its actions; those that call the control plane take `connection`'s flags."""
    remote: dict[str, Any] = {"parents": [connection]}
    xds = subcommands.add_parser("xds", help="serve the mesh over xDS: clusters, clients, ...")
    actions = xds.add_subparsers(dest="xds_command", metavar="ACTION", required=True)
    cluster = actions.add_parser("cluster", help="the registry behind xds:///NAME targets")
    cluster_actions = cluster.add_subparsers(
        dest="cluster_command", metavar="ACTION", required=True
    )
    put = cluster_actions.add_parser("put", help="create or replace a cluster", **remote)
    put.add_argument("name", metavar="NAME", help="the cluster; clients dial xds:///NAME")
    put.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="HOST:PORT[/WEIGHT]",
        help="a backend (an IP address; repeat for more)",
    )
    put.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="SERVICE",
        help="a gRPC service it serves, whose policies shape it (repeat for more)",
    )
    put.add_argument(
        "--lb-policy",
        choices=sorted(LB_POLICY_BY_NAME),
        default="round_robin",
        help="how calls spread over endpoints (gRPC clients take round_robin, ring_hash, "
        "least_request; default %(default)s)",
    )
    put.set_defaults(handler=cluster_put)
    delete = cluster_actions.add_parser("delete", help="delete a cluster", **remote)
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=cluster_delete)
    listing = cluster_actions.add_parser("list", help="list clusters", **remote)
    listing.add_argument("--json", action="store_true", help="print the raw response as JSON")
    listing.set_defaults(handler=cluster_list)
    clients = actions.add_parser(
        "clients", help="connected xDS clients and their ACKs/NACKs", **remote
    )
    clients.add_argument("--json", action="store_true", help="print the raw response as JSON")
    clients.set_defaults(handler=xds_clients)
    boot = actions.add_parser("bootstrap", help="print a gRPC xDS bootstrap file")
    boot.add_argument("--server", required=True, metavar="HOST:PORT", help="the control plane")
    boot.add_argument("--node-id", required=True, metavar="ID", help="this client's node id")
    boot.add_argument(
        "--caller", default="", help="the calling service, whose policies its clusters get"
    )
    boot.add_argument("--ca-file", metavar="FILE", help="CA of the server: speak TLS")
    boot.add_argument("--cert-file", metavar="FILE", help="client certificate (mutual TLS)")
    boot.add_argument("--key-file", metavar="FILE", help="client private key (mutual TLS)")
    boot.add_argument("--output", metavar="FILE", help="write it to FILE (default: print it)")
    boot.set_defaults(handler=xds_bootstrap)
    config = actions.add_parser(
        "service-config",
        help="print the gRPC service config JSON for channels without xDS",
        **remote,
    )
    config.add_argument("--service", required=True, help="the gRPC service the channel calls")
    config.add_argument("--caller", default="", help="the calling service")
    config.set_defaults(handler=service_config)


def cluster_put(args: argparse.Namespace) -> int:
    """`xds cluster put`: check the cluster here, then store it."""
    if not args.endpoint:
        raise CliError("give at least one --endpoint HOST:PORT")
    cluster = xds_pb2.XdsCluster(
        name=args.name,
        endpoints=[parse_endpoint(text) for text in args.endpoint],
        services=args.service,
        lb_policy=LB_POLICY_BY_NAME[args.lb_policy],  # type: ignore[arg-type]
    )
    check_cluster(cluster)
    with Client(args) as client:
        stub = xds_pb2_grpc.XdsAdminStub(client.channel)
        response = client.call(stub.PutCluster, xds_pb2.PutClusterRequest(cluster=cluster))
    say(sys.stdout, f"cluster {clean(args.name)} stored at registry revision {response.revision}")
    return 0


def cluster_delete(args: argparse.Namespace) -> int:
    """`xds cluster delete`."""
    with Client(args) as client:
        stub = xds_pb2_grpc.XdsAdminStub(client.channel)
        response = client.call(stub.DeleteCluster, xds_pb2.DeleteClusterRequest(name=args.name))
    say(sys.stdout, f"cluster {clean(args.name)} deleted at registry revision {response.revision}")
    return 0


def cluster_list(args: argparse.Namespace) -> int:
    """`xds cluster list`: one line per cluster."""
    with Client(args) as client:
        stub = xds_pb2_grpc.XdsAdminStub(client.channel)
        response = client.call(stub.ListClusters, xds_pb2.ListClustersRequest())
    if args.json:
        print(to_json(response))
        return 0
    if not response.clusters:
        say(
            sys.stdout,
            "no clusters (add one with: meshbreaker xds cluster put NAME --endpoint ...)",
        )
    for cluster in response.clusters:
        endpoints = " ".join(format_endpoint(e) for e in cluster.endpoints) or "-"
        if cluster.registered_endpoints:  # servers that registered themselves, while they renew
            endpoints += " +registered " + " ".join(
                format_endpoint(e) for e in cluster.registered_endpoints
            )
        services = ",".join(cluster.services) or "(mesh-wide policies only)"
        policy = LB_POLICY_NAMES.get(cluster.lb_policy, "?")
        print(clean(f"{cluster.name}  {endpoints}  {policy}  {services}"))
    return 0


def xds_status(client: Client) -> xds_pb2.ListXdsClientsResponse | None:
    """The xDS clients of the control plane, or None when it serves no xDS (not started --xds)."""
    stub = xds_pb2_grpc.XdsAdminStub(client.channel)
    try:
        return client.call(stub.ListXdsClients, xds_pb2.ListXdsClientsRequest())
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise


def xds_clients(args: argparse.Namespace) -> int:
    """`xds clients`: each connected client and, per resource type, its ACK or NACK."""
    with Client(args) as client:
        response = xds_status(client)
    if response is None:
        raise CliError(f"the control plane at {args.target} serves no xDS (start it with --xds)")
    if args.json:
        print(to_json(response))
        return 0
    console = console_for(sys.stdout)
    emit(console, xds_clients_view(response, console.width if console.is_terminal else None))
    return 0


def xds_bootstrap(args: argparse.Namespace) -> int:
    """`xds bootstrap`: the JSON for GRPC_XDS_BOOTSTRAP (or GRPC_XDS_BOOTSTRAP_CONFIG)."""
    try:
        document = make_bootstrap(
            args.server,
            args.node_id,
            caller=args.caller,
            ca_certificate_file=args.ca_file,
            certificate_file=args.cert_file,
            private_key_file=args.key_file,
        )
    except ConfigError as error:
        raise CliError(f"--{error.field.replace('_', '-')}: {error.message}") from None
    text = json.dumps(document, indent=2)
    if args.output is None:
        print(text)
    else:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


def service_config(args: argparse.Namespace) -> int:
    """`xds service-config`: the service config JSON from the stored policies."""
    from meshbreaker.grpc.service_config import service_config as build

    with Client(args) as client:
        response = client.call(client.stub.ListPolicies, pb.ListPoliciesRequest(caller=args.caller))
    print(build(response.policies, service=args.service, caller=args.caller))
    return 0
