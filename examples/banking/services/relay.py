"""The transaction service's background work: relay its audit outbox, resume stalled sagas."""

from __future__ import annotations

import time

import grpc

from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database, Loop
from examples.banking.services.saga import StepUnavailable, Transfers

AUDIT_DEADLINE = 0.5


class AuditRelay(Loop):
    """Delivers the audit outbox through the (breaker-guarded) audit channel, oldest first."""

    name = "audit-relay"

    def __init__(
        self,
        db: Database,
        audit: bank_pb2_grpc.AuditServiceStub,
        *,
        interval: float = 0.1,
        stamp_now: bool = False,
    ) -> None:
        super().__init__(interval)
        self._db = db
        self._audit = audit
        self._stamp_now = stamp_now

    def round(self, limit: int = 100) -> int:
        """Deliver owed records until one fails (an open breaker fails without any I/O)."""
        rows = self._db.query(
            "SELECT transfer_id, from_account, to_account, amount_cents, committed_at "
            "FROM audit_outbox ORDER BY committed_at LIMIT ?",
            (limit,),
        )
        delivered = 0
        for transfer_id, source, destination, amount, committed_at in rows:
            if self._stamp_now:  # --break wrong-commit-time: the relay's clock, not the commit's
                committed_at = time.time()
            record = bank_pb2.AuditRecord(
                transfer_id=transfer_id,
                from_account=source,
                to_account=destination,
                amount_cents=amount,
                committed_at=committed_at,
            )
            try:
                self._audit.LogTransaction(record, timeout=AUDIT_DEADLINE)
            except grpc.RpcError:
                break  # kept; a later round delivers it again (the audit service dedupes)
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM audit_outbox WHERE transfer_id = ?", (transfer_id,))
            delivered += 1
        return delivered


class Sweeper(Loop):
    """Resumes sagas left PENDING/DEBITED (a crash, an outage) that no client is retrying."""

    name = "saga-sweeper"

    def __init__(
        self, transfers: Transfers, *, stall_after: float = 1.0, interval: float = 0.25
    ) -> None:
        super().__init__(interval)
        self._transfers = transfers
        self._stall_after = stall_after

    def round(self, limit: int = 50) -> int:
        """Resume each stalled saga whose stripe is free; stop at the first that cannot go on."""
        finished = 0
        for saga in self._transfers.stalled(self._stall_after, limit):
            stripe = self._transfers.stripe(saga.transfer_id)
            if not stripe.acquire(blocking=False):
                continue  # an attempt is running it right now
            try:
                claimed = self._transfers.claim_stalled(saga)
                if claimed is None:
                    continue
                self._transfers.run(claimed)
                finished += 1
            except StepUnavailable:
                return finished  # the account service is still failing: try again next round
            finally:
                stripe.release()
        return finished
