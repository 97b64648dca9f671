"""TransferFunds through breaker-guarded channels: the client's key, outages, invariants."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from examples.banking.chaos import Chaos
from examples.banking.gateway import (
    Deadlines,
    Gateway,
    KeyReusedError,
    Targets,
    TransferOutcome,
    TransferStatus,
)
from examples.banking.gen import bank_pb2, bank_pb2_grpc, chaos_pb2
from examples.banking.invariants import Intent, check_invariants
from examples.banking.requests import Claim, RequestLog
from examples.banking.services.common import start_server
from examples.banking.services.gateway import GatewayServicer
from examples.banking.tests.conftest import BALANCE, Bank
from meshbreaker.config import BreakerConfig, State, WindowType
from meshbreaker.registry import BreakerRegistry
from meshbreaker.retry import RetryPolicy
from meshbreaker.testing import FakeClock
from tests.server_support import wait_until

POLICY = BreakerConfig(
    window_type=WindowType.COUNT,
    window_size=20,
    minimum_calls=10,
    consecutive_failures=3,
    open_duration=5.0,
    open_duration_max=5.0,
    half_open_max_calls=1,
    half_open_success_threshold=1,
    slow_call_duration=None,
)
# Roomy, so a busy machine cannot turn a healthy call into a timeout; the tests about hangs
# use HANG, whose transfer deadline is short enough to wait out a few times.
ROOMY = Deadlines(balance=30.0, transfer=30.0, notification=30.0)
HANG = Deadlines(balance=30.0, transfer=0.2, notification=30.0)
TRANSFER = "/bank.v1.TransactionService/Transfer"


@pytest.fixture
def registry(clock: FakeClock) -> BreakerRegistry:
    """Breakers on a fake clock: they open on failures and stay open until the test advances."""
    return BreakerRegistry(POLICY, clock=clock)


def _targets(bank: Bank) -> Targets:
    t = bank.targets
    return Targets(t["account"], t["transaction"], t["notification"])


@pytest.fixture
def gateway(bank: Bank, registry: BreakerRegistry, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway with breakers on every channel and its request log in tmp_path."""
    gw = Gateway(_targets(bank), tmp_path / "gateway.db", registry, deadlines=ROOMY)
    yield gw
    gw.close()


@pytest.fixture
def hang_gateway(bank: Bank, registry: BreakerRegistry, tmp_path: Path) -> Iterator[Gateway]:
    """Like `gateway`, with a 0.2 s transfer deadline for the tests that hang the service."""
    gw = Gateway(_targets(bank), tmp_path / "hang-gateway.db", registry, deadlines=HANG)
    yield gw
    gw.close()


class Payments:
    """A client's record of what it asked and what it was told, for the reconciliation check."""

    def __init__(self) -> None:
        self.intents: dict[str, Intent] = {}

    def pay(
        self, gateway: Gateway, key: str, source: str, dest: str, amount: int
    ) -> TransferOutcome:
        intent = self.intents.setdefault(key, Intent(key, source, dest, amount))
        outcome = gateway.transfer_funds(key, source, dest, amount)
        intent.answers.append(outcome.status.value)
        return outcome


def _invariants(bank: Bank, gateway: Gateway, payments: Payments) -> dict[str, bool]:
    checks = check_invariants(bank.dbs, payments.intents.values(), [Path(gateway.db_path)])
    return {c.name: c.ok for c in checks}


def _settled(bank: Bank) -> bool:
    with sqlite3.connect(bank.dbs["transaction"]) as conn:
        owed: tuple[int] = conn.execute("SELECT count(*) FROM audit_outbox").fetchone()
    return owed == (0,)


def test_a_payment_commits_notifies_and_is_audited_by_the_transaction_service(
    bank: Bank, gateway: Gateway
) -> None:
    payments = Payments()
    outcome = payments.pay(gateway, "k1", "acct-000", "acct-001", 1234)
    assert (outcome.status, outcome.transfer_id, outcome.notification) == (
        TransferStatus.COMMITTED,
        "k1",
        "sent",
    )
    assert wait_until(lambda: _settled(bank), timeout=30)
    assert all(_invariants(bank, gateway, payments).values())


def test_a_committed_payment_retried_with_its_key_is_replayed_not_rechecked(
    bank: Bank, gateway: Gateway
) -> None:
    # After paying 60% of the balance, a second balance check would say "insufficient funds".
    payments = Payments()
    first = payments.pay(gateway, "k2", "acct-000", "acct-001", BALANCE * 6 // 10)
    again = payments.pay(gateway, "k2", "acct-000", "acct-001", BALANCE * 6 // 10)
    assert (first.status, first.replayed) == (TransferStatus.COMMITTED, False)
    assert (again.status, again.replayed) == (TransferStatus.COMMITTED, True)
    with sqlite3.connect(bank.dbs["transaction"]) as conn:
        assert conn.execute("SELECT count(*) FROM transfers").fetchone() == (1,)
    assert wait_until(lambda: _settled(bank), timeout=30)
    assert all(_invariants(bank, gateway, payments).values())


def test_a_key_used_for_another_payment_is_refused(gateway: Gateway) -> None:
    gateway.transfer_funds("k3", "acct-000", "acct-001", 10)
    with pytest.raises(KeyReusedError, match="k3"):
        gateway.transfer_funds("k3", "acct-000", "acct-001", 11)


def test_insufficient_funds_is_final_and_replayed(bank: Bank, gateway: Gateway) -> None:
    first = gateway.transfer_funds("k4", "acct-000", "acct-001", BALANCE + 1)
    assert (first.status, first.reason) == (TransferStatus.FAILED, "insufficient funds")
    # Money arrives; the same payment, retried with its key, still has its first answer.
    gateway.transfer_funds("k5", "acct-002", "acct-000", 10)
    again = gateway.transfer_funds("k4", "acct-000", "acct-001", BALANCE + 1)
    assert (again.status, again.replayed) == (TransferStatus.FAILED, True)


def test_an_unknown_outcome_is_resolved_by_retrying_with_the_same_key(
    bank: Bank, hang_gateway: Gateway
) -> None:
    payments = Payments()
    bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings(hang=True))
    outcome = payments.pay(hang_gateway, "k6", "acct-002", "acct-003", 77)
    assert outcome.status is TransferStatus.PENDING
    bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings())
    # The retry has all the time it needs (a busy machine can take longer than the 0.2 s that
    # was the point of the hung attempt): the same request log, behind roomy deadlines.
    roomy = dataclasses.replace(hang_gateway, deadlines=ROOMY)
    try:
        retry = payments.pay(roomy, "k6", "acct-002", "acct-003", 77)
    finally:
        roomy.close()
    assert (retry.status, retry.replayed) == (TransferStatus.COMMITTED, True)
    with sqlite3.connect(bank.dbs["transaction"]) as conn:
        rows = conn.execute("SELECT transfer_id, attempts, status FROM transfers").fetchall()
    assert rows == [("k6", 1, "COMMITTED")]  # the hung attempt never reached the saga
    assert wait_until(lambda: _settled(bank), timeout=30)
    assert all(_invariants(bank, hang_gateway, payments).values())


def test_a_payment_in_progress_is_answered_as_in_progress(
    bank: Bank, gateway: Gateway, tmp_path: Path
) -> None:
    bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings(hang=True))
    first: list[TransferOutcome] = []
    worker = threading.Thread(
        target=lambda: first.append(gateway.transfer_funds("k7", "acct-000", "acct-001", 5))
    )
    worker.start()

    def owned() -> bool:
        with sqlite3.connect(gateway.db_path) as conn:
            return conn.execute("SELECT state FROM requests").fetchall() == [("in_progress",)]

    try:
        assert wait_until(owned, timeout=30)
        second = gateway.transfer_funds("k7", "acct-000", "acct-001", 5)
        assert (second.status, second.reason) == (TransferStatus.PENDING, "in progress")
    finally:
        bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings())
        worker.join(timeout=10)
    assert first[0].status is TransferStatus.COMMITTED


def test_a_gateway_that_died_mid_payment_resumes_it(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "requests.db")
    assert log.claim("k8", "a", "b", 1).claim is Claim.NEW
    log.close()  # the process dies here, the attempt with it
    log = RequestLog(tmp_path / "requests.db")
    try:
        assert log.claim("k8", "a", "b", 1).claim is Claim.RESUME
        assert log.claim("k8", "a", "b", 1).claim is Claim.IN_PROGRESS
    finally:
        log.close()


def test_a_refused_payment_sends_nothing_and_its_key_keeps_the_refusal(
    bank: Bank, gateway: Gateway, registry: BreakerRegistry
) -> None:
    registry.set_override(TRANSFER, State.FORCED_OPEN)
    outcome = gateway.transfer_funds("k9", "acct-000", "acct-001", 5)
    assert (outcome.status, outcome.reason) == (TransferStatus.REJECTED, "transaction breaker open")
    # Refused at the edge: not even the balance check went out, and the breaker counted it.
    assert registry.get("/bank.v1.AccountService/GetBalance").snapshot().total == 0
    assert registry.get(TRANSFER).snapshot().rejected == 1
    registry.set_override(TRANSFER, None)
    # The client was told nothing moved: the key keeps that answer, even with the way clear now.
    again = gateway.transfer_funds("k9", "acct-000", "acct-001", 5)
    assert (again.status, again.reason, again.replayed) == (
        TransferStatus.REJECTED,
        "transaction breaker open",
        True,
    )
    # Trying the payment again is a new payment, with a new key.
    assert gateway.transfer_funds("k9b", "acct-000", "acct-001", 5).status is (
        TransferStatus.COMMITTED
    )
    with sqlite3.connect(bank.dbs["transaction"]) as conn:
        assert conn.execute("SELECT transfer_id FROM transfers").fetchall() == [("k9b",)]


def test_a_resumed_payment_refused_by_the_breaker_stays_in_doubt(
    bank: Bank, hang_gateway: Gateway, registry: BreakerRegistry
) -> None:
    bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings(hang=True))
    try:
        assert hang_gateway.transfer_funds("k10", "acct-000", "acct-001", 5).status is (
            TransferStatus.PENDING
        )
    finally:
        bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings())
    registry.set_override(TRANSFER, State.FORCED_OPEN)
    # It was sent once: "nothing moved" would be a lie the client could act on.
    retry = hang_gateway.transfer_funds("k10", "acct-000", "acct-001", 5)
    assert retry.status is TransferStatus.PENDING


def test_notification_outage_never_fails_a_payment(
    bank: Bank, gateway: Gateway, registry: BreakerRegistry
) -> None:
    bank.chaos("notification").SetChaos(chaos_pb2.ChaosSettings(outage=True))
    outcomes = [gateway.transfer_funds(f"n{i}", "acct-000", "acct-001", 10) for i in range(6)]
    assert {o.status for o in outcomes} == {TransferStatus.COMMITTED}
    assert [o.notification for o in outcomes] == ["failed"] * 3 + ["rejected"] * 3
    breaker = registry.get("/bank.v1.NotificationService/SendTransferNotification")
    assert breaker.state is State.OPEN
    counts = gateway.counts()
    assert (counts["notifications_failed"], counts["notifications_skipped"]) == (3, 3)


def test_hung_dependency_costs_three_deadlines_then_nothing(
    bank: Bank, hang_gateway: Gateway
) -> None:
    bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings(hang=True))
    try:
        outcomes = [
            hang_gateway.transfer_funds(f"h{i}", "acct-000", "acct-001", 1) for i in range(50)
        ]
    finally:
        bank.chaos("transaction").SetChaos(chaos_pb2.ChaosSettings())
    # Three calls wait out the 0.2 s deadline before the breaker opens; the rest are refused
    # without a call (the latency figures live in the demo's summary, not in a timed test).
    statuses = [o.status for o in outcomes]
    assert statuses[:3] == [TransferStatus.PENDING] * 3
    assert set(statuses[3:]) == {TransferStatus.REJECTED}


def test_a_transfer_the_overload_controls_shed_is_refused_and_counted_apart(
    bank: Bank, gateway: Gateway, registry: BreakerRegistry
) -> None:
    registry.set_policy(TRANSFER, POLICY.replace(max_concurrent_calls=1))
    held = registry.get(TRANSFER).acquire()  # the bulkhead's one slot is taken
    try:
        outcome = gateway.transfer_funds("o1", "acct-000", "acct-001", 5)
    finally:
        held.ignore()
    assert outcome.status is TransferStatus.REJECTED
    assert outcome.reason == "transaction service overloaded: shed by the gateway"
    counts = gateway.counts()
    assert (counts["transfer_calls"], counts["overload_refused"]) == (1, 1)
    assert bank.chaos("transaction").GetChaos(chaos_pb2.GetChaosRequest()).calls == 0
    # Nothing had moved, and nothing will under this key: a retry gets the same answer.
    assert gateway.transfer_funds("o1", "acct-000", "acct-001", 5).status is (
        TransferStatus.REJECTED
    )


def test_overload_settings_are_checked_and_reported(bank: Bank) -> None:
    chaos = bank.chaos("transaction")
    with pytest.raises(grpc.RpcError) as error:
        chaos.SetChaos(chaos_pb2.ChaosSettings(capacity=-1))
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    chaos.SetChaos(chaos_pb2.ChaosSettings(capacity=1, methods=["Transfer"]))
    try:
        stats = chaos.GetChaos(chaos_pb2.GetChaosRequest())
        assert stats.settings.capacity == 1 and stats.overloaded == 0
    finally:
        chaos.SetChaos(chaos_pb2.ChaosSettings())


def test_an_attempt_that_starts_after_its_key_was_refused_gets_the_refusal(
    bank: Bank, gateway: Gateway, registry: BreakerRegistry
) -> None:
    """The race behind the demo's reconciliation failures, driven step by step.

    A first attempt is held in the gateway's server before it reaches the request log (a
    busy gateway's queue; here the gateway's own chaos holds it until the test lets go). The
    client has given up on it and retried; the retry is refused and the client told so. Then
    the stale attempt starts: it must find the refusal, not a key it may commit.
    """

    def serve(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        bank_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(gateway), server)
        return []

    running = start_server("gateway", serve)
    channel = grpc.insecure_channel(running.target)
    payments = Payments()
    try:
        stub = bank_pb2_grpc.GatewayServiceStub(channel)
        running.chaos.set(chaos_pb2.ChaosSettings(hang=True, methods=["TransferFunds"]))
        request = bank_pb2.TransferFundsRequest(
            idempotency_key="s1", from_account="acct-000", to_account="acct-001", amount_cents=5
        )
        stale = stub.TransferFunds.future(request, timeout=60)
        assert wait_until(lambda: running.chaos.stats().hung == 1, timeout=30)
        registry.set_override(TRANSFER, State.FORCED_OPEN)
        told = payments.pay(gateway, "s1", "acct-000", "acct-001", 5)
        assert told.status is TransferStatus.REJECTED
        registry.set_override(TRANSFER, None)
        running.chaos.set(chaos_pb2.ChaosSettings())  # the stale attempt goes on
        late = stale.result(timeout=60)
    finally:
        channel.close()
        running.stop(None)
    assert (late.status, late.replayed) == (bank_pb2.TRANSFER_FUNDS_STATUS_REJECTED, True)
    with sqlite3.connect(bank.dbs["transaction"]) as conn:
        assert conn.execute("SELECT count(*) FROM transfers").fetchone() == (0,)
    assert all(_invariants(bank, gateway, payments).values())


def test_a_retry_refused_after_an_attempt_went_out_leaves_the_payment_in_doubt(
    bank: Bank, gateway: Gateway, registry: BreakerRegistry, clock: FakeClock
) -> None:
    # Transfer retries UNAVAILABLE (it is idempotent by transfer id); one failure opens the
    # breaker, so the retry is refused locally, after the first attempt has debited.
    retrying = POLICY.replace(
        consecutive_failures=1,
        idempotent=True,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01),
    )
    registry.set_policy(TRANSFER, retrying)
    account = bank.chaos("account")
    account.SetChaos(chaos_pb2.ChaosSettings(failure_rate=1.0, methods=["Credit"]))
    payments = Payments()
    try:
        first = payments.pay(gateway, "r1", "acct-000", "acct-001", 5)
    finally:
        account.SetChaos(chaos_pb2.ChaosSettings())
    # Not "rejected": the first attempt's saga holds a debit, and the sweeper finishes it. The
    # refused retry ends the call with the first attempt's status (gRFC A6), not the refusal.
    assert (first.status, first.reason) == (
        TransferStatus.PENDING,
        "outcome unknown: UNAVAILABLE",
    )
    assert registry.get(TRANSFER).snapshot().rejected == 1
    clock.advance(POLICY.open_duration)  # the breaker lets a probe through again
    retry = payments.pay(gateway, "r1", "acct-000", "acct-001", 5)
    assert (retry.status, retry.replayed) == (TransferStatus.COMMITTED, True)
    assert wait_until(lambda: _settled(bank), timeout=30)
    assert all(_invariants(bank, gateway, payments).values())
