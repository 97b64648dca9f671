"""Breaker states, snapshots, transition counts and histograms <-> report messages."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

from meshbreaker.breaker import BreakerSnapshot, CircuitBreaker
from meshbreaker.config import BreakerConfig, State
from meshbreaker.control.convert.config import config_to_proto
from meshbreaker.errors import ConfigError
from meshbreaker.histogram import MAX_BUCKETS, HistogramSnapshot
from meshbreaker.v1 import control_plane_pb2 as pb

_STATE_TO_PROTO = {
    State.CLOSED: pb.BREAKER_STATE_CLOSED,
    State.OPEN: pb.BREAKER_STATE_OPEN,
    State.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
    State.FORCED_OPEN: pb.BREAKER_STATE_FORCED_OPEN,
    State.FORCED_CLOSED: pb.BREAKER_STATE_FORCED_CLOSED,
}
_STATE_FROM_PROTO: dict[int, State] = {value: key for key, value in _STATE_TO_PROTO.items()}


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
        throttled=snapshot.throttled,
        throttle_probability=snapshot.throttle_probability,
    )
    if snapshot.concurrency_limit is not None:
        message.concurrency_limit = snapshot.concurrency_limit
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


def breaker_to_proto(
    breaker: CircuitBreaker, now: float, *, with_config: bool = True
) -> pb.BreakerSnapshot:
    """The report message for a breaker: snapshot, transition counts, histogram (and config)."""
    observed = breaker.observe()
    message = snapshot_to_proto(observed.snapshot, now, observed.transitions, observed.durations)
    if with_config:
        message.config.CopyFrom(_config_message(breaker.config))
    return message


@functools.lru_cache(maxsize=256)
def _config_message(config: BreakerConfig) -> pb.BreakerConfig:
    """config_to_proto, cached: a fleet's breakers share a few configs (never mutate the result)."""
    return config_to_proto(config)


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
