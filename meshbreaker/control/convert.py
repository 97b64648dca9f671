"""Conversions between meshbreaker.v1 protos and the engine's types, with validation.

Every validation error is a ConfigError whose `field` is the proto field path, e.g.
"policy.config.failure_rate_threshold", so the server can answer INVALID_ARGUMENT naming it and the
agent can NACK with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

# The name checks are _names'; re-exported for the server's request checks.
from meshbreaker._names import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from meshbreaker._names import check_method as check_method
from meshbreaker._names import check_service as check_service
from meshbreaker._names import method_service
from meshbreaker.breaker import BreakerSnapshot, CircuitBreaker
from meshbreaker.config import BreakerConfig, Mode, State, WindowType
from meshbreaker.errors import ConfigError
from meshbreaker.histogram import MAX_BUCKETS, HistogramSnapshot
from meshbreaker.v1 import control_plane_pb2 as pb

MAX_CODES = 32
MAX_DESCRIPTION_LENGTH = 1024
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CALLER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

_WINDOW_FROM_PROTO: dict[int, WindowType | None] = {
    pb.WINDOW_TYPE_UNSPECIFIED: None,
    pb.WINDOW_TYPE_COUNT: WindowType.COUNT,
    pb.WINDOW_TYPE_TIME: WindowType.TIME,
}
_WINDOW_TO_PROTO = {WindowType.COUNT: pb.WINDOW_TYPE_COUNT, WindowType.TIME: pb.WINDOW_TYPE_TIME}
_MODE_FROM_PROTO: dict[int, Mode | None] = {
    pb.MODE_UNSPECIFIED: None,
    pb.MODE_ENFORCE: Mode.ENFORCE,
    pb.MODE_SHADOW: Mode.SHADOW,
}
_MODE_TO_PROTO = {Mode.ENFORCE: pb.MODE_ENFORCE, Mode.SHADOW: pb.MODE_SHADOW}
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
_STATE_TO_PROTO = {
    State.CLOSED: pb.BREAKER_STATE_CLOSED,
    State.OPEN: pb.BREAKER_STATE_OPEN,
    State.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
    State.FORCED_OPEN: pb.BREAKER_STATE_FORCED_OPEN,
    State.FORCED_CLOSED: pb.BREAKER_STATE_FORCED_CLOSED,
}
_STATE_FROM_PROTO: dict[int, State] = {value: key for key, value in _STATE_TO_PROTO.items()}

# Proto field name -> BreakerConfig field name, for the plain optional scalars.
_OPTIONAL_FLOATS = (
    "failure_rate_threshold",
    "slow_call_rate_threshold",
    "backoff_multiplier",
    "open_jitter",
)
_OPTIONAL_INTS = (
    "window_size",
    "minimum_calls",
    "consecutive_failures",
    "half_open_max_calls",
    "half_open_success_threshold",
    "max_concurrent_calls",
)
_DURATIONS = ("open_duration", "open_duration_max", "half_open_max_wait")


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
class PolicySpec:
    """A validated Policy: selector, optional config (with mode) and optional override."""

    id: str
    selector: Selector
    config: BreakerConfig | None = None
    override: State | None = None
    description: str = ""


@dataclass(frozen=True)
class ResolvedPolicies:
    """What one caller service should apply: the arguments of BreakerRegistry.replace_policies.

    `default` is None when no policy with an empty service/method selector applies (the agent then
    keeps its own default config).
    """

    default: BreakerConfig | None = None
    policies: dict[str, BreakerConfig] = field(default_factory=dict)
    overrides: dict[str, State] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Names


def check_policy_id(value: str, path: str = "policy.id") -> str:
    """Validate a policy id; raises ConfigError naming `path`."""
    if not value:
        raise ConfigError(path, "must not be empty")
    if not _ID_RE.fullmatch(value):
        raise ConfigError(
            path, f"{value!r} must be 1..128 of [A-Za-z0-9._-], starting with a letter or digit"
        )
    return value


def check_caller(value: str, path: str, *, required: bool) -> str:
    """Validate a caller (mesh) service name like "transaction"; empty allowed unless required."""
    if not value:
        if required:
            raise ConfigError(path, "must not be empty")
        return value
    if not _CALLER_RE.fullmatch(value):
        raise ConfigError(
            path, f"{value!r} must be 1..128 of [A-Za-z0-9._:-], starting with a letter or digit"
        )
    return value


# ---------------------------------------------------------------------------------------------
# Selector, config, policy


def selector_from_proto(message: pb.Selector, path: str = "policy.selector") -> Selector:
    """Validate a Selector message; the method must belong to the service when both are set."""
    caller = check_caller(message.caller, f"{path}.caller", required=False)
    service = check_service(message.service, f"{path}.service")
    method = check_method(message.method, f"{path}.method")
    if service and method and method_service(method) != service:
        raise ConfigError(f"{path}.method", f"{method!r} is not a method of service {service!r}")
    return Selector(caller, service, method)


def selector_to_proto(selector: Selector) -> pb.Selector:
    """The Selector message for `selector`."""
    return pb.Selector(caller=selector.caller, service=selector.service, method=selector.method)


def _has(message: Message, name: str) -> bool:
    """HasField for a field name held in a variable (the typed stubs only take literals)."""
    return message.HasField(name)


def _duration_seconds(value: Duration, path: str) -> float:
    if not -315_576_000_000 <= value.seconds <= 315_576_000_000 or not (
        -999_999_999 <= value.nanos <= 999_999_999
    ):
        raise ConfigError(path, "is not a valid google.protobuf.Duration")
    if (value.seconds > 0 and value.nanos < 0) or (value.seconds < 0 and value.nanos > 0):
        raise ConfigError(path, "is not a valid google.protobuf.Duration (mixed signs)")
    return value.seconds + value.nanos / 1e9


def default_open_duration_max(values: Mapping[str, object]) -> dict[str, object]:
    """`values` with an unset open_duration_max meaning the default, raised to the open duration."""
    given = values.get("open_duration")
    if "open_duration_max" in values or isinstance(given, bool):
        return dict(values)
    if not isinstance(given, (int, float)):
        return dict(values)
    return {**values, "open_duration_max": max(BreakerConfig.open_duration_max, given)}


def config_from_proto(
    message: pb.BreakerConfig, mode: int = pb.MODE_UNSPECIFIED, path: str = "policy.config"
) -> BreakerConfig:
    """A validated BreakerConfig; unset fields take the defaults. `mode` is a pb.Mode value."""
    values: dict[str, object] = {}
    for name in _OPTIONAL_FLOATS + _OPTIONAL_INTS:
        if _has(message, name):
            values[name] = getattr(message, name)
    for name in _DURATIONS:
        if _has(message, name):
            values[name] = _duration_seconds(getattr(message, name), f"{path}.{name}")
    values = default_open_duration_max(values)
    if message.slow_calls_disabled:
        if message.HasField("slow_call_duration"):
            raise ConfigError(
                f"{path}.slow_calls_disabled", "cannot be set together with slow_call_duration"
            )
        values["slow_call_duration"] = None
    elif message.HasField("slow_call_duration"):
        values["slow_call_duration"] = _duration_seconds(
            message.slow_call_duration, f"{path}.slow_call_duration"
        )
    if message.window_type not in _WINDOW_FROM_PROTO:
        raise ConfigError(f"{path}.window_type", f"unknown WindowType value {message.window_type}")
    window_type = _WINDOW_FROM_PROTO[message.window_type]
    if window_type is not None:
        values["window_type"] = window_type
    for name in ("failure_codes", "ignored_codes"):
        if _has(message, name):
            codes = list(getattr(message, name).codes)
            if len(codes) > MAX_CODES:
                raise ConfigError(f"{path}.{name}", f"at most {MAX_CODES} codes")
            values[name] = codes
    values["mode"] = _mode_from_proto(mode, path.rsplit(".", 1)[0] + ".mode")
    try:
        return BreakerConfig(**values)  # type: ignore[arg-type]
    except ConfigError as error:
        raise ConfigError(f"{path}.{error.field}", error.message) from None


def _mode_from_proto(mode: int, path: str) -> Mode:
    if mode not in _MODE_FROM_PROTO:
        raise ConfigError(path, f"unknown Mode value {mode}")
    return _MODE_FROM_PROTO[mode] or Mode.ENFORCE


def seconds_to_duration(seconds: float) -> Duration:
    """A google.protobuf.Duration for float seconds (to the nearest nanosecond)."""
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def config_to_proto(config: BreakerConfig) -> tuple[pb.BreakerConfig, pb.Mode.ValueType]:
    """The BreakerConfig message (every field set explicitly) and the pb.Mode value for `config`."""
    message = pb.BreakerConfig(
        failure_rate_threshold=config.failure_rate_threshold,
        slow_call_rate_threshold=config.slow_call_rate_threshold,
        window_type=_WINDOW_TO_PROTO[config.window_type],
        window_size=config.window_size,
        minimum_calls=config.minimum_calls,
        consecutive_failures=config.consecutive_failures,
        open_duration=seconds_to_duration(config.open_duration),
        open_duration_max=seconds_to_duration(config.open_duration_max),
        backoff_multiplier=config.backoff_multiplier,
        open_jitter=config.open_jitter,
        half_open_max_calls=config.half_open_max_calls,
        half_open_success_threshold=config.half_open_success_threshold,
        half_open_max_wait=seconds_to_duration(config.half_open_max_wait),
        failure_codes=pb.CodeList(codes=sorted(config.failure_codes)),
        ignored_codes=pb.CodeList(codes=sorted(config.ignored_codes)),
    )
    if config.slow_call_duration is None:
        message.slow_calls_disabled = True
    else:
        message.slow_call_duration.CopyFrom(seconds_to_duration(config.slow_call_duration))
    if config.max_concurrent_calls is not None:
        message.max_concurrent_calls = config.max_concurrent_calls
    return message, _MODE_TO_PROTO[config.mode]


def policy_from_proto(message: pb.Policy, path: str = "policy") -> PolicySpec:
    """Validate a Policy message (output-only fields are ignored)."""
    policy_id = check_policy_id(message.id, f"{path}.id")
    selector = selector_from_proto(message.selector, f"{path}.selector")
    config: BreakerConfig | None = None
    if message.HasField("config"):
        config = config_from_proto(message.config, message.mode, f"{path}.config")
    elif message.mode != pb.MODE_UNSPECIFIED:
        raise ConfigError(
            f"{path}.mode", "needs a config (an empty config means every default applies)"
        )
    override = override_from_proto(message.override, f"{path}.override")
    if override is not None and not selector.registry_selector:
        raise ConfigError(f"{path}.override", "needs a selector with a service or a method")
    if len(message.description) > MAX_DESCRIPTION_LENGTH:
        raise ConfigError(f"{path}.description", f"at most {MAX_DESCRIPTION_LENGTH} characters")
    return PolicySpec(policy_id, selector, config, override, message.description)


def policy_to_proto(spec: PolicySpec) -> pb.Policy:
    """The Policy message for `spec` (output-only fields unset)."""
    message = pb.Policy(
        id=spec.id,
        selector=selector_to_proto(spec.selector),
        override=_OVERRIDE_TO_PROTO[spec.override],
        description=spec.description,
    )
    if spec.config is not None:
        config, mode = config_to_proto(spec.config)
        message.config.CopyFrom(config)
        message.mode = mode
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


# ---------------------------------------------------------------------------------------------
# Resolution (shared by the server's filtering and the agent)


def applicable(caller: str, policies: Iterable[pb.Policy]) -> list[pb.Policy]:
    """The policies whose selector covers calls made by `caller`, sorted by id."""
    return sorted(
        (p for p in policies if not p.selector.caller or p.selector.caller == caller),
        key=lambda p: p.id,
    )


def policies_for(
    caller: str, policies: Iterable[pb.Policy | PolicySpec], path: str = "policies"
) -> ResolvedPolicies:
    """Resolve the policies that apply to `caller` into registry policies, default and overrides.

    Per registry selector (method, service, or "" for all), a policy naming the caller beats one
    for every caller (ties: the smaller id). The config comes from the most specific policy that
    has one, the override from the most specific that sets one. Validates every policy first and
    raises ConfigError naming it ("policies[2].config.window_size") with nothing resolved.
    """
    specs: list[PolicySpec] = []
    for index, policy in enumerate(policies):
        if isinstance(policy, PolicySpec):
            specs.append(policy)
        else:
            specs.append(policy_from_proto(policy, f"{path}[{index}]"))
    by_key: dict[str, list[PolicySpec]] = {}
    for spec in specs:
        if spec.selector.applies_to(caller):
            by_key.setdefault(spec.selector.registry_selector, []).append(spec)
    resolved = ResolvedPolicies()
    for key, candidates in by_key.items():
        candidates.sort(key=lambda spec: (not spec.selector.caller, spec.id))
        config = next((c.config for c in candidates if c.config is not None), None)
        override = next((c.override for c in candidates if c.override is not None), None)
        if config is not None:
            if key:
                resolved.policies[key] = config
            else:
                resolved = ResolvedPolicies(config, resolved.policies, resolved.overrides)
        if override is not None:
            resolved.overrides[key] = override
    return resolved


# ---------------------------------------------------------------------------------------------
# States and snapshots


def state_to_proto(state: State) -> pb.BreakerState.ValueType:
    """The pb.BreakerState value for an engine State."""
    return _STATE_TO_PROTO[state]


def state_from_proto(value: int) -> State | None:
    """The engine State for a pb.BreakerState value (None for UNSPECIFIED or unknown)."""
    return _STATE_FROM_PROTO.get(value)


def snapshot_to_proto(
    snapshot: BreakerSnapshot,
    now: float,
    transitions: Mapping[tuple[State, State], int] | None = None,
    histogram: HistogramSnapshot | None = None,
) -> pb.BreakerSnapshot:
    """The report message for a breaker snapshot; `now` is the breaker clock's current reading.

    `transitions` and `histogram` are what the breaker's observe() returns with the snapshot.
    """
    message = pb.BreakerSnapshot(
        name=snapshot.name,
        state=_STATE_TO_PROTO[snapshot.state],
        total=snapshot.total,
        successful=snapshot.successful,
        failed=snapshot.failed,
        ignored=snapshot.ignored,
        slow=snapshot.slow,
        rejected=snapshot.rejected,
        shadow_rejected=snapshot.shadow_rejected,
        failure_rate=snapshot.failure_rate,
        slow_call_rate=snapshot.slow_call_rate,
        window_calls=snapshot.window_calls,
        mean_duration=snapshot.mean_duration,
        consecutive_failures=snapshot.consecutive_failures,
        state_age=max(0.0, now - snapshot.state_since),
        times_opened=snapshot.times_opened,
        half_open_in_flight=snapshot.half_open_in_flight,
        half_open_successes=snapshot.half_open_successes,
    )
    if snapshot.open_until is not None:
        message.open_remaining = max(0.0, snapshot.open_until - now)
    if transitions:
        message.transitions.extend(
            pb.TransitionCount(
                from_state=_STATE_TO_PROTO[old], to_state=_STATE_TO_PROTO[new], count=count
            )
            for (old, new), count in sorted(transitions.items())
        )
    if histogram is not None:
        message.duration_histogram.bounds.extend(histogram.bounds)
        message.duration_histogram.counts.extend(histogram.counts)
        message.duration_histogram.sum = histogram.sum
    return message


def breaker_to_proto(breaker: CircuitBreaker, now: float) -> pb.BreakerSnapshot:
    """The report message for a breaker: its snapshot, transition counts and histogram."""
    observed = breaker.observe()
    return snapshot_to_proto(observed.snapshot, now, observed.transitions, observed.durations)


def transitions_from_proto(
    messages: Iterable[pb.TransitionCount],
) -> dict[tuple[State, State], int]:
    """{(from, to): count} for reported transitions (unknown states are left out)."""
    result = {}
    for message in messages:
        old = _STATE_FROM_PROTO.get(message.from_state)
        new = _STATE_FROM_PROTO.get(message.to_state)
        if old is not None and new is not None:
            result[(old, new)] = message.count
    return result


def histogram_from_proto(message: pb.BreakerSnapshot) -> HistogramSnapshot | None:
    """The reported duration histogram, or None when the report has none."""
    if not message.HasField("duration_histogram"):
        return None
    histogram = message.duration_histogram
    return HistogramSnapshot(tuple(histogram.bounds), tuple(histogram.counts), histogram.sum)


def check_transitions(messages: Sequence[pb.TransitionCount], path: str) -> None:
    """Raise ConfigError (naming `path[i]`) unless every entry is a distinct real transition."""
    seen = set()
    for index, message in enumerate(messages):
        pair = (message.from_state, message.to_state)
        if pair[0] not in _STATE_FROM_PROTO or pair[1] not in _STATE_FROM_PROTO:
            raise ConfigError(f"{path}[{index}]", "states must be known and set")
        if pair[0] == pair[1]:
            raise ConfigError(f"{path}[{index}]", "from_state and to_state must differ")
        if pair in seen:
            raise ConfigError(f"{path}[{index}]", "the same transition is listed twice")
        if message.count < 0:
            raise ConfigError(f"{path}[{index}].count", "must be >= 0")
        seen.add(pair)


def check_histogram(message: pb.DurationHistogram, path: str) -> None:
    """Raise ConfigError (naming the field under `path`) unless the histogram is well formed."""
    bounds = message.bounds
    if not 1 <= len(bounds) <= MAX_BUCKETS:
        raise ConfigError(f"{path}.bounds", f"must hold 1..{MAX_BUCKETS} bounds")
    # Every comparison with NaN is False, so NaN is refused along with the rest.
    if not (bounds[0] > 0.0 and bounds[-1] < math.inf) or not all(
        earlier < later for earlier, later in pairwise(bounds)
    ):
        raise ConfigError(f"{path}.bounds", "must be finite, > 0 and strictly increasing")
    counts = message.counts
    if len(counts) != len(bounds) + 1:
        raise ConfigError(f"{path}.counts", "must hold one count per bound plus one for +Inf")
    if min(counts) < 0:
        raise ConfigError(f"{path}.counts", "must be >= 0")
    if not 0.0 <= message.sum < math.inf:
        raise ConfigError(f"{path}.sum", "must be a finite number >= 0")
