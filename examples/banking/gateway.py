"""The gateway's TransferFunds (pattern doc use case 2): keyed by the client, fails fast."""

from __future__ import annotations

import enum
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.requests import Claim, RequestLog
from examples.banking.services.mesh import guarded_channel
from meshbreaker.config import State
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ThrottledError
from meshbreaker.registry import BreakerRegistry

TRANSFER_METHOD = "/bank.v1.TransactionService/Transfer"
BALANCE_METHOD = "/bank.v1.AccountService/GetBalance"
NOTIFY_METHOD = "/bank.v1.NotificationService/SendTransferNotification"
BREAKS = ("new-id-per-attempt", "wrong-answer")
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


class TransferStatus(str, enum.Enum):
    """What TransferFunds tells its caller."""

    COMMITTED = "committed"  # money moved (final)
    FAILED = "failed"  # a definitive no: insufficient funds, closed account (final)
    PENDING = "pending"  # outcome unknown or in progress: retry with the same key
    REJECTED = "rejected"  # nothing was sent, nothing moved (a breaker, a failed balance check)


class KeyReusedError(ValueError):
    """The client sent an idempotency key it had already used for a different transfer."""


@dataclass(frozen=True)
class Targets:
    """host:port of each service the gateway calls."""

    account: str
    transaction: str
    notification: str


@dataclass(frozen=True)
class Deadlines:
    """Per-call deadlines in seconds."""

    balance: float = 0.5
    transfer: float = 1.0
    notification: float = 0.3


@dataclass(frozen=True)
class TransferOutcome:
    """The gateway's answer to one TransferFunds call."""

    transfer_id: str
    status: TransferStatus
    reason: str = ""
    replayed: bool = False
    notification: str = "skipped"  # sent | failed | rejected | skipped


@dataclass
class Gateway:
    """TransferFunds over the account, transaction and notification services."""

    targets: Targets
    db_path: str | Path
    registry: BreakerRegistry | None = None
    deadlines: Deadlines = field(default_factory=Deadlines)
    breaks: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.requests = RequestLog(self.db_path)
        targets = self.targets
        self._channels = [
            guarded_channel(targets.account, self.registry),
            guarded_channel(targets.transaction, self.registry),
            guarded_channel(targets.notification, self.registry),
        ]
        self._accounts = bank_pb2_grpc.AccountServiceStub(self._channels[0])
        self._transactions = bank_pb2_grpc.TransactionServiceStub(self._channels[1])
        self._notifications = bank_pb2_grpc.NotificationServiceStub(self._channels[2])
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._commits = itertools.count(1)
        self._transfer_breaker = (
            self.registry.get(TRANSFER_METHOD) if self.registry is not None else None
        )

    def transfer_funds(
        self, key: str, from_account: str, to_account: str, amount_cents: int
    ) -> TransferOutcome:
        """Key lookup, balance check, transfer, notify (best effort); raises KeyReusedError."""
        transfer_id = key
        if "new-id-per-attempt" in self.breaks:
            # --break new-id-per-attempt: every attempt is a new transfer, the key is ignored.
            transfer_id = f"{key}~{uuid.uuid4().hex[:8]}"
            entry_claim = self.requests.claim(
                transfer_id, from_account, to_account, amount_cents
            ).claim
        else:
            entry = self.requests.claim(key, from_account, to_account, amount_cents)
            entry_claim = entry.claim
            if entry.claim is Claim.ANSWERED:
                status = TransferStatus(entry.state)
                return self._finish(TransferOutcome(key, status, entry.reason, replayed=True))
            if entry.claim is Claim.IN_PROGRESS:
                outcome = TransferOutcome(key, TransferStatus.PENDING, "in progress")
                return self._finish(outcome)
            if entry.claim is Claim.MISMATCH:
                raise KeyReusedError(f"idempotency_key {key!r} was used for a different transfer")
        resume = entry_claim is Claim.RESUME
        try:
            outcome = self._attempt(transfer_id, from_account, to_account, amount_cents, resume)
        except BaseException:
            self.requests.settle(transfer_id, "unknown")  # never leave the key owned by no one
            raise
        return self._finish(outcome)

    def _attempt(
        self, transfer_id: str, from_account: str, to_account: str, amount: int, resume: bool
    ) -> TransferOutcome:
        log = self.requests

        def refused(reason: str) -> TransferOutcome:
            # Nothing was sent by this attempt. A key sent before stays unknown (that Transfer may
            # have moved money); a new one is rejected for good: the answer is kept and replayed,
            # so no later attempt with the key (a retry, or a stale attempt still queued in this
            # gateway) can commit what the client was told never moved.
            if resume:
                log.settle(transfer_id, "unknown")
                return TransferOutcome(transfer_id, TransferStatus.PENDING, f"{reason}; retry")
            log.settle(transfer_id, "rejected", reason)
            return TransferOutcome(transfer_id, TransferStatus.REJECTED, reason)

        if not self._transfer_may_go():
            # Fail fast at the edge: no balance check for a transfer the breaker would refuse.
            return refused("transaction breaker open")
        if not resume:
            # A resumed transfer may already be debited: its balance proves nothing.
            try:
                balance = self._accounts.GetBalance(
                    bank_pb2.GetBalanceRequest(account_id=from_account),
                    timeout=self.deadlines.balance,
                ).balance_cents
            except grpc.RpcError as exc:
                if isinstance(exc, CallNotPermittedError):
                    return refused("account breaker open")
                return refused(f"balance check failed: {_code(exc)}")
            if balance < amount:
                log.settle(transfer_id, "failed", "insufficient funds")
                return TransferOutcome(transfer_id, TransferStatus.FAILED, "insufficient funds")
        request = bank_pb2.TransferRequest(
            transfer_id=transfer_id,
            from_account=from_account,
            to_account=to_account,
            amount_cents=amount,
        )
        self._count("transfer_calls")  # the gateway's calls; its retries are attempts within one
        try:
            response = self._transactions.Transfer(request, timeout=self.deadlines.transfer)
        except grpc.RpcError as exc:
            # A local refusal here means nothing was sent: a retry refused after an attempt went
            # out ends with that attempt's status (gRFC A6), which is in doubt like any other.
            if isinstance(exc, ThrottledError | BulkheadFullError):
                # Shed here by the overload controls (adaptive throttling, the concurrency limit).
                self._count("overload_refused")
                return refused("transaction service overloaded: shed by the gateway")
            if isinstance(exc, CallNotPermittedError):
                return refused("transaction breaker open")
            if exc.code() in _DEFINITIVE:
                reason = f"transfer refused: {_code(exc)}"
                log.settle(transfer_id, "failed", reason)
                return TransferOutcome(transfer_id, TransferStatus.FAILED, reason)
            log.settle(transfer_id, "unknown")
            return TransferOutcome(
                transfer_id, TransferStatus.PENDING, f"outcome unknown: {_code(exc)}"
            )
        if response.status != bank_pb2.TRANSFER_STATUS_COMMITTED:
            reason = response.reason or "transfer failed"
            log.settle(transfer_id, "failed", reason)
            return TransferOutcome(transfer_id, TransferStatus.FAILED, reason)
        if "wrong-answer" in self.breaks and next(self._commits) % 10 == 0:
            # --break wrong-answer: every tenth commit is reported to the client as a failure.
            log.settle(transfer_id, "failed", "insufficient funds")
            return TransferOutcome(transfer_id, TransferStatus.FAILED, "insufficient funds")
        log.settle(transfer_id, "committed")
        notification = self._notify(request)
        return TransferOutcome(
            transfer_id, TransferStatus.COMMITTED, replayed=resume, notification=notification
        )

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

    def _notify(self, transfer: bank_pb2.TransferRequest) -> str:
        # Non-critical: whatever happens here, the transfer stands.
        try:
            self._notifications.SendTransferNotification(
                bank_pb2.NotificationRequest(
                    transfer_id=transfer.transfer_id,
                    from_account=transfer.from_account,
                    to_account=transfer.to_account,
                    amount_cents=transfer.amount_cents,
                ),
                timeout=self.deadlines.notification,
            )
        except grpc.RpcError as exc:
            if isinstance(exc, CallNotPermittedError):
                self._count("notifications_skipped")
                return "rejected"
            self._count("notifications_failed")
            return "failed"
        self._count("notifications_sent")
        return "sent"

    def _finish(self, outcome: TransferOutcome) -> TransferOutcome:
        self._count(outcome.status.value)
        if outcome.replayed:
            self._count("replayed")
        return outcome

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    def counts(self) -> dict[str, int]:
        """Answers and notifications since this gateway started, by name."""
        with self._counts_lock:
            return dict(self._counts)

    def breaker_states(self) -> dict[str, State]:
        """The state of each of this gateway's breakers (empty without a registry)."""
        if self.registry is None:
            return {}
        return {snap.name: snap.state for snap in self.registry.snapshots()}

    def close(self) -> None:
        """Close channels and the request log."""
        for channel in self._channels:
            channel.close()
        self.requests.close()


def _code(exc: grpc.RpcError) -> str:
    code = exc.code()
    return code.name if code is not None else "UNKNOWN"
