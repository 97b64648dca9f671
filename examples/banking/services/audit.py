"""AuditService: the compliance log; one record per transfer id, duplicates counted not stored."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from examples.banking.chaos import Chaos
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database, base_parser, run_process
from examples.banking.services.mesh import agent_starter

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    committed_at REAL NOT NULL,
    received_at  REAL NOT NULL,
    deliveries   INTEGER NOT NULL DEFAULT 1
);
"""


class AuditServicer(bank_pb2_grpc.AuditServiceServicer):
    """Dedupes by transfer id, so at-least-once delivery becomes exactly-once storage."""

    def __init__(self, db: Database, chaos: Chaos) -> None:
        self._db = db
        self._chaos = chaos

    def LogTransaction(
        self, request: bank_pb2.AuditRecord, context: grpc.ServicerContext
    ) -> bank_pb2.LogTransactionResponse:
        self._chaos.apply(context)
        if not request.transfer_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "transfer_id is required")
        with self._db.transaction() as conn:
            updated = conn.execute(
                "UPDATE audit_log SET deliveries = deliveries + 1 WHERE transfer_id = ?",
                (request.transfer_id,),
            ).rowcount
            if not updated:
                conn.execute(
                    "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, 1)",
                    (
                        request.transfer_id,
                        request.from_account,
                        request.to_account,
                        request.amount_cents,
                        request.committed_at,
                        time.time(),
                    ),
                )
        return bank_pb2.LogTransactionResponse(duplicate=bool(updated))


def register(db_path: str) -> Callable[[grpc.Server, Chaos], list[Callable[[], None]]]:
    """A start_server() callback that opens the database and adds the servicer."""

    def add(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        db = Database(db_path, SCHEMA)
        bank_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(db, chaos), server)
        return [db.close]

    return add


def main() -> None:
    """Process entry point."""
    args = base_parser("audit").parse_args()
    run_process("audit", args, register(args.db), agent_starter(args, "audit", None))


if __name__ == "__main__":
    main()
