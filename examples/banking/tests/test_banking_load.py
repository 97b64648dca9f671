"""The demo's payment client against a real gateway: a payment in doubt is retried until final."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from examples.banking.chaos import Chaos
from examples.banking.gateway import Deadlines, Gateway, Targets
from examples.banking.gen import bank_pb2_grpc, chaos_pb2
from examples.banking.load import Client
from examples.banking.services.common import RunningService, start_server
from examples.banking.services.gateway import GatewayServicer
from examples.banking.tests.conftest import Bank
from tests.server_support import wait_until

# A hung Transfer is in doubt after 0.2 s; everything else has all the time it needs.
DEADLINES = Deadlines(balance=30.0, transfer=0.2, notification=30.0)


@pytest.fixture
def gateway_server(bank: Bank, tmp_path: Path) -> Iterator[RunningService]:
    """A plain gateway (no breakers) serving TransferFunds on its own port."""
    t = bank.targets
    gateway = Gateway(
        Targets(t["account"], t["transaction"], t["notification"]),
        tmp_path / "gateway.db",
        deadlines=DEADLINES,
    )

    def serve(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        bank_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(gateway), server)
        return [gateway.close]

    running = start_server("gateway", serve)
    yield running
    running.stop(None)


def test_a_payment_in_doubt_is_retried_with_its_key_until_it_has_a_final_answer(
    bank: Bank, gateway_server: RunningService
) -> None:
    client = Client("t", gateway_server.target, _unused, workers=2, backoff=(0.01, 0.02))
    transaction = bank.chaos("transaction")
    transaction.SetChaos(chaos_pb2.ChaosSettings(hang=True))
    client.start()
    try:
        intent = client.intents[client.submit("acct-000", "acct-001", 500)]
        # More retries than the backoff has steps: the client does not give up on a payment.
        assert wait_until(lambda: len(intent.answers) >= 4, timeout=30)
        assert set(intent.answers) == {"pending"}
        transaction.SetChaos(chaos_pb2.ChaosSettings())
        assert client.resolve(timeout=30) == 0
    finally:
        transaction.SetChaos(chaos_pb2.ChaosSettings())
        client.stop()
    assert intent.final == "committed"
    # Once answered, the key was never sent again: the answer is the last thing it got.
    assert intent.answers.count("committed") == 1
    with sqlite3.connect(bank.dbs["transaction"]) as conn:
        rows = conn.execute("SELECT transfer_id, status FROM transfers").fetchall()
    assert rows == [(intent.key, "COMMITTED")]


def _unused(rng: random.Random) -> tuple[str, str, int]:
    raise AssertionError("no open-loop arrivals in this test")
