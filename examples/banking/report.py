"""The demo's plain-text output: percentiles, latency by outcome, the closing summary."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from examples.banking.fleet import fleet_table
from examples.banking.load import RESOLVE_TIMEOUT

if TYPE_CHECKING:
    from examples.banking.demo import Settings
    from examples.banking.load import Call

OUTCOMES = ("answered", "refused", "in doubt", "deadline", "unreachable")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def short_method(name: str) -> str:
    """'/bank.v1.AccountService/GetBalance' -> 'AccountService/GetBalance'; URLs kept whole.

    A long database path keeps its scheme and file name: 'sqlite:///.../account.db'.
    """
    if "://" in name:
        if len(name) <= 44:
            return name
        scheme, _, path = name.partition("://")
        return f"{scheme}://.../{path.rsplit('/', 1)[-1]}"[:44]
    service, _, method = name.rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


def ms(seconds: float) -> str:
    """Seconds as a short millisecond string."""
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def latency_rows(calls: Sequence[Call]) -> dict[str, dict[str, Any]]:
    """Count, p50, p99 and max of the calls' latencies, per outcome and for all of them."""
    groups: dict[str, list[float]] = {"all": [c.latency for c in calls]}
    for call in calls:
        groups.setdefault(call.outcome, []).append(call.latency)
    return {
        name: {
            "count": len(values),
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values, default=0.0),
            # With fewer than 100 samples the nearest-rank p99 is simply the slowest one.
            "p99_is_max": len(values) < 100,
        }
        for name, values in groups.items()
    }


def p99_text(row: dict[str, Any]) -> str:
    """A p99, saying so when it is only the maximum of a few samples."""
    text = ms(row["p99"])
    return f"{text} (max of {row['count']})" if row["p99_is_max"] and row["count"] else text


METRIC_WORDS = {
    "failed_over": "processes reporting to a surviving replica",
    "applied_after_failover": "processes that applied a write made after the kill",
    "multi_attempt": "transfers retried with their key",
    "replayed_postings": "postings answered from the ledger",
    "audit_duplicates": "audit deliveries deduplicated",
    "resumed": "sagas resumed where they stopped",
    "swept": "stalled sagas resumed by the sweeper",
    "insufficient_funds": "overdrafts refused",
    "refunds": "refunds",
    "audit_owed_peak": "audit records owed at peak",
    "notifications_skipped": "notifications skipped by the breaker",
    "refused": "payments refused at once",
    "overloaded": "Transfer attempts shed by the overloaded service",
    "overload_refused": "Transfers the gateway shed itself",
    "email_refusals": "email sends refused by the open HTTP breaker",
    "emails_owed_peak": "emails waiting in the outbox at peak",
    "replica_failures": "GetBalance calls failed by the failing replica",
    "replica_ejected": "replica ejected by outlier detection (1 = yes)",
    "probes_without": "probes of the dead service, each instance on its own",
    "fleet_opened": "gateway instances opened by the quorum's fleet decision",
    "periods_with": "open periods the fleet probed in together",
}


def print_summary(say: Callable[[str], None], summary: dict[str, Any], settings: Settings) -> None:
    """The closing report."""
    say("")
    say("=== summary")
    say(
        f"  {'phase':<20}{'secs':>6}{'committed':>10}{'failed':>7}{'refused':>8}"
        f"{'in doubt':>9}{'p50':>11}{'p99':>11}"
    )
    for phase in summary["phases"]:
        s = phase["statuses"]
        doubt = s.get("pending", 0) + s.get("deadline", 0) + s.get("unreachable", 0)
        doubt += s.get("abandoned", 0)
        latency = phase["latency"]["all"]
        say(
            f"  {phase['name']:<20}{phase['seconds']:>6.1f}{s.get('committed', 0):>10}"
            f"{s.get('failed', 0):>7}{s.get('rejected', 0):>8}{doubt:>9}"
            f"{ms(latency['p50']):>11}{ms(latency['p99']):>11}"
        )
    say("  (calls from the clients of the gateway with breakers; failed: a definitive no, i.e.")
    say("  insufficient funds, or a closed account: debited, then refunded; refused: a breaker")
    say("  said no at once, nothing moved; in doubt: no final answer in time, so the client")
    say("  retried it with the same key until it had one)")
    say("  what each phase exists to exercise (the run fails if one shows zero):")
    for phase in summary["phases"]:
        metrics = phase["metrics"]
        shown = [f"{metrics.get(c, 0)} {METRIC_WORDS.get(c, c)}" for c in phase["expects"]]
        zero = [c for c in phase["expects"] if metrics.get(c, 0) <= 0]
        if shown:
            verdict = "ZERO: " + ", ".join(zero) if zero else "ok"
            say(f"    {phase['name']:<20}{', '.join(shown)}  [{verdict}]")
        for note in phase["notes"]:
            say(f"    {phase['name']:<20}{note}")
    totals = {
        k: sum(p["metrics"].get(k, 0) for p in summary["phases"])
        for k in ("multi_attempt", "replayed_postings", "audit_duplicates", "resumed", "swept")
    }
    say(
        f"  replays over the run: {totals['multi_attempt']} transfers with more than one attempt, "
        f"{totals['replayed_postings']} replayed postings,"
    )
    say(
        f"  {totals['audit_duplicates']} audit duplicates (deduplicated), {totals['resumed']} "
        f"resumed sagas ({totals['swept']} by the sweeper)"
    )
    notes = {
        k: sum(p["metrics"].get(k, 0) for p in summary["phases"])
        for k in ("notifications_sent", "notifications_failed", "notifications_skipped")
    }
    say(
        f"  notifications: {notes['notifications_sent']} sent, {notes['notifications_failed']} "
        f"failed, {notes['notifications_skipped']} skipped by an open breaker; "
        "no payment failed because of them"
    )
    if summary["hang"]:
        _print_hang(say, summary, settings)
    for phase in summary["phases"]:
        if phase["slug"] == "fleet":
            fleet_table(say, phase["metrics"])
    if summary["unresolved"]:
        left = summary["unresolved"]
        say(f"  {left} payments had no final answer {RESOLVE_TIMEOUT:.0f} s after the load stopped")
    say("  invariants (the services' own SQLite databases, and every answer the clients got):")
    for check in summary["invariants"]:
        say(f"    [{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    verdict = "all invariants hold" if summary["ok"] else "AN INVARIANT FAILED"
    say(f"=== {verdict}; details in {summary['run_dir']}/summary.json")


def _print_hang(say: Callable[[str], None], summary: dict[str, Any], settings: Settings) -> None:
    say("  transaction hang: TransferFunds as the clients saw it, the same open-loop load on both")
    say(
        f"  gateways: {settings.rate:.0f} new payments/s, {settings.workers} workers each, "
        "latency from when a call was due,"
    )
    say("  2 s client deadline, 1 s deadline for Transfer in the gateway")
    say(f"    {'gateway':<18}{'outcome':<13}{'calls':>6}{'p50':>11}   p99")
    for label, row in summary["hang"].items():
        shown = label
        for outcome in OUTCOMES:
            stats = row["latency"].get(outcome)
            if not stats:
                continue
            say(
                f"    {shown:<18}{outcome:<13}{stats['count']:>6}{ms(stats['p50']):>11}   "
                f"{p99_text(stats)}"
            )
            shown = ""
    rows = summary["hang"]
    guarded, plain = rows["with breakers"], rows["without breakers"]
    say(
        f"    waited the full 1 s deadline or longer: {guarded['waited_deadline']:.1%} of calls "
        f"with breakers, {plain['waited_deadline']:.1%} without"
    )
    say(
        f"    committed transfers per second: {guarded['committed_per_s']:.1f} with breakers, "
        f"{plain['committed_per_s']:.1f} without (the transaction service hangs for both)"
    )
