"""AuditService: the compliance log; one record per transfer id, repeat deliveries counted."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc

from examples.banking.chaos import Chaos
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database, base_parser, run_process
from examples.banking.services.mesh import agent_starter

# transfer_id is deliberately not unique here: the service dedupes, and the invariant check
# counts rows per transfer, so a broken dedupe shows up as a duplicate instead of a crash.
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id  TEXT NOT NULL,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    committed_at REAL NOT NULL,
    received_at  REAL NOT NULL,
    deliveries   INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS audit_by_transfer ON audit_log (transfer_id);
"""
BREAKS = ("no-dedupe",)


class AuditServicer(bank_pb2_grpc.AuditServiceServicer):
    """Dedupes by transfer id, so at-least-once delivery becomes exactly-once storage."""

    def __init__(self, db: Database, *, dedupe: bool = True) -> None:
        self._db = db
        self._dedupe = dedupe

    def LogTransaction(
        self, request: bank_pb2.AuditRecord, context: grpc.ServicerContext
    ) -> bank_pb2.LogTransactionResponse:
        if not request.transfer_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "transfer_id is required")
        with self._db.transaction() as conn:
            updated = 0
            if self._dedupe:
                updated = conn.execute(
                    "UPDATE audit_log SET deliveries = deliveries + 1 WHERE transfer_id = ?",
                    (request.transfer_id,),
                ).rowcount
            if not updated:
                conn.execute(
                    "INSERT INTO audit_log (transfer_id, from_account, to_account, amount_cents, "
                    "committed_at, received_at) VALUES (?, ?, ?, ?, ?, ?)",
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


def register(
    db_path: str, breaks: Sequence[str] = ()
) -> Callable[[grpc.Server, Chaos], list[Callable[[], None]]]:
    """A start_server() callback that opens the database and adds the servicer."""

    def add(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        db = Database(db_path, SCHEMA)
        servicer = AuditServicer(db, dedupe="no-dedupe" not in breaks)
        bank_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
        return [db.close]

    return add


def main() -> None:
    """Process entry point."""
    args = base_parser("audit", BREAKS).parse_args()
    run_process("audit", args, register(args.db, args.breaks), agent_starter(args, "audit", None))


if __name__ == "__main__":
    main()
