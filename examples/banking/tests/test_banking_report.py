"""The demo's percentile and name helpers (the p99 comparison rests on them)."""

from __future__ import annotations

from examples.banking.invariants import cents
from examples.banking.report import ms, percentile, short_method


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile(values, 100) == 100.0
    assert percentile(list(reversed(values)), 1) == 1.0
    assert percentile([], 99) == 0.0
    # Two slow calls in a hundred are enough to make them the p99.
    assert percentile([0.001] * 98 + [1.0, 1.0], 99) == 1.0
    assert percentile([0.001] * 99 + [1.0], 99) == 0.001


def test_names_and_amounts_print_compactly() -> None:
    assert short_method("/bank.v1.AccountService/GetBalance") == "AccountService/GetBalance"
    assert ms(0.0123) == "12.3 ms"
    assert cents(123456) == "$1,234.56"
    assert cents(-5) == "-$0.05"
