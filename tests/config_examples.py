"""Valid example values of every BreakerConfig field, by the kind its schema gives it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from meshbreaker.config import (
    SCHEMA,
    BreakerConfig,
    ConcurrencyLimit,
    Mode,
    WindowType,
    check_layer,
)
from meshbreaker.control import convert
from meshbreaker.control.xds.model import OutlierDetection
from meshbreaker.retry import RetryPolicy
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2

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
        if (name, value) == ("backoff_multiplier", 0.0):
            continue  # out of that field's range
        if (name, value) == ("open_jitter", 1.5):
            value = 0.25  # a fraction
        if name in ("window_size", "minimum_calls", "half_open_max_calls") and value == 0:
            continue
        if name in ("half_open_success_threshold", "fleet_min_instances") and value == 0:
            continue
        if name == "fleet_open_quorum" and value is not None:
            value = 0.25  # a fraction
        if name == "ignored_codes":
            value = frozenset({"NOT_FOUND"})
        yield value


def non_default_layer(pick: int = 0) -> dict[str, Any]:
    """Every BreakerConfig field at a value other than its default (the `pick`th such example)."""
    defaults = BreakerConfig()
    layer = {}
    for name in SCHEMA:
        changed = [value for value in field_examples(name) if value != getattr(defaults, name)]
        layer[name] = changed[min(pick, len(changed) - 1)]
    return layer


def every_field_policy(policy_id: str, selector: pb.Selector) -> pb.Policy:
    """A policy with every field a put may set at a value other than its default: config and the
    canary's config (each field of each), outlier detection (each field), the canary's own fields,
    the description, and an override with its expiry and reason."""
    outlier = xds_pb2.OutlierDetection()
    for field in dataclasses.fields(OutlierDetection):
        default = field.default
        if isinstance(default, float):
            getattr(outlier, field.name).FromNanoseconds(int((default * 2 + 0.5) * 1e9))
        else:
            assert isinstance(default, int)
            setattr(outlier, field.name, default + 1 if default < 100 else default - 1)
    policy = pb.Policy(
        id=policy_id,
        selector=selector,
        config=convert.layer_to_proto(check_layer(non_default_layer(0))),
        description="every field <b>set</b>",
        outlier_detection=outlier,
        canary=pb.Canary(
            percent=12.5,
            config=convert.layer_to_proto(check_layer(non_default_layer(1))),
            max_rejection_margin=0.05,
        ),
        override=pb.OVERRIDE_FORCED_CLOSED,
        override_reason="kept by a put",
    )
    policy.override_expires_at.FromSeconds(int(time.time()) + 3600)
    return policy
