"""What the services' databases say happened: replays, resumed sagas, refunds, work still owed."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from examples.banking.invariants import rows

# Counter name -> (database, query returning one number). Totals since the start of the run;
# a phase's share is the difference between two readings.
QUERIES: dict[str, tuple[str, str]] = {
    "committed": ("transaction", "SELECT count(*) FROM transfers WHERE status = 'COMMITTED'"),
    "multi_attempt": ("transaction", "SELECT count(*) FROM transfers WHERE attempts > 1"),
    "resumed": ("transaction", "SELECT coalesce(sum(resumes), 0) FROM transfers"),
    "swept": ("transaction", "SELECT coalesce(sum(swept), 0) FROM transfers"),
    "overdrafts_at_debit": (
        "transaction",
        "SELECT count(*) FROM transfers WHERE status = 'FAILED' AND reason = 'insufficient funds'",
    ),
    "refunds": (
        "transaction",
        "SELECT count(*) FROM transfers WHERE status = 'FAILED' AND reason LIKE '%refunded'",
    ),
    "in_flight": (
        "transaction",
        "SELECT count(*) FROM transfers WHERE status IN ('PENDING', 'DEBITED')",
    ),
    "audit_owed": ("transaction", "SELECT count(*) FROM audit_outbox"),
    "replayed_postings": ("account", "SELECT coalesce(sum(replays), 0) FROM postings"),
    "audit_duplicates": ("audit", "SELECT coalesce(sum(deliveries - 1), 0) FROM audit_log"),
    # What puts a guarantee at risk, which no broken variant can keep at zero (a phase holds its
    # fault on these): a posting sent again with its key after the ledger applied it (answered
    # from the ledger, or applied again by a ledger that forgot it), an audit record delivered
    # again after the audit service stored it (deduplicated, or stored twice).
    "posting_redeliveries": (
        "account",
        "SELECT coalesce(sum(replays), 0) + count(*) - "
        "count(DISTINCT transfer_id || ' ' || kind || ' ' || account_id) FROM postings",
    ),
    "audit_redeliveries": (
        "audit",
        "SELECT coalesce(sum(deliveries), 0) - count(DISTINCT transfer_id) FROM audit_log",
    ),
    "notifications": ("notification", "SELECT count(*) FROM notifications"),
    "emails_owed": ("notification", "SELECT count(*) FROM notifications WHERE emailed = 0"),
    "emails": ("email-provider", "SELECT count(*) FROM emails"),
    "email_repeats": ("email-provider", "SELECT coalesce(sum(deliveries - 1), 0) FROM emails"),
}
# Levels, not running totals: a phase reports their peak, not a difference.
LEVELS = frozenset({"in_flight", "audit_owed", "emails_owed"})


def read_counters(dbs: Mapping[str, Path]) -> dict[str, int]:
    """Every counter now (a database that cannot be read right now counts as 0)."""
    counters = {}
    for name, (service, sql) in QUERIES.items():
        try:
            counters[name] = int(rows(dbs[service], sql)[0][0])
        except sqlite3.Error:
            counters[name] = 0
    return counters


def since(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """Running totals as differences; levels as they are now."""
    return {k: v if k in LEVELS else v - before.get(k, 0) for k, v in now.items()}
