"""The store errors' one-line messages: what went wrong, with the values that say so."""

from __future__ import annotations

import pytest

from meshbreaker.errors import (
    ClusterNotFoundError,
    CompactedError,
    EndpointLimitError,
    PolicyNotFoundError,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
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


def test_a_selector_conflict_names_both_policies() -> None:
    error = SelectorConflictError("a", "b")
    assert (error.policy_id, error.other_id) == ("a", "b")
