"""The `meshbreaker` argument parser: global options, commands and their flags."""

from __future__ import annotations

import argparse
import os
from typing import NoReturn, TypeAlias

from meshbreaker import __version__
from meshbreaker.cli import arg_types, commands, rollout
from meshbreaker.cli.explain import policy_explain
from meshbreaker.cli.policy_flags import add_policy_arguments
from meshbreaker.cli.store_commands import store_adopt
from meshbreaker.cli.xds import add_xds_commands
from meshbreaker.live.terminal import PROG

DEFAULT_TARGET = "127.0.0.1:7070"


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options of a command that talks to a control plane.

    They are accepted before the command and after it: the copies after it default to SUPPRESS,
    so they set a value only when given and never hide one given before.
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(os.environ.get("MESHBREAKER_TARGET", DEFAULT_TARGET)),
        help=f"control plane host:port (env MESHBREAKER_TARGET; default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("MESHBREAKER_TOKEN")),
        help="bearer token sent as 'authorization: Bearer T' (env MESHBREAKER_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca", metavar="FILE", default=default(None), help="CA bundle: connect with TLS"
    )
    parser.add_argument(
        "--tls-cert", metavar="FILE", default=default(None), help="client certificate (mutual TLS)"
    )
    parser.add_argument(
        "--tls-key", metavar="FILE", default=default(None), help="client private key (mutual TLS)"
    )
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=default(None),
        help="expected server name in its certificate",
    )
    parser.add_argument(
        "--timeout",
        type=arg_types.seconds,
        default=default(5.0),
        help="seconds per request (default 5.0)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `meshbreaker` argument parser (building it never touches the network)."""
    parser = _Parser(
        prog=PROG,
        description="Circuit breakers for gRPC across a mesh: run the control plane, "
        "inspect breakers, manage policies.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _connection_options(parser, defaults=True)
    connection = _Parser(add_help=False)
    _connection_options(connection, defaults=False)
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_control_plane(subcommands)
    _add_status(subcommands, connection)
    _add_policy(subcommands, connection)
    _add_force(subcommands, connection)
    _add_store(subcommands, connection)
    _add_events(subcommands, connection)
    add_xds_commands(subcommands, connection)
    return parser


# The type argparse gives `add_subparsers` objects.
_Subcommands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def _add_control_plane(subcommands: _Subcommands) -> None:
    serve = subcommands.add_parser("control-plane", help="run the control-plane server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument(
        "--port", type=arg_types.count, default=7070, help="port (default %(default)s)"
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--db", default="meshbreaker.db", help="SQLite file (default %(default)s)")
    where.add_argument(
        "--store",
        metavar="URL",
        help="policy store: sqlite:///PATH (sqlite:////abs/path) or"
        " etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (needs [etcd]); default: --db",
    )
    serve.add_argument("--admin-token", help="token required for mutations")
    serve.add_argument("--agent-token", help="token accepted for watch/report/reads")
    serve.add_argument(
        "--agent-token-file",
        metavar="FILE",
        help="agent tokens limited to caller services, one '<token> <service>[,...]' a line",
    )
    serve.add_argument(
        "--tls-client-names-service",
        action="store_true",
        help="with --tls-client-ca: an agent's certificate must name its service in a SAN",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without tokens or TLS (logged as a warning)",
    )
    serve.add_argument("--tls-cert", dest="server_tls_cert", metavar="FILE", help="certificate")
    serve.add_argument("--tls-key", dest="server_tls_key", metavar="FILE", help="private key")
    serve.add_argument(
        "--tls-client-ca", metavar="FILE", help="CA for client certificates (mutual TLS)"
    )
    serve.add_argument(
        "--report-ttl",
        type=arg_types.seconds,
        default=30.0,
        help="seconds after which a silent instance is forgotten (default %(default)s)",
    )
    serve.add_argument(
        "--metrics-port",
        type=arg_types.count,
        help="serve Prometheus metrics on this HTTP port (default: off; needs [prometheus])",
    )
    serve.add_argument(
        "--metrics-host", help="address for the metrics endpoint (default: the --host address)"
    )
    serve.add_argument(
        "--metrics-instance-breakers",
        type=arg_types.count,
        default=2_000,
        help="metrics per instance up to this many reported breakers, then summed per caller "
        'service with instance="*" (default %(default)s)',
    )
    serve.add_argument(
        "--console-port",
        type=arg_types.count,
        help="serve the web console on this HTTP port (HTTPS with --tls-cert; default: off)",
    )
    serve.add_argument(
        "--console-host", help="address for the web console (default: the --host address)"
    )
    serve.add_argument(
        "--xds",
        action="store_true",
        help="also serve policies and the cluster registry over xDS (ADS) on this port "
        "(needs [xds])",
    )
    serve.add_argument(
        "--xds-allow-anonymous",
        action="store_true",
        help="with --xds and tokens: let ADS streams without a token read the mesh (gRPC's xDS "
        "client sends none; mutual TLS clients are let in anyway)",
    )
    serve.set_defaults(handler=commands.control_plane)


def _add_store(subcommands: _Subcommands, connection: _Parser) -> None:
    store = subcommands.add_parser(
        "store", help="decide which store's policies agents hold", parents=[connection]
    )
    actions = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    adopt = actions.add_parser(
        "adopt",
        help="let agents holding another store's policies (or a higher revision) take these",
        parents=[connection],
    )
    adopt.add_argument("store_id", metavar="STORE_ID", help="the store the agents hold now")
    adopt.set_defaults(handler=store_adopt)


def _add_status(subcommands: _Subcommands, connection: _Parser) -> None:
    status = subcommands.add_parser("status", help="breakers across the mesh", parents=[connection])
    _add_caller(status)
    status.add_argument(
        "--method",
        default="",
        help="only this method or service: a gRPC one, an HTTP route or origin, a database",
    )
    status.add_argument(
        "--state",
        type=arg_types.state_filter,
        help="only breakers some instance sees in this state: CLOSED, OPEN, HALF_OPEN, "
        "FORCED_OPEN, FORCED_CLOSED (OPEN includes FORCED_OPEN, CLOSED FORCED_CLOSED)",
    )
    status.add_argument("--instances", action="store_true", help="show each instance")
    status.add_argument(
        "--watch", action="store_true", help="live table, redrawn on every event, until Ctrl-C"
    )
    status.add_argument(
        "--interval",
        type=arg_types.seconds,
        default=2.0,
        help="with --watch: seconds between periodic refreshes (default %(default)s)",
    )
    status.add_argument("--iterations", type=arg_types.count, default=0, help=argparse.SUPPRESS)
    _add_json(status)
    status.set_defaults(handler=commands.status)


def _add_policy(subcommands: _Subcommands, connection: _Parser) -> None:
    policy = subcommands.add_parser(
        "policy", help="list, put, delete or explain policies", parents=[connection]
    )
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    put = policy_commands.add_parser(
        "put", help="create or replace a policy (flags override --file)", parents=[connection]
    )
    add_policy_arguments(put)
    put.add_argument(
        "--canary",
        type=rollout.percent,
        default=None,
        metavar="N%",
        help="stage it: the new config runs on N%% of the matching instances (chosen by a hash of"
        " policy and instance id), the stored one on the rest, until promote or rollback",
    )
    put.add_argument(
        "--canary-max-rejection-margin",
        type=arg_types.rate_or_zero,
        default=None,
        metavar="RATE",
        help="with --canary: the control plane rolls it back once the canary refuses more of its"
        " calls than the rest by more than this (0..1)",
    )
    _add_expected_revision(put)
    put.set_defaults(handler=commands.policy_put)
    for name, handler, text in (
        ("promote", rollout.promote, "the canary's config becomes the policy's, everywhere"),
        ("rollback", rollout.rollback, "end the canary: every instance runs the stored config"),
    ):
        finishing = policy_commands.add_parser(name, help=text, parents=[connection])
        finishing.add_argument("policy_id", metavar="ID")
        finishing.set_defaults(handler=handler)
    listing = policy_commands.add_parser("list", help="list policies", parents=[connection])
    listing.add_argument("--caller", default="", help="only policies applying to this caller")
    _add_json(listing)
    listing.set_defaults(handler=commands.policy_list)
    delete = policy_commands.add_parser("delete", help="delete a policy", parents=[connection])
    delete.add_argument("policy_id", metavar="ID")
    _add_expected_revision(delete)
    delete.set_defaults(handler=commands.policy_delete)
    explaining = policy_commands.add_parser(
        "explain",
        help="a breaker's effective config and which policy set each field",
        parents=[connection],
    )
    explaining.add_argument("--caller", required=True, help="the calling service, e.g. gateway")
    explaining.add_argument(
        "--method",
        required=True,
        help="the breaker: a full gRPC method (/bank.v1.AccountService/GetBalance), an HTTP "
        "route (https://cards.example/v1/charges) or a database (sqlite:///var/ledger.db)",
    )
    _add_json(explaining)
    explaining.set_defaults(handler=policy_explain)


def _add_force(subcommands: _Subcommands, connection: _Parser) -> None:
    force = subcommands.add_parser(
        "force", help="force breakers open/closed, or back to auto", parents=[connection]
    )
    force.add_argument("action", choices=("open", "closed", "auto"))
    force.add_argument("--service", default="", help="gRPC service, e.g. bank.v1.AccountService")
    force.add_argument("--method", default="", help="full method name")
    force.add_argument("--caller", default="", help="only this calling service")
    force.add_argument("--policy-id", default="", help="id of the policy to create, if any")
    force.add_argument(
        "--for",
        dest="duration",
        type=arg_types.span,
        default=None,
        help="end the override after this long (90s, 10m, 2h, 1d), on every instance, even"
        " while the control plane is down; default: until set back",
    )
    force.add_argument("--reason", default="", help="why, shown by status (256 characters)")
    _add_expected_revision(force)
    force.set_defaults(handler=commands.force)


def _add_events(subcommands: _Subcommands, connection: _Parser) -> None:
    events = subcommands.add_parser(
        "events",
        help="recent mesh-wide events (transitions, policy changes, NACKs); --follow for new ones",
        parents=[connection],
    )
    _add_caller(events)
    events.add_argument(
        "--follow", action="store_true", help="keep printing events until interrupted"
    )
    events.add_argument(
        "--limit",
        type=arg_types.count,
        default=100,
        help="without --follow: the most recent N events the control plane kept "
        "(default %(default)s; 0 = all it kept)",
    )
    events.add_argument("--max-events", type=arg_types.count, default=0, help=argparse.SUPPRESS)
    events.set_defaults(handler=commands.events)


def _add_expected_revision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expected-revision", type=arg_types.count, metavar="N", help="only if the store is at N"
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw response as JSON")


class _WasRenamed(argparse.Action):
    """`--service` where a view means the caller: refused, naming what to use instead."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error(
            "--service is now --caller here (the calling service); "
            "for a gRPC service use --method pkg.Service"
        )


def _add_caller(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--caller", default="", help="only this calling service")
    parser.add_argument("--service", action=_WasRenamed, help=argparse.SUPPRESS)
