"""The console's call history: differences between samples, clamped and bounded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from meshbreaker.control.console.history import CallHistory
from meshbreaker.v1 import control_plane_pb2 as pb


@dataclass
class Reporter:
    service: str
    breakers: Mapping[str, pb.BreakerSnapshot] = field(default_factory=dict)


def _instance(service: str, **totals: tuple[int, int]) -> Reporter:
    return Reporter(
        service,
        {
            f"/pkg.Svc/{name}": pb.BreakerSnapshot(total=total, failed=failed)
            for name, (total, failed) in totals.items()
        },
    )


def test_a_sparkline_is_the_calls_and_failures_per_step_summed_over_instances() -> None:
    history = CallHistory(step=5.0, length=3)
    history.sample([_instance("a", M=(10, 1)), _instance("a", M=(5, 0))])
    assert history.series()[("a", "/pkg.Svc/M")] == {"step": 5.0, "calls": [], "failures": []}
    history.sample([_instance("a", M=(20, 4)), _instance("a", M=(9, 0))])
    history.sample([_instance("a", M=(20, 4)), _instance("a", M=(10, 1))])
    history.sample([_instance("a", M=(30, 4)), _instance("a", M=(10, 1))])
    history.sample([_instance("a", M=(31, 9)), _instance("a", M=(10, 1))])
    # Three differences kept (length=3), oldest first.
    assert history.series()[("a", "/pkg.Svc/M")] == {
        "step": 5.0,
        "calls": [1, 10, 1],
        "failures": [1, 0, 5],
    }


def test_a_total_that_drops_is_no_negative_traffic_and_a_new_group_has_gaps() -> None:
    history = CallHistory(step=1.0, length=4)
    history.sample([_instance("a", M=(100, 50))])
    history.sample([_instance("a", M=(3, 1), N=(7, 0))])  # the instance restarted; N is new
    history.sample([_instance("a", M=(4, 1), N=(9, 2))])
    series = history.series()
    assert series[("a", "/pkg.Svc/M")]["calls"] == [0, 1]
    assert series[("a", "/pkg.Svc/N")]["calls"] == [None, 2]
    assert series[("a", "/pkg.Svc/N")]["failures"] == [None, 2]


def test_at_most_max_series_groups_are_kept() -> None:
    history = CallHistory(step=1.0, length=2, max_series=2)
    history.sample([_instance("a", M=(1, 0), N=(1, 0), O=(1, 0)), _instance("b", M=(1, 0))])
    assert len(history.series()) == 2
    assert history.untracked == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="step > 0"):
        CallHistory(step=0)
    with pytest.raises(ValueError, match="length >= 2"):
        CallHistory(length=1)
