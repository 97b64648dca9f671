"""`make demo`: the banking mesh under chaos, with and without breakers, and nothing lost."""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc

from examples.banking.gateway import (
    Gateway,
    GatewayStats,
    Targets,
    TransferOutcome,
    TransferStatus,
)
from examples.banking.gen import chaos_pb2, chaos_pb2_grpc
from examples.banking.invariants import Check, check_invariants
from examples.banking.policies import policy_messages
from examples.banking.report import ms, percentile, short_method
from examples.banking.services.account import account_ids
from meshbreaker.config import State
from meshbreaker.control.agent import MeshAgent
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

SERVICES = ("account", "transaction", "notification", "audit")
NOTIFY_METHOD = "/bank.v1.NotificationService/SendTransferNotification"
_STATE_NAMES = ("closed", "open", "half_open", "forced_open", "forced_closed")


@dataclass(frozen=True)
class Settings:
    """How long each phase runs and how hard the load pushes."""

    steady: float
    notification_outage: float
    audit_outage: float
    hang: float
    operator: float
    recovery_max: float
    view_interval: float
    # A p99 needs samples: the hang phase runs on until it has this many (or hang_max seconds).
    hang_samples: int = 1000
    hang_max: float = 12.0
    workers: int = 4
    plain_workers: int = 2
    pace: float = 0.005
    accounts: int = 20
    balance_cents: int = 1_000_000


FULL = Settings(
    steady=6,
    notification_outage=8,
    audit_outage=8,
    hang=10,
    operator=6,
    recovery_max=25,
    view_interval=2.0,
    hang_samples=2000,
    hang_max=20.0,
)
QUICK = Settings(
    steady=1.5,
    notification_outage=2.5,
    audit_outage=2.0,
    hang=4.0,
    operator=2.0,
    recovery_max=12,
    view_interval=1.0,
    hang_max=8.0,
)


@dataclass
class PhaseResult:
    """Everything one phase produced."""

    name: str
    title: str
    started: float = 0.0
    ended: float = 0.0
    guarded: list[TransferOutcome] = field(default_factory=list)
    plain: list[TransferOutcome] = field(default_factory=list)
    stats: GatewayStats = field(default_factory=GatewayStats)
    outbox_peak: int = 0
    notes: list[str] = field(default_factory=list)


def count_by_status(outcomes: Sequence[TransferOutcome]) -> dict[str, int]:
    """Transfers by status."""
    counts = {status.value: 0 for status in TransferStatus}
    for outcome in outcomes:
        counts[outcome.status.value] += 1
    return counts


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """How many, p50, p99 and the slowest of some TransferFunds latencies."""
    return {
        "transfers": len(latencies),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=0.0),
    }


class Processes:
    """Child processes of the demo; all of them are stopped on exit, Ctrl-C or SIGTERM."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []
        atexit.register(self.stop_all)

    def spawn(
        self, name: str, module: str, args: Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        """Run `python -m module args --port-file F`; stderr goes to NAME.log in the run dir."""
        port_file = self.run_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        with (self.run_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args, "--port-file", str(port_file)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        self._children.append((name, process))

    def target(self, name: str, timeout: float = 20.0) -> str:
        """Wait until child `name` has written its port file; its host:port."""
        process = dict(self._children)[name]
        port_file = self.run_dir / f"{name}.port"
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with status {process.returncode}; see {self.run_dir}/{name}.log"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start within {timeout:.0f}s")
            time.sleep(0.02)
        return f"127.0.0.1:{int(port_file.read_text())}"

    def pids(self) -> dict[str, int]:
        """Child process ids by name."""
        return {name: process.pid for name, process in self._children}

    def stop_all(self) -> None:
        """SIGTERM every child, then SIGKILL whatever is still running after 3 s."""
        children, self._children = self._children, []
        for _, process in children:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 3.0
        for _, process in children:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Demo:
    """Starts the mesh, drives the load through the phases, prints the view and the summary."""

    def __init__(self, settings: Settings, run_dir: Path, out: TextIO, *, outbox: bool = True):
        self.settings = settings
        self.run_dir = run_dir
        self.out = out
        self.outbox_enabled = outbox
        self.processes = Processes(run_dir)
        self.admin_token = secrets.token_hex(16)
        self.agent_token = secrets.token_hex(16)
        self.accounts = account_ids(settings.accounts)
        self.registry = BreakerRegistry()
        self.registry.track_durations()  # reported to the control plane: its /metrics histograms
        self.phases: list[PhaseResult] = []
        self._phase: PhaseResult | None = None
        self._plain_on = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()
        self._stats_mark = GatewayStats()
        self.gateway: Gateway | None = None
        self.plain: Gateway | None = None
        self.agent: MeshAgent | None = None
        self.cp_channel: grpc.Channel | None = None
        self.cp: pb_grpc.ControlPlaneStub | None = None
        self.targets: dict[str, str] = {}
        self.chaos: dict[str, chaos_pb2_grpc.ChaosServiceStub] = {}
        self._chaos_channels: list[grpc.Channel] = []
        self.dbs = {name: run_dir / f"{name}.db" for name in SERVICES}

    # ---------------------------------------------------------------- output

    def say(self, text: str = "") -> None:
        """Print a line at once (the demo's output is meant to be watched live)."""
        print(text, file=self.out, flush=True)

    def _clock(self) -> str:
        return f"[{time.monotonic() - self._started:5.1f}s]"

    # ------------------------------------------------------------- the mesh

    def start_mesh(self) -> None:
        """Control plane, policies, the four services (each with an agent), the gateways."""
        self.say(f"meshbreaker banking demo — run directory {self.run_dir}")
        # Tokens travel in the environment, not on command lines other users can read.
        tokens = {"BANKING_ADMIN_TOKEN": self.admin_token, "BANKING_AGENT_TOKEN": self.agent_token}
        cp_db = str(self.run_dir / "control-plane.db")
        metrics_port_file = self.run_dir / "control-plane.metrics-port"
        cp_args = ["--db", cp_db, "--metrics-port-file", str(metrics_port_file)]
        self.processes.spawn("control-plane", "examples.banking.controlplane", cp_args, tokens)
        cp_target = self.processes.target("control-plane")  # written after the metrics port
        self.targets["control-plane"] = cp_target
        self.metrics_url = f"http://127.0.0.1:{int(metrics_port_file.read_text())}/metrics"
        self.cp_channel = grpc.insecure_channel(cp_target)
        self.cp = pb_grpc.ControlPlaneStub(self.cp_channel)
        put = self._admin("PutPolicy", pb.PutPolicyRequest(policies=policy_messages()))
        self.say(
            f"control plane on {cp_target}: {len(put.policies)} policies put "
            f"(revision {put.revision}); address and tokens in {self.run_dir / 'run.json'}"
        )
        self.say(f"Prometheus metrics of every breaker in the mesh: {self.metrics_url}")

        agent_env = {"BANKING_AGENT_TOKEN": self.agent_token}

        def spawn(name: str, *extra: str) -> None:
            args = ["--db", str(self.dbs[name]), "--instance-id", f"{name}-1"]
            args += ["--control-plane", cp_target, *extra]
            self.processes.spawn(name, f"examples.banking.services.{name}", args, agent_env)

        # The transaction service needs the account service's address; the rest start together.
        spawn(
            "account",
            "--accounts",
            str(self.settings.accounts),
            "--initial-balance",
            str(self.settings.balance_cents),
        )
        spawn("notification")
        spawn("audit")
        self.targets["account"] = self.processes.target("account")
        spawn("transaction", "--accounts-target", self.targets["account"])
        for name in SERVICES:
            self.targets[name] = self.processes.target(name)
            channel = grpc.insecure_channel(self.targets[name])
            self._chaos_channels.append(channel)
            self.chaos[name] = chaos_pb2_grpc.ChaosServiceStub(channel)
        self.say("services: " + ", ".join(f"{name} {self.targets[name]}" for name in SERVICES))
        info = {
            "control_plane": cp_target,
            "metrics_url": self.metrics_url,
            "admin_token": self.admin_token,
            "agent_token": self.agent_token,
            "pid": os.getpid(),
            "children": self.processes.pids(),
        }
        fd = os.open(self.run_dir / "run.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle, indent=1)

        self.agent = agent = MeshAgent(
            cp_target,
            "gateway",
            self.registry,
            instance_id="gateway-1",
            token=self.agent_token,
            report_interval=0.5,
        ).start()
        if not agent.wait_for_revision(put.revision, timeout=10):
            raise RuntimeError("the gateway's agent did not receive the policies within 10 s")
        targets = Targets(**{name: self.targets[name] for name in SERVICES})
        self.gateway = Gateway(
            targets,
            self.run_dir / "gateway-outbox.db",
            self.registry,
            outbox_enabled=self.outbox_enabled,
        )
        self.plain = Gateway(
            targets, self.run_dir / "plain-outbox.db", None, outbox_enabled=self.outbox_enabled
        )
        self.gateway.start()
        self.plain.start()
        # Everything allocated so far lives for the whole run; freezing it keeps full garbage
        # collections (which stall every thread) short while latencies are measured.
        gc.collect()
        gc.freeze()
        self.say(
            f"gateway: {len(self.registry.policies())} policies from the control plane "
            f"(revision {agent.applied_revision}); a second gateway without breakers "
            "stands by for the hang phase"
        )

    def _admin(self, method: str, request: Any) -> Any:
        assert self.cp is not None
        call: Callable[..., Any] = getattr(self.cp, method)
        return call(request, timeout=5, metadata=(("authorization", f"Bearer {self.admin_token}"),))

    def set_chaos(self, service: str, **settings: Any) -> None:
        """Replace the faults in force at `service`."""
        self.chaos[service].SetChaos(chaos_pb2.ChaosSettings(**settings), timeout=5)

    # ------------------------------------------------------------------ load

    def _worker(self, gateway: Gateway, plain: bool, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            phase = self._phase
            if phase is None or (plain and not self._plain_on.is_set()):
                time.sleep(0.02)
                continue
            source, destination = rng.sample(self.accounts, 2)
            outcome = gateway.transfer_funds(source, destination, rng.randint(1, 50_000))
            with self._lock:
                (phase.plain if plain else phase.guarded).append(outcome)
            time.sleep(self.settings.pace)

    def start_load(self) -> None:
        """Worker threads for the guarded gateway (always) and the plain one (hang phase)."""
        assert self.gateway is not None and self.plain is not None
        for index in range(self.settings.workers):
            self._spawn(self.gateway, False, index)
        for index in range(self.settings.plain_workers):
            self._spawn(self.plain, True, 1000 + index)

    def _spawn(self, gateway: Gateway, plain: bool, seed: int) -> None:
        thread = threading.Thread(
            target=self._worker, args=(gateway, plain, seed), daemon=True, name=f"load-{seed}"
        )
        thread.start()
        self._threads.append(thread)

    def stop_load(self) -> None:
        """Stop the workers and wait for their last calls."""
        self._phase = None
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    # ---------------------------------------------------------------- phases

    def run_phase(
        self,
        name: str,
        title: str,
        duration: float,
        *,
        setup: Callable[[PhaseResult], object] | None = None,
        until: Callable[[], bool] | None = None,
        at_least: Callable[[PhaseResult], bool] | None = None,
        longest: float = 0.0,
    ) -> PhaseResult:
        """Run the load for `duration` seconds, printing the live view.

        `setup(phase)` injects the phase's faults once it is current; `until()` ends it early;
        `at_least(phase)` keeps it going past `duration` while false, up to `longest`.
        """
        assert self.gateway is not None
        phase = PhaseResult(name, title, started=time.monotonic())
        before = self._stats_mark
        self.phases.append(phase)
        self.say()
        self.say(f"{self._clock()} === phase {len(self.phases)}: {name} — {title}")
        # Counters and outcomes are attributed to exactly one phase: no gaps between phases.
        self._phase = phase
        if setup is not None:
            setup(phase)
        deadline = phase.started + duration
        next_view = phase.started + self.settings.view_interval
        last_view = phase.started
        while True:
            now = time.monotonic()
            phase.outbox_peak = max(phase.outbox_peak, self.outbox_depth())
            if until is not None and until():
                break
            if now >= deadline:
                extend = at_least is not None and not at_least(phase)
                if not extend or now >= phase.started + longest:
                    break
            if now >= next_view:
                self.view(phase, before)
                last_view = now
                next_view += self.settings.view_interval
            # Wake at the deadline; past it (at_least holding the phase open), keep polling at
            # 0.1 s rather than spinning, which would take a core from the load on 2 cores.
            time.sleep(min(0.1, deadline - now) if now < deadline else 0.1)
        phase.ended = time.monotonic()
        self._stats_mark = self.gateway.stats()
        phase.stats = self._stats_mark.minus(before)
        if phase.ended - last_view > self.settings.view_interval / 2:
            self.view(phase, before)
        return phase

    def outbox_depth(self) -> int:
        """Rows owed by both gateways' outboxes."""
        total = 0
        for gateway in (self.gateway, self.plain):
            if gateway is not None:
                total += sum(gateway.outbox.depth().values())
        return total

    def view(self, phase: PhaseResult, before: GatewayStats) -> None:
        """The live table: breaker states across the mesh, then this phase's transfers so far."""
        assert self.gateway is not None
        with self._lock:
            guarded = list(phase.guarded)
            plain = list(phase.plain)
        stats = self.gateway.stats().minus(before)
        self.say(f"{self._clock()} {phase.name}")
        self.say(
            f"  {'caller':<12}{'breaker':<45}{'state':<14}{'fail%':>6}{'calls':>8}{'rejected':>9}"
        )
        for row in self.breaker_rows():
            self.say(
                f"  {row['caller']:<12}{short_method(row['name']):<45}{row['state']:<14}"
                f"{row['failure_rate'] * 100:>5.0f}%{row['total']:>8}{row['rejected']:>9}"
            )
        counts = count_by_status(guarded)
        line = (
            f"  transfers: {counts['committed']} committed, {counts['pending']} pending, "
            f"{counts['rejected']} rejected fast, {counts['failed']} failed, "
            f"{counts['error']} errors, p99 {ms(percentile([o.latency for o in guarded], 99))}"
        )
        self.say(line)
        self.say(
            f"  notifications: {stats.notifications_sent} sent, {stats.notifications_failed} "
            f"failed, {stats.notifications_rejected} skipped by breaker | audit: "
            f"{stats.audits_delivered} delivered, {stats.audits_deferred} deferred to outbox, "
            f"{stats.outbox_audits_delivered} drained | outbox now {self.outbox_depth()}"
        )
        if plain:
            latencies = [o.latency for o in plain]
            self.say(
                f"  without breakers: {len(plain)} transfers, p99 {ms(percentile(latencies, 99))}"
            )

    def breaker_rows(self) -> list[dict[str, Any]]:
        """Breakers across the mesh from the control plane (the gateway's own as a fallback)."""
        try:
            response = self._admin("ListBreakers", pb.ListBreakersRequest())
        except grpc.RpcError:
            response = None
        rows: list[dict[str, Any]] = []
        if response is not None and response.groups:
            for group in response.groups:
                states = [n for n in _STATE_NAMES if getattr(group, n)]
                rows.append(
                    {
                        "caller": group.service,
                        "name": group.name,
                        "state": "/".join(s.upper() for s in states) or "?",
                        "failure_rate": group.failure_rate,
                        "total": group.total,
                        "rejected": group.rejected,
                    }
                )
            return sorted(rows, key=lambda r: (r["caller"], r["name"]))
        for snap in sorted(self.registry.snapshots(), key=lambda s: s.name):
            rows.append(
                {
                    "caller": "gateway",
                    "name": snap.name,
                    "state": snap.state.value,
                    "failure_rate": snap.failure_rate,
                    "total": snap.total,
                    "rejected": snap.rejected,
                }
            )
        return rows

    def all_closed(self) -> bool:
        """Every breaker in the gateway is CLOSED."""
        return all(snap.state is State.CLOSED for snap in self.registry.snapshots())

    def settled(self) -> bool:
        """Recovered: breakers closed and nothing owed (used to end the recovery phase early)."""
        gateways = [g for g in (self.gateway, self.plain) if g is not None]
        return self.all_closed() and all(g.outbox.backlog() == 0 for g in gateways)

    def wait_for_override(self, state: State | None, timeout: float = 5.0) -> float | None:
        """The monotonic time the gateway's notification breaker showed `state`, or None."""
        started = time.monotonic()
        breaker = self.registry.get(NOTIFY_METHOD)
        while time.monotonic() - started < timeout:
            if breaker.override is state:
                return time.monotonic()
            time.sleep(0.001)
        return None

    def run(self) -> int:
        """The whole demo; returns the process exit status."""
        settings = self.settings
        self.start_mesh()
        self.start_load()

        self.run_phase("steady state", "all four services healthy", settings.steady)
        self.run_phase(
            "notification outage",
            "notification service down: transfers must keep succeeding",
            settings.notification_outage,
            setup=lambda p: self.set_chaos("notification", outage=True),
        )

        def audit_outage(phase: PhaseResult) -> None:
            self.set_chaos("notification")
            self.set_chaos("audit", outage=True)

        self.run_phase(
            "audit outage",
            "audit service down (notifications back): audit records go to the outbox",
            settings.audit_outage,
            setup=audit_outage,
        )

        def hang(phase: PhaseResult) -> None:
            self.set_chaos("transaction", hang=True)
            self._plain_on.set()

        self.run_phase(
            "transaction hang",
            "transaction service hangs (audit still down): breakers vs no breakers, 1 s deadline",
            settings.hang,
            setup=hang,
            at_least=lambda p: len(p.guarded) >= settings.hang_samples,
            longest=settings.hang_max,
        )

        def force_open(phase: PhaseResult) -> None:
            self._plain_on.clear()
            self.set_chaos("transaction")
            sent = time.monotonic()
            self._admin(
                "ForceState",
                pb.ForceStateRequest(
                    selector=pb.Selector(method=NOTIFY_METHOD), override=pb.OVERRIDE_FORCED_OPEN
                ),
            )
            seen = self.wait_for_override(State.FORCED_OPEN)
            phase.notes.append(
                "hang lifted; the gateway's breaker was FORCED_OPEN "
                + (f"{ms(seen - sent)} after the ForceState call" if seen else "only after 5 s")
            )

        self.run_phase(
            "operator override",
            "operator force-opens SendTransferNotification through the control plane",
            settings.operator,
            setup=force_open,
            # The transaction breaker is still backing off from the hang: keep going until
            # transfers commit again and the override has visibly skipped notifications.
            at_least=lambda p: sum(o.notification == "rejected" for o in p.guarded) >= 20,
            longest=settings.operator * 3,
        )

        def recover(phase: PhaseResult) -> None:
            self._admin(
                "ForceState",
                pb.ForceStateRequest(
                    selector=pb.Selector(method=NOTIFY_METHOD), override=pb.OVERRIDE_NONE
                ),
            )
            self.set_chaos("audit")

        self.run_phase(
            "recovery",
            "faults cleared, override lifted: breakers close on their own, the outbox drains",
            settings.recovery_max,
            setup=recover,
            until=self.settled,
        )
        self.stop_load()
        return self.finish()

    # --------------------------------------------------------------- summary

    def finish(self) -> int:
        """Drain what is still owed, check the invariants, print and save the summary."""
        assert self.gateway is not None and self.plain is not None
        deadline = time.monotonic() + 15
        while self.outbox_depth() and time.monotonic() < deadline:
            self.gateway.drain_once()
            self.plain.drain_once()
            time.sleep(0.05)
        if self.phases:
            # What the drainer finished after the load stopped belongs to the last phase.
            last = self.phases[-1]
            last.stats = last.stats.plus(self.gateway.stats().minus(self._stats_mark))
        checks = check_invariants(
            self.dbs, [Path(self.gateway.outbox_path), Path(self.plain.outbox_path)]
        )
        summary = self.summary(checks)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        self.print_summary(summary, checks)
        return 0 if all(check.ok for check in checks) else 1

    def summary(self, checks: Sequence[Check]) -> dict[str, Any]:
        """The run as plain data (also written to summary.json)."""
        phases = []
        for phase in self.phases:
            latencies = [o.latency for o in phase.guarded]
            phases.append(
                {
                    "name": phase.name,
                    "seconds": round(phase.ended - phase.started, 2),
                    "transfers": count_by_status(phase.guarded),
                    "p50": percentile(latencies, 50),
                    "p99": percentile(latencies, 99),
                    "outbox_peak": phase.outbox_peak,
                    "stats": asdict(phase.stats),
                    "notes": phase.notes,
                }
            )
        hang = next(p for p in self.phases if p.name == "transaction hang")
        with_breakers = latency_summary([o.latency for o in hang.guarded])
        without = latency_summary([o.latency for o in hang.plain])
        return {
            "run_dir": str(self.run_dir),
            "phases": phases,
            "hang": {
                "with_breakers": with_breakers,
                "without_breakers": without,
                "p99_ratio": (
                    without["p99"] / with_breakers["p99"] if with_breakers["p99"] > 0 else 0.0
                ),
                "slowest_with_breakers": [
                    [round(o.latency, 4), o.status.value, o.reason]
                    for o in sorted(hang.guarded, key=lambda o: -o.latency)[:12]
                ],
            },
            "invariants": [asdict(check) for check in checks],
            "ok": all(check.ok for check in checks),
        }

    def print_summary(self, summary: dict[str, Any], checks: Sequence[Check]) -> None:
        """The closing report."""
        self.say()
        self.say("=== summary")
        self.say(
            f"  {'phase':<22}{'secs':>6}{'committed':>10}{'pending':>8}{'rejected':>9}"
            f"{'failed':>7}{'errors':>7}{'p50':>10}{'p99':>10}{'outbox peak':>12}"
        )
        for phase in summary["phases"]:
            t = phase["transfers"]
            self.say(
                f"  {phase['name']:<22}{phase['seconds']:>6.1f}{t['committed']:>10}"
                f"{t['pending']:>8}{t['rejected']:>9}{t['failed']:>7}{t['error']:>7}"
                f"{ms(phase['p50']):>10}{ms(phase['p99']):>10}{phase['outbox_peak']:>12}"
            )
            for note in phase["notes"]:
                self.say(f"  {'':<22}  ({note})")
        stats = [p["stats"] for p in summary["phases"]]
        self.say(
            "  notifications: "
            f"{sum(s['notifications_sent'] for s in stats)} sent, "
            f"{sum(s['notifications_failed'] for s in stats)} failed (dropped), "
            f"{sum(s['notifications_rejected'] for s in stats)} skipped by an open breaker; "
            "no transfer failed because of them"
        )
        self.say(
            "  audit: "
            f"{sum(s['audits_delivered'] for s in stats)} delivered at once, "
            f"{sum(s['audits_deferred'] for s in stats)} deferred to the outbox and "
            f"{sum(s['outbox_audits_delivered'] for s in stats)} delivered from it; "
            f"{sum(s['outbox_transfers_committed'] for s in stats)} unknown outcomes resolved "
            "by retrying the same transfer id"
        )
        hang = summary["hang"]
        self.say("  transaction hang, TransferFunds latency (same run, same services):")
        for label, row in (("with", hang["with_breakers"]), ("without", hang["without_breakers"])):
            self.say(
                f"    {label + ' breakers':<17}{row['transfers']:>6} transfers  "
                f"p50 {ms(row['p50']):>9}  p99 {ms(row['p99']):>9}  max {ms(row['max']):>9}"
            )
        self.say(f"    p99 is {hang['p99_ratio']:.0f}x lower with breakers")
        self.say("  invariants (read from the services' own SQLite databases):")
        for check in checks:
            self.say(f"    [{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
        verdict = "all invariants hold" if summary["ok"] else "AN INVARIANT FAILED"
        self.say(f"=== {verdict}; details in {self.run_dir}/summary.json")

    # --------------------------------------------------------------- cleanup

    def close(self) -> None:
        """Stop load, gateways, the agent, channels and every child process."""
        self.stop_load()
        for gateway in (self.gateway, self.plain):
            if gateway is not None:
                gateway.close()
        if self.agent is not None:
            self.agent.stop()
        for channel in [*self._chaos_channels, self.cp_channel]:
            if channel is not None:
                channel.close()
        self.processes.stop_all()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m examples.banking [--quick] [--run-dir DIR] [--no-outbox]`."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.banking",
        description="Run the banking mesh through outages, a hang and an operator override.",
    )
    parser.add_argument("--quick", action="store_true", help="a shortened run (~20 s)")
    parser.add_argument("--run-dir", help="keep databases, logs and summary.json here")
    parser.add_argument(
        "--no-outbox",
        action="store_true",
        help="disable the gateway's outbox (shows the invariant check failing)",
    )
    args = parser.parse_args(argv)
    if args.run_dir:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="meshbreaker-demo-"))
    signal.signal(signal.SIGTERM, _terminate)
    demo = Demo(QUICK if args.quick else FULL, run_dir, sys.stdout, outbox=not args.no_outbox)
    try:
        return demo.run()
    except KeyboardInterrupt:
        demo.say("\ninterrupted: stopping the mesh")
        return 130
    finally:
        demo.close()
