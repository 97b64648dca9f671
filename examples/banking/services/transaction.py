"""TransactionService: moves money as a debit then a credit at the account service, resumably."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from examples.banking.chaos import Chaos
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database, base_parser, run_process
from examples.banking.services.mesh import agent_starter, guarded_channel
from meshbreaker.registry import BreakerRegistry

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    -- PENDING -> DEBITED -> COMMITTED, or PENDING -> FAILED (DEBITED -> FAILED after a refund)
    status       TEXT NOT NULL CHECK (status IN ('PENDING', 'DEBITED', 'COMMITTED', 'FAILED')),
    reason       TEXT NOT NULL DEFAULT '',
    attempts     INTEGER NOT NULL DEFAULT 1,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
"""

POSTING_DEADLINE = 0.5
_STRIPES = 64
_FINAL = {
    "COMMITTED": bank_pb2.TRANSFER_STATUS_COMMITTED,
    "FAILED": bank_pb2.TRANSFER_STATUS_FAILED,
}


class TransactionServicer(bank_pb2_grpc.TransactionServiceServicer):
    """Transfer is a small saga keyed by transfer id: every step is idempotent and resumable."""

    def __init__(
        self, db: Database, accounts: bank_pb2_grpc.AccountServiceStub, chaos: Chaos
    ) -> None:
        self._db = db
        self._accounts = accounts
        self._chaos = chaos
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    def Transfer(
        self, request: bank_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> bank_pb2.TransferResponse:
        self._chaos.apply(context)
        problem = _validate(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        # Two attempts of one transfer must not interleave their steps.
        with self._stripes[hash(request.transfer_id) % _STRIPES]:
            status, reason, replayed = self._begin(request, context)
            if status == "PENDING":
                status, reason = self._debit(request, context)
            if status == "DEBITED":
                status, reason = self._credit(request, context)
        return bank_pb2.TransferResponse(
            transfer_id=request.transfer_id, status=_FINAL[status], reason=reason, replayed=replayed
        )

    def _begin(
        self, request: bank_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> tuple[str, str, bool]:
        now = time.time()
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT from_account, to_account, amount_cents, status, reason FROM transfers "
                "WHERE transfer_id = ?",
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
                return "PENDING", "", False
            conn.execute(
                "UPDATE transfers SET attempts = attempts + 1 WHERE transfer_id = ?",
                (request.transfer_id,),
            )
        if tuple(row[:3]) != (request.from_account, request.to_account, request.amount_cents):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"transfer_id {request.transfer_id!r} was used for a different transfer",
            )
        return row[3], row[4], row[3] in _FINAL

    def _set_status(self, transfer_id: str, status: str, reason: str = "") -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE transfers SET status = ?, reason = ?, updated_at = ? WHERE transfer_id = ?",
                (status, reason, time.time(), transfer_id),
            )

    def _posting(
        self, request: bank_pb2.TransferRequest, kind: str, account: str
    ) -> bank_pb2.PostingRequest:
        return bank_pb2.PostingRequest(
            idempotency_key=f"{request.transfer_id}:{kind}",
            account_id=account,
            amount_cents=request.amount_cents,
            transfer_id=request.transfer_id,
        )

    def _debit(
        self, request: bank_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> tuple[str, str]:
        try:
            self._accounts.Debit(
                self._posting(request, "debit", request.from_account), timeout=POSTING_DEADLINE
            )
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                reason = exc.details() or code.name
                self._set_status(request.transfer_id, "FAILED", reason)
                return "FAILED", reason
            _unavailable(context, "debit", exc)
        self._set_status(request.transfer_id, "DEBITED")
        return "DEBITED", ""

    def _credit(
        self, request: bank_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> tuple[str, str]:
        try:
            self._accounts.Credit(
                self._posting(request, "credit", request.to_account), timeout=POSTING_DEADLINE
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                _unavailable(context, "credit", exc)
            # The money left the source but has nowhere to go: give it back, then fail.
            try:
                self._accounts.Credit(
                    self._posting(request, "refund", request.from_account),
                    timeout=POSTING_DEADLINE,
                )
            except grpc.RpcError as refund_error:
                _unavailable(context, "refund", refund_error)
            reason = exc.details() or "unknown destination account"
            self._set_status(request.transfer_id, "FAILED", reason)
            return "FAILED", reason
        self._set_status(request.transfer_id, "COMMITTED")
        return "COMMITTED", ""


def _validate(request: bank_pb2.TransferRequest) -> str:
    if not request.transfer_id:
        return "transfer_id is required"
    if not request.from_account or not request.to_account:
        return "from_account and to_account are required"
    if request.from_account == request.to_account:
        return "from_account and to_account must differ"
    if request.amount_cents <= 0:
        return "amount_cents must be > 0"
    return ""


def _unavailable(context: grpc.ServicerContext, step: str, exc: grpc.RpcError) -> None:
    context.abort(
        grpc.StatusCode.UNAVAILABLE,
        f"{step} at the account service did not complete ({exc.code().name}); "
        "retry with the same transfer_id",
    )


def register(
    db_path: str, accounts_target: str, registry: BreakerRegistry | None
) -> Callable[[grpc.Server, Chaos], list[Callable[[], None]]]:
    """A start_server() callback: database, breaker-guarded account channel, servicer."""

    def add(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        db = Database(db_path, SCHEMA)
        channel = guarded_channel(accounts_target, registry)
        stub = bank_pb2_grpc.AccountServiceStub(channel)
        servicer = TransactionServicer(db, stub, chaos)
        bank_pb2_grpc.add_TransactionServiceServicer_to_server(servicer, server)
        return [db.close, channel.close]

    return add


def main() -> None:
    """Process entry point."""
    parser = base_parser("transaction")
    parser.add_argument("--accounts-target", required=True, help="account service host:port")
    args = parser.parse_args()
    registry = BreakerRegistry()
    registry.track_durations()  # reported to the control plane: its /metrics histograms
    run_process(
        "transaction",
        args,
        register(args.db, args.accounts_target, registry),
        agent_starter(args, "transaction", registry),
    )


if __name__ == "__main__":
    main()
