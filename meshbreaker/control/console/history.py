"""Calls and failures of every breaker group over the last minutes, for the console's sparklines.

A sample is taken every `step` seconds from the reports the control plane holds: per (caller
service, breaker name), the lifetime totals summed over live instances. A sparkline shows the
difference between consecutive samples (clamped at 0: an instance that restarts or expires makes
a total drop, which is no negative traffic). Bounded: `length` samples of at most `max_series`
groups (the rest get no sparkline and are counted in `untracked`).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from meshbreaker.v1 import control_plane_pb2 as pb

GroupKey = tuple[str, str]  # (caller service, breaker name)


class _Instance(Protocol):
    @property
    def service(self) -> str: ...

    @property
    def breakers(self) -> Mapping[str, pb.BreakerSnapshot]: ...


class CallHistory:
    """A ring of samples of every group's (calls, failures) totals; call it on one thread only."""

    def __init__(self, step: float = 2.0, length: int = 90, max_series: int = 2_000) -> None:
        if not step > 0 or length < 2 or max_series < 1:
            raise ValueError("step > 0, length >= 2 and max_series >= 1 are needed")
        self.step = step
        self.max_series = max_series
        self.untracked = 0  # groups left out of the newest sample
        # length + 1 samples make `length` differences.
        self._samples: collections.deque[dict[GroupKey, tuple[int, int]]] = collections.deque(
            maxlen=length + 1
        )
        self._series: dict[GroupKey, dict[str, Any]] | None = None  # made once per sample

    def sample(self, instances: Iterable[_Instance]) -> None:
        """Record the current totals of every group (from a MeshView's instances)."""
        totals: dict[GroupKey, tuple[int, int]] = {}
        untracked: set[GroupKey] = set()
        for instance in instances:
            for name, snapshot in instance.breakers.items():
                key = (instance.service, name)
                held = totals.get(key)
                if held is None:
                    if len(totals) >= self.max_series:
                        untracked.add(key)
                        continue
                    held = (0, 0)
                totals[key] = (held[0] + snapshot.total, held[1] + snapshot.failed)
        self.untracked = len(untracked)
        self._samples.append(totals)
        self._series = None

    def series(self) -> dict[GroupKey, dict[str, Any]]:
        """Per group: calls and failures per step, oldest first (None where it was not seen).

        The result is shared until the next sample: do not change it.
        """
        if self._series is not None:
            return self._series
        samples = list(self._samples)
        keys = set(samples[-1]) if samples else set()
        result: dict[GroupKey, dict[str, Any]] = {}
        for key in keys:
            calls: list[int | None] = []
            failures: list[int | None] = []
            for before, after in itertools.pairwise(samples):
                if key in before and key in after:
                    calls.append(max(0, after[key][0] - before[key][0]))
                    failures.append(max(0, after[key][1] - before[key][1]))
                else:
                    calls.append(None)
                    failures.append(None)
            result[key] = {"step": self.step, "calls": calls, "failures": failures}
        self._series = result
        return result
