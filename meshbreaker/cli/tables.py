"""The tables the one-shot commands print: `status` and `policy list`."""

from __future__ import annotations

from collections.abc import Sequence

from meshbreaker.config import BreakerConfig
from meshbreaker.control import convert
from meshbreaker.live.text import nack_text, state_name
from meshbreaker.v1 import control_plane_pb2 as pb


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; an empty table says so."""
    cells = [[_cell_text(value) for value in row] for row in rows]
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


def _cell_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("\n", " ")


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
    instance_rows = [
        (
            item.instance_id,
            item.service,
            item.applied_revision,
            item.breakers,
            f"{item.report_age:.1f}s",
            nack_text(item),
        )
        for item in response.instances
    ]
    if instances or any(row[5] for row in instance_rows):
        parts.append("")
        parts.append(
            format_table(
                ("INSTANCE", "SERVICE", "REVISION", "BREAKERS", "AGE", "NACK"), instance_rows
            )
        )
    parts.append("")
    parts.append(f"store revision {response.revision}; {len(response.instances)} live instance(s)")
    return "\n".join(parts)


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def format_policies(response: pb.ListPoliciesResponse) -> str:
    """The `policy list` table: one row per policy, its settings as they differ from defaults."""
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
    return format_table(headers, rows)


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
