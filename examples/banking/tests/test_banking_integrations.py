"""The demo's HTTP and database breakers: the email courier and the account service's ledger."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.invariants import EMAILED_ONCE, _emailed_once
from examples.banking.services import account, notification
from examples.banking.services.common import Database, RunningService, start_server
from examples.banking.services.email_provider import SCHEMA, EmailChaos, EmailServer
from examples.banking.services.notification import Courier
from meshbreaker import BreakerConfig, BreakerRegistry, State
from meshbreaker.httpx import BreakerTransport
from meshbreaker.testing import FakeClock
from tests.server_support import wait_until

# One failure opens the provider's breaker for a second; one good probe closes it.
EMAIL_CONFIG = BreakerConfig(
    consecutive_failures=1,
    open_duration=1.0,
    open_duration_max=60.0,
    open_jitter=0.0,
    half_open_max_calls=1,
    half_open_success_threshold=1,
)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[EmailServer]:
    db = Database(tmp_path / "email.db", SCHEMA)
    server = EmailServer(db)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    db.close()


def _emails(server: EmailServer) -> dict[str, int]:
    return dict(server.db.query("SELECT idempotency_key, deliveries FROM emails"))


def _notify(note: RunningService, transfer_id: str) -> None:
    channel = grpc.insecure_channel(note.target)
    try:
        stub: Any = bank_pb2_grpc.NotificationServiceStub(channel)
        request = bank_pb2.NotificationRequest(
            transfer_id=transfer_id, from_account="acct-000", to_account="acct-001", amount_cents=5
        )
        assert stub.SendTransferNotification(request, timeout=30).delivered
    finally:
        channel.close()


def test_the_courier_emails_the_outbox_through_the_breaker_and_waits_out_an_outage(
    tmp_path: Path, provider: EmailServer
) -> None:
    clock = FakeClock()
    registry = BreakerRegistry(EMAIL_CONFIG, clock=clock)
    db_path = tmp_path / "notification.db"
    note = start_server("notification", notification.register(str(db_path), registry, provider.url))
    try:
        _notify(note, "t1")
        assert wait_until(lambda: "t1" in _emails(provider))
        breaker = registry.get(f"{provider.url}/v1/messages")

        provider.chaos = EmailChaos(failure_rate=1.0, status=503, retry_after=30)
        _notify(note, "t2")
        assert wait_until(lambda: breaker.state is State.OPEN)
        # Retry-After: 30 keeps it open past its own 1 s (capped by open_duration_max, 60 s).
        open_until = breaker.snapshot().open_until
        assert open_until is not None and open_until - clock() == pytest.approx(30)
        clock.advance(2)
        assert breaker.state is State.OPEN
        # The courier goes on trying: wait until the open breaker has refused it again.
        sent, refused = provider.hits, breaker.snapshot().rejected
        assert wait_until(lambda: breaker.snapshot().rejected > refused)
        owed = Database(db_path, notification.SCHEMA)
        try:
            rows = owed.query("SELECT transfer_id FROM notifications WHERE emailed = 0")
            assert rows == [("t2",)]
            assert provider.hits == sent  # nothing reached the provider while it was open
            provider.chaos = EmailChaos()
            clock.advance(30)
            assert wait_until(lambda: "t2" in _emails(provider))
            assert wait_until(
                lambda: not owed.query("SELECT 1 FROM notifications WHERE emailed = 0")
            )
        finally:
            owed.close()
        assert breaker.snapshot().state is State.CLOSED
        assert _emails(provider) == {"t1": 1, "t2": 1}
    finally:
        note.stop(None)
    check = _emailed_once(db_path, tmp_path / "email.db")
    assert (check.name, check.ok) == (EMAILED_ONCE, True), check.detail


def test_a_refused_courier_sends_nothing(tmp_path: Path, provider: EmailServer) -> None:
    registry = BreakerRegistry(EMAIL_CONFIG)
    db = Database(tmp_path / "notification.db", notification.SCHEMA)
    db.query("INSERT INTO notifications VALUES ('t', 'a', 'b', 1, 1, 0, 0)")
    registry.get(f"{provider.url}/v1/messages").force_open()
    client = httpx.Client(transport=BreakerTransport(registry))
    courier = Courier(db, client, f"{provider.url}/v1/messages")
    try:
        assert courier.round() == 0  # stopped at the refusal
        assert _emails(provider) == {}
        assert db.query("SELECT emailed FROM notifications") == [(0,)]
    finally:
        client.close()
        db.close()


def test_the_provider_refuses_bad_chaos_in_one_line(provider: EmailServer) -> None:
    with httpx.Client(base_url=provider.url) as client:
        response = client.put("/chaos", json={"failure_rate": 2})
        assert response.status_code == 400
        assert response.json() == {"error": "failure_rate must be a number in [0, 1]"}
        assert client.post("/v1/messages", content=b"{}").status_code == 400  # no key


def test_the_ledger_database_sits_behind_its_breaker(tmp_path: Path) -> None:
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=2))
    db_path = str(tmp_path / "account.db")
    running = start_server("account", account.register(db_path, 3, 100, registry=registry))
    channel = grpc.insecure_channel(running.target)
    try:
        stub: Any = bank_pb2_grpc.AccountServiceStub(channel)
        balance = stub.GetBalance(bank_pb2.GetBalanceRequest(account_id="acct-000"), timeout=30)
        assert balance.balance_cents == 100
        breaker = registry.get(account.database_breaker_name(db_path))
        assert breaker.name == f"sqlite:///{Path(db_path).resolve()}"
        assert breaker.snapshot().successful > 0  # seeding and the read went through it

        breaker.force_open()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Debit(
                bank_pb2.PostingRequest(idempotency_key="k", account_id="acct-000", amount_cents=1),
                timeout=30,
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "ledger database" in str(refused.value.details())
        breaker.clear_override()
    finally:
        channel.close()
        running.stop(None)
    with sqlite3.connect(db_path) as conn:  # the refused posting left nothing behind
        assert conn.execute("SELECT count(*) FROM postings WHERE kind = 'debit'").fetchone() == (0,)
    conn.close()


def test_the_emailed_once_invariant_fails_on_owed_lost_and_unknown_emails(tmp_path: Path) -> None:
    notes = Database(tmp_path / "notification.db", notification.SCHEMA)
    emails = Database(tmp_path / "email.db", SCHEMA)
    try:
        with notes.transaction() as conn:
            conn.executemany(
                "INSERT INTO notifications VALUES (?, 'a', 'b', 1, 1, 0, ?)",
                [("sent", 1), ("owed", 0), ("lost", 1)],
            )
        with emails.transaction() as conn:
            conn.executemany(
                "INSERT INTO emails VALUES (?, '{}', ?, 0)", [("sent", 2), ("stray", 1)]
            )
    finally:
        notes.close()
        emails.close()
    check = _emailed_once(tmp_path / "notification.db", tmp_path / "email.db")
    assert (check.name, check.ok) == (EMAILED_ONCE, False)
    assert check.detail == (
        "3 notifications, 2 emails (1 repeats deduplicated by the provider); "
        "1 still waiting in the outbox, e.g. owed; "
        "1 marked emailed but the provider has none, e.g. lost; "
        "1 emailed without a notification, e.g. stray"
    )
