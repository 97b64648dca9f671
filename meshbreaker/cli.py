"""The `meshbreaker` command: run the control plane, inspect the mesh, manage policies."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from meshbreaker import live
from meshbreaker.config import GRPC_CODE_NAMES, BreakerConfig, Mode, State, WindowType
from meshbreaker.control import convert
from meshbreaker.control.agent import Backoff
from meshbreaker.errors import ConfigError, MeshbreakerError
from meshbreaker.live import EventFollower, StatusWatch, format_event, state_name
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:7070"
PROG = "meshbreaker"

# What turns an optional setting off (None) on the command line.
_NONE_WORDS = frozenset({"none", "off", "null", ""})


def _float(text: str) -> float:
    try:
        return float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _rate(text: str) -> float:
    value = _float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate in (0, 1]")
    return value


def _seconds(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _optional_seconds(text: str) -> float | None:
    return None if text.lower() in _NONE_WORDS else _seconds(text)


def _count(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _optional_count(text: str) -> int | None:
    return None if text.lower() in _NONE_WORDS else _count(text)


def _codes(text: str) -> frozenset[str]:
    codes = frozenset(part.strip().upper() for part in text.split(",") if part.strip())
    unknown = sorted(codes - GRPC_CODE_NAMES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown gRPC status code name(s): {', '.join(unknown)}")
    return codes


def _window_type(text: str) -> WindowType:
    try:
        return WindowType(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'count' or 'time'") from None


def _mode(text: str) -> Mode:
    try:
        return Mode(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'enforce' or 'shadow'") from None


@dataclasses.dataclass(frozen=True)
class _ConfigFlag:
    """The `policy put` flag(s) of one BreakerConfig field, with its value parser and help."""

    field: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    help: str

    @property
    def metavar(self) -> str:
        return _METAVARS.get(self.parse, "VALUE")


_METAVARS: dict[Callable[[str], Any], str] = {
    _rate: "RATE",
    _float: "NUMBER",
    _seconds: "SECONDS",
    _optional_seconds: "SECONDS",
    _count: "N",
    _optional_count: "N",
    _codes: "CODES",
    _window_type: "count|time",
    _mode: "enforce|shadow",
}

_CONFIG_FLAGS: tuple[_ConfigFlag, ...] = (
    _ConfigFlag(
        "failure_rate_threshold",
        ("--failure-rate", "--failure-rate-threshold"),
        _rate,
        "open when the window's failure rate reaches this (0..1]",
    ),
    _ConfigFlag(
        "slow_call_rate_threshold",
        ("--slow-call-rate", "--slow-call-rate-threshold"),
        _rate,
        "open when the window's slow-call rate reaches this (0..1]",
    ),
    _ConfigFlag(
        "slow_call_duration",
        ("--slow-call-duration",),
        _optional_seconds,
        "seconds from which a call is slow ('off' disables)",
    ),
    _ConfigFlag(
        "window_type",
        ("--window-type",),
        _window_type,
        "'count' (last N calls) or 'time' (last N seconds)",
    ),
    _ConfigFlag("window_size", ("--window-size",), _count, "calls or seconds in the window"),
    _ConfigFlag(
        "minimum_calls", ("--minimum-calls",), _count, "calls in the window before rates count"
    ),
    _ConfigFlag(
        "consecutive_failures",
        ("--consecutive-failures",),
        _count,
        "failures in a row that open the breaker (0 disables)",
    ),
    _ConfigFlag("open_duration", ("--open-duration",), _seconds, "seconds open before a probe"),
    _ConfigFlag(
        "open_duration_max", ("--open-duration-max",), _seconds, "cap of the growing open duration"
    ),
    _ConfigFlag(
        "backoff_multiplier",
        ("--backoff-multiplier",),
        _float,
        "growth of the open duration after a failed probe",
    ),
    _ConfigFlag("open_jitter", ("--open-jitter",), _float, "spread of the open duration, [0, 1)"),
    _ConfigFlag(
        "half_open_max_calls",
        ("--half-open-max-calls",),
        _count,
        "probes in flight at once when half-open",
    ),
    _ConfigFlag(
        "half_open_success_threshold",
        ("--half-open-success-threshold",),
        _count,
        "successful probes that close the breaker",
    ),
    _ConfigFlag(
        "max_concurrent_calls",
        ("--max-concurrent-calls",),
        _optional_count,
        "bulkhead: calls in flight at once ('off' disables)",
    ),
    _ConfigFlag(
        "mode",
        ("--mode",),
        _mode,
        "'enforce' rejects when open; 'shadow' only reports",
    ),
    _ConfigFlag(
        "failure_codes",
        ("--failure-codes",),
        _codes,
        "comma-separated gRPC codes that count as failures",
    ),
    _ConfigFlag(
        "ignored_codes",
        ("--ignored-codes",),
        _codes,
        "comma-separated gRPC codes that are not counted",
    ),
)
assert {flag.field for flag in _CONFIG_FLAGS} == {
    f.name for f in dataclasses.fields(BreakerConfig)
}, "every BreakerConfig field needs a flag"


_UNSET: Any = object()
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class CliError(MeshbreakerError):
    """A user-facing error: printed as one line, exit status 1."""


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; an empty table says so."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not cells:
        lines.append("(none)")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Argument parsing


def build_parser() -> argparse.ArgumentParser:
    """The `meshbreaker` argument parser (building it never touches the network)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Circuit breakers for gRPC across a mesh: run the control plane, "
        "inspect breakers, manage policies.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("MESHBREAKER_TARGET", DEFAULT_TARGET),
        help="control plane host:port (env MESHBREAKER_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MESHBREAKER_TOKEN"),
        help="bearer token sent as 'authorization: Bearer T' (env MESHBREAKER_TOKEN)",
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="CA bundle: connect with TLS")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="client private key (mutual TLS)")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="expected server name in its certificate"
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=5.0, help="seconds per request (default %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("control-plane", help="run the control-plane server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument("--port", type=_count, default=7070, help="port (default %(default)s)")
    serve.add_argument("--db", default="meshbreaker.db", help="SQLite file (default %(default)s)")
    serve.add_argument("--admin-token", help="token required for mutations")
    serve.add_argument("--agent-token", help="token accepted for watch/report/reads")
    serve.add_argument("--tls-cert", dest="server_tls_cert", metavar="FILE", help="certificate")
    serve.add_argument("--tls-key", dest="server_tls_key", metavar="FILE", help="private key")
    serve.add_argument(
        "--tls-client-ca", metavar="FILE", help="CA for client certificates (mutual TLS)"
    )
    serve.add_argument(
        "--report-ttl",
        type=_seconds,
        default=30.0,
        help="seconds after which a silent instance is forgotten (default %(default)s)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_count,
        help="serve Prometheus metrics on this HTTP port (default: off; needs [prometheus])",
    )
    serve.add_argument(
        "--metrics-host", help="address for the metrics endpoint (default: the --host address)"
    )
    serve.set_defaults(handler=_cmd_control_plane)

    status = commands.add_parser("status", help="breakers across the mesh")
    status.add_argument("--service", default="", help="only this caller service")
    status.add_argument("--method", default="", help="only this method or gRPC service")
    status.add_argument(
        "--state",
        type=_state_filter,
        help="only breakers some instance sees in this state (CLOSED, OPEN, HALF_OPEN, ...)",
    )
    status.add_argument("--instances", action="store_true", help="show each instance")
    status.add_argument(
        "--watch", action="store_true", help="live table, redrawn on every event, until Ctrl-C"
    )
    status.add_argument(
        "--interval",
        type=_seconds,
        default=2.0,
        help="with --watch: seconds between periodic refreshes (default %(default)s)",
    )
    status.add_argument("--iterations", type=_count, default=0, help=argparse.SUPPRESS)
    status.add_argument("--json", action="store_true", help="print the raw response as JSON")
    status.set_defaults(handler=_cmd_status)

    policy = commands.add_parser("policy", help="list, put or delete policies")
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    put = policy_commands.add_parser(
        "put", help="create or replace a policy (flags override --file)"
    )
    put.add_argument("--file", metavar="FILE", help="JSON policy, list of policies, or '-'")
    put.add_argument("--id", dest="policy_id", help="policy id")
    put.add_argument("--caller", help="calling service (empty = every caller)")
    put.add_argument("--service", help="gRPC service, e.g. bank.v1.AccountService")
    put.add_argument("--method", help="full method, e.g. /bank.v1.AccountService/GetBalance")
    put.add_argument(
        "--override",
        type=_override,
        default=_UNSET,
        help="forced state: open, closed or none (automatic)",
    )
    put.add_argument("--description", help="free text for operators")
    put.add_argument(
        "--no-config",
        action="store_true",
        help="carry no config (only an override): breakers keep less specific policies",
    )
    for flag in _CONFIG_FLAGS:
        put.add_argument(
            *flag.flags,
            dest=flag.field,
            type=flag.parse,
            default=_UNSET,  # so "off" (None) is told apart from "not given"
            metavar=flag.metavar,
            help=flag.help,
        )
    put.add_argument(
        "--expected-revision", type=_count, metavar="N", help="only if the store is at N"
    )
    put.set_defaults(handler=_cmd_policy_put)
    listing = policy_commands.add_parser("list", help="list policies")
    listing.add_argument("--caller", default="", help="only policies applying to this caller")
    listing.add_argument("--json", action="store_true", help="print the raw response as JSON")
    listing.set_defaults(handler=_cmd_policy_list)
    delete = policy_commands.add_parser("delete", help="delete a policy")
    delete.add_argument("policy_id", metavar="ID")
    delete.add_argument(
        "--expected-revision", type=_count, metavar="N", help="only if the store is at N"
    )
    delete.set_defaults(handler=_cmd_policy_delete)

    force = commands.add_parser("force", help="force breakers open/closed, or back to auto")
    force.add_argument("action", choices=("open", "closed", "auto"))
    force.add_argument("--service", default="", help="gRPC service, e.g. bank.v1.AccountService")
    force.add_argument("--method", default="", help="full method name")
    force.add_argument("--caller", default="", help="only this calling service")
    force.add_argument("--policy-id", default="", help="id of the policy to create, if any")
    force.add_argument(
        "--expected-revision", type=_count, metavar="N", help="only if the store is at N"
    )
    force.set_defaults(handler=_cmd_force)

    events = commands.add_parser("events", help="mesh-wide events")
    events.add_argument("--service", default="", help="only this caller service")
    events.add_argument(
        "--follow", action="store_true", help="keep printing events until interrupted"
    )
    events.add_argument(
        "--duration",
        type=_seconds,
        default=2.0,
        help="without --follow: seconds to listen (default %(default)s)",
    )
    events.add_argument("--max-events", type=_count, default=0, help=argparse.SUPPRESS)
    events.set_defaults(handler=_cmd_events)
    return parser


def _state_filter(text: str) -> int:
    try:
        return convert.state_to_proto(State(text.upper()))
    except ValueError:
        names = ", ".join(state.value for state in State)
        raise argparse.ArgumentTypeError(f"{text!r} is not a state ({names})") from None


def _override(text: str) -> State | None:
    words = {
        "open": State.FORCED_OPEN,
        "forced_open": State.FORCED_OPEN,
        "closed": State.FORCED_CLOSED,
        "forced_closed": State.FORCED_CLOSED,
        "none": None,
        "auto": None,
    }
    key = text.lower()
    if key not in words:
        raise argparse.ArgumentTypeError(f"{text!r} is not open, closed or none")
    return words[key]


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv` (default sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except grpc.RpcError as error:
        _error(_rpc_message(args, error))
    except (CliError, ConfigError) as error:
        _error(str(error))
    except OSError as error:
        _error(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
    return 1


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def _rpc_message(args: argparse.Namespace, error: grpc.RpcError) -> str:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    name = code.name if code is not None else "ERROR"
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the control plane at {args.target}: {name}: {details}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from the control plane at {args.target} within {args.timeout}s"
    return f"{name}: {details}"


class _Client:
    """A channel and stub to the control plane, with the token and timeout of the command line."""

    def __init__(
        self, args: argparse.Namespace, extra_options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self.timeout: float = args.timeout
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {args.token}"),) if args.token else ()
        )
        options: list[tuple[str, Any]] = list(extra_options)
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        if args.tls_ca or args.tls_cert or args.tls_key:
            if bool(args.tls_cert) != bool(args.tls_key):
                raise CliError("--tls-cert and --tls-key must be given together")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(args.tls_ca),
                private_key=_read(args.tls_key),
                certificate_chain=_read(args.tls_cert),
            )
            self.channel = grpc.secure_channel(args.target, credentials, options)
        else:
            self.channel = grpc.insecure_channel(args.target, options)
        self.stub = pb_grpc.ControlPlaneStub(self.channel)

    def call(
        self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request
    ) -> _Response:
        """One unary RPC (a method of `stub`) with the command's timeout and token."""
        return method(request, timeout=self.timeout, metadata=self.metadata)

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


# ---------------------------------------------------------------------------------------------
# Commands


def _cmd_control_plane(args: argparse.Namespace) -> int:
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
            host=args.host,
            admin_token=args.admin_token,
            agent_token=args.agent_token,
            tls_cert=args.server_tls_cert,
            tls_key=args.server_tls_key,
            tls_client_ca=args.tls_client_ca,
            report_ttl=args.report_ttl,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    request = pb.ListBreakersRequest(
        service=args.service,
        method=args.method,
        state=args.state or pb.BREAKER_STATE_UNSPECIFIED,
        include_instances=args.instances,
    )
    if args.watch:
        return _live(args, lambda client, backoff: _status_watch(args, client, backoff, request))
    with _Client(args) as client:
        response = client.call(client.stub.ListBreakers, request)
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
    else:
        print(format_status(response, instances=args.instances))
    return 0


def _status_watch(
    args: argparse.Namespace, client: _Client, backoff: Backoff, request: pb.ListBreakersRequest
) -> int:
    return StatusWatch(
        client.stub,
        request,
        target=args.target,
        out=sys.stdout,
        err=sys.stderr,
        metadata=client.metadata,
        timeout=client.timeout,
        interval=args.interval,
        tty=live.is_terminal(sys.stdout),
        color=live.use_color(sys.stdout),
        as_json=args.json,
        instances=args.instances,
        iterations=args.iterations,
        backoff=backoff,
    ).run()


def _live(args: argparse.Namespace, view: Callable[[_Client, Backoff], int]) -> int:
    """Run a live view on a channel that reconnects as fast as `backoff`; Ctrl-C ends it, 0."""
    live.quiet_grpc_logs()
    backoff = live.new_backoff()
    try:
        with _Client(args, live.channel_options(backoff)) as client:
            return view(client, backoff)
    except KeyboardInterrupt:
        return 0


def format_status(response: pb.ListBreakersResponse, *, instances: bool = False) -> str:
    """The `status` tables: one row per (service, breaker), then instances when asked."""
    rows = [
        (
            group.service,
            group.name,
            group.instances,
            group.closed,
            group.open,
            group.half_open,
            group.forced_open + group.forced_closed,
            _percent(group.failure_rate),
            _percent(group.slow_call_rate),
            group.total,
            group.failed,
            group.rejected,
        )
        for group in response.groups
    ]
    headers = (
        "SERVICE",
        "BREAKER",
        "INSTANCES",
        "CLOSED",
        "OPEN",
        "HALF_OPEN",
        "FORCED",
        "FAILURE",
        "SLOW",
        "CALLS",
        "FAILED",
        "REJECTED",
    )
    parts = [format_table(headers, rows)]
    if instances:
        detail = [
            (
                group.service,
                group.name,
                item.instance_id,
                state_name(item.snapshot.state),
                item.applied_revision,
                _percent(item.snapshot.failure_rate),
                item.snapshot.window_calls,
                f"{item.report_age:.1f}s",
            )
            for group in response.groups
            for item in group.instance_breakers
        ]
        parts.append("")
        parts.append(
            format_table(
                ("SERVICE", "BREAKER", "INSTANCE", "STATE", "REVISION", "FAILURE", "WINDOW", "AGE"),
                detail,
            )
        )
    live = [
        (
            item.instance_id,
            item.service,
            item.applied_revision,
            item.breakers,
            f"{item.report_age:.1f}s",
            f"rev {item.nack.revision}: {item.nack.reason}" if item.HasField("nack") else "",
        )
        for item in response.instances
    ]
    if instances or any(row[5] for row in live):
        parts.append("")
        parts.append(
            format_table(("INSTANCE", "SERVICE", "REVISION", "BREAKERS", "AGE", "NACK"), live)
        )
    parts.append("")
    parts.append(f"store revision {response.revision}; {len(response.instances)} live instance(s)")
    return "\n".join(parts)


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _cmd_policy_put(args: argparse.Namespace) -> int:
    policies = _policies_from_args(args)
    # expected_revision=None leaves the field unset: no compare-and-set.
    request = pb.PutPolicyRequest(policies=policies, expected_revision=args.expected_revision)
    with _Client(args) as client:
        response = client.call(client.stub.PutPolicy, request)
    for policy in response.policies:
        print(f"put policy {policy.id} at revision {policy.revision}")
    print(f"store revision {response.revision}")
    return 0


def _policies_from_args(args: argparse.Namespace) -> list[pb.Policy]:
    entries: list[dict[str, Any]] = []
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise CliError(f"{args.file}: not valid JSON: {error}") from None
        if isinstance(loaded, dict) and "policies" in loaded:
            loaded = loaded["policies"]
        entries = loaded if isinstance(loaded, list) else [loaded]
        if not entries or not all(isinstance(entry, dict) for entry in entries):
            raise CliError(f"{args.file}: expected a policy object or a list of them")
    else:
        entries = [{}]
    flags = _flag_entry(args)
    if len(entries) > 1 and flags:
        raise CliError("flags apply to one policy; --file holds several")
    policies = []
    for index, entry in enumerate(entries):
        where = f"{args.file}[{index}]" if len(entries) > 1 else (args.file or "policy")
        merged = _merge(entry, flags)
        try:
            policies.append(policy_message(merged))
        except ConfigError as error:
            raise CliError(f"{where}: {error}") from None
    return policies


def _flag_entry(args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if args.policy_id is not None:
        entry["id"] = args.policy_id
    selector = {
        key: getattr(args, key)
        for key in ("caller", "service", "method")
        if getattr(args, key) is not None
    }
    if selector:
        entry["selector"] = selector
    if args.override is not _UNSET:
        entry["override"] = args.override
    if args.description is not None:
        entry["description"] = args.description
    config = {
        flag.field: getattr(args, flag.field)
        for flag in _CONFIG_FLAGS
        if getattr(args, flag.field) is not _UNSET
    }
    if args.no_config:
        if config:
            raise CliError("--no-config cannot be combined with config flags")
        entry["config"] = None
    elif config:
        entry["config"] = config
    return entry


def _merge(entry: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    merged = dict(entry)
    for key, value in flags.items():
        if key in ("selector", "config") and isinstance(value, dict):
            base = merged.get(key)
            merged[key] = {**(base if isinstance(base, dict) else {}), **value}
        else:
            merged[key] = value
    return merged


_POLICY_KEYS = frozenset(
    {"id", "selector", "caller", "service", "method", "config", "mode", "override", "description"}
)


def policy_message(entry: dict[str, Any]) -> pb.Policy:
    """A Policy message from a JSON-like dict; only the config fields given are set."""
    unknown = sorted(set(entry) - _POLICY_KEYS)
    if unknown:
        raise ConfigError(unknown[0], "unknown policy key")
    selector = dict(entry.get("selector") or {})
    for key in ("caller", "service", "method"):
        if key in entry:
            selector[key] = entry[key]
    bad = sorted(set(selector) - {"caller", "service", "method"})
    if bad:
        raise ConfigError(f"selector.{bad[0]}", "unknown selector key")
    policy_id = entry.get("id")
    if not policy_id:
        raise ConfigError("id", "a policy needs an id (--id)")
    message = pb.Policy(
        id=str(policy_id),
        selector=pb.Selector(**{key: str(value or "") for key, value in selector.items()}),
        description=str(entry.get("description") or ""),
    )
    override = entry.get("override")
    if isinstance(override, str):
        override = _override_word(override)
    message.override = convert.override_to_proto(override)
    config = entry.get("config", {})
    if "mode" in entry:
        config = {**(config or {}), "mode": entry["mode"]}
    if config is not None:
        if not isinstance(config, dict):
            raise ConfigError("config", "must be an object of BreakerConfig fields")
        config_message, mode = config_message_from(config)
        message.config.CopyFrom(config_message)
        message.mode = mode
    return message


def _override_word(text: str) -> State | None:
    try:
        return _override(text)
    except argparse.ArgumentTypeError as error:
        raise ConfigError("override", str(error)) from None


def config_message_from(values: dict[str, Any]) -> tuple[pb.BreakerConfig, pb.Mode.ValueType]:
    """Validate `values` as BreakerConfig fields; the message sets only those fields."""
    full = BreakerConfig.from_dict(values)
    message, mode = convert.config_to_proto(full)
    for name in _PROTO_CONFIG_FIELDS:
        if name not in values:
            message.ClearField(name)  # type: ignore[arg-type]
    if "slow_call_duration" not in values:
        message.ClearField("slow_call_duration")
        message.ClearField("slow_calls_disabled")
    return message, mode if "mode" in values else pb.MODE_UNSPECIFIED


_PROTO_CONFIG_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(BreakerConfig)
    if f.name not in ("mode", "slow_call_duration")
)


def _cmd_policy_list(args: argparse.Namespace) -> int:
    with _Client(args) as client:
        response = client.call(client.stub.ListPolicies, pb.ListPoliciesRequest(caller=args.caller))
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    rows = [
        (
            policy.id,
            policy.selector.caller or "*",
            policy.selector.service or "*",
            policy.selector.method or "*",
            _mode_name(policy),
            _override_name(policy.override),
            policy.revision,
            describe_config(policy),
        )
        for policy in response.policies
    ]
    headers = ("ID", "CALLER", "SERVICE", "METHOD", "MODE", "OVERRIDE", "REVISION", "SETTINGS")
    print(format_table(headers, rows))
    print(f"\nstore revision {response.revision}")
    return 0


def _mode_name(policy: pb.Policy) -> str:
    if not policy.HasField("config"):
        return "-"
    return "shadow" if policy.mode == pb.MODE_SHADOW else "enforce"


def _override_name(value: int) -> str:
    state = convert.override_from_proto(value)
    return state.value if state is not None else "-"


def describe_config(policy: pb.Policy) -> str:
    """The config fields that differ from the defaults, as `name=value` words."""
    if not policy.HasField("config"):
        return "(no config)"
    config = convert.config_from_proto(policy.config, policy.mode)
    defaults = BreakerConfig().to_dict()
    words = []
    for name, value in config.to_dict().items():
        if name == "mode" or value == defaults[name]:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        words.append(f"{name}={value}")
    return " ".join(words) or "(defaults)"


def _cmd_policy_delete(args: argparse.Namespace) -> int:
    request = pb.DeletePolicyRequest(id=args.policy_id, expected_revision=args.expected_revision)
    with _Client(args) as client:
        response = client.call(client.stub.DeletePolicy, request)
    print(f"deleted policy {args.policy_id}; store revision {response.revision}")
    return 0


_FORCE_ACTIONS = {
    "open": pb.OVERRIDE_FORCED_OPEN,
    "closed": pb.OVERRIDE_FORCED_CLOSED,
    "auto": pb.OVERRIDE_NONE,
}


def _cmd_force(args: argparse.Namespace) -> int:
    if not args.service and not args.method:
        raise CliError("force needs --service or --method")
    request = pb.ForceStateRequest(
        selector=pb.Selector(caller=args.caller, service=args.service, method=args.method),
        override=_FORCE_ACTIONS[args.action],
        policy_id=args.policy_id,
        expected_revision=args.expected_revision,
    )
    with _Client(args) as client:
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
        print(f"{target}: forced {args.action}{holder}; store revision {response.revision}")
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    request = pb.WatchEventsRequest(service=args.service)
    if args.follow:
        return _live(
            args,
            lambda client, backoff: EventFollower(
                client.stub,
                request,
                target=args.target,
                out=sys.stdout,
                err=sys.stderr,
                metadata=client.metadata,
                max_events=args.max_events,
                backoff=backoff,
            ).run(),
        )
    with _Client(args) as client:
        stream = client.stub.WatchEvents(request, timeout=args.duration, metadata=client.metadata)
        seen = 0
        try:
            for event in stream:
                print(format_event(event), flush=True)
                seen += 1
                if args.max_events and seen >= args.max_events:
                    stream.cancel()
                    break
        except grpc.RpcError as error:
            # The stream ends by its deadline: that is the normal end.
            if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        except KeyboardInterrupt:
            stream.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
