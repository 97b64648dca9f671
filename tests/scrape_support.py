"""Scrape a Prometheus endpoint with a real HTTP client and look samples up by their labels.

Imported as `tests.scrape_support` by tests/metrics and tests/control.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """A /metrics page fetched with urllib and parsed by prometheus_client's parser."""

    def __init__(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            self.text: str = response.read().decode()
        self.families = {
            family.name: family for family in text_string_to_metric_families(self.text)
        }

    def _matching(self, sample_name: str, match: dict[str, str]) -> list[Sample]:
        return [
            sample
            for family in self.families.values()
            for sample in family.samples
            if sample.name == sample_name
            and all(sample.labels.get(key) == value for key, value in match.items())
        ]

    def by(self, sample_name: str, key: str | tuple[str, ...], **match: str) -> dict[Any, float]:
        """{value of label `key` (a tuple of values for several): sample value} for `match`."""
        result: dict[Any, float] = {}
        for sample in self._matching(sample_name, match):
            if isinstance(key, str):
                index: Any = sample.labels[key]
            else:
                index = tuple(sample.labels[name] for name in key)
            assert index not in result, f"two {sample_name} samples for {index!r}"
            result[index] = sample.value
        return result

    def one(self, sample_name: str, **match: str) -> float:
        """The value of the one `sample_name` sample whose labels include `match`."""
        samples = self._matching(sample_name, match)
        assert len(samples) == 1, f"{len(samples)} {sample_name} samples match {match}"
        return samples[0].value

    def label_sets(self, sample_name: str, *keys: str) -> set[tuple[str, ...]]:
        """The distinct values of labels `keys` among the `sample_name` samples."""
        return {
            tuple(sample.labels[key] for key in keys) for sample in self._matching(sample_name, {})
        }
