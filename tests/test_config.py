"""BreakerConfig validates every field and names the one that is wrong."""

from __future__ import annotations

import math
from typing import Any

import pytest

from meshbreaker import BreakerConfig, ConfigError, Mode, WindowType
from meshbreaker.config import DEFAULT_FAILURE_CODES, check_code_sets, check_layer, merge_layers
from meshbreaker.retry import RetryPolicy


def test_defaults_match_the_design_table() -> None:
    cfg = BreakerConfig()
    assert (cfg.consecutive_failures, cfg.half_open_success_threshold, cfg.open_duration) == (
        5,
        3,
        60.0,
    )
    assert (cfg.half_open_max_calls, cfg.minimum_calls, cfg.window_size) == (10, 10, 10)
    assert cfg.window_type is WindowType.TIME and cfg.mode is Mode.ENFORCE
    assert (cfg.failure_rate_threshold, cfg.slow_call_rate_threshold) == (0.5, 0.5)
    assert cfg.slow_call_duration == 5.0 and cfg.max_concurrent_calls is None
    assert "UNAVAILABLE" in cfg.failure_codes and cfg.ignored_codes == {"CANCELLED"}


BAD_VALUES = [
    ("failure_rate_threshold", 1.5),
    ("failure_rate_threshold", 0.0),
    ("failure_rate_threshold", -0.1),
    ("failure_rate_threshold", "0.5"),
    ("failure_rate_threshold", math.nan),
    ("slow_call_rate_threshold", 2),
    ("slow_call_duration", 0),
    ("slow_call_duration", -1.0),
    ("slow_call_duration", math.inf),
    ("window_type", "sliding"),
    ("window_size", 0),
    ("window_size", 2.5),
    ("window_size", True),
    ("window_size", 100_000),  # a time window of more than an hour
    ("minimum_calls", 0),
    ("consecutive_failures", -1),
    ("open_duration", 0.0),
    ("open_duration", -5),
    ("open_duration_max", 1.0),  # below open_duration
    ("backoff_multiplier", 0.5),
    ("backoff_multiplier", math.nan),
    ("backoff_multiplier", math.inf),
    ("backoff_multiplier", "2"),
    ("open_jitter", 1.0),
    ("open_jitter", -0.1),
    ("half_open_max_calls", 0),
    ("half_open_success_threshold", 0),
    ("max_concurrent_calls", 0),
    ("max_concurrent_calls", "10"),
    ("mode", "loud"),
    ("failure_codes", ["UNAVAILABLE", "NOPE"]),
    ("failure_codes", "UNAVAILABLE"),
    ("failure_codes", ["OK"]),
    ("failure_codes", 5),  # not a collection: a ConfigError, not a TypeError
    ("ignored_codes", ["UNAVAILABLE"]),  # both failed and ignored
    ("fleet_open_quorum", 0.0),
    ("fleet_open_quorum", 1.5),
    ("fleet_open_quorum", "0.5"),
    ("fleet_min_instances", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_value_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        BreakerConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    "values",
    [
        {"failure_rate_threshold": 1.0, "slow_call_rate_threshold": 1.0},
        {"minimum_calls": 1, "window_size": 1},
        {"consecutive_failures": 0},
        {"open_duration": 5.0, "open_duration_max": 5.0},
        {"backoff_multiplier": 1.0},
        {"open_jitter": 0.0},
        {"half_open_max_calls": 1, "half_open_success_threshold": 1},
        {"half_open_max_wait": 0.0},
        {"max_concurrent_calls": 1},
        {"throttle_k": 1.0},
        {"throttle_window": 1.0},
        {"throttle_window": 3600.0},
        {"fleet_open_quorum": 1.0, "fleet_min_instances": 1},
    ],
    ids=lambda values: ",".join(f"{name}={value}" for name, value in values.items()),
)
def test_a_config_at_the_edge_of_a_bound_is_accepted(values: dict[str, Any]) -> None:
    """Each inclusive bound takes its edge value and keeps it."""
    config = BreakerConfig(**values)
    assert {name: getattr(config, name) for name in values} == values


@pytest.mark.parametrize(("window_type", "maximum"), [("time", 3600), ("count", 1_000_000)])
def test_a_window_may_be_as_large_as_its_maximum_and_no_larger(
    window_type: str, maximum: int
) -> None:
    assert BreakerConfig(window_type=window_type, window_size=maximum).window_size == maximum  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        BreakerConfig(window_type=window_type, window_size=maximum + 1)  # type: ignore[arg-type]
    assert info.value.field == "window_size" and f"{maximum}" in str(info.value)


def test_enums_and_codes_are_normalised() -> None:
    cfg = BreakerConfig(window_type="count", mode="shadow", failure_codes=["unavailable"])  # type: ignore[arg-type]
    assert cfg.window_type is WindowType.COUNT and cfg.mode is Mode.SHADOW
    assert cfg.failure_codes == frozenset({"UNAVAILABLE"})
    assert BreakerConfig(open_duration=3).open_duration == 3.0


def test_replace_validates_and_leaves_original_untouched() -> None:
    cfg = BreakerConfig()
    with pytest.raises(ConfigError) as info:
        cfg.replace(minimum_calls=5, failure_rate_threshold=7)
    assert info.value.field == "failure_rate_threshold"
    with pytest.raises(ConfigError) as info:
        cfg.replace(no_such_field=1)
    assert info.value.field == "no_such_field"
    assert cfg == BreakerConfig()


def test_dict_round_trip() -> None:
    cfg = BreakerConfig(window_type=WindowType.COUNT, max_concurrent_calls=4, open_jitter=0.1)
    data = cfg.to_dict()
    assert data["window_type"] == "count" and data["failure_codes"] == sorted(DEFAULT_FAILURE_CODES)
    assert BreakerConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError):
        BreakerConfig.from_dict({"bogus": 1})


def test_config_is_immutable() -> None:
    cfg = BreakerConfig()
    with pytest.raises(AttributeError):
        cfg.minimum_calls = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "layer",
    [{"ignored_codes": ["UNAVAILABLE"]}, {"window_size": 100_000}, {"open_duration_max": 5.0}],
    ids=["ignored_codes", "window_size", "open_duration_max"],
)
def test_a_layer_is_checked_against_a_partner_that_never_conflicts(layer: dict[str, Any]) -> None:
    # The partner field may come from another layer: alone, the layer is valid.
    checked = check_layer(layer)
    assert list(checked) == list(layer)


def test_a_method_is_not_idempotent_unless_its_policy_says_so() -> None:
    assert BreakerConfig().idempotent is False


@pytest.mark.parametrize("retry", [5, "3", [3]])
def test_a_retry_that_is_no_policy_mapping_or_none_is_refused_by_name(retry: object) -> None:
    with pytest.raises(ConfigError, match="must be a RetryPolicy") as error:
        BreakerConfig(retry=retry)  # type: ignore[arg-type]
    assert error.value.field == "retry"


@pytest.mark.parametrize("opened", ["5", None, True])
def test_merged_layers_refuse_an_open_duration_that_is_no_number_by_its_name(
    opened: object,
) -> None:
    # The open_duration_max that rises to a layer's open_duration reads only a number.
    with pytest.raises(ConfigError) as error:
        merge_layers(BreakerConfig(), [{"open_duration": opened}])
    assert error.value.field == "open_duration"


def test_a_retry_mapping_becomes_a_retry_policy() -> None:
    retry = BreakerConfig(retry={"max_attempts": 4}).retry  # type: ignore[arg-type]
    assert isinstance(retry, RetryPolicy) and retry.max_attempts == 4


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_idempotent_must_be_true_or_false(bad: object) -> None:
    with pytest.raises(ConfigError, match="idempotent: must be true or false"):
        BreakerConfig(idempotent=bad)  # type: ignore[arg-type]


def test_code_sets_with_one_side_unset_are_checked_only_for_ok_as_a_failure() -> None:
    # An interceptor may set one of failure_codes / ignored_codes and leave the other to the
    # breaker's config (None): nothing to overlap with, so nothing is refused but OK as a failure.
    check_code_sets(frozenset({"INTERNAL"}), None)
    check_code_sets(None, frozenset({"NOT_FOUND"}))
    check_code_sets(None, None)
    with pytest.raises(ConfigError, match="OK cannot be a failure"):
        check_code_sets(frozenset({"OK"}), None)
    with pytest.raises(ConfigError, match=r"both failed and ignored: \['INTERNAL'\]"):
        check_code_sets(frozenset({"INTERNAL"}), frozenset({"INTERNAL", "NOT_FOUND"}))
