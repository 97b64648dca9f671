"""Budgeted retries: exact backoffs, Finagle's budget arithmetic, pushback, and each stop rule."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from meshbreaker import BreakerConfig, CircuitBreaker
from meshbreaker.errors import ConfigError
from meshbreaker.retry import NO_RETRY, RetryBudget, RetryPolicy, RetryRun, parse_pushback
from meshbreaker.testing import FakeClock
from tests.lock_support import LockWatchingClock


def test_the_command_line_form_reads_back_as_the_same_policy() -> None:
    policy = RetryPolicy(
        max_attempts=4,
        initial_backoff=0.1,
        max_backoff=2.0,
        multiplier=3.0,
        retryable_codes=frozenset({"unavailable", "ABORTED"}),
        budget_ratio=0.2,
        budget_min_per_second=5,
        budget_ttl=20.0,
    )
    text = str(policy)
    assert text == (
        "max_attempts=4,initial_backoff=0.1,max_backoff=2.0,multiplier=3.0,"
        "retryable_codes=ABORTED|UNAVAILABLE,budget_ratio=0.2,budget_min_per_second=5,"
        "budget_ttl=20.0"
    )
    assert RetryPolicy.from_text(text) == policy
    # Counts read as ints, the rest as floats; fields left out take their defaults.
    some = RetryPolicy.from_text("max_attempts=2, budget_min_per_second=7, initial_backoff=1")
    assert (some.max_attempts, some.budget_min_per_second, some.initial_backoff) == (2, 7, 1.0)
    assert type(some.max_attempts) is int and type(some.initial_backoff) is float
    assert some.retryable_codes == RetryPolicy().retryable_codes


def test_backoff_ceilings_grow_then_cap() -> None:
    policy = RetryPolicy(max_attempts=8, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    ceilings = [policy.backoff_ceiling(retry) for retry in range(1, 7)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.backoff_ceiling(10_000) == 1.0  # no overflow


def test_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0)
    for draw in (0.0, 0.25, 0.999):
        rng = functools.partial(float, draw)
        run = RetryRun(policy, RetryBudget(), idempotent=True, deadline=None, rng=rng)
        delays = [run.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) for _ in "abc"]
        assert delays == pytest.approx([draw * 0.1, draw * 0.2, draw * 0.4])


def test_budget_is_the_reserve_plus_a_fifth_of_requests() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.2, 10, 10.0, clock=clock)
    assert budget.balance == 100  # 10 per second over 10 seconds, before any request
    for _ in range(50):
        budget.deposit()
    assert budget.balance == 110  # + 50 / 5
    taken = 0
    while budget.try_withdraw():
        taken += 1
    assert (taken, budget.balance) == (110, 0)
    budget.deposit()
    assert not budget.try_withdraw()  # one request is a fifth of a retry
    for _ in range(4):
        budget.deposit()
    assert budget.try_withdraw() and not budget.try_withdraw()


def test_deposits_and_withdrawals_expire_after_ttl() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.5, 0, 10.0, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert budget.balance == 5
    clock.advance(5.0)
    for _ in range(4):
        budget.deposit()
    assert budget.try_withdraw() and budget.balance == 6
    clock.advance(5.0)  # the first ten deposits (and only they) are older than ttl
    assert budget.balance == 1  # 4 deposits = 2 retries, less the one taken
    clock.advance(5.0)
    assert budget.balance == 0
    clock.advance(100.0)
    assert not budget.try_withdraw()


def test_a_budget_whose_every_deposit_expired_holds_only_what_comes_after() -> None:
    """Past ttl the budget starts from nothing: a deposit one token short of a retry allows none."""
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.999, 0, 10.0, clock=clock)  # a retry costs 1001 tokens, a deposit 1000
    budget.deposit()
    budget.deposit()
    assert budget.balance == 1
    clock.advance(20.0)  # every slice has expired
    budget.deposit()
    assert budget.balance == 0
    assert not budget.try_withdraw()


def test_a_policy_that_sets_few_fields_takes_the_defaults_for_the_rest() -> None:
    """The defaults (DESIGN.md's budget among them) fill what --retry's text leaves out."""
    assert RetryPolicy.from_text("max_backoff=1").to_dict() == {
        "max_attempts": 3,
        "initial_backoff": 0.05,
        "max_backoff": 1.0,
        "multiplier": 2.0,
        "retryable_codes": ["UNAVAILABLE"],
        "budget_ratio": 0.2,
        "budget_min_per_second": 10,
        "budget_ttl": 10.0,
    }


def test_a_budget_counts_each_token_exactly_as_its_slices_expire() -> None:
    """Expiring slice by slice, or all at once after a gap, takes away only what was put in."""
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.999, 1, 10.0, clock=clock)  # a retry costs 1001 tokens; 10 in reserve
    budget.deposit()  # 1000 tokens: one short of an 11th retry
    balances = []
    for _ in range(12):
        clock.advance(1.0)
        balances.append(budget.balance)
    clock.advance(20.0)  # a gap longer than ttl: every slice expires at once
    for _ in range(12):
        clock.advance(1.0)
        balances.append(budget.balance)
    assert balances == [10] * 24


def test_a_deposit_counts_for_ttl_in_tenths_of_it() -> None:
    """Finagle's windowed adder: ten slices, so a deposit leaves at the end of its slice's ttl."""
    clock = FakeClock(1001.0)
    budget = RetryBudget(0.5, 0, 10.0, clock=clock)
    budget.deposit()
    budget.deposit()
    clock.advance(9.99)
    assert budget.balance == 1
    clock.advance(0.01)  # 1011.0: ten slices after the deposits' own
    assert budget.balance == 0


def test_a_retry_is_refused_once_the_deposits_behind_it_expired() -> None:
    """try_withdraw() expires old deposits before it decides (no balance read first)."""
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.5, 0, 10.0, clock=clock)
    for _ in range(10):
        budget.deposit()
    clock.advance(11.0)
    assert not budget.try_withdraw()


def test_the_budget_changes_and_reads_its_tokens_under_its_lock() -> None:
    """deposit(), try_withdraw() and balance read the clock with the budget's lock taken."""
    clock = LockWatchingClock()
    budget = RetryBudget(0.5, 1, 10.0, clock=clock)
    clock.watch(budget._lock)
    budget.deposit()
    assert budget.try_withdraw()
    assert budget.balance >= 0
    assert clock.taken == [True, True, True]


def test_the_default_budget_is_a_fifth_of_calls_plus_ten_a_second_over_ten_seconds() -> None:
    """RetryBudget()'s defaults are DESIGN.md's (budget_ratio=0.2, 10 a second, 10 s)."""
    clock = FakeClock(1000.0)
    budget = RetryBudget(clock=clock)
    assert budget.balance == 100
    for _ in range(5):
        budget.deposit()
    assert budget.balance == 101


def test_the_balance_is_never_below_zero_when_withdrawals_outlive_their_deposits() -> None:
    """Retries taken stay counted after the deposits behind them expired: the balance reads 0."""
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.5, 0, 10.0, clock=clock)
    budget.deposit()
    budget.deposit()
    clock.advance(5.0)
    assert budget.try_withdraw()
    clock.advance(5.0)  # the deposits expire, the withdrawal stays
    assert budget.balance == 0


def test_a_budget_without_ratio_lives_on_its_reserve() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.0, 2, 1.0, clock=clock)
    for _ in range(1000):
        budget.deposit()
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]
    assert not RetryBudget(0.0, 0, 10.0, clock=clock).try_withdraw()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["250"], 0.25),
        (["0"], 0.0),
        (["-1"], NO_RETRY),
        (["1.5"], NO_RETRY),
        (["soon"], NO_RETRY),
        ([""], NO_RETRY),
        (["١٢"], NO_RETRY),  # digits, but not ASCII ones
        (["10", "20"], NO_RETRY),
        (["9" * 40], NO_RETRY),
        (["86400000"], 86400.0),  # a day: the longest pushback that still allows a retry
        (["86400001"], NO_RETRY),
    ],
)
def test_pushback_parsing(values: list[str], expected: float | None) -> None:
    assert parse_pushback(values) == expected


def run(policy: RetryPolicy, **options: object) -> RetryRun:
    budget = options.pop("budget", None) or RetryBudget()
    options.setdefault("idempotent", True)
    options.setdefault("deadline", None)
    return RetryRun(policy, budget, rng=lambda: 1.0, **options)  # type: ignore[arg-type]


def test_a_committed_run_makes_no_further_attempt() -> None:
    attempts = run(RetryPolicy(max_attempts=3))
    attempts.commit()  # the answer is in: e.g. a response stream's first message came
    assert attempts.committed
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) is None
    assert attempts.attempts == 1


def test_stops_after_max_attempts() -> None:
    attempts = run(RetryPolicy(max_attempts=3))
    retries = [attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) for _ in "abc"]
    assert retries[2] is None and None not in retries[:2] and attempts.attempts == 3


def test_only_retryable_codes_are_retried() -> None:
    attempts = run(RetryPolicy(retryable_codes=frozenset({"unavailable", "RESOURCE_EXHAUSTED"})))
    assert attempts.next_delay("INTERNAL", sent=True, pushback=None, now=0.0) is None
    assert attempts.next_delay("RESOURCE_EXHAUSTED", sent=True, pushback=None, now=0.0) == 0.05


def test_a_call_that_may_have_reached_the_server_is_retried_only_if_idempotent() -> None:
    attempts = run(RetryPolicy(), idempotent=False)
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) is None
    assert attempts.next_delay("UNAVAILABLE", sent=False, pushback=None, now=0.0) == 0.05


def test_pushback_sets_the_delay_and_restarts_the_backoff() -> None:
    attempts = run(RetryPolicy(max_attempts=5, initial_backoff=0.1))
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) == 0.1
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) == 0.2
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=3.0, now=0.0) == 3.0
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) == 0.1
    refused = run(RetryPolicy())
    assert refused.next_delay("UNAVAILABLE", sent=True, pushback=NO_RETRY, now=0.0) is None


def test_no_retry_that_cannot_start_before_the_deadline() -> None:
    attempts = run(RetryPolicy(max_attempts=5, initial_backoff=0.5), deadline=10.0)
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=9.0) == 0.5
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=None, now=9.0) is None  # 9+1
    assert attempts.next_delay("UNAVAILABLE", sent=True, pushback=0.9, now=9.0) == 0.9


def test_an_exhausted_budget_stops_retries_and_counts_no_attempt() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.5, 0, 10.0, clock=clock)
    first = run(RetryPolicy(), budget=budget)  # deposits 1: half a retry
    assert first.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) is None
    assert first.attempts == 1
    second = run(RetryPolicy(), budget=budget)  # deposits 1 more: one retry
    assert second.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) is not None
    assert first.next_delay("UNAVAILABLE", sent=True, pushback=None, now=0.0) is None


def test_amplification_is_bounded_by_the_budget() -> None:
    # Every attempt fails, 10,000 calls in 10 s: retries <= 20 % of calls + the reserve.
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=5)
    budget = RetryBudget.of(policy, clock)
    attempts = 0
    for _ in range(10_000):
        clock.advance(0.001)
        call = run(policy, budget=budget)
        while call.next_delay("UNAVAILABLE", sent=True, pushback=None, now=clock()) is not None:
            pass
        attempts += call.attempts
    assert attempts == 10_000 + 2_000 + 100


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_attempts": 0}, "retry.max_attempts"),
        ({"max_attempts": 11}, "retry.max_attempts"),
        ({"initial_backoff": 0}, "retry.initial_backoff"),
        ({"initial_backoff": float("nan")}, "retry.initial_backoff"),
        ({"initial_backoff": "0.1"}, "retry.initial_backoff"),
        ({"initial_backoff": 2.0}, "retry.max_backoff"),
        ({"multiplier": 0.5}, "retry.multiplier"),
        ({"retryable_codes": "UNAVAILABLE"}, "retry.retryable_codes"),
        ({"retryable_codes": {"NOPE"}}, "retry.retryable_codes"),
        ({"retryable_codes": {"OK"}}, "retry.retryable_codes"),
        ({"budget_ratio": -0.1}, "retry.budget_ratio"),
        ({"budget_min_per_second": 1.5}, "retry.budget_min_per_second"),
        ({"budget_ttl": 0.5}, "retry.budget_ttl"),
        ({"budget_ttl": 61}, "retry.budget_ttl"),
        ({"budget_min_per_second": 1_000_001}, "retry.budget_min_per_second"),
        ({"max_backoff": float("inf")}, "retry.max_backoff"),
    ],
)
def test_bad_policies_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        RetryPolicy(**changes)  # type: ignore[arg-type]
    assert error.value.field == field


@pytest.mark.parametrize(
    "values",
    [
        {"max_attempts": 1},
        {"max_attempts": 10},
        {"initial_backoff": 0.5, "max_backoff": 0.5},
        {"multiplier": 1.0},
        {"budget_ratio": 0.0},
        {"budget_ratio": 1000.0},
        {"budget_min_per_second": 0},
        {"budget_min_per_second": 1_000_000},
        {"budget_ttl": 1.0},
        {"budget_ttl": 60.0},
    ],
    ids=lambda values: ",".join(f"{name}={value}" for name, value in values.items()),
)
def test_a_policy_at_the_edge_of_a_bound_is_accepted(values: dict[str, Any]) -> None:
    """Each bound is inclusive: its edge value makes a policy that keeps it."""
    policy = RetryPolicy(**values)
    assert {name: getattr(policy, name) for name in values} == values


@pytest.mark.parametrize(
    ("text", "field"), [("max_attempts=three", "max_attempts"), ("multiplier=x2", "multiplier")]
)
def test_a_retry_text_value_that_is_no_number_is_refused_as_such(text: str, field: str) -> None:
    """--retry's text names the field and the value it could not read as a number."""
    with pytest.raises(ConfigError, match=r"is not a number") as error:
        RetryPolicy.from_text(text)
    assert error.value.field == f"retry.{field}"


def test_whole_number_values_are_kept_as_floats() -> None:
    """1 and 1.0 are one policy, written the same way (its text and its dict)."""
    policy = RetryPolicy(
        initial_backoff=1, max_backoff=2, multiplier=3, budget_ratio=1, budget_ttl=5
    )
    assert str(policy) == str(
        RetryPolicy(
            initial_backoff=1.0, max_backoff=2.0, multiplier=3.0, budget_ratio=1.0, budget_ttl=5.0
        )
    )
    assert all(
        type(value) is float
        for name, value in policy.to_dict().items()
        if name in ("initial_backoff", "max_backoff", "multiplier", "budget_ratio", "budget_ttl")
    )


def test_a_budget_ratio_above_the_token_scale_is_refused() -> None:
    """budget_ratio is at most 1000 (_SCALE): a retry must cost at least one token."""
    with pytest.raises(ConfigError, match="<= 1000") as error:
        RetryPolicy(budget_ratio=1000.5)
    assert error.value.field == "retry.budget_ratio"


@pytest.mark.parametrize("codes", [[["UNAVAILABLE"]], [{"code": "UNAVAILABLE"}], [1]])
def test_retryable_codes_that_are_no_code_names_are_refused_by_name_from_values(
    codes: list[object],
) -> None:
    """A JSON list holding what is no code name is a ConfigError, not a TypeError."""
    with pytest.raises(ConfigError) as error:
        RetryPolicy.from_values({"retryable_codes": codes})
    assert error.value.field == "retry.retryable_codes"
    assert RetryPolicy.from_values(
        {"retryable_codes": ["unavailable", "ABORTED"]}
    ).retryable_codes == {
        "UNAVAILABLE",
        "ABORTED",
    }


def test_an_unknown_field_is_refused_by_the_first_unknown_name() -> None:
    """from_values names the first unknown field in sorted order, and lists the known ones."""
    with pytest.raises(ConfigError, match="unknown field") as error:
        RetryPolicy.from_values({"zeta": 1, "alpha": 2, "max_attempts": 3})
    assert error.value.field == "retry.alpha"
    assert "budget_ttl" in str(error.value)


@pytest.mark.parametrize("text", ["=3", "max_attempts", "max_attempts=3,", ""])
def test_a_retry_text_part_that_is_no_name_value_pair_is_refused(text: str) -> None:
    """Each comma-separated part of --retry's text must be name=value with a name."""
    with pytest.raises(ConfigError, match="is not name=value") as error:
        RetryPolicy.from_text(text)
    assert error.value.field == "retry"


def test_a_breaker_takes_a_new_budget_when_its_terms_change_and_keeps_it_otherwise() -> None:
    clock = FakeClock()

    def retry(min_per_second: int, max_attempts: int = 3) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=max_attempts, budget_ratio=0.0,
            budget_min_per_second=min_per_second, budget_ttl=1.0,
        )  # fmt: skip

    cb = CircuitBreaker("dep", BreakerConfig(retry=retry(1)), clock=clock)
    first = cb.retry_budget
    assert first is not None and first.try_withdraw() and not first.try_withdraw()
    cb.update_config(cb.config.replace(retry=retry(3)))
    second = cb.retry_budget
    assert second is not first and second is not None
    assert [second.try_withdraw() for _ in range(4)] == [True, True, True, False]
    cb.update_config(cb.config.replace(retry=retry(3, max_attempts=5)))  # same budget terms
    assert cb.retry_budget is second and not second.try_withdraw()  # what it spent still counts
