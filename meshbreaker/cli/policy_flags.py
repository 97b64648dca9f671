"""The `policy put` flags: declared from BreakerConfig's fields, read back as a policy entry."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshbreaker.cli import arg_types
from meshbreaker.cli.policy_json import policy_message
from meshbreaker.config import BreakerConfig
from meshbreaker.errors import CliError, ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

# The default of every flag here, so "off" (None) is told apart from "not given".
UNSET: Any = object()


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """The `policy put` flag(s) of one BreakerConfig field, with its value parser and help."""

    field: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    help: str

    @property
    def metavar(self) -> str:
        """What the help shows as the flag's value."""
        return _METAVARS.get(self.parse, "VALUE")


_METAVARS: dict[Callable[[str], Any], str] = {
    arg_types.rate: "RATE",
    arg_types.number: "NUMBER",
    arg_types.seconds: "SECONDS",
    arg_types.optional_seconds: "SECONDS",
    arg_types.seconds_or_off: "SECONDS",
    arg_types.count: "N",
    arg_types.optional_count: "N",
    arg_types.status_codes: "CODES",
    arg_types.window_type: "count|time",
    arg_types.mode: "enforce|shadow",
}

CONFIG_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag(
        "failure_rate_threshold",
        ("--failure-rate", "--failure-rate-threshold"),
        arg_types.rate,
        "open when the window's failure rate reaches this (0..1]",
    ),
    ConfigFlag(
        "slow_call_rate_threshold",
        ("--slow-call-rate", "--slow-call-rate-threshold"),
        arg_types.rate,
        "open when the window's slow-call rate reaches this (0..1]",
    ),
    ConfigFlag(
        "slow_call_duration",
        ("--slow-call-duration",),
        arg_types.optional_seconds,
        "seconds from which a call is slow ('off' disables)",
    ),
    ConfigFlag(
        "window_type",
        ("--window-type",),
        arg_types.window_type,
        "'count' (last N calls) or 'time' (last N seconds)",
    ),
    ConfigFlag(
        "window_size", ("--window-size",), arg_types.count, "calls or seconds in the window"
    ),
    ConfigFlag(
        "minimum_calls",
        ("--minimum-calls",),
        arg_types.count,
        "calls in the window before rates count",
    ),
    ConfigFlag(
        "consecutive_failures",
        ("--consecutive-failures",),
        arg_types.count,
        "failures in a row that open the breaker (0 disables)",
    ),
    ConfigFlag(
        "open_duration", ("--open-duration",), arg_types.seconds, "seconds open before a probe"
    ),
    ConfigFlag(
        "open_duration_max",
        ("--open-duration-max",),
        arg_types.seconds,
        "cap of the growing open duration",
    ),
    ConfigFlag(
        "backoff_multiplier",
        ("--backoff-multiplier",),
        arg_types.number,
        "growth of the open duration after a failed probe",
    ),
    ConfigFlag(
        "open_jitter", ("--open-jitter",), arg_types.number, "spread of the open duration, [0, 1)"
    ),
    ConfigFlag(
        "half_open_max_calls",
        ("--half-open-max-calls",),
        arg_types.count,
        "probes in flight at once when half-open",
    ),
    ConfigFlag(
        "half_open_success_threshold",
        ("--half-open-success-threshold",),
        arg_types.count,
        "successful probes that close the breaker",
    ),
    ConfigFlag(
        "half_open_max_wait",
        ("--half-open-max-wait",),
        arg_types.seconds_or_off,
        "seconds half-open without a decision before opening again ('off' disables)",
    ),
    ConfigFlag(
        "max_concurrent_calls",
        ("--max-concurrent-calls",),
        arg_types.optional_count,
        "bulkhead: calls in flight at once ('off' disables)",
    ),
    ConfigFlag(
        "mode",
        ("--mode",),
        arg_types.mode,
        "'enforce' rejects when open; 'shadow' only reports",
    ),
    ConfigFlag(
        "failure_codes",
        ("--failure-codes",),
        arg_types.status_codes,
        "comma-separated gRPC codes that count as failures",
    ),
    ConfigFlag(
        "ignored_codes",
        ("--ignored-codes",),
        arg_types.status_codes,
        "comma-separated gRPC codes that are not counted",
    ),
)
assert {flag.field for flag in CONFIG_FLAGS} == {
    f.name for f in dataclasses.fields(BreakerConfig)
}, "every BreakerConfig field needs a flag"


def add_policy_arguments(put: argparse.ArgumentParser) -> None:
    """The flags that describe the policy (or policies) to put, from --file to the config."""
    put.add_argument("--file", metavar="FILE", help="JSON policy, list of policies, or '-'")
    put.add_argument("--id", dest="policy_id", help="policy id")
    put.add_argument("--caller", help="calling service (empty = every caller)")
    put.add_argument("--service", help="gRPC service, e.g. bank.v1.AccountService")
    put.add_argument("--method", help="full method, e.g. /bank.v1.AccountService/GetBalance")
    put.add_argument(
        "--override",
        type=arg_types.forced_state,
        default=UNSET,
        help="forced state: open, closed or none (automatic)",
    )
    put.add_argument("--description", help="free text for operators")
    put.add_argument(
        "--no-config",
        action="store_true",
        help="carry no config (only an override): breakers keep less specific policies",
    )
    for flag in CONFIG_FLAGS:
        put.add_argument(
            *flag.flags,
            dest=flag.field,
            type=flag.parse,
            default=UNSET,
            metavar=flag.metavar,
            help=flag.help,
        )


def policies_from_args(args: argparse.Namespace) -> list[pb.Policy]:
    """The policies of --file (if any), each with the flags given applied over it."""
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
    flags = entry_from_flags(args)
    if len(entries) > 1 and flags:
        raise CliError("flags apply to one policy; --file holds several")
    policies = []
    for index, entry in enumerate(entries):
        where = f"{args.file}[{index}]" if len(entries) > 1 else (args.file or "policy")
        merged = _merge_flags(entry, flags)
        try:
            policies.append(policy_message(merged))
        except ConfigError as error:
            raise CliError(f"{where}: {error}") from None
    return policies


def entry_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The policy the flags describe, as a JSON-like dict of only what was given."""
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
    if args.override is not UNSET:
        entry["override"] = args.override
    if args.description is not None:
        entry["description"] = args.description
    config = {
        flag.field: getattr(args, flag.field)
        for flag in CONFIG_FLAGS
        if getattr(args, flag.field) is not UNSET
    }
    if args.no_config:
        if config:
            raise CliError("--no-config cannot be combined with config flags")
        entry["config"] = None
    elif config:
        entry["config"] = config
    return entry


def _merge_flags(entry: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """`entry` with `flags` over it; a selector or config given by both is merged key by key."""
    merged = dict(entry)
    for key, value in flags.items():
        if key in ("selector", "config") and isinstance(value, dict):
            base = merged.get(key)
            merged[key] = {**(base if isinstance(base, dict) else {}), **value}
        else:
            merged[key] = value
    return merged
