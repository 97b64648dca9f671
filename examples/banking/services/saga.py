"""The transfer saga over the transactions table: debit, credit, commit; resumable at every step."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import grpc

from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    -- PENDING -> DEBITED -> COMMITTED, or PENDING -> FAILED (DEBITED -> FAILED after a refund)
    status       TEXT NOT NULL CHECK (status IN ('PENDING', 'DEBITED', 'COMMITTED', 'FAILED')),
    reason       TEXT NOT NULL DEFAULT '',
    -- Transfer calls for this id (retries included).
    attempts     INTEGER NOT NULL DEFAULT 1,
    -- Times an attempt or the sweeper picked the saga up where an earlier one left it.
    resumes      INTEGER NOT NULL DEFAULT 0,
    -- ... of which by the sweeper.
    swept        INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    committed_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transfers_stalled ON transfers (status, updated_at);
-- Audit records owed, written in the same transaction that commits the transfer.
CREATE TABLE IF NOT EXISTS audit_outbox (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    committed_at REAL NOT NULL
);
"""

POSTING_DEADLINE = 0.5
_STRIPES = 64
_IN_FLIGHT = ("PENDING", "DEBITED")
# The account service's answers that no retry can change: the saga fails (or refunds) for good.
_REFUSED = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class StepUnavailable(Exception):
    """A posting did not complete (outage, deadline, open breaker): the saga stays resumable."""

    def __init__(self, step: str, exc: grpc.RpcError) -> None:
        code = exc.code()
        super().__init__(
            f"{step} at the account service did not complete "
            f"({code.name if code else 'UNKNOWN'}); retry with the same transfer_id"
        )


@dataclass(frozen=True)
class Saga:
    """One transfer's row: what to move, and how far it got."""

    transfer_id: str
    from_account: str
    to_account: str
    amount_cents: int
    status: str
    reason: str = ""
    committed_at: float = 0.0
    attempts: int = 1


class Transfers:
    """The saga steps over the transfers table; every step is idempotent and resumable."""

    def __init__(
        self,
        db: Database,
        accounts: bank_pb2_grpc.AccountServiceStub,
        breaks: Sequence[str] = (),
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self._accounts = accounts
        self._breaks = frozenset(breaks)
        self._on_commit = on_commit
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._commits = itertools.count(1)

    def stripe(self, transfer_id: str) -> threading.Lock:
        """The lock that keeps two runs of one transfer from interleaving their steps."""
        return self._stripes[hash(transfer_id) % _STRIPES]

    def begin(self, request: bank_pb2.TransferRequest) -> tuple[Saga, bool]:
        """Insert the transfer, or count one more attempt at it; (its row, whether it existed)."""
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT from_account, to_account, amount_cents, status, reason, committed_at, "
                "attempts FROM transfers WHERE transfer_id = ?",
                (request.transfer_id,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO transfers (transfer_id, from_account, to_account, amount_cents, "
                    "status, created_at, updated_at) VALUES (?, ?, ?, ?, 'PENDING', ?, ?)",
                    (
                        request.transfer_id,
                        request.from_account,
                        request.to_account,
                        request.amount_cents,
                        now,
                        now,
                    ),
                )
                saga = Saga(
                    request.transfer_id,
                    request.from_account,
                    request.to_account,
                    request.amount_cents,
                    "PENDING",
                )
                return saga, False
            saga = replace(Saga(request.transfer_id, *row), attempts=row[6] + 1)
            if (saga.from_account, saga.to_account, saga.amount_cents) == (
                request.from_account,
                request.to_account,
                request.amount_cents,
            ):
                conn.execute(
                    "UPDATE transfers SET attempts = attempts + 1, updated_at = ?, "
                    "resumes = resumes + ? WHERE transfer_id = ?",
                    (now, int(saga.status in _IN_FLIGHT), request.transfer_id),
                )
        return saga, True

    def stalled(self, older_than: float, limit: int) -> list[Saga]:
        """Sagas left mid-way that nobody has touched for `older_than` seconds."""
        rows = self.db.query(
            "SELECT transfer_id, from_account, to_account, amount_cents, status, reason, "
            "committed_at, attempts FROM transfers WHERE status IN ('PENDING', 'DEBITED') "
            "AND updated_at < ? ORDER BY updated_at LIMIT ?",
            (time.time() - older_than, limit),
        )
        return [Saga(*row) for row in rows]

    def claim_stalled(self, saga: Saga) -> Saga | None:
        """The sweeper takes a stalled saga (caller holds its stripe); None if it moved on."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT status, attempts FROM transfers WHERE transfer_id = ?", (saga.transfer_id,)
            ).fetchone()
            if row is None or row[0] not in _IN_FLIGHT:
                return None
            conn.execute(
                "UPDATE transfers SET resumes = resumes + 1, swept = swept + 1, updated_at = ? "
                "WHERE transfer_id = ?",
                (time.time(), saga.transfer_id),
            )
        return replace(saga, status=row[0], attempts=row[1])

    def run(self, saga: Saga) -> Saga:
        """Take the saga from where it is to COMMITTED or FAILED; StepUnavailable if stuck."""
        if saga.status == "PENDING":
            saga = self._debit(saga)
        if saga.status == "DEBITED":
            saga = self._credit(saga)
        return saga

    def _posting(self, saga: Saga, step: str, account: str) -> bank_pb2.PostingRequest:
        return bank_pb2.PostingRequest(
            idempotency_key=f"{saga.transfer_id}:{step}",
            account_id=account,
            amount_cents=saga.amount_cents,
            transfer_id=saga.transfer_id,
        )

    def _debit(self, saga: Saga) -> Saga:
        try:
            self._accounts.Debit(
                self._posting(saga, "debit", saga.from_account), timeout=POSTING_DEADLINE
            )
        except grpc.RpcError as exc:
            if exc.code() not in _REFUSED:
                raise StepUnavailable("debit", exc) from exc
            return self._fail(saga, exc.details() or exc.code().name)
        self._set_status(saga.transfer_id, "DEBITED")
        return replace(saga, status="DEBITED")

    def _credit(self, saga: Saga) -> Saga:
        try:
            self._accounts.Credit(
                self._posting(saga, "credit", saga.to_account), timeout=POSTING_DEADLINE
            )
        except grpc.RpcError as exc:
            if exc.code() not in _REFUSED:
                raise StepUnavailable("credit", exc) from exc
            # The money left the source but cannot land: give it back, then fail.
            try:
                self._accounts.Credit(
                    self._posting(saga, "refund", saga.from_account), timeout=POSTING_DEADLINE
                )
            except grpc.RpcError as refund_error:
                raise StepUnavailable("refund", refund_error) from refund_error
            return self._fail(saga, f"{exc.details() or exc.code().name}; refunded")
        return self._commit(saga)

    def _fail(self, saga: Saga, reason: str) -> Saga:
        self._set_status(saga.transfer_id, "FAILED", reason)
        return replace(saga, status="FAILED", reason=reason)

    def _commit(self, saga: Saga) -> Saga:
        committed_at = time.time()
        lose = "lost-audit" in self._breaks and next(self._commits) % 5 == 0
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE transfers SET status = 'COMMITTED', updated_at = ?, committed_at = ? "
                "WHERE transfer_id = ?",
                (committed_at, committed_at, saga.transfer_id),
            )
            if not lose:  # --break lost-audit drops every fifth audit record
                conn.execute(
                    "INSERT INTO audit_outbox VALUES (?, ?, ?, ?, ?)",
                    (*_fields(saga), committed_at),
                )
        self._on_commit()
        return replace(saga, status="COMMITTED", committed_at=committed_at)

    def _set_status(self, transfer_id: str, status: str, reason: str = "") -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE transfers SET status = ?, reason = ?, updated_at = ? WHERE transfer_id = ?",
                (status, reason, time.time(), transfer_id),
            )


def _fields(saga: Saga) -> tuple[str, str, str, int]:
    return saga.transfer_id, saga.from_account, saga.to_account, saga.amount_cents
