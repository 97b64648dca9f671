"""The `meshbreaker` command: run the control plane, inspect the mesh, manage policies."""

from meshbreaker.cli import _quiet  # noqa: F401  (first: grpc must not be imported before it)
from meshbreaker.cli.entry import main
from meshbreaker.cli.parser import DEFAULT_TARGET, build_parser
from meshbreaker.cli.policy_json import config_message_from, policy_message
from meshbreaker.cli.tables import describe_config, policy_table, status_view
from meshbreaker.errors import CliError
from meshbreaker.live.terminal import PROG

__all__ = [
    "DEFAULT_TARGET",
    "PROG",
    "CliError",
    "build_parser",
    "config_message_from",
    "describe_config",
    "main",
    "policy_message",
    "policy_table",
    "status_view",
]
