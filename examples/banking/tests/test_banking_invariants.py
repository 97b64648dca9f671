"""The invariant checks on hand-made ledgers: each one sees the bug it exists to catch."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from examples.banking import invariants
from examples.banking.demo import EXERCISED, QUICK, Demo, PhaseResult
from examples.banking.invariants import Intent, check_invariants
from examples.banking.phases import BY_SLUG
from examples.banking.services import account, audit
from examples.banking.services.common import Database
from examples.banking.services.saga import SCHEMA as TRANSACTION_SCHEMA


@pytest.fixture
def dbs(tmp_path: Path) -> dict[str, Path]:
    """One committed transfer of $1.00, posted and audited as it should be."""
    paths = {name: tmp_path / f"{name}.db" for name in ("account", "transaction", "audit")}
    ledger = Database(paths["account"], account.SCHEMA)
    account.seed(ledger, 2, 1_000)
    with ledger.transaction() as conn:
        conn.execute("UPDATE accounts SET balance_cents = 900 WHERE account_id = 'acct-000'")
        conn.execute("UPDATE accounts SET balance_cents = 1100 WHERE account_id = 'acct-001'")
        for kind, account_id in (("debit", "acct-000"), ("credit", "acct-001")):
            conn.execute(
                "INSERT INTO postings VALUES (?, ?, ?, 100, 't1', 0, 0, 0)",
                (f"t1:{kind}", account_id, kind),
            )
    ledger.close()
    transfers = Database(paths["transaction"], TRANSACTION_SCHEMA)
    with transfers.transaction() as conn:
        conn.execute(
            "INSERT INTO transfers (transfer_id, from_account, to_account, amount_cents, status, "
            "created_at, updated_at, committed_at) "
            "VALUES ('t1', 'acct-000', 'acct-001', 100, 'COMMITTED', 1, 2, 2.5)"
        )
    transfers.close()
    log = Database(paths["audit"], audit.SCHEMA)
    with log.transaction() as conn:
        conn.execute(
            "INSERT INTO audit_log (transfer_id, from_account, to_account, amount_cents, "
            "committed_at, received_at) VALUES ('t1', 'acct-000', 'acct-001', 100, 2.5, 3)"
        )
    log.close()
    return paths


def _failed(dbs: dict[str, Path], intents: list[Intent]) -> dict[str, str]:
    return {c.name: c.detail for c in check_invariants(dbs, intents) if not c.ok}


def _paid(*answers: str) -> Intent:
    return Intent("t1", "acct-000", "acct-001", 100, list(answers))


def test_a_correct_ledger_passes_every_check(dbs: dict[str, Path]) -> None:
    assert _failed(dbs, [_paid("pending", "committed")]) == {}


def test_an_answer_the_ledger_contradicts_is_caught(dbs: dict[str, Path]) -> None:
    failed = _failed(dbs, [_paid("failed")])
    assert "ledger says it did" in failed[invariants.RECONCILED]
    failed = _failed(dbs, [_paid("pending")])
    assert "never got a final answer" in failed[invariants.RECONCILED]


def test_a_commit_no_client_asked_for_is_caught(dbs: dict[str, Path]) -> None:
    failed = _failed(dbs, [])
    assert "no client asked for" in failed[invariants.RECONCILED]
    assert "counts differ" in failed[invariants.RECONCILED]


def test_a_second_audit_row_and_a_wrong_commit_time_are_caught(dbs: dict[str, Path]) -> None:
    log = Database(dbs["audit"], audit.SCHEMA)
    with log.transaction() as conn:
        conn.execute(
            "INSERT INTO audit_log (transfer_id, from_account, to_account, amount_cents, "
            "committed_at, received_at) VALUES ('t1', 'acct-000', 'acct-001', 100, 9.0, 9)"
        )
    log.close()
    detail = _failed(dbs, [_paid("committed")])[invariants.AUDITED_ONCE]
    assert "audited more than once" in detail
    assert "committed_at other than the commit's" in detail


def test_a_phase_that_exercised_nothing_fails_the_run(tmp_path: Path) -> None:
    demo = Demo(QUICK, tmp_path, io.StringIO(), phases=[BY_SLUG["late-success"]])
    result = PhaseResult(BY_SLUG["late-success"])
    result.counters = {"multi_attempt": 3, "replayed_postings": 0, "audit_duplicates": 1}
    demo.results.append(result)
    check = demo.exercised()
    assert (check.name, check.ok) == (EXERCISED, False)
    assert "no postings answered from the ledger (replayed_postings)" in check.detail
