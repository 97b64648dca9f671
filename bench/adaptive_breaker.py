"""The pattern document's "adaptive circuit breaker", measured against fixed thresholds.

The sketch (shared/reference/circuit-breaker-pattern.md, AdaptiveCircuitBreaker.updateThreshold)
moves ErrorThreshold with the recent success rate: 0.7 above 95 % success, 0.3 below 80 %. It
trips when the failure rate reaches the threshold. Replayed over random failure-rate traces, its
decisions are compared window by window with fixed thresholds 0.3 and 0.5, once with the threshold
updated before every check and once updated on a timer (every UPDATE_EVERY windows, as a
background goroutine would), which is how the sketch runs it.
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from bench._harness import table, write_json

UPDATE_EVERY = 10


def adaptive_trips(trace: list[float], update_every: int) -> list[bool]:
    """The sketch's decision per window: update the threshold (maybe late), then compare."""
    threshold = 0.5
    decisions = []
    for index, failure_rate in enumerate(trace):
        if index % update_every == 0:
            success = 1.0 - failure_rate
            if success > 0.95:
                threshold = 0.7
            elif success < 0.8:
                threshold = 0.3
        decisions.append(failure_rate >= threshold)
    return decisions


def trace(rng: random.Random, length: int) -> list[float]:
    """Failure rates per window: calm stretches, incidents of every size, slow recoveries."""
    rates, rate = [], 0.01
    for _ in range(length):
        if rng.random() < 0.03:
            rate = rng.choice([0.0, 0.02, 0.1, 0.25, 0.35, 0.5, 0.8, 1.0])
        rates.append(min(1.0, max(0.0, rate + rng.gauss(0, 0.03))))
    return rates


def main(quick: bool = False) -> dict[str, Any]:
    """Compare decisions over many traces; print the table, write bench/results/adaptive.json."""
    rng = random.Random(14)
    traces = [trace(rng, 500) for _ in range(40 if quick else 400)]
    windows = sum(len(rates) for rates in traces)
    rows: dict[str, dict[str, int]] = {}
    for label, every in (("updated before each check", 1), (f"updated every {UPDATE_EVERY}", 10)):
        for fixed in (0.3, 0.5):
            differ = late = early = 0
            for rates in traces:
                adaptive = adaptive_trips(rates, every)
                for rate, tripped in zip(rates, adaptive, strict=True):
                    expected = rate >= fixed
                    differ += tripped != expected
                    late += expected and not tripped
                    early += tripped and not expected
            rows[f"adaptive ({label}) vs fixed {fixed}"] = {
                "windows": windows,
                "different": differ,
                "adaptive trips later": late,
                "adaptive trips earlier": early,
            }
    results = {"comparisons": rows, "traces": len(traces)}
    headers = ["comparison", "windows", "different decisions", "trips later", "trips earlier"]
    print(
        table(
            headers,
            [[name, *(f"{value:,}" for value in row.values())] for name, row in rows.items()],
        )
    )
    write_json("adaptive_breaker", results)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer traces")
    main(quick=parser.parse_args().quick)
