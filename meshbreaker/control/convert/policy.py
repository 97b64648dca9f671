"""Policy messages <-> validated PolicySpecs: selectors, overrides, fleet decisions, canaries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from meshbreaker._names import (
    MAX_NAME_LENGTH,
    check_method_selector,
    check_service_selector,
    method_service,
)
from meshbreaker.config import ConfigLayer, State
from meshbreaker.control.convert.config import layer_from_proto, layer_to_proto, mode_from_proto
from meshbreaker.control.convert.names import check_caller, check_policy_id, check_reason
from meshbreaker.control.convert.times import seconds_to_timestamp, timestamp_seconds
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

MAX_DESCRIPTION_LENGTH = 1024
MAX_PROBERS = 64
_OVERRIDE_FROM_PROTO: dict[int, State | None] = {
    pb.OVERRIDE_NONE: None,
    pb.OVERRIDE_FORCED_OPEN: State.FORCED_OPEN,
    pb.OVERRIDE_FORCED_CLOSED: State.FORCED_CLOSED,
}
_OVERRIDE_TO_PROTO = {
    None: pb.OVERRIDE_NONE,
    State.FORCED_OPEN: pb.OVERRIDE_FORCED_OPEN,
    State.FORCED_CLOSED: pb.OVERRIDE_FORCED_CLOSED,
}


@dataclass(frozen=True)
class Selector:
    """Which calls a policy applies to; empty strings match everything."""

    caller: str = ""
    service: str = ""
    method: str = ""

    @property
    def registry_selector(self) -> str:
        """The key for BreakerRegistry policies: "/pkg.Svc/Method", "pkg.Svc", or "" for all."""
        return self.method or self.service

    def applies_to(self, caller: str) -> bool:
        """Whether this selector covers calls made by `caller`."""
        return not self.caller or self.caller == caller


@dataclass(frozen=True)
class FleetSpec:
    """A validated FleetDecision: who probes this open period, and from when (unix seconds)."""

    probers: frozenset[str]
    open_until: float
    period: int
    decided_at: float


@dataclass(frozen=True)
class CanarySpec:
    """A validated Canary: on which share of the instances, what they run, when to roll back."""

    percent: float
    config: ConfigLayer | None
    max_rejection_margin: float | None = None


@dataclass(frozen=True)
class PolicySpec:
    """A validated Policy: selector, the config fields it sets (a layer), optional override.

    `override_expires_at` (unix seconds, None = never) bounds the override; `fleet` marks it a
    fleet decision.
    """

    id: str
    selector: Selector
    config: ConfigLayer | None = None
    override: State | None = None
    description: str = ""
    override_expires_at: float | None = None
    override_reason: str = ""
    fleet: FleetSpec | None = None
    canary: CanarySpec | None = None

    def override_at(self, now: float | None) -> State | None:
        """The override in force at unix time `now` (None = whatever the time)."""
        expires = self.override_expires_at
        if now is not None and expires is not None and now >= expires:
            return None
        return self.override

    @property
    def layer_name(self) -> str:
        """Where this policy sits among the layers, for `policy explain`."""
        selector = self.selector
        scope = (
            f"method {selector.method}"
            if selector.method
            else f"service {selector.service}"
            if selector.service
            else "mesh default"
        )
        return f"{scope} (policy {self.id})"


def selector_from_proto(message: pb.Selector, path: str = "policy.selector") -> Selector:
    """Validate a Selector message; the method must belong to the service when both are set."""
    caller = check_caller(message.caller, f"{path}.caller", required=False)
    service = check_service_selector(message.service, f"{path}.service")
    method = check_method_selector(message.method, f"{path}.method")
    if service and method and method_service(method) != service:
        raise ConfigError(f"{path}.method", f"{method!r} is not a method of service {service!r}")
    return Selector(caller, service, method)


def selector_to_proto(selector: Selector) -> pb.Selector:
    """The Selector message for `selector`."""
    return pb.Selector(caller=selector.caller, service=selector.service, method=selector.method)


def policy_from_proto(message: pb.Policy, path: str = "policy") -> PolicySpec:
    """Validate a Policy message (output-only fields are ignored)."""
    policy_id = check_policy_id(message.id, f"{path}.id")
    selector = selector_from_proto(message.selector, f"{path}.selector")
    config: ConfigLayer | None = None
    if message.HasField("config"):
        layer = layer_from_proto(message.config, f"{path}.config")
        if "mode" not in layer and message.mode != pb.MODE_UNSPECIFIED:
            layer["mode"] = mode_from_proto(message.mode, f"{path}.mode")  # older clients
        config = MappingProxyType(layer)
    elif message.mode != pb.MODE_UNSPECIFIED:
        raise ConfigError(
            f"{path}.mode", "needs a config (an empty config means every default applies)"
        )
    override = override_from_proto(message.override, f"{path}.override")
    if override is not None and not selector.registry_selector:
        raise ConfigError(f"{path}.override", "needs a selector with a service or a method")
    if len(message.description) > MAX_DESCRIPTION_LENGTH:
        raise ConfigError(f"{path}.description", f"at most {MAX_DESCRIPTION_LENGTH} characters")
    expires_at = None
    if message.HasField("override_expires_at"):
        if override is None:
            raise ConfigError(f"{path}.override_expires_at", "needs an override")
        expires_at = timestamp_seconds(message.override_expires_at, f"{path}.override_expires_at")
    reason = check_reason(message.override_reason, f"{path}.override_reason")
    fleet = None
    if message.HasField("fleet"):
        fleet = _fleet_from_proto(message, f"{path}.fleet")
    canary = (
        _canary_from_proto(message.canary, f"{path}.canary") if message.HasField("canary") else None
    )
    return PolicySpec(
        policy_id, selector, config, override, message.description, expires_at, reason, fleet,
        canary,
    )  # fmt: skip


def _canary_from_proto(message: pb.Canary, path: str) -> CanarySpec:
    if not 0 < message.percent < 100:
        raise ConfigError(f"{path}.percent", "must be between 0 and 100 (exclusive)")
    config = None
    if message.HasField("config"):
        config = MappingProxyType(layer_from_proto(message.config, f"{path}.config"))
    margin = None
    if message.HasField("max_rejection_margin"):
        margin = message.max_rejection_margin
        if not 0 <= margin <= 1:
            raise ConfigError(f"{path}.max_rejection_margin", "must be in [0, 1]")
    return CanarySpec(message.percent, config, margin)


def _fleet_from_proto(message: pb.Policy, path: str) -> FleetSpec:
    fleet = message.fleet
    if message.override != pb.OVERRIDE_FORCED_OPEN or not message.HasField("override_expires_at"):
        raise ConfigError(path, "needs override FORCED_OPEN with override_expires_at")
    if not message.selector.caller or not message.selector.method:
        raise ConfigError(path, "needs a selector with a caller and a method")
    if len(fleet.probers) > MAX_PROBERS:
        raise ConfigError(f"{path}.probers", f"at most {MAX_PROBERS}")
    for index, prober in enumerate(fleet.probers):
        if not 0 < len(prober) <= MAX_NAME_LENGTH or not prober.isprintable():
            raise ConfigError(f"{path}.probers[{index}]", "must be an instance id")
    if fleet.period < 1:
        raise ConfigError(f"{path}.period", "must be >= 1")
    return FleetSpec(
        frozenset(fleet.probers),
        timestamp_seconds(fleet.open_until, f"{path}.open_until"),
        fleet.period,
        timestamp_seconds(fleet.decided_at, f"{path}.decided_at"),
    )


def policy_to_proto(spec: PolicySpec) -> pb.Policy:
    """The Policy message for `spec` (output-only fields unset)."""
    message = pb.Policy(
        id=spec.id,
        selector=selector_to_proto(spec.selector),
        override=_OVERRIDE_TO_PROTO[spec.override],
        description=spec.description,
        override_reason=spec.override_reason,
    )
    if spec.config is not None:
        message.config.CopyFrom(layer_to_proto(spec.config))
    if spec.override_expires_at is not None:
        message.override_expires_at.CopyFrom(seconds_to_timestamp(spec.override_expires_at))
    fleet = spec.fleet
    if fleet is not None:
        message.fleet.CopyFrom(
            pb.FleetDecision(
                probers=sorted(fleet.probers),
                open_until=seconds_to_timestamp(fleet.open_until),
                period=fleet.period,
                decided_at=seconds_to_timestamp(fleet.decided_at),
            )
        )
    return message


def override_from_proto(value: int, path: str = "override") -> State | None:
    """FORCED_OPEN / FORCED_CLOSED / None (automatic) for a pb.Override value."""
    if value not in _OVERRIDE_FROM_PROTO:
        raise ConfigError(path, f"unknown Override value {value}")
    return _OVERRIDE_FROM_PROTO[value]


def override_to_proto(state: State | None) -> pb.Override.ValueType:
    """The pb.Override value for FORCED_OPEN / FORCED_CLOSED / None."""
    if state not in _OVERRIDE_TO_PROTO:
        raise ConfigError("override", f"{state} is not an override state")
    return _OVERRIDE_TO_PROTO[state]


def applicable(caller: str, policies: Iterable[pb.Policy]) -> list[pb.Policy]:
    """The policies whose selector covers calls made by `caller`, sorted by id."""
    return sorted(
        (p for p in policies if not p.selector.caller or p.selector.caller == caller),
        key=lambda p: p.id,
    )
