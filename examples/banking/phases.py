"""The demo's phases: each one a fault that puts a guarantee at risk, and what it must exercise."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from examples.banking.controlplane import REPLICA_LEASE_TTL
from examples.banking.fleet import fleet
from examples.banking.gateway import BALANCE_METHOD, NOTIFY_METHOD, TRANSFER_METHOD
from examples.banking.policies import applies, method_policy, policy_messages
from examples.banking.services.account import CLOSED_ACCOUNT
from meshbreaker.config import BreakerConfig, ConcurrencyLimit, ConfigLayer, State
from meshbreaker.control import convert
from meshbreaker.retry import RetryPolicy
from meshbreaker.v1 import control_plane_pb2 as pb

if TYPE_CHECKING:
    from examples.banking.demo import Demo, PhaseResult


@dataclass(frozen=True)
class Phase:
    """One phase: its name, what it does to the mesh, and the counters it must move."""

    slug: str
    name: str
    title: str
    run: Callable[[Demo, PhaseResult], None]
    # (counter, what it means): the run fails if the phase leaves any of them at zero.
    expects: tuple[tuple[str, str], ...] = ()


def steady(demo: Demo, phase: PhaseResult) -> None:
    """No faults."""
    demo.hold(phase)


def notification_outage(demo: Demo, phase: PhaseResult) -> None:
    """The notification service is down; transfers do not need it."""
    demo.mesh.set_chaos("notification", outage=True)
    demo.hold(phase)
    demo.mesh.set_chaos("notification")


def email_outage(demo: Demo, phase: PhaseResult) -> None:
    """The email provider answers 503 with Retry-After: emails wait in the notification outbox."""
    before = _email_refusals(demo)
    demo.mesh.set_email_chaos(failure_rate=1.0, status=503, retry_after=1)
    demo.hold(
        phase, until=lambda: phase.peaks["emails_owed"] > 0 and _email_refusals(demo) > before
    )
    demo.mesh.set_email_chaos()
    phase.marks["email_refusals"] = _email_refusals(demo) - before


def _email_refusals(demo: Demo) -> int:
    """Sends the notification service's email breaker refused so far, as the mesh reports it."""
    return sum(
        row["rejected"]
        for row in demo.mesh.breaker_rows()
        if row["caller"] == "notification" and row["name"].startswith(demo.mesh.email_url)
    )


# The xds-ejection phase's policy on the gateway's GetBalance: the breaker judges the account
# service as a whole, gRPC's outlier detection each replica. One replica of two failing every call
# fails about half of them (round robin alternates the replicas), which the usual policy (opens at
# half, or five in a row as answers arrive) would count as an outage: it would open and keep the
# calls away from the channel whose ejection needs 4 calls to the replica within 0.5 s (a breaker
# probing two calls per open period never gives it that). With this layer only a window whose
# calls all fail, or are all slow, opens it: the whole service down, never one replica.
XDS_EJECTION_POLICY = "demo-xds-ejection"
SERVICE_AS_A_WHOLE: ConfigLayer = {
    "failure_rate_threshold": 1.0,
    "slow_call_rate_threshold": 1.0,
    "consecutive_failures": 0,
}


def xds_ejection(demo: Demo, phase: PhaseResult) -> None:
    """One of the two account replicas behind xds:///accounts fails every GetBalance.

    gRPC's own xDS client ejects it (outlier detection from the policies): its failures stop
    growing while payments still commit, with the gateway's GetBalance breaker closed. For the
    phase the breaker opens only when the service as a whole fails (SERVICE_AS_A_WHOLE), so one
    replica's failures reach the channel, which ejects it: by construction, whatever the load.
    """
    from examples.banking.cluster import ACCOUNT_REPLICA
    from examples.banking.ledger import read_counters

    mesh = demo.mesh
    description = "xds-ejection phase: one replica failing is gRPC's to eject, not an outage"
    if not _apply_gateway_policy(
        demo, XDS_EJECTION_POLICY, BALANCE_METHOD, SERVICE_AS_A_WHOLE, description
    ):
        phase.notes.append("the phase's GetBalance policy did not reach the gateway within 30 s")
    mesh.set_chaos(ACCOUNT_REPLICA, failure_rate=1.0, methods=["GetBalance"])
    deadline = time.monotonic() + 30
    failures, quiet_since, commits = 0, time.monotonic(), 0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = mesh.chaos_stats(ACCOUNT_REPLICA).injected_failures
        committed = read_counters(mesh.dbs)["committed"]
        if now != failures or not failures:
            failures, quiet_since, commits = now, time.monotonic(), committed
        elif (
            time.monotonic() - quiet_since >= 1.5
            and committed > commits
            and _balance_breaker_closed(demo)
        ):
            phase.marks["replica_ejected"] = 1
            phase.notes.append(
                f"{ACCOUNT_REPLICA} failed {failures} GetBalance calls, then got none while "
                f"{committed - commits} payments committed: ejected by the gateway's channel"
            )
            break
    phase.marks["replica_failures"] = failures
    demo.hold(phase)
    mesh.set_chaos(ACCOUNT_REPLICA)
    mesh.admin("DeletePolicy", pb.DeletePolicyRequest(id=XDS_EJECTION_POLICY))
    if not _gateway_config(
        demo, BALANCE_METHOD, lambda config: not applies(SERVICE_AS_A_WHOLE, config)
    ):
        phase.notes.append("the gateway kept the phase's GetBalance policy 30 s after its delete")


def _balance_breaker_closed(demo: Demo) -> bool:
    stats = demo.mesh.gateway_stats()
    return stats is not None and any(
        b.name.endswith("/GetBalance") and b.state == State.CLOSED.value for b in stats.breakers
    )


def audit_outage(demo: Demo, phase: PhaseResult) -> None:
    """The audit service is down; records wait in the transaction service's outbox."""
    demo.mesh.set_chaos("audit", outage=True)
    demo.hold(phase)
    demo.mesh.set_chaos("audit")


def late_success(demo: Demo, phase: PhaseResult) -> None:
    """Postings and audit writes complete, but answer after the caller's deadline.

    While the fault lasts, postings are replayed (the sweeper resumes a saga whose step answered
    late) and audit records redelivered, whatever the gateway's breaker does; a resumed saga has
    a payment in doubt behind it, which its client retries with its key until final, so once the
    fault is lifted and the breaker lets Transfers through, a transfer is retried with its key.
    """
    demo.mesh.set_chaos("account", late_rate=0.12, late_delay=0.8, methods=["Debit", "Credit"])
    demo.mesh.set_chaos("audit", late_rate=0.3, late_delay=0.8)
    # Until a posting and an audit record were sent again after they were done, and a saga was
    # resumed: in every run, broken variants included (these counters move whatever the ledger,
    # the audit service or the gateway does with the repeat), so the fault always puts each
    # guarantee at risk, however few late answers the chance of a short phase gives.
    demo.hold(
        phase,
        until=moved(demo, phase, "posting_redeliveries", "audit_redeliveries", "resumed"),
    )
    demo.mesh.set_chaos("account")
    demo.mesh.set_chaos("audit")
    demo.hold(phase, seconds=0)


def moved(demo: Demo, phase: PhaseResult, *counters: str) -> Callable[[], bool]:
    """A hold condition: every one of `counters` has moved since `phase` began.

    It holds in every run, broken variants included (up to the hold's longest): name only what
    puts a guarantee at risk, which no broken variant can keep still, not what shows it kept.
    """
    return lambda: demo.met(phase, counters)


def account_fault(demo: Demo, phase: PhaseResult) -> None:
    """Credits fail for a while: sagas stall after the debit until the fault clears."""
    demo.mesh.set_chaos("account", failure_rate=1.0, methods=["Credit"])
    demo.hold(phase, fraction=0.6)
    demo.mesh.set_chaos("account")
    phase.notes.append("credits restored; stalled sagas resumed by retries and the sweeper")
    demo.hold(phase, until=lambda: demo.levels()["in_flight"] == 0, longest=10.0)


def hang(demo: Demo, phase: PhaseResult) -> None:
    """The transaction service hangs; both gateways get the same open-loop load."""
    plain = demo.plain
    assert plain is not None  # started whenever the run has a hang phase
    demo.mesh.set_chaos("transaction", hang=True)
    plain.set_rate(demo.settings.rate)
    demo.hold(phase)
    plain.set_rate(0)
    # The comparison covers every call due during the hang, queued ones included: the hang is
    # lifted only once those have finished (retries due later are not part of it).
    phase.window_end = end = time.monotonic()
    demo.hold(phase, seconds=0, until=lambda: plain.done_with(end), longest=plain.deadline + 2)
    demo.mesh.set_chaos("transaction")


def crash(demo: Demo, phase: PhaseResult) -> None:
    """SIGKILL and restart the transaction service, the account service and the gateway.

    The transaction service is killed until a kill catches sagas mid-way (read from its
    database once it is dead). Each of those has a payment in doubt behind it, which its client
    retries with its key until final, and a sweeper that resumes it: so the phase's counters
    move by construction, given the time a busy machine needs, which the last hold waits for.
    """
    mesh = demo.mesh
    step = demo.settings.duration("crash") / 4
    # Slow credits keep sagas mid-way, so a kill is sure to catch some between debit and credit.
    mesh.set_chaos("account", added_latency=0.3, methods=["Credit"])
    caught, started = 0, time.monotonic()
    for _ in range(_CRASH_TRIES):
        demo.hold(phase, seconds=step, until=lambda: demo.levels()["in_flight"] > 0, longest=30.0)
        started = time.monotonic()
        mesh.kill("transaction")
        caught = demo.levels()["in_flight"]  # the dead process's database: exactly what it left
        if caught:
            break
        mesh.restart("transaction")  # it was between sagas: try again
    killed = f"SIGKILL transaction with {caught} sagas mid-way"
    _restarted(demo, phase, "transaction", killed, started, step)
    for name in ("account", "gateway"):
        started = time.monotonic()
        if name == "gateway":
            demo.remember_gateway_counts()
        mesh.kill(name)
        _restarted(demo, phase, name, f"SIGKILL {name}", started, step)
    # Until the resumed sagas and the retried payments show (a busy machine restarts slowly).
    demo.hold(phase, seconds=0, longest=60.0)


_CRASH_TRIES = 5


def _restarted(
    demo: Demo, phase: PhaseResult, name: str, killed: str, started: float, step: float
) -> None:
    """Restart a killed process on its port, note it, and let the load run for `step`."""
    demo.say(f"{demo.clock()} {killed}; restarting it on the same port")
    demo.mesh.restart(name)
    phase.notes.append(f"{killed}; back in {time.monotonic() - started:.1f} s")
    demo.hold(phase, seconds=step, until=_now)


def replica_death(demo: Demo, phase: PhaseResult) -> None:
    """SIGKILL a control-plane replica mid-load; agents fail over; a write goes through another."""
    mesh = demo.mesh
    demo.hold(phase, fraction=0.3, until=_now)
    started = time.monotonic()
    killed = mesh.control_planes[0]
    mesh.kill(killed)
    demo.say(f"{demo.clock()} SIGKILL {killed} ({mesh.targets[killed]}); its agents fail over")
    # Once the dead replica's lease has expired its records are gone, so every instance the
    # survivors list reports to a survivor; reports stay fresh throughout (fail-static agents).
    expired = started + REPLICA_LEASE_TTL + 1.0
    instances = len(mesh.agents)

    def moved() -> bool:
        listed = mesh.instances()
        return time.monotonic() >= expired and len(listed) == instances

    demo.hold(phase, seconds=0, until=moved, longest=30.0)
    phase.marks["failed_over"] = len(mesh.instances()) if moved() else 0
    phase.notes.append(
        f"every agent reports to a surviving replica {time.monotonic() - started:.1f} s after the"
        " kill (the dead replica's instances left with its lease)"
    )
    # A write through a survivor reaches every process.
    revision: int = mesh.admin(
        "PutPolicy", pb.PutPolicyRequest(policies=policy_messages())
    ).revision
    written = time.monotonic()

    def applied() -> bool:
        return sum(i.applied_revision >= revision for i in mesh.instances()) == instances

    demo.hold(phase, seconds=0, until=applied, longest=30.0)
    phase.marks["applied_after_failover"] = (
        sum(i.applied_revision >= revision for i in mesh.instances()) if applied() else 0
    )
    phase.notes.append(
        f"revision {revision}, put through a survivor, applied by every process in"
        f" {time.monotonic() - written:.1f} s"
    )
    mesh.restart(killed)
    phase.notes.append(f"{killed} restarted on its port; agents spread back as connections age")
    demo.hold(phase, fraction=0.3, until=_now)


def _now() -> bool:
    """A hold that ends at its duration, whatever the phase's counters show."""
    return True


def contention(demo: Demo, phase: PhaseResult) -> None:
    """Hot accounts, amounts near their balance, some payments to a closed account."""
    hot = demo.mesh.seed.hot_ids()
    ceiling = demo.mesh.seed.hot_cents

    def pick(rng: random.Random) -> tuple[str, str, int]:
        source = rng.choice(hot)
        if rng.random() < 0.15:
            return source, CLOSED_ACCOUNT, rng.randint(ceiling // 10, ceiling // 4)
        destination = rng.choice([a for a in hot if a != source])
        return source, destination, rng.randint(ceiling // 2, ceiling)

    demo.gateway.picker = pick
    # By chance (a payment's accounts and amount): held until both happened, in every run.
    demo.hold(phase, until=moved(demo, phase, "insufficient_funds", "refunds"))
    demo.gateway.picker = demo.everyday


def override(demo: Demo, phase: PhaseResult) -> None:
    """An operator force-opens the notification breaker through the control plane."""
    sent = time.monotonic()
    demo.mesh.admin(
        "ForceState",
        pb.ForceStateRequest(
            selector=pb.Selector(method=NOTIFY_METHOD), override=pb.OVERRIDE_FORCED_OPEN
        ),
    )
    seen = demo.wait_for_breaker(NOTIFY_METHOD, State.FORCED_OPEN)
    if seen is None:
        phase.notes.append("the override did not reach the gateway within 30 s")
        demo.hold(phase)
        return
    phase.notes.append(
        f"the gateway's breaker was FORCED_OPEN {(seen - sent) * 1000:.0f} ms after the "
        "ForceState call"
    )
    before = demo.gateway_counts(wait=30)["notifications_sent"]
    demo.hold(phase)
    # Only payments already past the breaker when it flipped can still notify: at most one per
    # client worker.
    after = demo.gateway_counts(wait=30)["notifications_sent"]
    phase.marks["notifications_sent_after_override"] = after - before


# The transaction service serves three Transfers at its base latency (25 a second); more queue,
# and more than six overflow. The clients offer more than that, so its queue fills.
OVERLOAD = {"capacity": 3, "base_latency": 0.12, "methods": ["Transfer"]}
OVERLOAD_POLICY = "demo-overload"
# Only RESOURCE_EXHAUSTED is retried: the service sheds it before any work, so when a later
# attempt is refused locally, nothing has moved and the gateway may say so.
_SHED = frozenset({"RESOURCE_EXHAUSTED"})
_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05, retryable_codes=_SHED)
# Both halves: the breaker judges the failure rate only (a run of sheds from a service that is
# still serving most calls is no outage), so what differs between them is the overload controls.
_BREAKER: ConfigLayer = {"consecutive_failures": 0, "idempotent": True}
WITHOUT_CONTROLS: ConfigLayer = {
    **_BREAKER,
    "retry": dataclasses.replace(_RETRY, budget_ratio=1000.0),  # every failure retried: no budget
}
WITH_CONTROLS: ConfigLayer = {
    **_BREAKER,
    # At a few dozen calls a second the 10 retries/s reserve would dominate the 20 %.
    "retry": dataclasses.replace(_RETRY, budget_min_per_second=1),
    "throttle_k": 2.0,
    "concurrency_limit": ConcurrencyLimit.ADAPTIVE,
    "max_concurrent_calls": 8,  # the adaptive limit's cap: the clients' workers
}


def overload(demo: Demo, phase: PhaseResult) -> None:
    """The transaction service is overloaded, not down: without the overload controls, then with."""
    demo.mesh.set_chaos("transaction", **OVERLOAD)
    halves = (
        ("without", WITHOUT_CONTROLS, "unbudgeted retries"),
        ("with", WITH_CONTROLS, "budgeted retries, throttle_k=2, adaptive concurrency limit"),
    )
    for label, layer, what in halves:
        if not _apply_transfer_policy(demo, layer):
            phase.notes.append(f"the {label} policy did not reach the gateway within 30 s")
        before, started = _overload_counts(demo), time.monotonic()
        # The first half runs its time; the second until the phase has exercised its purpose.
        demo.hold(phase, fraction=0.5, until=(lambda: True) if label == "without" else None)
        after, seconds = _overload_counts(demo), time.monotonic() - started
        moved = {name: after[name] - before[name] for name in after}
        calls = moved["transfer_calls"]
        phase.marks["overloaded"] = phase.marks.get("overloaded", 0) + moved["overloaded"]
        phase.marks[f"committed_{label}_controls"] = moved["committed"]
        phase.marks[f"attempts_{label}_controls"] = moved["attempts"]
        phase.marks[f"transfer_calls_{label}_controls"] = calls
        phase.notes.append(
            f"{label} overload controls ({what}): {moved['committed'] / seconds:.1f} payments "
            f"committed/s; {moved['attempts'] / max(calls, 1):.2f} Transfer attempts per gateway "
            f"call; {moved['overloaded']} shed by the service, "
            f"{moved['overload_refused']} by the gateway itself"
        )
    demo.mesh.set_chaos("transaction")
    demo.mesh.admin("DeletePolicy", pb.DeletePolicyRequest(id=OVERLOAD_POLICY))
    # The next phase starts from the gateway's usual Transfer config, not from a shedding one.
    if not _gateway_config(demo, TRANSFER_METHOD, lambda config: config.throttle_k is None):
        phase.notes.append("the gateway kept the overload policy for 30 s after it was deleted")


def _apply_transfer_policy(demo: Demo, layer: ConfigLayer) -> bool:
    """Put `layer` on the gateway's Transfer method; whether the gateway applied it within 30 s."""
    description = "overload phase: the gateway's retries and overload controls"
    return _apply_gateway_policy(demo, OVERLOAD_POLICY, TRANSFER_METHOD, layer, description)


def _apply_gateway_policy(
    demo: Demo, policy_id: str, method: str, layer: ConfigLayer, description: str
) -> bool:
    """Put `layer` on the gateway's `method`; whether the gateway applied it within 30 s."""
    demo.mesh.admin("PutPolicy", method_policy(policy_id, "gateway", method, layer, description))
    return _gateway_config(demo, method, lambda config: applies(layer, config))


def _gateway_config(demo: Demo, method: str, wanted: Callable[[BreakerConfig], bool]) -> bool:
    """Whether the gateway's breaker of `method` reports a config `wanted` accepts within 30 s."""
    request = pb.ListBreakersRequest(service="gateway", method=method, include_instances=True)

    def reported() -> bool:
        groups = demo.mesh.admin("ListBreakers", request).groups
        configs = [
            convert.config_from_proto(item.snapshot.config)
            for group in groups
            for item in group.instance_breakers
        ]
        return bool(configs) and all(wanted(config) for config in configs)

    deadline = time.monotonic() + 30
    while not reported():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _overload_counts(demo: Demo) -> dict[str, int]:
    """The gateway's Transfer calls and answers, and what the transaction service saw."""
    gateway = demo.gateway_counts(wait=30)
    chaos = demo.mesh.chaos_stats("transaction")
    return {
        "transfer_calls": gateway["transfer_calls"],
        "committed": gateway["committed"],
        "overload_refused": gateway["overload_refused"],
        "attempts": chaos.calls,
        "overloaded": chaos.overloaded,
    }


def recovery(demo: Demo, phase: PhaseResult) -> None:
    """Override lifted, nothing faulted: breakers close on their own, nothing is owed."""
    demo.mesh.admin(
        "ForceState",
        pb.ForceStateRequest(selector=pb.Selector(method=NOTIFY_METHOD), override=pb.OVERRIDE_NONE),
    )
    for service in ("account", "transaction", "notification", "audit"):
        demo.mesh.set_chaos(service)
    demo.mesh.set_email_chaos()
    demo.hold(phase, until=demo.settled, longest=demo.settings.recovery_max)


LATE_SUCCESS = Phase(
    "late-success",
    "late success",
    "postings and audit writes complete after the caller's deadline",
    late_success,
    (
        ("multi_attempt", "transfers retried with their key"),
        ("replayed_postings", "postings answered from the ledger"),
        ("audit_duplicates", "audit deliveries deduplicated"),
    ),
)

PHASES = (
    Phase("steady", "steady state", "all services healthy", steady),
    LATE_SUCCESS,
    Phase(
        "notification-outage",
        "notification outage",
        "notification service down: transfers go on without it",
        notification_outage,
        (("notifications_skipped", "notifications skipped by the open breaker"),),
    ),
    Phase(
        "email-outage",
        "email outage",
        "the HTTP email provider answers 503 + Retry-After: its breaker opens, emails wait",
        email_outage,
        (
            ("email_refusals", "email sends refused by the provider's open HTTP breaker"),
            ("emails_owed_peak", "emails waiting in the notification outbox"),
        ),
    ),
    Phase(
        "audit-outage",
        "audit outage",
        "audit service down: records wait in the transaction service's outbox",
        audit_outage,
        (("audit_owed_peak", "audit records waiting in the outbox"),),
    ),
    Phase(
        "account-fault",
        "account fault",
        "every Credit fails for a while: sagas stall after the debit",
        account_fault,
        (("swept", "stalled sagas resumed by the sweeper"),),
    ),
    Phase(
        "hang",
        "transaction hang",
        "transaction service hangs: the same open-loop load on both gateways, 1 s deadline",
        hang,
        (("refused", "payments refused at once by the gateway's breaker"),),
    ),
    Phase(
        "overload",
        "overload",
        "transaction service overloaded, not down: without the overload controls, then with",
        overload,
        (
            ("overloaded", "Transfer attempts the overloaded service shed"),
            ("overload_refused", "Transfers the gateway's overload controls shed itself"),
        ),
    ),
    Phase(
        "crash",
        "crash and restart",
        "SIGKILL the transaction service, the account service and the gateway mid-load",
        crash,
        (
            ("resumed", "sagas resumed where a killed process left them"),
            ("multi_attempt", "transfers retried with their key"),
        ),
    ),
    Phase(
        "contention",
        "contention",
        "hot accounts, amounts near their balance, payments to a closed account",
        contention,
        (
            ("insufficient_funds", "overdrafts refused"),
            ("refunds", "debits refunded from a closed account"),
        ),
    ),
    Phase(
        "fleet",
        "fleet",
        "three gateways; the notification service dies and recovers: alone, then as a fleet",
        fleet,
        (
            ("probes_without", "probes of the dead service, each instance on its own"),
            ("fleet_opened", "gateway instances opened by the quorum's fleet decision"),
            ("periods_with", "open periods the fleet probed in together"),
        ),
    ),
    Phase(
        "override",
        "operator override",
        "operator force-opens SendTransferNotification through the control plane",
        override,
        (("notifications_skipped", "notifications skipped by the forced-open breaker"),),
    ),
    Phase(
        "recovery",
        "recovery",
        "faults cleared, override lifted: breakers close on their own, nothing is owed",
        recovery,
    ),
)
# Only with control-plane replicas (--store etcd --replicas N): inserted before recovery.
REPLICA_DEATH = Phase(
    "replica-death",
    "replica death",
    "SIGKILL a control-plane replica mid-load: agents fail over, writes go through another",
    replica_death,
    (
        ("failed_over", "processes reporting to a surviving replica"),
        ("applied_after_failover", "processes that applied a write made after the kill"),
    ),
)
# With --xds only: the gateway reaches two account replicas through xds:///accounts.
XDS_EJECTION = Phase(
    "xds-ejection",
    "xDS ejection",
    "one of two account replicas behind xds:///accounts fails: gRPC's xDS client ejects it",
    xds_ejection,
    (
        ("replica_failures", "GetBalance calls the failing replica failed"),
        ("replica_ejected", "the failing replica ejected while payments went on"),
    ),
)
BY_SLUG = {phase.slug: phase for phase in (*PHASES, REPLICA_DEATH, XDS_EJECTION)}


def phases_for(xds: bool) -> tuple[Phase, ...]:
    """The demo's phases; with xDS the ejection phase comes before recovery."""
    return (*PHASES[:-1], XDS_EJECTION, PHASES[-1]) if xds else PHASES
