"""Valid example values of every BreakerConfig field, by the kind its schema gives it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meshbreaker.config import SCHEMA, ConcurrencyLimit, Mode, WindowType
from meshbreaker.retry import RetryPolicy

# Values of each kind that differ from a field's default (None = "off" where the kind allows it).
EXAMPLE_VALUES: dict[str, tuple[Any, ...]] = {
    "rate": (0.25,),
    "number": (1.5, 0.0),
    "seconds": (2.5,),
    "optional_seconds": (2.5, None),
    "seconds_or_off": (2.5, 0.0),
    "count": (0, 7),
    "optional_count": (7, None),
    "optional_number": (2.5, None),
    "window_type": (WindowType.COUNT,),
    "mode": (Mode.SHADOW,),
    "codes": (frozenset({"INTERNAL", "UNAVAILABLE"}),),
    "concurrency_limit": (ConcurrencyLimit.ADAPTIVE, ConcurrencyLimit.FIXED),
    "retry": (
        RetryPolicy(max_attempts=4, retryable_codes=frozenset({"UNAVAILABLE", "ABORTED"})),
        None,
    ),
    "flag": (True, False),
}


def field_examples(name: str) -> Iterator[Any]:
    """The example values of its kind that BreakerConfig field `name` accepts alone."""
    for value in EXAMPLE_VALUES[SCHEMA[name].kind]:
        if (name, value) in (("open_jitter", 1.5), ("backoff_multiplier", 0.0)):
            continue  # out of that field's range
        if name in ("window_size", "minimum_calls", "half_open_max_calls") and value == 0:
            continue
        if name in ("half_open_success_threshold", "fleet_min_instances") and value == 0:
            continue
        if name == "fleet_open_quorum" and value is not None:
            value = 0.25  # a fraction
        if name == "ignored_codes":
            value = frozenset({"NOT_FOUND"})
        yield value
