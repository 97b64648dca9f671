"""The `policy put` flags: derived from the BreakerConfig field schema, read back as a policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meshbreaker.cli import arg_types
from meshbreaker.cli.policy_json import policy_message
from meshbreaker.config import SCHEMA
from meshbreaker.errors import CliError, ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

# The default of every flag here, so "off" (None) is told apart from "not given".
UNSET: Any = object()


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
    for name, schema in SCHEMA.items():
        put.add_argument(
            *schema.flags,
            dest=name,
            type=arg_types.KIND_PARSERS[schema.kind],
            default=UNSET,
            metavar=arg_types.KIND_METAVARS[schema.kind],
            help=schema.help,
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
    config = {name: getattr(args, name) for name in SCHEMA if getattr(args, name) is not UNSET}
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
