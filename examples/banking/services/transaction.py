"""TransactionService: moves money as a debit then a credit at the account service, resumably."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from examples.banking.chaos import Chaos
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import (
    Database,
    base_parser,
    run_process,
    transfer_problem,
)
from examples.banking.services.mesh import agent_starter, guarded_channel
from examples.banking.services.relay import AuditRelay, Sweeper
from examples.banking.services.saga import SCHEMA, StepUnavailable, Transfers
from meshbreaker.registry import BreakerRegistry

BREAKS = ("lost-audit", "wrong-commit-time")
_FINAL = {
    "COMMITTED": bank_pb2.TRANSFER_STATUS_COMMITTED,
    "FAILED": bank_pb2.TRANSFER_STATUS_FAILED,
}


class TransactionServicer(bank_pb2_grpc.TransactionServiceServicer):
    """Transfer is a small saga keyed by transfer id; a retry resumes it, never repeats it."""

    def __init__(self, transfers: Transfers) -> None:
        self._transfers = transfers

    def Transfer(
        self, request: bank_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> bank_pb2.TransferResponse:
        problem = _validate(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        with self._transfers.stripe(request.transfer_id):
            saga, existed = self._transfers.begin(request)
            if (saga.from_account, saga.to_account, saga.amount_cents) != (
                request.from_account,
                request.to_account,
                request.amount_cents,
            ):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"transfer_id {request.transfer_id!r} was used for a different transfer",
                )
            try:
                saga = self._transfers.run(saga)
            except StepUnavailable as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return bank_pb2.TransferResponse(
            transfer_id=request.transfer_id,
            status=_FINAL[saga.status],
            reason=saga.reason,
            replayed=existed,
            committed_at=saga.committed_at,
        )


def _validate(request: bank_pb2.TransferRequest) -> str:
    if not request.transfer_id:
        return "transfer_id is required"
    return transfer_problem(request.from_account, request.to_account, request.amount_cents)


def register(
    db_path: str,
    accounts_target: str,
    registry: BreakerRegistry | None,
    audit_target: str | None = None,
    breaks: Sequence[str] = (),
    *,
    stall_after: float = 1.0,
) -> Callable[[grpc.Server, Chaos], list[Callable[[], None]]]:
    """A start_server() callback: database, guarded channels, servicer, audit relay, sweeper."""

    def add(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        db = Database(db_path, SCHEMA)
        channel = guarded_channel(accounts_target, registry)
        closers: list[Callable[[], None]] = [db.close, channel.close]
        relay: AuditRelay | None = None
        if audit_target is not None:
            audit_channel = guarded_channel(audit_target, registry)
            relay = AuditRelay(
                db,
                bank_pb2_grpc.AuditServiceStub(audit_channel),
                stamp_now="wrong-commit-time" in breaks,
            )
            closers[1:1] = [relay.stop, audit_channel.close]
        transfers = Transfers(
            db,
            bank_pb2_grpc.AccountServiceStub(channel),
            breaks,
            on_commit=relay.wake if relay is not None else lambda: None,
        )
        sweeper = Sweeper(transfers, stall_after=stall_after)
        closers.insert(1, sweeper.stop)
        bank_pb2_grpc.add_TransactionServiceServicer_to_server(
            TransactionServicer(transfers), server
        )
        sweeper.start()
        if relay is not None:
            relay.start()
        return closers

    return add


def main() -> None:
    """Process entry point."""
    parser = base_parser("transaction", BREAKS)
    parser.add_argument("--accounts-target", required=True, help="account service host:port")
    parser.add_argument("--audit-target", help="audit service host:port (its outbox relays there)")
    args = parser.parse_args()
    registry = BreakerRegistry()
    registry.track_durations()  # reported to the control plane: its /metrics histograms
    run_process(
        "transaction",
        args,
        register(args.db, args.accounts_target, registry, args.audit_target, args.breaks),
        agent_starter(args, "transaction", registry),
    )


if __name__ == "__main__":
    main()
