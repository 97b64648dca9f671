"""Small helpers for the demo's plain-text output: percentiles, names, durations."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def short_method(name: str) -> str:
    """'/bank.v1.AccountService/GetBalance' -> 'AccountService/GetBalance'."""
    service, _, method = name.rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


def ms(seconds: float) -> str:
    """Seconds as a short millisecond string."""
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"
