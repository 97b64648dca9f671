"""The demo's promises, checked against the services' own SQLite databases."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Check:
    """One invariant and whether it held."""

    name: str
    ok: bool
    detail: str


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    # Read-only, so checking can never change what it checks.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


def cents(amount: int) -> str:
    """12345 -> '$123.45'."""
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount) // 100:,}.{abs(amount) % 100:02d}"


def check_invariants(dbs: Mapping[str, Path], outboxes: Iterable[Path] = ()) -> list[Check]:
    """Money conserved, no transfer applied twice, every commit audited once, nothing owed."""
    initial = _rows(dbs["account"], "SELECT value FROM meta WHERE key = 'initial_total'")[0][0]
    balances = dict(_rows(dbs["account"], "SELECT account_id, balance_cents FROM accounts"))
    postings = _rows(
        dbs["account"], "SELECT account_id, kind, amount_cents, transfer_id FROM postings"
    )
    transfers = {
        row[0]: row[1:]
        for row in _rows(
            dbs["transaction"],
            "SELECT transfer_id, from_account, to_account, amount_cents, status FROM transfers",
        )
    }
    audits = {
        row[0]: row[1:]
        for row in _rows(
            dbs["audit"],
            "SELECT transfer_id, from_account, to_account, amount_cents, deliveries FROM audit_log",
        )
    }
    return [
        _conservation(initial, balances, postings),
        _applied_once(transfers, postings),
        _audited_once(transfers, audits),
        _nothing_owed(transfers, outboxes),
    ]


def _conservation(
    initial: int, balances: Mapping[str, int], postings: list[tuple[Any, ...]]
) -> Check:
    total = sum(balances.values())
    ledger: Counter[str] = Counter()
    for account_id, kind, amount, _ in postings:
        ledger[account_id] += -amount if kind == "debit" else amount
    drifted = sorted(a for a in balances if ledger[a] != balances[a])
    ok = total == initial and not drifted
    detail = f"total {cents(total)} vs initial {cents(initial)}"
    if drifted:
        detail += f"; balances disagree with their ledger: {', '.join(drifted[:5])}"
    return Check("total money conserved to the cent", ok, detail)


def _applied_once(
    transfers: Mapping[str, tuple[Any, ...]], postings: list[tuple[Any, ...]]
) -> Check:
    by_transfer: dict[str, Counter[str]] = {}
    amounts: dict[tuple[str, str], tuple[str, int]] = {}
    for account_id, kind, amount, transfer_id in postings:
        if kind == "open":
            continue
        by_transfer.setdefault(transfer_id, Counter())[kind] += 1
        amounts[(transfer_id, kind)] = (account_id, amount)
    problems = []
    for transfer_id, kinds in by_transfer.items():
        if any(count > 1 for count in kinds.values()):
            problems.append(f"{transfer_id} posted {dict(kinds)}")
        elif transfer_id not in transfers:
            problems.append(f"{transfer_id} has postings but no transfer")
    committed = 0
    for transfer_id, (source, destination, amount, status) in transfers.items():
        kinds = by_transfer.get(transfer_id, Counter())
        if status == "COMMITTED":
            committed += 1
            expected = {
                "debit": (source, amount),
                "credit": (destination, amount),
            }
            if any(amounts.get((transfer_id, k)) != v for k, v in expected.items()):
                problems.append(f"{transfer_id} committed but its postings do not match")
        elif status == "FAILED" and kinds:
            # A failed transfer either never debited, or was refunded to its source.
            refund = {"debit": (source, amount), "credit": (source, amount)}
            if any(amounts.get((transfer_id, k)) != v for k, v in refund.items()):
                problems.append(f"{transfer_id} failed but kept its money moved")
    detail = f"{committed} committed transfers, each one debit + one credit"
    if problems:
        detail = f"{len(problems)} problems, e.g. {'; '.join(problems[:3])}"
    return Check("no transfer applied twice", not problems, detail)


def _audited_once(
    transfers: Mapping[str, tuple[Any, ...]], audits: Mapping[str, tuple[Any, ...]]
) -> Check:
    committed = {tid: row[:3] for tid, row in transfers.items() if row[3] == "COMMITTED"}
    missing = sorted(set(committed) - set(audits))
    extra = sorted(set(audits) - set(committed))
    mismatched = sorted(t for t in committed if t in audits and audits[t][:3] != committed[t])
    duplicates = sum(row[3] - 1 for row in audits.values())
    ok = not (missing or extra or mismatched)
    detail = (
        f"{len(committed)} committed, {len(audits)} audit records "
        f"({duplicates} duplicate deliveries deduplicated)"
    )
    if missing:
        detail += f"; {len(missing)} never audited, e.g. {missing[0]}"
    if extra:
        detail += f"; {len(extra)} audited but not committed, e.g. {extra[0]}"
    if mismatched:
        detail += f"; {len(mismatched)} audited with wrong details, e.g. {mismatched[0]}"
    return Check("every committed transfer audited exactly once", ok, detail)


def _nothing_owed(transfers: Mapping[str, tuple[Any, ...]], outboxes: Iterable[Path]) -> Check:
    unresolved = sum(1 for row in transfers.values() if row[3] in ("PENDING", "DEBITED"))
    owed = sum(_rows(path, "SELECT count(*) FROM outbox")[0][0] for path in outboxes)
    detail = f"{unresolved} transfers in flight, {owed} outbox rows left"
    return Check("outbox drained, no transfer left half-done", not (unresolved or owed), detail)
