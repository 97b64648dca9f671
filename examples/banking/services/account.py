"""AccountService: balances and an idempotent ledger of postings, in SQLite behind a breaker."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from examples.banking.chaos import Chaos
from examples.banking.gen import bank_pb2, bank_pb2_grpc
from examples.banking.services.common import Database, base_parser, run_process
from meshbreaker.errors import CallNotPermittedError
from meshbreaker.registry import BreakerRegistry

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id    TEXT PRIMARY KEY,
    balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0),
    -- A closed account takes no postings: a transfer to it is debited, then refunded.
    closed        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS postings (
    idempotency_key TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('open', 'debit', 'credit')),
    amount_cents    INTEGER NOT NULL CHECK (amount_cents > 0),
    transfer_id     TEXT NOT NULL,
    balance_after   INTEGER NOT NULL,
    created_at      REAL NOT NULL,
    -- Retries answered from this row without moving money again.
    replays         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS postings_by_transfer ON postings (transfer_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


CLOSED_ACCOUNT = "closed-000"
BREAKS = ("no-idempotency",)


def account_ids(count: int, prefix: str = "acct") -> list[str]:
    """The ids the demo seeds: acct-000, acct-001, ... (hot-000, ... for the hot ones)."""
    return [f"{prefix}-{i:03d}" for i in range(count)]


def seed(db: Database, count: int, balance_cents: int, hot: int = 0, hot_cents: int = 0) -> None:
    """Open the accounts once: `count` ordinary, `hot` small ones, one closed; records the total."""
    with db.transaction() as conn:
        if conn.execute("SELECT value FROM meta WHERE key = 'initial_total'").fetchone():
            return
        now = time.time()
        opening = [(a, balance_cents) for a in account_ids(count)]
        opening += [(a, hot_cents) for a in account_ids(hot, "hot")]
        for account_id, cents in opening:
            conn.execute("INSERT INTO accounts VALUES (?, ?, 0)", (account_id, cents))
            if cents:
                conn.execute(
                    "INSERT INTO postings VALUES (?, ?, 'open', ?, '', ?, ?, 0)",
                    (f"open:{account_id}", account_id, cents, cents, now),
                )
        conn.execute("INSERT INTO accounts VALUES (?, 0, 1)", (CLOSED_ACCOUNT,))
        total = sum(cents for _, cents in opening)
        conn.execute("INSERT INTO meta VALUES ('initial_total', ?)", (total,))


class AccountServicer(bank_pb2_grpc.AccountServiceServicer):
    """GetBalance, Debit, Credit; a posting's idempotency key is its primary key."""

    def __init__(self, db: Database, *, idempotent: bool = True) -> None:
        self._db = db
        self._idempotent = idempotent

    def GetBalance(
        self, request: bank_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> bank_pb2.GetBalanceResponse:
        with _database_refusal(context):
            rows = self._db.query(
                "SELECT balance_cents FROM accounts WHERE account_id = ?", (request.account_id,)
            )
        if not rows:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown account {request.account_id!r}")
        return bank_pb2.GetBalanceResponse(account_id=request.account_id, balance_cents=rows[0][0])

    def Debit(
        self, request: bank_pb2.PostingRequest, context: grpc.ServicerContext
    ) -> bank_pb2.PostingResponse:
        return self._post(request, context, "debit")

    def Credit(
        self, request: bank_pb2.PostingRequest, context: grpc.ServicerContext
    ) -> bank_pb2.PostingResponse:
        return self._post(request, context, "credit")

    def _post(
        self, request: bank_pb2.PostingRequest, context: grpc.ServicerContext, kind: str
    ) -> bank_pb2.PostingResponse:
        if not request.idempotency_key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key is required")
        if request.amount_cents <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "amount_cents must be > 0")
        response = bank_pb2.PostingResponse(account_id=request.account_id)
        with _database_refusal(context), self._db.transaction() as conn:
            error = _apply_posting(conn, request, kind, response, self._idempotent)
        if error is not None:
            context.abort(*error)
        return response


@contextmanager
def _database_refusal(context: grpc.ServicerContext) -> Iterator[None]:
    """A refusal of the ledger database's breaker answers UNAVAILABLE: retry elsewhere or later."""
    try:
        yield
    except CallNotPermittedError as refused:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"ledger database: {refused}")


def _apply_posting(
    conn: sqlite3.Connection,
    request: bank_pb2.PostingRequest,
    kind: str,
    response: bank_pb2.PostingResponse,
    idempotent: bool = True,
) -> tuple[grpc.StatusCode, str] | None:
    key = request.idempotency_key
    prior = conn.execute(
        "SELECT account_id, kind, amount_cents, balance_after FROM postings "
        "WHERE idempotency_key = ?",
        (key,),
    ).fetchone()
    if prior is not None and not idempotent:
        # --break no-idempotency: the retry moves the money again, under a key of its own.
        key = f"{key}#{time.monotonic_ns()}"
        prior = None
    if prior is not None:
        if tuple(prior[:3]) != (request.account_id, kind, request.amount_cents):
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"idempotency_key {request.idempotency_key!r} was used for a different posting",
            )
        conn.execute("UPDATE postings SET replays = replays + 1 WHERE idempotency_key = ?", (key,))
        response.balance_cents = prior[3]
        response.replayed = True
        return None
    row = conn.execute(
        "SELECT balance_cents, closed FROM accounts WHERE account_id = ?", (request.account_id,)
    ).fetchone()
    if row is None:
        return grpc.StatusCode.NOT_FOUND, f"unknown account {request.account_id!r}"
    balance, closed = row
    if closed:
        return grpc.StatusCode.FAILED_PRECONDITION, f"account {request.account_id} is closed"
    if kind == "debit":
        if balance < request.amount_cents:
            return grpc.StatusCode.FAILED_PRECONDITION, "insufficient funds"
        balance -= request.amount_cents
    else:
        balance += request.amount_cents
    conn.execute(
        "UPDATE accounts SET balance_cents = ? WHERE account_id = ?",
        (balance, request.account_id),
    )
    conn.execute(
        "INSERT INTO postings VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
        (
            key,
            request.account_id,
            kind,
            request.amount_cents,
            request.transfer_id,
            balance,
            time.time(),
        ),
    )
    response.balance_cents = balance
    return None


def register(
    db_path: str,
    accounts: int,
    balance_cents: int,
    hot: int = 0,
    hot_cents: int = 0,
    breaks: Sequence[str] = (),
    registry: BreakerRegistry | None = None,
) -> Callable[[grpc.Server, Chaos], list[Callable[[], None]]]:
    """A start_server() callback that opens the database, seeds it and adds the servicer.

    With a `registry`, the database sits behind its breaker "sqlite:///<db_path>".
    """

    def add(server: grpc.Server, chaos: Chaos) -> list[Callable[[], None]]:
        breaker = None if registry is None else registry.get(database_breaker_name(db_path))
        db = Database(db_path, SCHEMA, breaker)
        seed(db, accounts, balance_cents, hot, hot_cents)
        servicer = AccountServicer(db, idempotent="no-idempotency" not in breaks)
        bank_pb2_grpc.add_AccountServiceServicer_to_server(servicer, server)
        return [db.close]

    return add


def database_breaker_name(db_path: str) -> str:
    """The ledger database's breaker: named as SQLAlchemy names it, sqlite:///<absolute path>."""
    return f"sqlite:///{Path(db_path).resolve()}"


def main() -> None:
    """Process entry point."""
    parser = base_parser("account", BREAKS)
    parser.add_argument("--accounts", type=int, default=20, help="accounts to open on first start")
    parser.add_argument("--initial-balance", type=int, default=1_000_000, help="cents per account")
    parser.add_argument("--hot-accounts", type=int, default=0, help="small accounts to fight over")
    parser.add_argument("--hot-balance", type=int, default=10_000, help="cents per hot account")
    parser.add_argument(
        "--xds-cluster",
        metavar="NAME",
        help="register this server in xDS cluster NAME while it runs (needs --control-plane)",
    )
    args = parser.parse_args()
    from examples.banking.services.mesh import agent_starter, endpoint_registrar

    registry = BreakerRegistry()
    run_process(
        "account",
        args,
        register(
            args.db,
            args.accounts,
            args.initial_balance,
            args.hot_accounts,
            args.hot_balance,
            args.breaks,
            registry,
        ),
        agent_starter(args, "account", registry),
        endpoint_registrar(args, args.xds_cluster),
    )


if __name__ == "__main__":
    main()
