"""The banking services on their own: ledgers, idempotency, dedupe, chaos, health."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from examples.banking.gen import bank_pb2, bank_pb2_grpc, chaos_pb2
from examples.banking.invariants import rows
from examples.banking.ledger import QUERIES
from examples.banking.services import account, audit
from examples.banking.services.common import start_server
from examples.banking.tests.conftest import ACCOUNTS, BALANCE, Bank
from tests.server_support import wait_until


def _balance(bank: Bank, account_id: str) -> int:
    stub: Any = bank.stub("account")
    return int(stub.GetBalance(bank_pb2.GetBalanceRequest(account_id=account_id)).balance_cents)


def test_accounts_are_seeded_once_with_the_initial_total(bank: Bank) -> None:
    assert [_balance(bank, f"acct-{i:03d}") for i in range(ACCOUNTS)] == [BALANCE] * ACCOUNTS
    with sqlite3.connect(bank.dbs["account"]) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == (ACCOUNTS * BALANCE,)


def test_debit_is_idempotent_by_key(bank: Bank) -> None:
    stub: Any = bank.stub("account")
    request = bank_pb2.PostingRequest(idempotency_key="k1", account_id="acct-000", amount_cents=250)
    first = stub.Debit(request)
    again = stub.Debit(request)
    assert (first.balance_cents, first.replayed) == (BALANCE - 250, False)
    assert (again.balance_cents, again.replayed) == (BALANCE - 250, True)
    assert _balance(bank, "acct-000") == BALANCE - 250


def test_reusing_a_key_for_another_posting_is_rejected(bank: Bank) -> None:
    stub: Any = bank.stub("account")
    stub.Credit(bank_pb2.PostingRequest(idempotency_key="k", account_id="acct-001", amount_cents=1))
    with pytest.raises(grpc.RpcError) as info:
        stub.Credit(
            bank_pb2.PostingRequest(idempotency_key="k", account_id="acct-001", amount_cents=2)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _balance(bank, "acct-001") == BALANCE + 1


def test_debit_beyond_the_balance_fails_and_moves_nothing(bank: Bank) -> None:
    stub: Any = bank.stub("account")
    with pytest.raises(grpc.RpcError) as info:
        stub.Debit(
            bank_pb2.PostingRequest(
                idempotency_key="big", account_id="acct-002", amount_cents=BALANCE + 1
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _balance(bank, "acct-002") == BALANCE


def test_transfer_moves_money_once_even_when_retried(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    request = bank_pb2.TransferRequest(
        transfer_id="t1", from_account="acct-000", to_account="acct-001", amount_cents=700
    )
    first = stub.Transfer(request)
    again = stub.Transfer(request)
    assert first.status == again.status == bank_pb2.TRANSFER_STATUS_COMMITTED
    assert (first.replayed, again.replayed) == (False, True)
    assert (_balance(bank, "acct-000"), _balance(bank, "acct-001")) == (
        BALANCE - 700,
        BALANCE + 700,
    )


def test_transfer_with_insufficient_funds_fails_for_good(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    request = bank_pb2.TransferRequest(
        transfer_id="t2", from_account="acct-000", to_account="acct-001", amount_cents=BALANCE * 2
    )
    response = stub.Transfer(request)
    assert response.status == bank_pb2.TRANSFER_STATUS_FAILED
    assert response.reason == "insufficient funds"
    assert _balance(bank, "acct-000") == BALANCE


def test_transfer_to_an_unknown_account_is_refunded(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    request = bank_pb2.TransferRequest(
        transfer_id="t3", from_account="acct-000", to_account="nobody", amount_cents=10
    )
    assert stub.Transfer(request).status == bank_pb2.TRANSFER_STATUS_FAILED
    assert _balance(bank, "acct-000") == BALANCE


def test_transfer_resumes_after_the_account_service_failed_midway(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    request = bank_pb2.TransferRequest(
        transfer_id="t4", from_account="acct-002", to_account="acct-003", amount_cents=5
    )
    bank.chaos("account").SetChaos(chaos_pb2.ChaosSettings(outage=True))
    with pytest.raises(grpc.RpcError) as info:
        stub.Transfer(request)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry with the same transfer_id" in (info.value.details() or "")
    bank.chaos("account").SetChaos(chaos_pb2.ChaosSettings())
    assert stub.Transfer(request).status == bank_pb2.TRANSFER_STATUS_COMMITTED
    assert (_balance(bank, "acct-002"), _balance(bank, "acct-003")) == (BALANCE - 5, BALANCE + 5)


def test_bad_transfer_requests_name_the_problem(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    with pytest.raises(grpc.RpcError) as info:
        stub.Transfer(
            bank_pb2.TransferRequest(
                transfer_id="t5", from_account="acct-000", to_account="acct-000", amount_cents=1
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must differ" in (info.value.details() or "")


def test_audit_dedupes_by_transfer_id(bank: Bank) -> None:
    stub: Any = bank.stub("audit")
    record = bank_pb2.AuditRecord(
        transfer_id="t9", from_account="a", to_account="b", amount_cents=3, committed_at=1.0
    )
    assert stub.LogTransaction(record).duplicate is False
    assert stub.LogTransaction(record).duplicate is True
    with sqlite3.connect(bank.dbs["audit"]) as conn:
        assert conn.execute("SELECT transfer_id, deliveries FROM audit_log").fetchall() == [
            ("t9", 2)
        ]


def test_chaos_outage_fails_calls_and_health(bank: Bank) -> None:
    chaos = bank.chaos("notification")
    chaos.SetChaos(chaos_pb2.ChaosSettings(outage=True))
    stub: Any = bank.stub("notification")
    with pytest.raises(grpc.RpcError) as info:
        stub.SendTransferNotification(bank_pb2.NotificationRequest(transfer_id="x"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    channel = grpc.insecure_channel(bank.notification.target)
    bank.channels.append(channel)
    health: Any = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == (
        health_pb2.HealthCheckResponse.NOT_SERVING
    )
    chaos.SetChaos(chaos_pb2.ChaosSettings())
    assert health.Check(health_pb2.HealthCheckRequest()).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert stub.SendTransferNotification(bank_pb2.NotificationRequest(transfer_id="x")).delivered
    assert chaos.GetChaos(chaos_pb2.GetChaosRequest()).injected_failures == 1


def test_chaos_failure_rate_one_fails_every_call(bank: Bank) -> None:
    bank.chaos("audit").SetChaos(chaos_pb2.ChaosSettings(failure_rate=1.0))
    stub: Any = bank.stub("audit")
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            stub.LogTransaction(bank_pb2.AuditRecord(transfer_id="y"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_chaos_rejects_settings_out_of_range(bank: Bank) -> None:
    with pytest.raises(grpc.RpcError) as info:
        bank.chaos("audit").SetChaos(chaos_pb2.ChaosSettings(failure_rate=1.5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "failure_rate" in (info.value.details() or "")


def test_chaos_faults_only_the_methods_it_names(bank: Bank) -> None:
    bank.chaos("account").SetChaos(chaos_pb2.ChaosSettings(failure_rate=1.0, methods=["Credit"]))
    stub: Any = bank.stub("account")
    assert _balance(bank, "acct-000") == BALANCE
    with pytest.raises(grpc.RpcError) as info:
        stub.Credit(
            bank_pb2.PostingRequest(idempotency_key="m", account_id="acct-000", amount_cents=1)
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_chaos_latency_delays_calls(bank: Bank) -> None:
    bank.chaos("account").SetChaos(chaos_pb2.ChaosSettings(added_latency=0.15))
    started = time.monotonic()
    _balance(bank, "acct-000")
    assert time.monotonic() - started >= 0.15


def test_hang_holds_a_call_until_its_deadline_and_does_no_work(bank: Bank) -> None:
    bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings(hang=True))
    stub: Any = bank.stub("transaction")
    request = bank_pb2.TransferRequest(
        transfer_id="h1", from_account="acct-000", to_account="acct-001", amount_cents=1
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Transfer(request, timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started >= 0.2  # held until its deadline (no upper bound: CPU)
    bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings())
    # Lifting the hang frees the held handler; one that missed its caller leaving would now
    # apply the transfer, a few milliseconds' work.
    time.sleep(0.1)
    with sqlite3.connect(bank.dbs["transaction"]) as conn:
        assert conn.execute("SELECT count(*) FROM transfers").fetchone() == (0,)
    assert stub.Transfer(request, timeout=2).status == bank_pb2.TRANSFER_STATUS_COMMITTED


def test_a_service_runs_as_its_own_process(tmp_path: Path) -> None:
    port_file = tmp_path / "account.port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.banking.services.account",
            "--port",
            "0",
            "--db",
            str(tmp_path / "account.db"),
            "--port-file",
            str(port_file),
        ],
        cwd=Path(__file__).resolve().parents[3],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT "), line
        port = int(line.split()[1])
        assert port > 0 and port_file.read_text().strip() == str(port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            response = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait()


def _transfer(tid: str, source: str, dest: str, amount: int) -> bank_pb2.TransferRequest:
    return bank_pb2.TransferRequest(
        transfer_id=tid, from_account=source, to_account=dest, amount_cents=amount
    )


def _one(db: Path, sql: str) -> tuple[Any, ...]:
    with sqlite3.connect(db) as conn:
        row: tuple[Any, ...] = conn.execute(sql).fetchone()
    return row


def test_a_commit_owes_its_audit_record_which_arrives_with_the_commit_time(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    bank.chaos("audit").SetChaos(chaos_pb2.ChaosSettings(outage=True))
    response = stub.Transfer(_transfer("a1", "acct-000", "acct-001", 42))
    assert response.status == bank_pb2.TRANSFER_STATUS_COMMITTED
    # Written in the commit's own transaction, so it waits out the outage in the outbox.
    assert _one(bank.dbs["transaction"], "SELECT committed_at FROM audit_outbox") == (
        response.committed_at,
    )
    bank.chaos("audit").SetChaos(chaos_pb2.ChaosSettings())
    assert wait_until(
        lambda: _one(bank.dbs["transaction"], "SELECT count(*) FROM audit_outbox") == (0,),
        timeout=30,
    )
    assert _one(bank.dbs["audit"], "SELECT transfer_id, committed_at FROM audit_log") == (
        "a1",
        response.committed_at,
    )


def test_a_transfer_to_a_closed_account_is_debited_then_refunded(tmp_path: Path) -> None:
    db = str(tmp_path / "account.db")
    running = start_server("account", account.register(db, 2, 1_000))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub: Any = bank_pb2_grpc.AccountServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Credit(
                    bank_pb2.PostingRequest(
                        idempotency_key="c", account_id=account.CLOSED_ACCOUNT, amount_cents=1
                    )
                )
    finally:
        running.stop(None)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "closed" in (info.value.details() or "")


def test_the_sweeper_resumes_a_saga_stalled_after_its_debit(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    bank.chaos("account").SetChaos(chaos_pb2.ChaosSettings(failure_rate=1.0, methods=["Credit"]))
    with pytest.raises(grpc.RpcError) as info:
        stub.Transfer(_transfer("s1", "acct-000", "acct-001", 9))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _one(bank.dbs["transaction"], "SELECT status FROM transfers") == ("DEBITED",)
    bank.chaos("account").SetChaos(chaos_pb2.ChaosSettings())
    # No client retries it: the sweeper finds it stalled and finishes it.
    assert wait_until(
        lambda: _one(bank.dbs["transaction"], "SELECT status FROM transfers") == ("COMMITTED",),
        timeout=30,
    )
    swept = _one(
        bank.dbs["transaction"], "SELECT attempts, resumes >= 1, swept >= 1 FROM transfers"
    )
    assert swept == (1, 1, 1)
    assert (_balance(bank, "acct-000"), _balance(bank, "acct-001")) == (BALANCE - 9, BALANCE + 9)


def test_a_late_answer_did_the_work_and_its_retry_is_answered_from_the_ledger(bank: Bank) -> None:
    stub: Any = bank.stub("account")
    # The answer is held back far longer than the caller waits, so the call always times out;
    # the caller waits long enough that the server has surely started on it.
    bank.chaos("account").SetChaos(
        chaos_pb2.ChaosSettings(late_rate=1.0, late_delay=3.0, methods=["Debit"])
    )
    request = bank_pb2.PostingRequest(idempotency_key="l1", account_id="acct-002", amount_cents=3)
    with pytest.raises(grpc.RpcError) as info:
        stub.Debit(request, timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    bank.chaos("account").SetChaos(chaos_pb2.ChaosSettings())
    assert wait_until(lambda: _balance(bank, "acct-002") == BALANCE - 3, timeout=30)
    again = stub.Debit(request, timeout=5)
    assert (again.replayed, _balance(bank, "acct-002")) == (True, BALANCE - 3)
    assert _one(
        bank.dbs["account"], "SELECT replays FROM postings WHERE idempotency_key = 'l1'"
    ) == (1,)


def test_a_transfer_id_reused_for_other_details_is_refused(bank: Bank) -> None:
    stub: Any = bank.stub("transaction")
    stub.Transfer(_transfer("r1", "acct-000", "acct-001", 5))
    with pytest.raises(grpc.RpcError) as info:
        stub.Transfer(_transfer("r1", "acct-000", "acct-001", 6))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@contextmanager
def _account_and_audit(tmp_path: Path, breaks: Sequence[str]) -> Iterator[tuple[Any, Any]]:
    """Stubs of an account service (one account of $1.00) and an audit service, run with
    `breaks` (test-only broken variants), their databases in tmp_path."""
    running = [
        start_server(
            "account", account.register(str(tmp_path / "account.db"), 1, 100, breaks=breaks)
        ),
        start_server("audit", audit.register(str(tmp_path / "audit.db"), breaks)),
    ]
    try:
        with (
            grpc.insecure_channel(running[0].target) as accounts,
            grpc.insecure_channel(running[1].target) as audits,
        ):
            yield bank_pb2_grpc.AccountServiceStub(accounts), bank_pb2_grpc.AuditServiceStub(audits)
    finally:
        for service in running:
            service.stop(None)


def test_the_no_idempotency_break_moves_money_on_every_retry(tmp_path: Path) -> None:
    # The test-only switch the demo's broken-variant tests rely on really breaks the ledger.
    with _account_and_audit(tmp_path, ["no-idempotency"]) as (accounts, _):
        request = bank_pb2.PostingRequest(
            idempotency_key="k", account_id="acct-000", amount_cents=10
        )
        accounts.Debit(request)
        assert accounts.Debit(request).balance_cents == 80


@pytest.mark.parametrize("breaks", [(), ("no-idempotency", "no-dedupe")], ids=["kept", "broken"])
def test_a_posting_or_audit_record_sent_again_counts_as_redelivered_kept_or_not(
    tmp_path: Path, breaks: tuple[str, ...]
) -> None:
    """The late-success phase holds on these counters: no broken variant can keep them at 0."""
    record = bank_pb2.AuditRecord(transfer_id="t1", from_account="a", to_account="b")
    with _account_and_audit(tmp_path, breaks) as (accounts, audits):
        for key in ("t1:debit", "t1:debit", "t2:debit"):
            accounts.Debit(
                bank_pb2.PostingRequest(
                    idempotency_key=key, account_id="acct-000", amount_cents=1, transfer_id=key[:2]
                )
            )
        for _ in range(3):
            audits.LogTransaction(record)
    counted = {}
    for name in ("posting_redeliveries", "audit_redeliveries"):
        service, sql = QUERIES[name]
        counted[name] = rows(tmp_path / f"{service}.db", sql)[0][0]
    assert counted == {"posting_redeliveries": 1, "audit_redeliveries": 2}
