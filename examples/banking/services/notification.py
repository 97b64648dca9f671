"""NotificationService: records one notification per transfer, then emails it through a provider.

The gRPC call only records the notification (an outbox row); a courier thread emails what is
owed over HTTP, through a circuit breaker per provider route (meshbreaker.httpx). While the
provider fails the breaker opens, messages wait in the outbox, and a `Retry-After` keeps the
breaker open as long as the provider asks. The provider deduplicates by the transfer id, so a
message sent again after a lost answer is still emailed once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import grpc
import httpx

from examples.banking.chaos import Chaos
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database, Loop, base_parser, run_process
from examples.banking.services.mesh import agent_starter
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.httpx import BreakerTransport
from meshbreaker.registry import BreakerRegistry

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    sends        INTEGER NOT NULL DEFAULT 1,
    sent_at      REAL NOT NULL,
    -- The outbox: 0 until the email provider has accepted the message.
    emailed      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS notifications_owed ON notifications (emailed) WHERE emailed = 0;
"""
COURIER_IDLE = 0.1  # seconds between looks at an empty outbox (or a refusing breaker)
COURIER_BATCH = 50
EMAIL_TIMEOUT = httpx.Timeout(1.0, connect=0.5)


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
                "INSERT INTO notifications VALUES (?, ?, ?, ?, 1, ?, 0) "
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


class Courier(Loop):
    """Emails what the outbox owes, oldest first, through the breaker-guarded HTTP client."""

    name = "email-courier"

    def __init__(self, db: Database, client: httpx.Client, messages_url: str) -> None:
        super().__init__(COURIER_IDLE)
        self._db = db
        self._client = client
        self._url = messages_url

    def stop(self) -> None:
        """End the thread, then close the HTTP client."""
        super().stop()
        self._client.close()

    def round(self, limit: int = COURIER_BATCH) -> int:
        """Email owed messages until one fails or is refused (breaker open); how many went."""
        owed = self._db.query(
            "SELECT transfer_id, from_account, to_account, amount_cents FROM notifications "
            "WHERE emailed = 0 ORDER BY sent_at LIMIT ?",
            (limit,),
        )
        delivered = 0
        for transfer_id, from_account, to_account, amount_cents in owed:
            if self._stop.is_set() or not self._send(
                transfer_id, from_account, to_account, amount_cents
            ):
                return delivered
            with self._db.transaction() as conn:
                conn.execute(
                    "UPDATE notifications SET emailed = 1 WHERE transfer_id = ?", (transfer_id,)
                )
            delivered += 1
        if delivered == limit:
            self.wake()  # a full batch went: more may be owed, so no pause before the next
        return delivered

    def _send(self, transfer_id: str, from_account: str, to_account: str, cents: int) -> bool:
        body = json.dumps(
            {"to": from_account, "subject": f"You sent {cents} cents to {to_account}"}
        )
        try:
            response = self._client.post(
                self._url, content=body, headers={"Idempotency-Key": transfer_id}
            )
        except CallNotPermittedError:
            return False  # the breaker is open: nothing was sent, the message waits
        except httpx.HTTPError:
            return False  # counted by the breaker; the message waits and is sent again
        return response.status_code == 202


def register(
    db_path: str, registry: BreakerRegistry, email_url: str | None
) -> Callable[[grpc.Server, Chaos], list[Callable[[], None]]]:
    """A start_server() callback: the database, the servicer, and the courier if a provider."""

    def add(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        db = Database(db_path, SCHEMA)
        servicer = NotificationServicer(db)
        bank_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, server)
        if email_url is None:
            return [db.close]
        client = httpx.Client(transport=BreakerTransport(registry), timeout=EMAIL_TIMEOUT)
        courier = Courier(db, client, f"{email_url}/v1/messages")
        courier.start()
        return [db.close, courier.stop]

    return add


def main() -> None:
    """Process entry point."""
    parser = base_parser("notification")
    parser.add_argument("--email-url", help="the email provider's base URL, http://host:port")
    args = parser.parse_args()
    registry = BreakerRegistry()
    run_process(
        "notification",
        args,
        register(args.db, registry, args.email_url),
        agent_starter(args, "notification", registry),
    )


if __name__ == "__main__":
    main()
