"""The tables the one-shot commands print: `status` and `policy list` (rich renderables)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from meshbreaker.config import BreakerConfig
from meshbreaker.control import convert
from meshbreaker.control.layers import describe_value
from meshbreaker.errors import ConfigError
from meshbreaker.live.render import canary_table, instance_table, override_table, shadow_marked
from meshbreaker.live.table import Cell, Column, new_table
from meshbreaker.live.text import clean, format_seconds, state_text
from meshbreaker.v1 import control_plane_pb2 as pb

_GROUP_COLUMNS = (
    Column("CALLER", cut="end"),
    Column("BREAKER", cut="start", min_width=8, weight=2),
    *(
        Column(title, numeric=True)
        for title in (
            *("INSTANCES", "CLOSED", "OPEN", "HALF_OPEN", "FORCED", "SHADOW"),
            *("FAILURE", "SLOW", "CALLS", "FAILED", "REJECTED", "THROTTLED", "LIMIT"),
        )
    ),
)
_DETAIL_COLUMNS = (
    Column("CALLER", cut="end"),
    Column("BREAKER", cut="start", min_width=8, weight=2),
    Column("INSTANCE", cut="start", min_width=8),
    Column("STATE"),
    Column("REVISION", numeric=True),
    Column("FAILURE", numeric=True),
    Column("WINDOW", numeric=True),
    Column("LIMIT", numeric=True),
    Column("THROTTLE", numeric=True),
    Column("AGE", numeric=True),
    Column("EFFECTIVE CONFIG", cut="end", weight=3),
)
_POLICY_COLUMNS = (
    Column("ID", cut="end"),
    Column("CALLER", cut="end"),
    Column("SERVICE", cut="end"),
    Column("METHOD", cut="start", min_width=8, weight=2),
    Column("MODE"),
    Column("OVERRIDE"),
    Column("REVISION", numeric=True),
    Column("SETTINGS", cut="end", weight=3),
)


def status_view(
    response: pb.ListBreakersResponse,
    *,
    width: int | None = None,
    instances: bool = False,
    empty: str = "(no breakers reported)",
) -> RenderableType:
    """The `status` tables within `width` cells: one row per (caller, breaker), then instances."""
    parts: list[RenderableType] = [*store_mismatch_banner(response)]
    parts.append(_group_table(response.groups, width))
    if not response.groups:
        parts.append(Text(empty, style="dim"))
    if instances:
        parts.append(Text())
        parts.append(_detail_table(response.groups, width))
    if response.overrides:
        parts.append(Text())
        parts.append(override_table(response.overrides, width))
    if response.canaries:
        parts.append(Text())
        parts.append(canary_table(response.canaries, width))
    nacking = [item for item in response.instances if item.HasField("nack")]
    if instances or nacking:
        parts.append(Text())
        parts.append(instance_table(response.instances if instances else nacking, width))
    parts.append(Text())
    parts.append(
        Text(f"store revision {response.revision}; {len(response.instances)} live instance(s)")
    )
    return Group(*parts)


def store_mismatch_banner(response: pb.ListBreakersResponse) -> list[RenderableType]:
    """Lines that put instances refusing this control plane's store first, with the way out."""
    held: dict[tuple[str, int, str], list[str]] = {}
    for item in response.instances:
        if item.HasField("store_mismatch"):
            mismatch = item.store_mismatch
            key = (mismatch.held_store_id, mismatch.held_revision, mismatch.reason)
            held.setdefault(key, []).append(item.instance_id)
    lines: list[RenderableType] = []
    for (store_id, revision, reason), instances in sorted(held.items()):
        lines.append(
            Text(
                clean(
                    f"STORE MISMATCH: {len(instances)} instance(s) ({', '.join(instances[:3])}"
                    f"{', …' if len(instances) > 3 else ''}) keep revision {revision} of store "
                    f"{store_id} and refuse this control plane's ({reason}: store "
                    f"{response.store_id}, revision {response.revision}). To let them take it: "
                    f"meshbreaker store adopt {store_id}"
                ),
                style="bold red",
            )
        )
    if lines:
        lines.append(Text())
    return lines


def _group_table(groups: Sequence[pb.BreakerGroup], width: int | None) -> Table:
    rows: list[list[Cell]] = [
        [
            group.service,
            group.name,
            *(
                str(number)
                for number in (
                    group.instances,
                    group.closed,
                    group.open,
                    group.half_open,
                    group.forced_open + group.forced_closed,
                    group.shadow,
                )
            ),
            _percent(group.failure_rate),
            _percent(group.slow_call_rate),
            *(
                str(number)
                for number in (group.total, group.failed, group.rejected, group.throttled)
            ),
            _limit(group),
        ]
        for group in groups
    ]
    return new_table(_GROUP_COLUMNS, rows, width)


def _detail_table(groups: Sequence[pb.BreakerGroup], width: int | None) -> Table:
    rows: list[list[Cell]] = [
        [
            group.service,
            group.name,
            item.instance_id,
            shadow_marked(state_text(item.snapshot.state), item.snapshot.config.mode),
            str(item.applied_revision),
            _percent(item.snapshot.failure_rate),
            str(item.snapshot.window_calls),
            _limit(item.snapshot),
            _throttle(item.snapshot),
            format_seconds(item.report_age),
            describe_effective(item.snapshot),
        ]
        for group in groups
        for item in group.instance_breakers
    ]
    return new_table(_DETAIL_COLUMNS, rows, width)


def _limit(message: pb.BreakerGroup | pb.BreakerSnapshot) -> str:
    """Calls in flight allowed now (a bulkhead or an adaptive limit); '-' for no limit."""
    return str(message.concurrency_limit) if message.HasField("concurrency_limit") else "-"


def _throttle(snapshot: pb.BreakerSnapshot) -> str:
    """The chance adaptive throttling refuses a call now; '-' where it is off."""
    if not snapshot.config.throttle_k:  # unset, or 0: off (k >= 1 when on)
        return "-"
    return _percent(snapshot.throttle_probability)


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%" if 0.0 <= rate <= 1.0 else "?"  # NaN too


def policy_table(response: pb.ListPoliciesResponse, width: int | None = None) -> RenderableType:
    """The `policy list` table: one row per policy and the config fields it sets."""
    rows: list[list[Cell]] = [
        [
            policy.id,
            policy.selector.caller or "*",
            policy.selector.service or "*",
            policy.selector.method or "*",
            _mode_name(policy),
            _override_cell(policy),
            str(policy.revision),
            _settings(policy),
        ]
        for policy in response.policies
    ]
    table = new_table(_POLICY_COLUMNS, rows, width)
    if not rows:
        return Group(table, Text("(no policies)", style="dim"))
    return table


def _mode_name(policy: pb.Policy) -> str:
    if not policy.HasField("config"):
        return "-"
    try:
        mode = convert.layer_from_proto(policy.config).get("mode")
    except ConfigError:
        return "?"
    return "-" if mode is None else describe_value(mode)


def _override_cell(policy: pb.Policy) -> str:
    """The override, and when it ends: "FORCED_OPEN until 2026-12-01T06:30:00Z", "-" for none."""
    state = convert.override_from_proto(policy.override)
    if state is None:
        return "-"
    if policy.HasField("override_expires_at"):
        return f"{state.value} until {policy.override_expires_at.ToJsonString()}"
    return state.value


def _settings(policy: pb.Policy) -> str:
    """The config the policy sets, then its canary, fleet decision and override's reason."""
    parts = [describe_config(policy)]
    if policy.HasField("canary"):
        canary = policy.canary
        staged = describe_layer(canary.config) if canary.HasField("config") else "(no config)"
        part = f"canary {canary.percent:g}%: {staged}"
        if canary.HasField("max_rejection_margin"):
            part += f" (rolled back past +{canary.max_rejection_margin:g} rejections)"
        parts.append(part)
    if policy.HasField("fleet"):
        fleet = policy.fleet
        probers = ", ".join(fleet.probers) or "none"
        parts.append(f"fleet decision, open period {fleet.period}, probers {probers}")
    if policy.override_reason:
        parts.append(f"reason: {policy.override_reason}")
    return "; ".join(parts)


def describe_effective(snapshot: pb.BreakerSnapshot) -> str:
    """The effective config an instance reports, as the fields that differ from the defaults."""
    if not snapshot.HasField("config"):
        return "-"
    try:
        config = convert.config_from_proto(snapshot.config)
    except ConfigError:
        return "(invalid)"
    values = config.to_dict()
    words = [
        f"{name}={describe_value(getattr(config, name))}"
        for name, default in BreakerConfig().to_dict().items()
        if values[name] != default
    ]
    return " ".join(words) or "(defaults)"


def describe_config(policy: pb.Policy) -> str:
    """The config fields the policy sets (the rest come from less specific layers)."""
    if not policy.HasField("config"):
        return "(no config)"
    return describe_layer(policy.config)


def describe_layer(config: pb.BreakerConfig) -> str:
    """The config fields a layer sets, as flags spell their values ("mode" is its own column)."""
    try:
        layer = convert.layer_from_proto(config)
    except ConfigError as error:
        return f"(invalid: {error})"
    words = [f"{name}={describe_value(value)}" for name, value in layer.items() if name != "mode"]
    return " ".join(words) or "(sets nothing)"
