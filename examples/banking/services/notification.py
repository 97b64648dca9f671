"""NotificationService: records one notification per transfer (a stand-in for email/SMS)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from examples.banking.chaos import Chaos
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database, base_parser, run_process
from examples.banking.services.mesh import agent_starter

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    sends        INTEGER NOT NULL DEFAULT 1,
    sent_at      REAL NOT NULL
);
"""


class NotificationServicer(bank_pb2_grpc.NotificationServiceServicer):
    """Stores the notification; a repeat for the same transfer only bumps a counter."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def SendTransferNotification(
        self, request: bank_pb2.NotificationRequest, context: grpc.ServicerContext
    ) -> bank_pb2.NotificationResponse:
        if not request.transfer_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "transfer_id is required")
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO notifications VALUES (?, ?, ?, ?, 1, ?) "
                "ON CONFLICT (transfer_id) DO UPDATE SET sends = sends + 1",
                (
                    request.transfer_id,
                    request.from_account,
                    request.to_account,
                    request.amount_cents,
                    time.time(),
                ),
            )
        return bank_pb2.NotificationResponse(delivered=True)


def register(db_path: str) -> Callable[[grpc.Server, Chaos], list[Callable[[], None]]]:
    """A start_server() callback that opens the database and adds the servicer."""

    def add(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        db = Database(db_path, SCHEMA)
        servicer = NotificationServicer(db)
        bank_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, server)
        return [db.close]

    return add


def main() -> None:
    """Process entry point."""
    args = base_parser("notification").parse_args()
    run_process("notification", args, register(args.db), agent_starter(args, "notification", None))


if __name__ == "__main__":
    main()
