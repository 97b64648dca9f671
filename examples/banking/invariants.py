"""The demo's promises, checked against the services' own databases and the clients' answers."""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONSERVED = "total money conserved to the cent"
APPLIED_ONCE = "no transfer applied twice"
AUDITED_ONCE = "every committed transfer audited exactly once, at its commit time"
RECONCILED = "every answer a client got agrees with the ledger"
NOTHING_OWED = "nothing left half-done"
EMAILED_ONCE = "every notification emailed exactly once, through the provider's breaker"
EMAIL_DB = "email-provider"  # the third-party provider's own record, when the run had one


@dataclass(frozen=True)
class Check:
    """One invariant and whether it held."""

    name: str
    ok: bool
    detail: str


@dataclass
class Intent:
    """One payment a client asked for, and every answer it got (retries share the key)."""

    key: str
    from_account: str
    to_account: str
    amount_cents: int
    answers: list[str] = field(default_factory=list)

    @property
    def final(self) -> str:
        """The last answer ('' before the first)."""
        return self.answers[-1] if self.answers else ""


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on a database opened read-only, so checking can never change what it checks."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


def cents(amount: int) -> str:
    """12345 -> '$123.45'."""
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount) // 100:,}.{abs(amount) % 100:02d}"


def check_invariants(
    dbs: Mapping[str, Path],
    intents: Iterable[Intent] = (),
    gateway_dbs: Iterable[Path] = (),
) -> list[Check]:
    """Money conserved, nothing applied twice, audited once, answers reconciled, nothing owed.

    With the email provider's database in `dbs`, also: every notification emailed once.
    """
    initial = rows(dbs["account"], "SELECT value FROM meta WHERE key = 'initial_total'")[0][0]
    balances = dict(rows(dbs["account"], "SELECT account_id, balance_cents FROM accounts"))
    postings = rows(
        dbs["account"], "SELECT account_id, kind, amount_cents, transfer_id FROM postings"
    )
    transfers = {
        row[0]: row[1:]
        for row in rows(
            dbs["transaction"],
            "SELECT transfer_id, from_account, to_account, amount_cents, status, committed_at "
            "FROM transfers",
        )
    }
    audits = rows(
        dbs["audit"],
        "SELECT transfer_id, from_account, to_account, amount_cents, committed_at FROM audit_log",
    )
    checks = [
        _conservation(initial, balances, postings),
        _applied_once(transfers, postings),
        _audited_once(transfers, audits),
        _reconciled(transfers, list(intents)),
        _nothing_owed(transfers, dbs["transaction"], gateway_dbs),
    ]
    if EMAIL_DB in dbs:
        checks.append(_emailed_once(dbs["notification"], dbs[EMAIL_DB]))
    return checks


def _conservation(initial: int, balances: Mapping[str, int], postings: Sequence[Any]) -> Check:
    total = sum(balances.values())
    ledger: Counter[str] = Counter()
    for account_id, kind, amount, _ in postings:
        ledger[account_id] += -amount if kind == "debit" else amount
    drifted = sorted(a for a in balances if ledger[a] != balances[a])
    ok = total == initial and not drifted
    detail = f"total {cents(total)} vs initial {cents(initial)}"
    if drifted:
        detail += f"; balances disagree with their ledger: {', '.join(drifted[:5])}"
    return Check(CONSERVED, ok, detail)


def _applied_once(transfers: Mapping[str, tuple[Any, ...]], postings: Sequence[Any]) -> Check:
    # Lists, not dicts: a second posting for the same transfer must be seen, not overwritten.
    by_transfer: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for account_id, kind, amount, transfer_id in postings:
        if kind != "open":
            by_transfer[transfer_id].append((kind, account_id, amount))
    problems = [f"{t} has postings but no transfer" for t in by_transfer if t not in transfers]
    committed = refunded = 0
    for transfer_id, (source, destination, amount, status, _) in transfers.items():
        posted = sorted(by_transfer.get(transfer_id, []))
        if status == "COMMITTED":
            committed += 1
            expected = [("credit", destination, amount), ("debit", source, amount)]
        elif status == "FAILED" and posted:
            refunded += 1
            expected = [("credit", source, amount), ("debit", source, amount)]
        else:
            expected = posted if status in ("PENDING", "DEBITED") and len(posted) <= 1 else []
        if posted != expected:
            kinds = Counter(kind for kind, _, _ in posted)
            problems.append(f"{transfer_id} ({status}) posted {dict(kinds)}")
    detail = (
        f"{committed} committed transfers, each one debit + one credit; "
        f"{refunded} failed ones debited and refunded"
    )
    if problems:
        detail = f"{len(problems)} transfers moved money wrongly, e.g. {'; '.join(problems[:3])}"
    return Check(APPLIED_ONCE, not problems, detail)


def _audited_once(transfers: Mapping[str, tuple[Any, ...]], audits: Sequence[Any]) -> Check:
    committed = {t: row for t, row in transfers.items() if row[3] == "COMMITTED"}
    records: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for transfer_id, *record in audits:
        records[transfer_id].append(tuple(record))
    missing = sorted(set(committed) - set(records))
    extra = sorted(set(records) - set(committed))
    duplicated = sorted(t for t, found in records.items() if len(found) > 1)
    wrong = sorted(
        t for t in committed if t in records and any(r[:3] != committed[t][:3] for r in records[t])
    )
    wrong_time = sorted(
        t for t in committed if t in records and any(r[3] != committed[t][4] for r in records[t])
    )
    problems = _found(
        (missing, "never audited"),
        (duplicated, "audited more than once"),
        (extra, "audited but not committed"),
        (wrong, "audited with wrong details"),
        (wrong_time, "audited with a committed_at other than the commit's"),
    )
    detail = f"{len(committed)} committed, {len(audits)} audit records"
    if problems:
        detail += "; " + "; ".join(problems)
    return Check(AUDITED_ONCE, not problems, detail)


def _reconciled(transfers: Mapping[str, tuple[Any, ...]], intents: Sequence[Intent]) -> Check:
    problems: list[str] = []
    told_committed = 0
    for intent in intents:
        row = transfers.get(intent.key)
        in_ledger = row is not None and row[3] == "COMMITTED"
        said = set(intent.answers)
        if "committed" in said:
            told_committed += 1
            if not in_ledger:
                problems.append(f"{intent.key} told committed, the ledger disagrees")
            elif row is not None and tuple(row[:3]) != (
                intent.from_account,
                intent.to_account,
                intent.amount_cents,
            ):
                problems.append(f"{intent.key} committed with other details than asked")
        if in_ledger and said & {"failed", "rejected", "abandoned"}:
            problems.append(f"{intent.key} told it did not happen, the ledger says it did")
        if intent.final == "pending":
            problems.append(f"{intent.key} never got a final answer")
    keys = {intent.key for intent in intents}
    committed = [t for t, row in transfers.items() if row[3] == "COMMITTED"]
    unasked = [t for t in committed if t not in keys]
    if unasked:
        problems.append(
            f"{len(unasked)} committed transfers no client asked for, e.g. {unasked[0]}"
        )
    detail = (
        f"{len(keys)} client payments, {told_committed} told committed = "
        f"{len(committed)} committed transfers in the ledger"
    )
    if told_committed != len(committed):
        detail = detail.replace(" = ", " != ")
        problems.insert(0, "counts differ")
    if problems:
        detail += f"; {len(problems)} problems, e.g. {'; '.join(problems[:3])}"
    return Check(RECONCILED, not problems, detail)


def _emailed_once(notification_db: Path, email_db: Path) -> Check:
    notifications = dict(rows(notification_db, "SELECT transfer_id, emailed FROM notifications"))
    emails = dict(rows(email_db, "SELECT idempotency_key, deliveries FROM emails"))
    owed = sorted(t for t, emailed in notifications.items() if not emailed)
    lost = sorted(t for t, emailed in notifications.items() if emailed and t not in emails)
    unknown = sorted(set(emails) - set(notifications))
    problems = _found(
        (owed, "still waiting in the outbox"),
        (lost, "marked emailed but the provider has none"),
        (unknown, "emailed without a notification"),
    )
    repeats = sum(emails.values()) - len(emails)
    detail = (
        f"{len(notifications)} notifications, {len(emails)} emails "
        f"({repeats} repeats deduplicated by the provider)"
    )
    if problems:
        detail += "; " + "; ".join(problems)
    return Check(EMAILED_ONCE, not problems, detail)


def _found(*findings: tuple[Sequence[str], str]) -> list[str]:
    """One line per finding that has keys: how many, what is wrong, and the first as an example."""
    return [f"{len(keys)} {what}, e.g. {keys[0]}" for keys, what in findings if keys]


def _nothing_owed(
    transfers: Mapping[str, tuple[Any, ...]], transaction_db: Path, gateway_dbs: Iterable[Path]
) -> Check:
    in_flight = sum(1 for row in transfers.values() if row[3] in ("PENDING", "DEBITED"))
    owed = rows(transaction_db, "SELECT count(*) FROM audit_outbox")[0][0]
    in_doubt = sum(
        rows(path, "SELECT count(*) FROM requests WHERE state IN ('in_progress', 'unknown')")[0][0]
        for path in gateway_dbs
    )
    detail = (
        f"{in_flight} sagas in flight, {owed} audit records owed, "
        f"{in_doubt} gateway requests in doubt"
    )
    return Check(NOTHING_OWED, not (in_flight or owed or in_doubt), detail)
