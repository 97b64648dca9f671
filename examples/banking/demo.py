"""`make demo`: the banking mesh under chaos that attacks every guarantee, and nothing lost."""

from __future__ import annotations

import argparse
import gc
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from examples.banking.cluster import (
    EMAIL_PROVIDER,
    FLEET_GATEWAYS,
    GATEWAYS,
    SERVICES,
    Mesh,
    Seed,
)
from examples.banking.fleet import fleet_check
from examples.banking.invariants import Check, check_invariants
from examples.banking.ledger import LEVELS, read_counters, since
from examples.banking.load import RESOLVE_TIMEOUT, Call, Client
from examples.banking.phases import (
    BY_SLUG,
    PHASES,
    REPLICA_DEATH,
    XDS_EJECTION,
    Phase,
    phases_for,
)
from examples.banking.report import print_summary, short_method
from examples.banking.screenshot import TIMEOUT as SCREENSHOT_TIMEOUT
from examples.banking.screenshot import capture
from meshbreaker.config import State

EXERCISED = "every phase exercised what it is meant to"
# How much longer than its longest an outage goes on for its picture, waiting for the control
# plane to report its breaker open (seconds on an idle machine; a loaded one lags).
PICTURE_WAIT = 120.0


@dataclass(frozen=True)
class Settings:
    """How long each phase runs and how hard the clients push."""

    durations: Mapping[str, float]
    view_interval: float
    rate: float = 40.0  # new payments per second, per client
    workers: int = 8  # per client
    recovery_max: float = 20.0

    def duration(self, slug: str) -> float:
        """Seconds phase `slug` runs (the recovery phase runs until settled)."""
        return self.durations.get(slug, 2.0)


FULL = Settings(
    durations={
        "steady": 5,
        "notification-outage": 4,
        "email-outage": 4,
        "audit-outage": 4,
        "late-success": 6,
        "account-fault": 5,
        "hang": 6,
        "overload": 12,
        "crash": 8,
        "contention": 5,
        "override": 4,
        "replica-death": 6,
        "xds-ejection": 4,
        "recovery": 1,
    },
    view_interval=2.0,
)
QUICK = Settings(
    # Short: a phase goes on past its duration until it has exercised what it exists to.
    durations={
        "steady": 1,
        "notification-outage": 1,
        "email-outage": 1,
        "audit-outage": 1,
        "late-success": 2,
        "account-fault": 2,
        "hang": 2,
        "overload": 6,
        "crash": 3,
        "contention": 1.5,
        "override": 1,
        "replica-death": 2,
        "xds-ejection": 1.5,
        "recovery": 1,
    },
    view_interval=1.0,
    rate=30.0,
)


@dataclass
class PhaseResult:
    """Everything one phase produced."""

    phase: Phase
    started: float = 0.0
    ended: float = 0.0
    calls: dict[str, list[Call]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    peaks: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)
    window_end: float = 0.0  # the hang phase: calls due after this are not compared
    marks: dict[str, int] = field(default_factory=dict)  # a phase's own extra figures
    gateway_before: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        """The phase's name."""
        return self.phase.name

    @property
    def seconds(self) -> float:
        """How long it ran."""
        return self.ended - self.started


class Demo:
    """Starts the mesh, drives the clients through the phases, prints the view and the summary."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        out: TextIO,
        *,
        phases: Sequence[Phase] = PHASES,
        breaks: Mapping[str, Sequence[str]] | None = None,
        seed: Seed | None = None,
        store: str = "sqlite",
        replicas: int = 1,
        screenshot: Path | None = None,
        xds: bool = False,
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.out = out
        self.phases = list(phases)
        self.mesh = Mesh(run_dir, seed or Seed(), breaks or {}, self.say, store, replicas, xds=xds)
        # A phase runs on until it has exercised what it exists to exercise; a broken variant
        # (test only) may keep that from ever showing, so it gets the plain duration, or holds
        # until what the phase itself waits for (counters no variant can keep still, phases.moved).
        self.extend = not breaks
        self.results: list[PhaseResult] = []
        self._started = time.monotonic()
        self._gateway_base: Counter[str] = Counter()
        self._gateway_last: Counter[str] = Counter()
        self._clients: list[Client] = []
        self._fleet_clients: list[Client] = []  # of the fleet phase's other gateway instances
        self.screenshot = screenshot  # a picture of the console once a breaker opens in an outage
        self._shooting: threading.Thread | None = None

    # ---------------------------------------------------------------- output

    def say(self, text: str = "") -> None:
        """Print a line at once (the demo's output is meant to be watched live)."""
        print(text, file=self.out, flush=True)

    def clock(self) -> str:
        """Seconds since the demo started, for the live view."""
        return f"[{time.monotonic() - self._started:5.1f}s]"

    # ----------------------------------------------------------------- setup

    def everyday(self, rng: random.Random) -> tuple[str, str, int]:
        """An ordinary payment: two of the ordinary accounts, $1 to $500."""
        source, destination = rng.sample(self.mesh.seed.ordinary(), 2)
        return source, destination, rng.randint(100, 50_000)

    def start(self) -> None:
        """The mesh, then one client per gateway (same rate, same workers when both run)."""
        self.say(f"meshbreaker banking demo — run directory {self.run_dir}")
        plain = any(phase.slug == "hang" for phase in self.phases)
        self.mesh.start(plain=plain)
        settings = self.settings
        self.gateway = self._client("g", self.mesh.targets["gateway"], 1)
        self.plain = self._client("p", self.mesh.targets["plain-gateway"], 2) if plain else None
        # Everything allocated so far lives for the whole run; freezing it keeps full garbage
        # collections (which stall every thread) short while latencies are measured.
        gc.collect()
        gc.freeze()
        self.say(
            f"clients: {settings.rate:.0f} new payments/s (open loop), {settings.workers} "
            "workers, 2 s deadline; a payment in doubt is retried with its own key"
        )

    def _client(self, name: str, target: str, seed: int) -> Client:
        """A started client of the gateway at `target` (no arrivals until its rate is set)."""
        made = Client(name, target, self.everyday, workers=self.settings.workers, seed=seed)
        self._clients.append(made)
        return made.start()

    def start_fleet(self) -> int:
        """The fleet phase's two more gateway instances, each with a client; how many in all."""
        if not self._fleet_clients:
            targets = self.mesh.start_fleet_gateways()
            self.say(
                f"{self.clock()} two more gateway instances: "
                + ", ".join(f"{n} {t}" for n, t in zip(FLEET_GATEWAYS, targets, strict=True))
            )
            for number, target in enumerate(targets, 2):
                self._fleet_clients.append(self._client(f"g{number}", target, 10 + number))
        return 1 + len(self._fleet_clients)

    def fleet_load(self, spread: bool) -> None:
        """Spread the clients' load over the three gateway instances (half on the first, a
        quarter on each other one), or put it back on the first."""
        rate = self.settings.rate
        self.gateway.set_rate(rate / 2 if spread else rate)
        for client in self._fleet_clients:
            client.set_rate(rate / 4 if spread else 0.0)

    # ---------------------------------------------------------------- phases

    def run(self) -> int:
        """The whole demo; returns the process exit status."""
        self.start()
        self.gateway.set_rate(self.settings.rate)
        for number, phase in enumerate(self.phases, 1):
            result = PhaseResult(phase, started=time.monotonic())
            result.before = read_counters(self.mesh.dbs)
            result.gateway_before = self.gateway_counts(wait=30)
            self.results.append(result)
            self.say()
            self.say(f"{self.clock()} === phase {number}: {phase.name} — {phase.title}")
            phase.run(self, result)
            following = self.phases[number : number + 1]
            if following and following[0].slug != "recovery":
                # Each phase starts from a mesh whose breakers have all closed again, so one
                # phase's fault (and its backoff) does not spill into the next.
                self.hold(result, seconds=0, until=self.all_closed, longest=15.0)
            result.ended = time.monotonic()
            result.counters = self.counters(result, wait=30)
            for client in self._clients:
                result.calls[client.name] = result.calls.get(client.name, []) + client.take_calls()
            self.view(result)
        return self.finish()

    def counters(self, phase: PhaseResult, wait: float = 0.0) -> dict[str, int]:
        """The databases' and the gateway's counters since `phase` began."""
        counters = since(read_counters(self.mesh.dbs), phase.before)
        for name, count in self.gateway_counts(wait).items():
            counters[name] = count - phase.gateway_before.get(name, 0)
        return counters

    def hold(
        self,
        phase: PhaseResult,
        *,
        seconds: float | None = None,
        fraction: float = 1.0,
        until: Callable[[], bool] | None = None,
        longest: float | None = None,
    ) -> None:
        """Let the load run: at least `seconds`, then until `until()` holds (up to `longest`).

        By default a phase goes on past its duration until it has exercised what it exists to
        exercise, for up to `longest` (so a busy machine cannot make the run fail for want of
        samples).
        """
        if seconds is None:
            seconds = self.settings.duration(phase.phase.slug) * fraction
        if until is None and phase.phase.expects and self.extend:
            until = lambda: self.met(phase)  # noqa: E731
        if longest is None:
            # Generous: a phase waits for what it causes; a busy machine only makes it slower.
            longest = max(3 * seconds + 5, 30.0)
        started = time.monotonic()
        next_view = started + self.settings.view_interval
        while True:
            elapsed = time.monotonic() - started
            levels = self.levels()
            for name, value in levels.items():
                phase.peaks[name] = max(phase.peaks[name], value)
            done = until is None or elapsed >= longest or until()
            # The picture is of the fault: its phase goes on until Chromium has taken it (the
            # breaker opens at once, the control plane hears of it with the next report).
            owed = self.owes_screenshot(phase) and elapsed < longest + PICTURE_WAIT
            if elapsed >= seconds and done and not owed and not self.taking_screenshot():
                break
            if time.monotonic() >= next_view:
                self.view(phase)
                next_view += self.settings.view_interval
            self.shoot_console(phase)
            time.sleep(0.2)
        if self.owes_screenshot(phase):
            self.say(
                f"{self.clock()} no screenshot: the control plane never reported a"
                " NotificationService breaker open during the outage"
            )
            self.screenshot = None

    def owes_screenshot(self, phase: PhaseResult) -> bool:
        """A picture of this phase is asked for and not taken yet."""
        return (
            self.screenshot is not None
            and self._shooting is None
            and phase.phase.slug == "notification-outage"
        )

    def shoot_console(self, phase: PhaseResult) -> None:
        """During the notification outage, once its breaker is open: a picture of the console."""
        if not self.owes_screenshot(phase):
            return
        # Its own breaker: one still open from the phase before would picture that fault instead.
        if not any(
            row["name"].startswith("/bank.v1.NotificationService/")
            and "OPEN" in row["state"].split("/")
            for row in self.mesh.breaker_rows()
        ):
            return
        path, link = self.screenshot, self.mesh.console_link()
        assert path is not None

        def shoot() -> None:
            self.say(f"{self.clock()} {capture(link, path)}")

        # Off the phase's thread: the picture takes seconds and the phase goes on meanwhile.
        self._shooting = threading.Thread(target=shoot, name="screenshot", daemon=True)
        self._shooting.start()

    def taking_screenshot(self) -> bool:
        """Chromium is taking the console's picture now (it gives up after SCREENSHOT_TIMEOUT)."""
        return self._shooting is not None and self._shooting.is_alive()

    def linger(self, seconds: float) -> None:
        """Keep the mesh (idle now) and its control plane up, so a person can look at the story."""
        self.say()
        self.say(
            f"the mesh and its control plane stay up for {seconds:.0f} s (Ctrl-C ends it sooner);"
            f" the whole story is in the web console: {self.mesh.console_link()}"
        )
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(0.2, left))
        except KeyboardInterrupt:
            self.say("stopping the mesh")

    def met(self, phase: PhaseResult, counters: Iterable[str] | None = None) -> bool:
        """Whether every one of `counters` (by default, those the phase exists to move) has
        moved so far."""
        if counters is None:
            counters = [counter for counter, _ in phase.phase.expects]
        metrics = self.metrics(phase, self.counters(phase), self.gateway.peek_calls())
        return all(metrics.get(counter, 0) > 0 for counter in counters)

    def levels(self) -> dict[str, int]:
        """Sagas mid-way and audit records owed, now."""
        counters = read_counters(self.mesh.dbs)
        return {name: counters[name] for name in LEVELS}

    def all_closed(self) -> bool:
        """Every breaker in the mesh reports CLOSED, or the state an operator forced on it."""
        rows = self.mesh.breaker_rows()
        return bool(rows) and all(set(row["state"].split("/")) <= _SETTLED_STATES for row in rows)

    def settled(self) -> bool:
        """Nothing owed, nothing mid-way, every gateway breaker closed."""
        stats = self.mesh.gateway_stats()
        closed = stats is not None and all(b.state == State.CLOSED.value for b in stats.breakers)
        return closed and not any(self.levels().values())

    def wait_for_breaker(self, name: str, state: State, timeout: float = 30.0) -> float | None:
        """The monotonic time the gateway reported breaker `name` in `state`, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.mesh.gateway_stats()
            if stats is not None and any(
                b.name == name and b.state == state.value for b in stats.breakers
            ):
                return time.monotonic()
            time.sleep(0.002)
        return None

    def gateway_counts(self, wait: float = 0.0) -> Counter[str]:
        """The guarded gateway's counters since the run began (restarts included).

        With `wait`, the reading is fresh (or the gateway stayed silent that long); without, a
        gateway that does not answer at once (it is down, the machine is busy) gives the last.
        """
        stats = self.mesh.gateway_stats(wait=wait)
        if stats is not None:
            self._gateway_last = Counter(dict(stats.counters))
        return self._gateway_base + self._gateway_last

    def remember_gateway_counts(self) -> None:
        """Bank the gateway's counters before it is killed (a new process starts from zero)."""
        self.gateway_counts(wait=30)
        self._gateway_base += self._gateway_last
        self._gateway_last = Counter()

    # ------------------------------------------------------------------ view

    def view(self, phase: PhaseResult) -> None:
        """The live table: breakers across the mesh, then this phase's payments so far."""
        self.say(f"{self.clock()} {phase.name}")
        self.say(
            f"  {'caller':<13}{'breaker':<45}{'state':<14}{'fail%':>6}{'calls':>8}{'rejected':>9}"
        )
        for row in self.mesh.breaker_rows():
            self.say(
                f"  {row['caller']:<13}{short_method(row['name']):<45}{row['state']:<14}"
                f"{row['failure_rate'] * 100:>5.0f}%{row['total']:>8}{row['rejected']:>9}"
            )
        calls = phase.calls.get("g") or self.gateway.peek_calls()
        counts = Counter(call.status for call in calls)
        overdrafts = sum(c.status == "failed" and "insufficient" in c.reason for c in calls)
        doubt = counts["pending"] + counts["deadline"] + counts["unreachable"]
        self.say(
            f"  payments so far: {counts['committed']} committed, {counts['rejected']} refused "
            f"at once by a breaker, {doubt} in doubt (retried with their key)"
        )
        if counts["failed"]:
            self.say(
                f"  failed: {overdrafts} insufficient funds, {counts['failed'] - overdrafts} "
                "to a closed account (debited, then refunded)"
            )
        levels = self.levels()
        self.say(
            f"  now: {levels['in_flight']} sagas mid-way, "
            f"{levels['audit_owed']} audit records waiting in the outbox, "
            f"{levels['emails_owed']} emails waiting for the provider"
        )

    # --------------------------------------------------------------- summary

    def finish(self) -> int:
        """Resolve payments in doubt, let the mesh settle, check the invariants, report."""
        for client in self._clients:
            client.set_rate(0)
        self.say()
        self.say(f"{self.clock()} load stopped; resolving payments still in doubt by their keys")
        # Generous: on a loaded machine a retry can wait seconds for the gateway, and a breaker
        # that opened on the last phase's faults must probe before a payment in doubt resumes.
        deadline = time.monotonic() + RESOLVE_TIMEOUT
        left = sum(
            client.resolve(timeout=max(deadline - time.monotonic(), 0.0))
            for client in self._clients
        )
        deadline = time.monotonic() + 20
        while any(self.levels().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for client in self._clients:
            client.stop()
        if self.results:
            # What finished after the last phase ended belongs to it.
            last = self.results[-1]
            for client in self._clients:
                last.calls[client.name] += client.take_calls()
        intents = [i for client in self._clients for i in client.intents.values()]
        gateway_dbs = [
            self.mesh.dbs[name]
            for name in (*GATEWAYS, *FLEET_GATEWAYS)
            if name in self.mesh.targets
        ]
        dbs = {name: self.mesh.dbs[name] for name in (*SERVICES, EMAIL_PROVIDER)}
        checks = check_invariants(dbs, intents, gateway_dbs)
        checks.extend(
            fleet_check(self.metrics(result))
            for result in self.results
            if result.phase.slug == "fleet"
        )
        checks.append(self.exercised())
        summary = self.summary(checks, left)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print_summary(self.say, summary, self.settings)
        return 0 if summary["ok"] else 1

    def metrics(
        self,
        phase: PhaseResult,
        counters: Mapping[str, int] | None = None,
        calls: Sequence[Call] | None = None,
    ) -> dict[str, int]:
        """The counters a phase's expectations refer to (by default, as it ended)."""
        if calls is None:
            calls = phase.calls.get("g", [])
        metrics = dict(phase.counters if counters is None else counters)
        metrics.update(phase.marks)
        metrics["audit_owed_peak"] = phase.peaks["audit_owed"]
        metrics["in_flight_peak"] = phase.peaks["in_flight"]
        metrics["emails_owed_peak"] = phase.peaks["emails_owed"]
        metrics["refused"] = sum(call.status == "rejected" for call in calls)
        metrics["insufficient_funds"] = sum(
            call.status == "failed" and "insufficient funds" in call.reason for call in calls
        )
        return metrics

    def exercised(self) -> Check:
        """Every phase moved the counters it exists to move."""
        missing = [
            f"{result.name}: no {meaning} ({counter})"
            for result in self.results
            for counter, meaning in result.phase.expects
            if self.metrics(result).get(counter, 0) <= 0
        ]
        shown = sum(len(result.phase.expects) for result in self.results)
        detail = f"{shown} expectations over {len(self.results)} phases, none at zero"
        if missing:
            detail = f"{len(missing)} at zero: {'; '.join(missing)}"
        return Check(EXERCISED, not missing, detail)

    def summary(self, checks: Sequence[Check], unresolved: int) -> dict[str, Any]:
        """The run as plain data (also written to summary.json)."""
        from examples.banking.report import latency_rows

        phases = []
        for result in self.results:
            phases.append(
                {
                    "slug": result.phase.slug,
                    "name": result.name,
                    "seconds": round(result.seconds, 2),
                    "statuses": dict(Counter(c.status for c in result.calls.get("g", []))),
                    "latency": latency_rows(result.calls.get("g", [])),
                    "metrics": self.metrics(result),
                    "expects": [counter for counter, _ in result.phase.expects],
                    "notes": result.notes,
                }
            )
        hang = next((r for r in self.results if r.phase.slug == "hang"), None)
        comparison = None
        if hang is not None:
            window = max(hang.window_end - hang.started, 1e-9)
            due = {
                name: [
                    c for c in hang.calls.get(name, []) if hang.started <= c.due <= hang.window_end
                ]
                for name in ("g", "p")
            }
            comparison = {
                label: {
                    "latency": latency_rows(due[name]),
                    "committed_per_s": sum(c.status == "committed" for c in due[name]) / window,
                    "waited_deadline": _share(due[name], 1.0),
                    # Why calls were refused (a gateway without breakers refuses only when its
                    # balance check fails, e.g. times out on a busy machine).
                    "refusals": dict(
                        Counter(c.reason for c in due[name] if c.status == "rejected")
                    ),
                }
                for label, name in (("with breakers", "g"), ("without breakers", "p"))
            }
        return {
            "run_dir": str(self.run_dir),
            "rate": self.settings.rate,
            "workers": self.settings.workers,
            "phases": phases,
            "hang": comparison,
            "unresolved": unresolved,
            "invariants": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
            "ok": all(c.ok for c in checks),
        }

    # --------------------------------------------------------------- cleanup

    def close(self) -> None:
        """Stop the clients and every child process."""
        if self._shooting is not None:
            self._shooting.join(timeout=SCREENSHOT_TIMEOUT + 10)  # Chromium's own limit
        for client in self._clients:
            client.stop()
        self._clients = []
        self.mesh.close()


# An operator's override stays until lifted (in recovery): the next phase need not wait for it.
_SETTLED_STATES = frozenset(
    {State.CLOSED.value, State.FORCED_OPEN.value, State.FORCED_CLOSED.value}
)


def _share(calls: Sequence[Call], deadline: float) -> float:
    """The fraction of calls that waited at least `deadline` seconds."""
    return sum(call.latency >= deadline for call in calls) / len(calls) if calls else 0.0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _breaks(values: Sequence[str]) -> dict[str, list[str]]:
    breaks: dict[str, list[str]] = {}
    for value in values:
        process, _, mode = value.partition("=")
        if process not in (*SERVICES, *GATEWAYS) or not mode:
            raise SystemExit(
                f"--break {value!r}: expected PROCESS=MODE, e.g. account=no-idempotency"
            )
        breaks.setdefault(process, []).append(mode)
    return breaks


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m examples.banking [--quick] [--run-dir DIR] [--phases A,B] [--linger S] ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.banking",
        description="Run the banking mesh through chaos that attacks every guarantee.",
    )
    parser.add_argument("--quick", action="store_true", help="a shortened run: shorter phases")
    parser.add_argument("--run-dir", help="keep databases, logs and summary.json here")
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the run, keep the mesh and its control plane (and web console) up this long",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PNG",
        help="save a picture of the web console during the notification outage (needs Chromium)",
    )
    parser.add_argument(
        "--phases",
        help=f"only these phases, comma-separated, then recovery ({', '.join(BY_SLUG)})",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "etcd"),
        default="sqlite",
        help="the control plane's store: its own SQLite file (default) or an etcd the demo starts",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="control-plane replicas (with --store etcd); 2 or more adds the replica-death phase",
    )
    parser.add_argument(
        "--break",
        dest="breaks",
        action="append",
        default=[],
        metavar="PROCESS=MODE",
        help="TEST ONLY: run a deliberately broken variant of a process (see tests)",
    )
    parser.add_argument(
        "--xds",
        action="store_true",
        help="the gateway reaches two account replicas through gRPC's xDS client "
        "(xds:///accounts), served by the control plane; adds the xds-ejection phase",
    )
    args = parser.parse_args(argv)
    if args.replicas < 1 or (args.replicas > 1 and args.store != "etcd"):
        parser.error("--replicas N needs --store etcd (replicas share one etcd), N >= 1")
    phases = list(phases_for(args.xds))
    if args.replicas > 1:
        phases.insert(len(phases) - 1, REPLICA_DEATH)  # before recovery
    if args.phases:
        unknown = [s for s in args.phases.split(",") if s not in BY_SLUG]
        if unknown:
            parser.error(f"unknown phase {unknown[0]!r}; choose from {', '.join(BY_SLUG)}")
        if XDS_EJECTION.slug in args.phases.split(",") and not args.xds:
            parser.error(f"phase {XDS_EJECTION.slug!r} needs --xds")
        chosen = [s for s in args.phases.split(",") if s != "recovery"]
        if REPLICA_DEATH.slug in chosen and args.replicas < 2:
            parser.error("the replica-death phase needs --store etcd --replicas 2 (or more)")
        phases = [BY_SLUG[s] for s in chosen] + [BY_SLUG["recovery"]]
    if args.run_dir:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="meshbreaker-demo-"))
    signal.signal(signal.SIGTERM, _terminate)
    settings = QUICK if args.quick else FULL
    if not args.linger >= 0:  # also refuses nan
        parser.error("--linger: must be >= 0 seconds")
    demo = Demo(
        settings,
        run_dir,
        sys.stdout,
        phases=phases,
        breaks=_breaks(args.breaks),
        store=args.store,
        replicas=args.replicas,
        screenshot=args.screenshot,
        xds=args.xds,
    )
    try:
        status = demo.run()
        if args.linger:
            demo.linger(args.linger)
        return status
    except KeyboardInterrupt:
        demo.say("\ninterrupted: stopping the mesh")
        return 130
    finally:
        demo.close()
