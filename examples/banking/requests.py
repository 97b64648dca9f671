"""The gateway's idempotency log, one row per client key: a retry resumes or replays."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path

from examples.banking.services.common import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    idempotency_key TEXT PRIMARY KEY,
    from_account    TEXT NOT NULL,
    to_account      TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL,
    -- in_progress: an attempt is running it now; unknown: it was sent and its outcome is not
    -- known (the next attempt resumes it by id); committed / failed / rejected: the answer, kept
    -- for replay. rejected means nothing was ever sent for this key, and nothing ever will be: a
    -- later attempt with the key (the client's, or a stale one still queued) gets the refusal
    -- again instead of moving money the client was told never moved.
    state           TEXT NOT NULL
                    CHECK (state IN ('in_progress', 'unknown', 'committed', 'failed', 'rejected')),
    reason          TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 1,
    updated_at      REAL NOT NULL
);
"""


# The answers a key keeps for good: every later attempt with the key gets the same one.
FINAL = frozenset({"committed", "failed", "rejected"})


class Claim(enum.Enum):
    """What the log says about a key when a request for it arrives."""

    NEW = "new"  # never seen: this attempt owns it and may check the balance first
    RESUME = "resume"  # sent before, outcome unknown: this attempt owns it and resends it by id
    IN_PROGRESS = "in_progress"  # another attempt is running it right now
    ANSWERED = "answered"  # a final answer exists: replay it
    MISMATCH = "mismatch"  # the key was used for a different transfer


@dataclass(frozen=True)
class Entry:
    """A claim and, for ANSWERED, the answer given before."""

    claim: Claim
    state: str = ""
    reason: str = ""


class RequestLog:
    """SQLite rows keyed by the client's idempotency key."""

    def __init__(self, path: str | Path) -> None:
        self._db = Database(path, SCHEMA)
        # An attempt a previous gateway process was running died with it: its outcome is unknown.
        with self._db.transaction() as conn:
            conn.execute("UPDATE requests SET state = 'unknown' WHERE state = 'in_progress'")

    def claim(self, key: str, from_account: str, to_account: str, amount: int) -> Entry:
        """Look the key up before anything else, and take ownership if it is free."""
        now = time.time()
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT from_account, to_account, amount_cents, state, reason FROM requests "
                "WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO requests VALUES (?, ?, ?, ?, 'in_progress', '', 1, ?)",
                    (key, from_account, to_account, amount, now),
                )
                return Entry(Claim.NEW)
            if tuple(row[:3]) != (from_account, to_account, amount):
                return Entry(Claim.MISMATCH)
            state, reason = row[3], row[4]
            if state in FINAL:
                return Entry(Claim.ANSWERED, state, reason)
            if state == "in_progress":
                return Entry(Claim.IN_PROGRESS)
            conn.execute(
                "UPDATE requests SET state = 'in_progress', attempts = attempts + 1, "
                "updated_at = ? WHERE idempotency_key = ?",
                (now, key),
            )
            return Entry(Claim.RESUME)

    def settle(self, key: str, state: str, reason: str = "") -> None:
        """Record the outcome of the attempt that owns the key: unknown, or a final answer."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE requests SET state = ?, reason = ?, updated_at = ? "
                "WHERE idempotency_key = ?",
                (state, reason, time.time(), key),
            )

    def close(self) -> None:
        """Close the database."""
        self._db.close()
