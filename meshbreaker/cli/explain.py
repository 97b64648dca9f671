"""`policy explain`: a breaker's effective config and the layer each field came from."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from rich.console import Group, RenderableType
from rich.text import Text

from meshbreaker._names import check_method_selector
from meshbreaker.cli.client import Client
from meshbreaker.config import SCHEMA, BreakerConfig
from meshbreaker.control import convert
from meshbreaker.control.layers import PROCESS_DEFAULT, Explanation, describe_value, explain
from meshbreaker.errors import CliError, ConfigError
from meshbreaker.live.table import Column, new_table
from meshbreaker.live.terminal import console_for
from meshbreaker.v1 import control_plane_pb2 as pb


def policy_explain(args: argparse.Namespace) -> int:
    """`policy explain`: resolve the caller's policies for one breaker, as its agent would.

    The breaker is named as a policy selects it: a gRPC method, an HTTP route or a database.
    """
    try:
        caller = convert.check_caller(args.caller, "--caller", required=True)
        method = check_method_selector(args.method, "--method")
    except ConfigError as error:
        raise CliError(str(error)) from None
    if not method:
        raise CliError("--method: must not be empty")
    with Client(args) as client:
        policies = client.call(client.stub.ListPolicies, pb.ListPoliciesRequest(caller=caller))
        breakers = client.call(
            client.stub.ListBreakers,
            pb.ListBreakersRequest(service=caller, method=method, include_instances=True),
        )
    base, base_name, note = process_default(breakers, method)
    try:
        explanation = explain(caller, method, policies.policies, base, base_name)
    except ConfigError as error:
        raise CliError(f"the policies for {caller} do not resolve: {error}") from None
    if args.json:
        print(json.dumps(explanation_json(explanation, policies.revision), indent=2))
        return 0
    console = console_for(sys.stdout)
    console.print(f"{method} called by {caller} (store revision {policies.revision})")
    console.print(format_explanation(explanation, console.width if console.is_terminal else None))
    if note:
        console.print(note)
    return 0


def process_default(
    breakers: pb.ListBreakersResponse, method: str
) -> tuple[BreakerConfig, str, str]:
    """The process's own default as live instances report it, its label and a note.

    A field no policy sets keeps the process's default, so the effective config a live instance
    reports for this method holds it. Without one, the library's defaults stand in (and say so).
    """
    reported: dict[BreakerConfig, str] = {}
    for _, item, config in reported_configs(breakers, method):
        reported.setdefault(config, item.instance_id)
    if not reported:
        return (
            BreakerConfig(),
            "library default",
            "no live instance reports this breaker: unset fields show the library's defaults",
        )
    config, instance = min(reported.items(), key=lambda item: item[1])
    note = ""
    if len(reported) > 1:
        note = f"{len(reported)} instances report different configs; showing {instance}'s defaults"
    return config, f"{PROCESS_DEFAULT} ({instance})", note


def reported_configs(
    breakers: pb.ListBreakersResponse, method: str
) -> Iterator[tuple[str, pb.InstanceBreaker, BreakerConfig]]:
    """(breaker name, instance, its effective config) for each instance reporting `method`."""
    for group in breakers.groups:
        if not group.name.endswith(method):
            continue
        for item in group.instance_breakers:
            if not item.snapshot.HasField("config"):
                continue
            try:
                config = convert.config_from_proto(item.snapshot.config)
            except ConfigError:
                continue  # an instance reporting nonsense is no source of truth
            yield group.name, item, config


_COLUMNS = (Column("FIELD"), Column("VALUE", cut="end"), Column("FROM", cut="end", weight=2))


def format_explanation(explanation: Explanation, width: int | None = None) -> RenderableType:
    """One row per config field: effective value and where it came from; then the override."""
    config = explanation.config
    rows = [
        [name, describe_value(getattr(config, name)), explanation.sources[name]] for name in SCHEMA
    ]
    override = describe_value(explanation.override) if explanation.override else "none"
    source = f" (from {explanation.override_source})" if explanation.override else ""
    return Group(new_table(_COLUMNS, rows, width), Text(f"override: {override}{source}"))


def explanation_json(explanation: Explanation, revision: int) -> dict[str, object]:
    """The explanation as plain JSON."""
    values = explanation.config.to_dict()
    return {
        "revision": revision,
        "config": {
            name: {"value": values[name], "from": explanation.sources[name]} for name in SCHEMA
        },
        "override": None if explanation.override is None else explanation.override.value,
        "override_from": explanation.override_source or None,
    }
