"""Shared benchmark plumbing: interleaved rounds, medians of per-round ratios, JSON output."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def interleaved(
    variants: Mapping[str, Callable[[int], None]],
    *,
    rounds: int,
    calls: int,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, list[float]]:
    """Run each variant `calls` times per round, variants interleaved; ns per call per round.

    `clock` is wall time by default; time.thread_time_ns counts only the CPU the running thread
    used, so time the machine gave to other jobs stays out (in-process loops only).
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run(min(calls, 2000))  # warm-up
    for _ in range(rounds):
        for name, run in variants.items():
            start = clock()
            run(calls)
            samples[name].append((clock() - start) / calls)
    return samples


def median_ratio(samples: Mapping[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator/denominator measured in the same round."""
    return statistics.median(
        a / b for a, b in zip(samples[numerator], samples[denominator], strict=True)
    )


def write_json(name: str, payload: Mapping[str, Any]) -> Path:
    """Write bench/results/<name>.json and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
