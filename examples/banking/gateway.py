"""The gateway's TransferFunds flow (pattern doc use case 2) with a durable audit outbox."""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import grpc

from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database
from examples.banking.services.mesh import guarded_channel
from meshbreaker.config import State
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.registry import BreakerRegistry

log = logging.getLogger(__name__)

AUDIT_METHOD = "/bank.v1.AuditService/LogTransaction"
TRANSFER_METHOD = "/bank.v1.TransactionService/Transfer"
_REFUSING = frozenset({State.OPEN, State.FORCED_OPEN})

# The server answered: retrying the same request cannot turn these into a commit.
_DEFINITIVE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    transfer_id  TEXT PRIMARY KEY,
    -- 'transfer': sent, outcome unknown, to be retried with the same id;
    -- 'audit': committed, its audit record not yet acknowledged.
    kind         TEXT NOT NULL CHECK (kind IN ('transfer', 'audit')),
    from_account TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    committed_at REAL NOT NULL DEFAULT 0,
    -- 1 while the request thread that wrote the row still owns it; the drainer skips it.
    busy         INTEGER NOT NULL DEFAULT 1,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (busy, kind, created_at);
"""


class TransferStatus(str, enum.Enum):
    """What TransferFunds tells its caller."""

    COMMITTED = "committed"  # money moved; audit delivered or durably queued
    PENDING = "pending"  # outcome unknown (e.g. a deadline); the outbox retries it by id
    REJECTED = "rejected"  # a breaker refused a call; nothing was sent, nothing moved
    FAILED = "failed"  # a definitive no: insufficient funds, unknown account
    ERROR = "error"  # a dependency failed before anything moved


@dataclass(frozen=True)
class Targets:
    """host:port of each banking service."""

    account: str
    transaction: str
    notification: str
    audit: str


@dataclass(frozen=True)
class Deadlines:
    """Per-call deadlines in seconds."""

    balance: float = 0.5
    transfer: float = 1.0
    notification: float = 0.3
    audit: float = 0.5


@dataclass(frozen=True)
class TransferOutcome:
    """The result of one TransferFunds call."""

    transfer_id: str
    status: TransferStatus
    reason: str
    latency: float
    notification: str = "skipped"  # sent | failed | rejected | skipped
    audit: str = "n/a"  # delivered | deferred | dropped | n/a


@dataclass
class GatewayStats:
    """Counters since the gateway started; minus() an earlier reading gives a phase's counts."""

    committed: int = 0
    pending: int = 0
    rejected: int = 0
    failed: int = 0
    error: int = 0
    notifications_sent: int = 0
    notifications_failed: int = 0
    notifications_rejected: int = 0
    audits_delivered: int = 0
    audits_deferred: int = 0
    audits_dropped: int = 0
    outbox_audits_delivered: int = 0
    outbox_transfers_committed: int = 0
    outbox_transfers_failed: int = 0

    def plus(self, other: GatewayStats) -> GatewayStats:
        """The sum of two sets of counts."""
        return GatewayStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def minus(self, earlier: GatewayStats) -> GatewayStats:
        """The counts accumulated since `earlier`."""
        return GatewayStats(
            **{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)}
        )


@dataclass(frozen=True)
class _Transfer:
    """One transfer as the outbox keeps it; builds the messages that carry it."""

    transfer_id: str
    from_account: str
    to_account: str
    amount_cents: int
    committed_at: float = 0.0  # set once the transaction service committed it

    def request(self) -> bank_pb2.TransferRequest:
        """The Transfer call; a retry sends the same one."""
        return bank_pb2.TransferRequest(
            transfer_id=self.transfer_id,
            from_account=self.from_account,
            to_account=self.to_account,
            amount_cents=self.amount_cents,
        )

    def notification(self) -> bank_pb2.NotificationRequest:
        """The customer notification."""
        return bank_pb2.NotificationRequest(
            transfer_id=self.transfer_id,
            from_account=self.from_account,
            to_account=self.to_account,
            amount_cents=self.amount_cents,
        )

    def audit_record(self) -> bank_pb2.AuditRecord:
        """The compliance record of a committed transfer."""
        return bank_pb2.AuditRecord(
            transfer_id=self.transfer_id,
            from_account=self.from_account,
            to_account=self.to_account,
            amount_cents=self.amount_cents,
            committed_at=self.committed_at,
        )


class Outbox:
    """SQLite rows for work the gateway owes: unresolved transfers and undelivered audit records."""

    def __init__(self, path: str | Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._db = Database(path, OUTBOX_SCHEMA)
        # Rows a previous gateway process owned are now nobody's: hand them to the drainer.
        with self._db.transaction() as conn:
            conn.execute("UPDATE outbox SET busy = 0")

    def intend(self, transfer_id: str, from_account: str, to_account: str, amount: int) -> None:
        """Record a transfer BEFORE it is sent, so no outcome can be forgotten."""
        if not self.enabled:
            return
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO outbox (transfer_id, kind, from_account, to_account, amount_cents, "
                "created_at) VALUES (?, 'transfer', ?, ?, ?, ?)",
                (transfer_id, from_account, to_account, amount, time.time()),
            )

    def committed(self, transfer_id: str, committed_at: float, *, busy: bool) -> None:
        """The transfer committed: its row becomes an audit record owed, in one write."""
        if not self.enabled:
            return
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET kind = 'audit', committed_at = ?, busy = ? "
                "WHERE transfer_id = ?",
                (committed_at, int(busy), transfer_id),
            )

    def release(self, transfer_id: str) -> None:
        """The request thread gives up on this row; the drainer takes it from here."""
        if not self.enabled:
            return
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET busy = 0, attempts = attempts + 1 WHERE transfer_id = ?",
                (transfer_id,),
            )

    def done(self, transfer_id: str) -> None:
        """Nothing more is owed for this transfer."""
        if not self.enabled:
            return
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM outbox WHERE transfer_id = ?", (transfer_id,))

    def ready(self, kind: str, limit: int) -> list[_Transfer]:
        """The oldest rows of `kind` no request thread owns."""
        rows = self._db.query(
            "SELECT transfer_id, from_account, to_account, amount_cents, committed_at "
            "FROM outbox WHERE busy = 0 AND kind = ? ORDER BY created_at LIMIT ?",
            (kind, limit),
        )
        return [_Transfer(*row) for row in rows]

    def backlog(self) -> int:
        """Rows waiting for the drainer (rows a request thread still owns are not counted)."""
        return int(self._db.query("SELECT count(*) FROM outbox WHERE busy = 0")[0][0])

    def depth(self) -> dict[str, int]:
        """Rows owed, by kind."""
        counts = {"transfer": 0, "audit": 0}
        for kind, count in self._db.query("SELECT kind, count(*) FROM outbox GROUP BY kind"):
            counts[kind] = count
        return counts

    def close(self) -> None:
        """Close the database."""
        self._db.close()


@dataclass
class Gateway:
    """TransferFunds over the four services; breakers on every channel when given a registry."""

    targets: Targets
    outbox_path: str | Path
    registry: BreakerRegistry | None = None
    deadlines: Deadlines = field(default_factory=Deadlines)
    outbox_enabled: bool = True
    drain_interval: float = 0.1

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.outbox_path, enabled=self.outbox_enabled)
        self._channels = [
            guarded_channel(target, self.registry)
            for target in (
                self.targets.account,
                self.targets.transaction,
                self.targets.notification,
                self.targets.audit,
            )
        ]
        self._accounts = bank_pb2_grpc.AccountServiceStub(self._channels[0])
        self._transactions = bank_pb2_grpc.TransactionServiceStub(self._channels[1])
        self._notifications = bank_pb2_grpc.NotificationServiceStub(self._channels[2])
        self._audit = bank_pb2_grpc.AuditServiceStub(self._channels[3])
        self._stats = GatewayStats()
        self._stats_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self._transfer_breaker = (
            self.registry.get(TRANSFER_METHOD) if self.registry is not None else None
        )
        self._unsubscribe = (
            self.registry.on_state_change(self._on_state_change)
            if self.registry is not None
            else None
        )

    # ------------------------------------------------------------------ the flow

    def transfer_funds(
        self, from_account: str, to_account: str, amount_cents: int, transfer_id: str | None = None
    ) -> TransferOutcome:
        """Balance check, transfer, notify (best effort), audit (critical, via the outbox)."""
        started = time.perf_counter()
        transfer_id = transfer_id or uuid.uuid4().hex

        def finish(status: TransferStatus, reason: str = "", **extra: str) -> TransferOutcome:
            self._count(status.value)
            latency = time.perf_counter() - started
            return TransferOutcome(transfer_id, status, reason, latency, **extra)

        if not self._transfer_may_go():
            # Fail fast at the edge: no balance check, no outbox write for a transfer the
            # transaction breaker would refuse anyway.
            return finish(TransferStatus.REJECTED, "transaction breaker open")
        try:
            balance = self._accounts.GetBalance(
                bank_pb2.GetBalanceRequest(account_id=from_account),
                timeout=self.deadlines.balance,
            ).balance_cents
        except grpc.RpcError as exc:
            if isinstance(exc, CallNotPermittedError):
                return finish(TransferStatus.REJECTED, "account breaker open")
            return finish(TransferStatus.ERROR, f"balance check failed: {_code(exc)}")
        if balance < amount_cents:
            return finish(TransferStatus.FAILED, "insufficient funds")

        self.outbox.intend(transfer_id, from_account, to_account, amount_cents)
        transfer = _Transfer(transfer_id, from_account, to_account, amount_cents)
        try:
            response = self._transactions.Transfer(
                transfer.request(), timeout=self.deadlines.transfer
            )
        except grpc.RpcError as exc:
            if isinstance(exc, CallNotPermittedError):
                self.outbox.done(transfer_id)
                return finish(TransferStatus.REJECTED, "transaction breaker open")
            if exc.code() in _DEFINITIVE:
                self.outbox.done(transfer_id)
                return finish(TransferStatus.ERROR, f"transfer refused: {_code(exc)}")
            self.outbox.release(transfer_id)
            return finish(TransferStatus.PENDING, f"transfer outcome unknown: {_code(exc)}")
        if response.status != bank_pb2.TRANSFER_STATUS_COMMITTED:
            self.outbox.done(transfer_id)
            return finish(TransferStatus.FAILED, response.reason or "transfer failed")

        transfer = replace(transfer, committed_at=time.time())
        self.outbox.committed(transfer_id, transfer.committed_at, busy=True)
        notification = self._notify(transfer)
        audit = self._audit_now(transfer)
        return finish(TransferStatus.COMMITTED, notification=notification, audit=audit)

    def _transfer_may_go(self) -> bool:
        breaker = self._transfer_breaker
        if breaker is None or breaker.state not in _REFUSING:
            return True
        # Asking for a permit, not just reading the state, counts the rejection in the breaker;
        # in the rare race where it just turned HALF_OPEN, hand the permit back and go on.
        permit = breaker.try_acquire()
        if permit is None:
            return False
        permit.ignore()
        return True

    def _notify(self, transfer: _Transfer) -> str:
        # Non-critical: whatever happens here, the transfer stands.
        try:
            self._notifications.SendTransferNotification(
                transfer.notification(), timeout=self.deadlines.notification
            )
        except grpc.RpcError as exc:
            if isinstance(exc, CallNotPermittedError):
                self._count("notifications_rejected")
                return "rejected"
            self._count("notifications_failed")
            return "failed"
        self._count("notifications_sent")
        return "sent"

    def _audit_now(self, transfer: _Transfer) -> str:
        try:
            self._audit.LogTransaction(transfer.audit_record(), timeout=self.deadlines.audit)
        except grpc.RpcError:
            if not self.outbox_enabled:
                self._count("audits_dropped")
                log.warning("audit record for %s dropped: no outbox", transfer.transfer_id)
                return "dropped"
            self.outbox.release(transfer.transfer_id)
            self._count("audits_deferred")
            self._wake.set()
            return "deferred"
        self.outbox.done(transfer.transfer_id)
        self._count("audits_delivered")
        return "delivered"

    # ----------------------------------------------------------------- the outbox

    def drain_once(self, limit: int = 100) -> int:
        """Deliver owed audit records and resolve unknown transfers; returns rows finished."""
        finished = 0
        for row in self.outbox.ready("transfer", limit):
            if not self._resolve(row):
                break
            finished += 1
        for row in self.outbox.ready("audit", limit):
            if not self._deliver(row):
                break
            finished += 1
        return finished

    def _resolve(self, row: _Transfer) -> bool:
        try:
            response = self._transactions.Transfer(row.request(), timeout=self.deadlines.transfer)
        except grpc.RpcError as exc:
            if exc.code() in _DEFINITIVE and not isinstance(exc, CallNotPermittedError):
                self.outbox.done(row.transfer_id)
                self._count("outbox_transfers_failed")
                return True
            return False
        if response.status == bank_pb2.TRANSFER_STATUS_COMMITTED:
            self.outbox.committed(row.transfer_id, time.time(), busy=False)
            self._count("outbox_transfers_committed")
        else:
            self.outbox.done(row.transfer_id)
            self._count("outbox_transfers_failed")
        return True

    def _deliver(self, row: _Transfer) -> bool:
        try:
            self._audit.LogTransaction(row.audit_record(), timeout=self.deadlines.audit)
        except grpc.RpcError:
            return False
        self.outbox.done(row.transfer_id)
        self._count("outbox_audits_delivered")
        return True

    def _on_state_change(self, name: str, old: State, new: State) -> None:
        if new is State.CLOSED and name.endswith((AUDIT_METHOD, TRANSFER_METHOD)):
            self._wake.set()

    def start(self) -> None:
        """Run the outbox drainer in a daemon thread."""
        if self._drainer is None:
            self._drainer = threading.Thread(target=self._drain_loop, name="outbox", daemon=True)
            self._drainer.start()

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain_once()
            except Exception:  # the drainer must outlive any one bad round
                log.exception("outbox drain round failed")
            self._wake.wait(self.drain_interval)
            self._wake.clear()

    def close(self) -> None:
        """Stop the drainer and close channels and the outbox."""
        self._stop.set()
        self._wake.set()
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        if self._unsubscribe is not None:
            self._unsubscribe()
        for channel in self._channels:
            channel.close()
        self.outbox.close()

    # ------------------------------------------------------------------ counters

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)

    def stats(self) -> GatewayStats:
        """A copy of the counters."""
        with self._stats_lock:
            return replace(self._stats)


def _code(exc: grpc.RpcError) -> str:
    code = exc.code()
    return code.name if code is not None else "UNKNOWN"
