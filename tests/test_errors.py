"""The errors' one-line messages: what went wrong, with the values that say so."""

from __future__ import annotations

import pytest

from meshbreaker._types import State
from meshbreaker.errors import (
    BulkheadFullError,
    CallNotPermittedError,
    ClusterNotFoundError,
    CompactedError,
    ConfigError,
    EndpointLimitError,
    PolicyNotFoundError,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
    ThrottledError,
)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RevisionMismatchError(3, 5), "expected store revision 3, but it is 5"),
        (PolicyNotFoundError("pay"), "no policy with id 'pay'"),
        (ClusterNotFoundError("ledger"), "no xDS cluster named 'ledger'"),
        (
            CompactedError(4, 9),
            "changes after revision 4 are compacted (history starts after revision 9): re-list",
        ),
        (
            SelectorConflictError("a", "b"),
            "policy 'a' has the same selector as policy 'b'",
        ),
        (
            EndpointLimitError("ledger", 64),
            "xDS cluster 'ledger' holds 64 endpoints, the most it may: deregister some, or split"
            " the servers over several clusters",
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, StoreError) else "",
)
def test_a_store_error_says_what_is_wrong_in_one_line(error: StoreError, message: str) -> None:
    assert str(error) == message


@pytest.mark.parametrize(
    ("error", "values"),
    [
        (RevisionMismatchError(3, 5), {"expected": 3, "actual": 5}),
        (PolicyNotFoundError("pay"), {"policy_id": "pay"}),
        (ClusterNotFoundError("ledger"), {"name": "ledger"}),
        (CompactedError(4, 9), {"since_revision": 4, "compacted_revision": 9}),
        (SelectorConflictError("a", "b"), {"policy_id": "a", "other_id": "b"}),
        (EndpointLimitError("ledger", 64), {"cluster": "ledger", "limit": 64}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, StoreError) else "",
)
def test_a_store_error_keeps_the_values_it_names(
    error: StoreError, values: dict[str, object]
) -> None:
    """Each value the message names is also an attribute, for callers to read apart."""
    assert {name: getattr(error, name) for name in values} == values


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            CallNotPermittedError("dep", State.OPEN, 2.5),
            "circuit breaker 'dep' is OPEN; next probe in 2.500s",
        ),
        (
            CallNotPermittedError("dep", State.FORCED_OPEN, float("inf")),
            "circuit breaker 'dep' is FORCED_OPEN by an operator override",
        ),
        (
            BulkheadFullError("dep", State.CLOSED, 0.0),
            "circuit breaker 'dep' bulkhead is full (max_concurrent_calls reached)",
        ),
        (
            ThrottledError("dep", State.CLOSED, 0.0),
            "adaptive throttling refused a call to 'dep' locally (the dependency accepts too few"
            " of the calls sent to it)",
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_a_refused_call_says_why_in_one_line(error: CallNotPermittedError, message: str) -> None:
    """Each refusal names the breaker and what refused the call."""
    assert str(error) == message


def test_a_config_error_keeps_its_field_and_message_apart() -> None:
    """The field and the message stay apart, for callers that prefix the field with a path."""
    error = ConfigError("retry.budget_ttl", "must be in [1, 60] seconds")
    assert (error.field, error.message) == ("retry.budget_ttl", "must be in [1, 60] seconds")
    assert str(error) == "retry.budget_ttl: must be in [1, 60] seconds"
