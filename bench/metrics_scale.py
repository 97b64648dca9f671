"""The control plane's /metrics at mesh scale: the text for N reported breakers, before and after.

One view of `instances` x 100 breakers (two instances per caller service, each breaker with a
transition count and, in the second size, a 12-bucket duration histogram), rendered four ways
side by side in one process, in rounds whose order alternates:

- before: prometheus_client's generate_latest over the collector's families, one series per
  instance (what every scrape did until now),
- per instance, written directly (control/exposition, the cap set above the mesh's size),
- default: summed per (caller service, breaker) past 2,000 reported breakers, written directly,
- cached: a second scrape while no report changed the view.

Seconds are the median of the rounds, wall clock and this process's CPU time (the rendering is
single-threaded: on a machine shared with other work, CPU time is what it would take on an idle
core, wall time what it took here); MB is the size of the text; peak MB is the most memory
Python allocated while rendering (tracemalloc, in a separate pass so it does not slow the timed
ones).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from bench._harness import table, write_json
from meshbreaker.control.instances import InstanceView, MeshView
from meshbreaker.control.metrics import ControlPlaneCollector
from meshbreaker.v1 import control_plane_pb2 as pb

BREAKERS = 100
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def mesh(instances: int, histograms: bool) -> MeshView:
    """`instances` x 100 reported breakers, two instances per caller service."""
    views = []
    for index in range(instances):
        breakers = {}
        for number in range(BREAKERS):
            snapshot = pb.BreakerSnapshot(
                name=f"/bench.v1.S{number}/Call",
                state=pb.BREAKER_STATE_CLOSED,
                total=1000 + index,
                successful=990,
                failed=10 + index,
                failure_rate=0.01,
                window_calls=100,
                mean_duration=0.004,
            )
            snapshot.transitions.add(
                from_state=pb.BREAKER_STATE_CLOSED, to_state=pb.BREAKER_STATE_OPEN, count=2
            )
            if histograms:
                snapshot.duration_histogram.bounds.extend(BOUNDS)
                snapshot.duration_histogram.counts.extend([3] * (len(BOUNDS) + 1))
                snapshot.duration_histogram.sum = 2.5
            breakers[snapshot.name] = snapshot
        views.append(InstanceView(f"i{index}", f"svc{index // 2:03d}", 1.0, 3, False, breakers))
    return MeshView(3, instances, 0, 0, tuple(views), version=1)


class _Servicer:
    def __init__(self, view: MeshView) -> None:
        self.view = view

    def mesh_view(self) -> MeshView:
        return self.view


def _variants(view: MeshView, loop: asyncio.AbstractEventLoop) -> dict[str, Callable[[], str]]:
    total = sum(len(instance.breakers) for instance in view.instances)
    before = ControlPlaneCollector(_Servicer(view), loop, max_instance_breakers=total)  # type: ignore[arg-type]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(before)
    cached = ControlPlaneCollector(_Servicer(view), loop)  # type: ignore[arg-type]
    cached.render()

    def fresh(**options: int) -> Callable[[], str]:
        # A new collector per render: nothing cached from an earlier one.
        return lambda: ControlPlaneCollector(_Servicer(view), loop, **options).render()  # type: ignore[arg-type]

    return {
        "before (prometheus_client, per instance)": lambda: generate_latest(registry).decode(),
        "per instance, written directly": fresh(max_instance_breakers=total),
        "default (summed past 2,000)": fresh(),
        "cached (no report since)": cached.render,
    }


def measure(instances: int, histograms: bool, rounds: int) -> list[dict[str, Any]]:
    """The four renderings of one mesh size, timed in alternating rounds."""
    view = mesh(instances, histograms)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        variants = _variants(view, loop)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        sizes: dict[str, float] = {}
        for turn in range(rounds):
            names = list(variants) if turn % 2 == 0 else list(reversed(variants))
            for name in names:
                started, started_cpu = time.perf_counter(), time.process_time()
                text = variants[name]()
                seconds[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
                sizes[name] = len(text.encode()) / 1e6
        peaks = {}
        for name, render in variants.items():
            tracemalloc.start()
            render()
            peaks[name] = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    return [
        {
            "reported_breakers": instances * BREAKERS,
            "histograms": histograms,
            "variant": name,
            "seconds": round(statistics.median(seconds[name]), 3),
            "cpu_seconds": round(statistics.median(cpu[name]), 3),
            "text_mb": round(sizes[name], 1),
            "peak_mb": round(peaks[name], 1),
        }
        for name in variants
    ]


def main(quick: bool = False) -> list[dict[str, Any]]:
    """Print the table; write bench/results/metrics_scale.json."""
    instances, rounds = (20, 3) if quick else (200, 2)
    rows = measure(instances, False, rounds) + measure(instances, True, rounds)
    print(
        table(
            [
                "reported breakers",
                "histograms",
                "rendering",
                "s (median)",
                "CPU s",
                "text MB",
                "peak MB",
            ],
            [
                [
                    str(row["reported_breakers"]),
                    "yes" if row["histograms"] else "no",
                    row["variant"],
                    str(row["seconds"]),
                    str(row["cpu_seconds"]),
                    str(row["text_mb"]),
                    str(row["peak_mb"]),
                ]
                for row in rows
            ],
        )
    )
    payload = {"quick": quick, "load_average": os.getloadavg(), "rows": rows}
    print(f"wrote {write_json('metrics_scale', payload)}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 breakers instead of 20,000")
    main(quick=parser.parse_args().quick)
