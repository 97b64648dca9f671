"""Plain-text rendering for the demo: breaker tables, phase results, latency percentiles."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from meshbreaker.breaker import BreakerSnapshot


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


def breaker_table(snapshots: Iterable[BreakerSnapshot], indent: str = "  ") -> list[str]:
    """One line per breaker: state, window failure rate, calls, rejections."""
    lines = [f"{indent}{'breaker':<44} {'state':<13} {'fail%':>6} {'calls':>7} {'rejected':>9}"]
    for snap in sorted(snapshots, key=lambda s: s.name):
        lines.append(
            f"{indent}{short_method(snap.name):<44} {snap.state.value:<13} "
            f"{snap.failure_rate * 100:>5.0f}% {snap.total:>7} {snap.rejected:>9}"
        )
    return lines


def ms(seconds: float) -> str:
    """Seconds as a short millisecond string."""
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"
