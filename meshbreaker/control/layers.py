"""Layered policies: a breaker's effective config, field by field, and which layer set each field.

The layers, least specific first: the mesh default policy (empty selector), the policy of the
called gRPC service, the policy of the method; at each level a policy naming the caller sits over
one for every caller. A field comes from the most specific layer that sets it, else from the
process's own default (`base`). The agent and `meshbreaker policy explain` both resolve here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshbreaker._names import is_method_selector, method_service
from meshbreaker.config import SCHEMA, BreakerConfig, State, merge_layers
from meshbreaker.control.canary import in_canary
from meshbreaker.control.convert import FleetSpec, PolicySpec, policy_from_proto
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

PROCESS_DEFAULT = "process default"


@dataclass(frozen=True)
class ResolvedPolicies:
    """What one caller service applies: the arguments of BreakerRegistry.replace_policies.

    Every config is already layered over the process default. `default` is None when no mesh
    default policy applies (the agent then keeps the process's own default config).
    `next_expiry` is the unix time the earliest override still in force ends (None = none ends),
    when the agent resolves again. `probes` maps the selectors of the fleet decisions this
    instance probes for to their FleetSpec: their breakers are opened until `open_until`, not
    forced.
    """

    default: BreakerConfig | None = None
    policies: dict[str, BreakerConfig] = field(default_factory=dict)
    overrides: dict[str, State] = field(default_factory=dict)
    next_expiry: float | None = None
    probes: dict[str, FleetSpec] = field(default_factory=dict)
    expiries: dict[str, float] = field(default_factory=dict)  # selector -> its override's end


@dataclass(frozen=True)
class Explanation:
    """The effective config of one breaker and, per field, the layer it came from."""

    config: BreakerConfig
    sources: dict[str, str]
    override: State | None = None
    override_source: str = ""


def specs_of(
    policies: Iterable[pb.Policy | PolicySpec], path: str = "policies"
) -> list[PolicySpec]:
    """Every policy validated; ConfigError names the bad one ("policies[2].config.window_size")."""
    specs = []
    for index, policy in enumerate(policies):
        if isinstance(policy, PolicySpec):
            specs.append(policy)
        else:
            specs.append(policy_from_proto(policy, f"{path}[{index}]"))
    return specs


def _by_key(caller: str, specs: Iterable[PolicySpec]) -> dict[str, list[PolicySpec]]:
    """Registry selector -> the policies for it that apply to `caller`, least specific first."""
    by_key: dict[str, list[PolicySpec]] = {}
    for spec in specs:
        if spec.selector.applies_to(caller):
            by_key.setdefault(spec.selector.registry_selector, []).append(spec)
    for candidates in by_key.values():
        # Every-caller policies first, so one naming the caller lays its fields over them; two
        # with one selector (never stored) tie, and the smaller id is laid last, so it wins.
        candidates.sort(key=lambda spec: spec.id, reverse=True)
        candidates.sort(key=lambda spec: bool(spec.selector.caller))
    return by_key


def _chain(key: str) -> tuple[str, ...]:
    """The registry selectors whose layers make up `key`'s config, least specific first."""
    if not key:
        return ("",)
    if is_method_selector(key):
        return ("", method_service(key), key)
    return ("", key)


def _merge(base: BreakerConfig, layers: list[PolicySpec], key: str) -> BreakerConfig:
    try:
        return merge_layers(base, [spec.config for spec in layers if spec.config is not None])
    except ConfigError as error:
        where = f"the layered config of {key or 'every method'}"
        names = ", ".join(spec.id for spec in layers if spec.config is not None)
        raise ConfigError(
            f"{error.field}", f"{error.message} (in {where}, from policies {names})"
        ) from None


def policies_for(
    caller: str,
    policies: Iterable[pb.Policy | PolicySpec],
    path: str = "policies",
    base: BreakerConfig | None = None,
    *,
    now: float | None = None,
    instance_id: str = "",
) -> ResolvedPolicies:
    """Resolve the policies that apply to `caller` into registry policies, default and overrides.

    Validates every policy first and raises ConfigError naming the bad one, with nothing resolved;
    a layered config that is inconsistent (a cap below the open duration another layer sets)
    raises too. The override of a selector comes from its most specific policy that sets one and
    has not expired at unix time `now` (None: none has). A fleet decision that names
    `instance_id` among its probers is a probe, not an override, for this instance.
    """
    base = base or BreakerConfig()
    specs = [_as_run_by(spec, instance_id) for spec in specs_of(policies, path)]
    by_key = _by_key(caller, specs)
    default: BreakerConfig | None = None
    configs: dict[str, BreakerConfig] = {}
    overrides: dict[str, State] = {}
    probes: dict[str, FleetSpec] = {}
    expiries: dict[str, float] = {}
    for key in sorted(by_key):
        chain = [spec for part in _chain(key) for spec in by_key.get(part, [])]
        if any(spec.config is not None for spec in by_key[key]):
            config = _merge(base, chain, key)
            if key:
                configs[key] = config
            else:
                default = config
        holder = next(
            (spec for spec in reversed(by_key[key]) if spec.override_at(now) is not None), None
        )
        if holder is None or holder.override is None:
            continue
        if holder.override_expires_at is not None:
            expiries[key] = holder.override_expires_at
        if holder.fleet is not None and instance_id in holder.fleet.probers:
            probes[key] = holder.fleet
        else:
            overrides[key] = holder.override
    next_expiry = min(expiries.values(), default=None)
    return ResolvedPolicies(default, configs, overrides, next_expiry, probes, expiries)


def _as_run_by(spec: PolicySpec, instance_id: str) -> PolicySpec:
    """`spec` as instance `instance_id` runs it: with its canary's config when in the canary."""
    canary = spec.canary
    if canary is None or not in_canary(spec.id, instance_id, canary.percent):
        return spec
    return dataclasses.replace(spec, config=canary.config)


def explain(
    caller: str,
    method: str,
    policies: Iterable[pb.Policy | PolicySpec],
    base: BreakerConfig | None = None,
    base_name: str = PROCESS_DEFAULT,
) -> Explanation:
    """The effective config of `caller`'s breaker for `method` and where each field came from."""
    base = base or BreakerConfig()
    by_key = _by_key(caller, specs_of(policies))
    chain = [spec for part in _chain(method) for spec in by_key.get(part, [])]
    config = _merge(base, chain, method)
    sources = dict.fromkeys(SCHEMA, base_name)
    for spec in chain:
        for name in spec.config or {}:
            sources[name] = spec.layer_name
    if config.open_duration_max != base.open_duration_max and "open_duration_max" not in {
        name for spec in chain for name in spec.config or {}
    }:
        sources["open_duration_max"] = f"{base_name}, raised to open_duration"
    override: State | None = None
    override_source = ""
    for spec in chain:
        if spec.override is not None:
            override, override_source = spec.override, spec.layer_name
    return Explanation(config, sources, override, override_source)


def describe_value(value: Any) -> str:
    """A config value as the CLI and JSON policy files spell it."""
    if value is None:
        return "off"
    if isinstance(value, frozenset):
        return ",".join(sorted(value)) or "none"  # "" would read as a field not given
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)
