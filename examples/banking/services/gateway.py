"""GatewayService as its own process: the payment API, over examples.banking.gateway."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from examples.banking.chaos import Chaos
from examples.banking.gateway import BREAKS, Gateway, KeyReusedError, Targets, TransferStatus
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import base_parser, run_process, transfer_problem
from examples.banking.services.mesh import agent_starter
from meshbreaker.registry import BreakerRegistry

_STATUS = {
    TransferStatus.COMMITTED: bank_pb2.TRANSFER_FUNDS_STATUS_COMMITTED,
    TransferStatus.FAILED: bank_pb2.TRANSFER_FUNDS_STATUS_FAILED,
    TransferStatus.PENDING: bank_pb2.TRANSFER_FUNDS_STATUS_PENDING,
    TransferStatus.REJECTED: bank_pb2.TRANSFER_FUNDS_STATUS_REJECTED,
}
MAX_KEY = 128


class GatewayServicer(bank_pb2_grpc.GatewayServiceServicer):
    """TransferFunds and GetStats over one Gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def TransferFunds(
        self, request: bank_pb2.TransferFundsRequest, context: grpc.ServicerContext
    ) -> bank_pb2.TransferFundsResponse:
        problem = _validate(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # Queued past its deadline (a busy gateway): nobody waits for the answer, so the
            # work is shed. Not for correctness: a stale attempt that does start finds the key's
            # answer in the request log (a refusal is kept for good) or resumes it by id.
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before it started")
        try:
            outcome = self._gateway.transfer_funds(
                request.idempotency_key,
                request.from_account,
                request.to_account,
                request.amount_cents,
            )
        except KeyReusedError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return bank_pb2.TransferFundsResponse(
            transfer_id=outcome.transfer_id,
            status=_STATUS[outcome.status],
            reason=outcome.reason,
            replayed=outcome.replayed,
        )

    def GetStats(
        self, request: bank_pb2.GetGatewayStatsRequest, context: grpc.ServicerContext
    ) -> bank_pb2.GatewayStats:
        return bank_pb2.GatewayStats(
            counters=self._gateway.counts(),
            breakers=[
                bank_pb2.GatewayBreaker(name=name, state=state.value)
                for name, state in sorted(self._gateway.breaker_states().items())
            ],
        )


def _validate(request: bank_pb2.TransferFundsRequest) -> str:
    key = request.idempotency_key
    if not key or len(key) > MAX_KEY or not key.isascii() or not key.isprintable():
        return f"idempotency_key is required: 1 to {MAX_KEY} printable ASCII characters"
    return transfer_problem(request.from_account, request.to_account, request.amount_cents)


def main() -> None:
    """Process entry point."""
    parser = base_parser("gateway", BREAKS)
    parser.add_argument("--account-target", required=True)
    parser.add_argument("--transaction-target", required=True)
    parser.add_argument("--notification-target", required=True)
    parser.add_argument(
        "--no-breakers", action="store_true", help="plain channels (the comparison gateway)"
    )
    parser.add_argument(
        "--policy-revision",
        type=int,
        default=0,
        help="serve only once the control plane's policies at this revision are applied",
    )
    args = parser.parse_args()
    registry = None if args.no_breakers else BreakerRegistry()
    if registry is not None:
        registry.track_durations()  # reported to the control plane: its /metrics histograms
    targets = Targets(args.account_target, args.transaction_target, args.notification_target)

    def register(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        gateway = Gateway(targets, args.db, registry, breaks=args.breaks)
        bank_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(gateway), server)
        return [gateway.close]

    starter = agent_starter(args, "gateway", registry, wait_for=args.policy_revision)
    run_process("gateway", args, register, starter)


if __name__ == "__main__":
    main()
