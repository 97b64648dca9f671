"""Open-loop clients: payments arrive at a fixed rate, each with its own key, retried with it."""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.invariants import Intent
from examples.banking.services.mesh import RECONNECT

# Seconds the demo gives every payment to get a final answer once the load stops.
RESOLVE_TIMEOUT = 60.0
# (from_account, to_account, amount_cents) for the next payment.
Picker = Callable[[random.Random], tuple[str, str, int]]

_STATUS = {
    bank_pb2.TRANSFER_FUNDS_STATUS_COMMITTED: "committed",
    bank_pb2.TRANSFER_FUNDS_STATUS_FAILED: "failed",
    bank_pb2.TRANSFER_FUNDS_STATUS_PENDING: "pending",
    bank_pb2.TRANSFER_FUNDS_STATUS_REJECTED: "rejected",
}
# How a call ended, for the latency report.
OUTCOME = {
    "committed": "answered",
    "failed": "answered",
    "rejected": "refused",
    "pending": "in doubt",
    "deadline": "deadline",
    "abandoned": "deadline",
    "unreachable": "unreachable",
}


@dataclass(frozen=True)
class Call:
    """One TransferFunds call as the client saw it; latency counts from when it was due."""

    key: str
    attempt: int
    due: float
    latency: float
    status: str  # committed | failed | rejected | pending | deadline | abandoned | unreachable
    reason: str

    @property
    def outcome(self) -> str:
        """answered, refused, in doubt (the gateway's answer), deadline or unreachable."""
        return OUTCOME[self.status]


class Client:
    """A payment client against one gateway: open-loop arrivals, a fixed pool of workers."""

    def __init__(
        self,
        name: str,
        target: str,
        picker: Picker,
        *,
        workers: int,
        deadline: float = 2.0,
        backoff: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
        seed: int = 0,
    ) -> None:
        self.name = name
        self.deadline = deadline
        self.picker = picker
        self._backoff = tuple(backoff)
        self._rng = random.Random(seed)
        self._channel = grpc.insecure_channel(target, options=RECONNECT)
        self._stub = bank_pb2_grpc.GatewayServiceStub(self._channel)
        self._rate = 0.0
        self._busy = 0
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self.intents: dict[str, Intent] = {}
        self._threads = [threading.Thread(target=self._arrivals, daemon=True)]
        self._threads += [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def start(self) -> Client:
        """Start the arrival clock and the workers (no arrivals until set_rate)."""
        for thread in self._threads:
            thread.start()
        return self

    def set_rate(self, rate: float) -> None:
        """New payments per second from now on (0 pauses arrivals; retries still run)."""
        self._rate = rate

    def take_calls(self) -> list[Call]:
        """The calls finished since the last take."""
        with self._lock:
            calls, self._calls = self._calls, []
        return calls

    def done_with(self, due: float) -> bool:
        """Every call due by `due` has finished (none queued, none running)."""
        with self._cond:
            return self._busy == 0 and not any(entry[0] <= due for entry in self._heap)

    def peek_calls(self) -> list[Call]:
        """The calls finished since the last take, left in place."""
        with self._lock:
            return list(self._calls)

    def unresolved(self) -> list[Intent]:
        """Payments without a final answer yet: not answered, or last told 'outcome unknown'."""
        with self._lock:
            return [i for i in self.intents.values() if i.final in ("", "pending")]

    # ------------------------------------------------------------- scheduling

    def _push(self, due: float, key: str, attempt: int) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), key, attempt))
            self._cond.notify()

    def _arrivals(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            rate = self._rate
            now = time.monotonic()
            if rate <= 0:
                due = now
                self._stop.wait(0.05)
                continue
            if due > now:
                self._stop.wait(min(due - now, 0.05))
                continue
            self.submit(*self.picker(self._rng), due=due)
            due += 1.0 / rate

    def submit(self, source: str, destination: str, amount: int, due: float | None = None) -> str:
        """A new payment, its first attempt due at `due` (default now); returns its key."""
        key = f"{self.name}-{next(self._seq):06d}"
        with self._lock:
            self.intents[key] = Intent(key, source, destination, amount)
        self._push(time.monotonic() if due is None else due, key, 1)
        return key

    def _next(self) -> tuple[float, str, int] | None:
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    due, _, key, attempt = heapq.heappop(self._heap)
                    self._busy += 1
                    return due, key, attempt
                wait = self._heap[0][0] - now if self._heap else 0.1
                self._cond.wait(min(wait, 0.1))
        return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            due, key, attempt = job
            try:
                status = self.call(key, attempt, due)
                if status == "pending":
                    # In doubt: retried with its key until it has a final answer (the backoff
                    # grows to its last step and stays there), so every payment in doubt always
                    # has exactly one retry queued or running, and nothing else sends its key.
                    pause = self._backoff[min(attempt, len(self._backoff)) - 1]
                    self._push(time.monotonic() + pause, key, attempt + 1)
            finally:
                with self._cond:
                    self._busy -= 1

    # ------------------------------------------------------------------ calls

    def call(self, key: str, attempt: int, due: float) -> str:
        """One TransferFunds call for payment `key`; records it and returns the client's status."""
        intent = self.intents[key]
        remaining = due + self.deadline - time.monotonic()
        if remaining <= 0:
            # It waited for a worker past its deadline: a first attempt was never sent at all.
            status, reason = ("abandoned" if attempt == 1 else "pending"), "expired in queue"
            self._record(intent, Call(key, attempt, due, self.deadline, "deadline", reason), status)
            return status
        request = bank_pb2.TransferFundsRequest(
            idempotency_key=key,
            from_account=intent.from_account,
            to_account=intent.to_account,
            amount_cents=intent.amount_cents,
        )
        try:
            response = self._stub.TransferFunds(request, timeout=remaining)
            status, reason = _STATUS.get(response.status, "pending"), response.reason
            shown = status
        except grpc.RpcError as exc:
            code = exc.code()
            status, reason = "pending", code.name if code else "UNKNOWN"
            shown = "deadline" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "unreachable"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                status = shown = "rejected"
                reason = exc.details() or reason
        latency = time.monotonic() - due
        self._record(intent, Call(key, attempt, due, latency, shown, reason), status)
        return status

    def _record(self, intent: Intent, call: Call, status: str) -> None:
        with self._lock:
            intent.answers.append(status)
            self._calls.append(call)

    def resolve(self, timeout: float) -> int:
        """Wait (arrivals stopped) until every payment has a final answer; how many have none.

        The workers do the retrying, each payment's in turn, so a key is never sent twice at
        once and never again once it has a final answer.
        """
        deadline = time.monotonic() + timeout
        while self.unresolved() and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.unresolved())

    def stop(self) -> None:
        """Stop arrivals and workers (a call in flight finishes first) and close the channel."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.deadline + 1)
        self._channel.close()
