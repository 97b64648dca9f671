"""Fixtures for the banking tests: the four services in-process, each on its own port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from examples.banking.gen import bank_pb2_grpc, chaos_pb2_grpc
from examples.banking.services import account, audit, notification, transaction
from examples.banking.services.common import RunningService, start_server
from meshbreaker.registry import BreakerRegistry
from meshbreaker.testing import FakeClock
from tests.browser_support import browser  # noqa: F401  (headless Chromium, for the console)

ACCOUNTS = 4
BALANCE = 100_000
# The sweeper resumes a saga nobody touched for this long (short, so tests need not wait).
STALL_AFTER = 0.3


@dataclass
class Bank:
    """The four running services, their databases and plain (unguarded) stubs."""

    account: RunningService
    transaction: RunningService
    notification: RunningService
    audit: RunningService
    dbs: dict[str, Path]
    channels: list[grpc.Channel]

    def stub(self, service: str) -> object:
        """A plain stub for `service` (account, transaction, notification, audit)."""
        running: RunningService = getattr(self, service)
        channel = grpc.insecure_channel(running.target)
        self.channels.append(channel)
        stubs = {
            "account": bank_pb2_grpc.AccountServiceStub,
            "transaction": bank_pb2_grpc.TransactionServiceStub,
            "notification": bank_pb2_grpc.NotificationServiceStub,
            "audit": bank_pb2_grpc.AuditServiceStub,
        }
        return stubs[service](channel)

    def chaos(self, service: str) -> chaos_pb2_grpc.ChaosServiceStub:
        """A chaos stub for `service`."""
        running: RunningService = getattr(self, service)
        channel = grpc.insecure_channel(running.target)
        self.channels.append(channel)
        return chaos_pb2_grpc.ChaosServiceStub(channel)

    @property
    def targets(self) -> dict[str, str]:
        """host:port by service name."""
        return {name: getattr(self, name).target for name in self.dbs}


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock for breakers; tests advance it instead of sleeping."""
    return FakeClock()


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[Bank]:
    """All four services on 127.0.0.1, port 0, with SQLite files in tmp_path."""
    dbs = {
        name: tmp_path / f"{name}.db"
        for name in ("account", "transaction", "notification", "audit")
    }
    acc = start_server("account", account.register(str(dbs["account"]), ACCOUNTS, BALANCE))
    started = [acc]
    try:
        aud = start_server("audit", audit.register(str(dbs["audit"])))
        started.append(aud)
        txn = start_server(
            "transaction",
            transaction.register(
                str(dbs["transaction"]), acc.target, None, aud.target, stall_after=STALL_AFTER
            ),
        )
        started.append(txn)
        note = start_server(
            "notification", notification.register(str(dbs["notification"]), BreakerRegistry(), None)
        )
        started.append(note)
        result = Bank(acc, txn, note, aud, dbs, [])
        yield result
        for channel in result.channels:
            channel.close()
    finally:
        for running in reversed(started):
            running.stop(None)
