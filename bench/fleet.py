"""Fleet decisions: quorum-open latency, and probes a recovering dependency gets, side by side.

A real control plane in its own process (`meshbreaker control-plane`, SQLite), real agents in
this one, and for each caller service ten instances, each with its own registry, agent and gRPC
channel (BreakerInterceptor) to a real dependency server on loopback that counts every call it
receives.

* Decision latency: quorum reached (the failure that opens the deciding instance's breaker) to
  every instance rejecting, in seconds and in report intervals (target: p99 <= 2).
* Probes per open period: the dependency is down and stays down; every instance keeps sending
  bursts of concurrent calls for a fixed time once every breaker is open. One caller service
  has `fleet_open_quorum` (coordinated probes), the other the same policy without it; both run
  at once, against their own dependency, so they see the same machine.
* Quorum counting per decider pass (in this process, no server): a counter brought up to date
  from the instances that reported since the last pass, against a fresh counter that counts
  every breaker of every live instance (what each pass did before counting was incremental),
  interleaved in one run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench._harness import interleaved, median_ratio, table, write_json
from bench.control_plane import control_plane_process
from meshbreaker.config import BreakerConfig, State
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.convert import config_to_proto
from meshbreaker.control.quorum import QuorumCounter
from meshbreaker.grpc import BreakerInterceptor
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

METHOD = "/bench.v1.Dependency/Call"
INSTANCES = 10
HALF_OPEN_MAX_CALLS = 5
OPEN_DURATION = 0.5
REPORT_INTERVAL = 1.0
SENDER = "bench-instance"  # request metadata: which instance sent a call
TARGET_P99_INTERVALS = 2.0


class Dependency:
    """A gRPC server on loopback that counts the calls it gets, up or down (UNAVAILABLE)."""

    def __init__(self) -> None:
        self.calls = 0
        self.times: list[float] = []  # when each call arrived (monotonic)
        self.senders: list[str] = []  # the instance that sent it (the bench client's metadata)
        self.up = True
        self._lock = threading.Lock()
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(32))
        handler: grpc.RpcMethodHandler[bytes, bytes]
        handler = grpc.unary_unary_rpc_method_handler(self._call)
        generic = grpc.method_handlers_generic_handler("bench.v1.Dependency", {"Call": handler})
        self._server.add_generic_rpc_handlers((generic,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def _call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
            self.times.append(time.monotonic())
            self.senders.append(str(dict(context.invocation_metadata()).get(SENDER, "")))
        time.sleep(0.02)  # long enough for concurrent calls to overlap
        if not self.up:
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return b""

    def stop(self) -> None:
        self._server.stop(0)


class Instance:
    """One process of a caller service: registry, agent and a guarded channel."""

    def __init__(self, target: str, service: str, index: int, dependency: Dependency) -> None:
        self.registry = BreakerRegistry()
        self.instance_id = f"{service}-{index}"
        self.agent = MeshAgent(
            target,
            service,
            self.registry,
            instance_id=self.instance_id,
            report_interval=REPORT_INTERVAL,
        ).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{dependency.port}")
        self._channel = grpc.intercept_channel(channel, BreakerInterceptor(self.registry))
        self._raw = channel
        self.call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(METHOD)

    def burst(self, size: int) -> None:
        """`size` concurrent calls, each answered or refused locally."""
        futures = []
        for _ in range(size):
            with contextlib.suppress(grpc.RpcError):  # refused by the breaker: nothing sent
                sender = ((SENDER, self.instance_id),)
                futures.append(self.call.future(b"", timeout=2.0, metadata=sender))
        for future in futures:
            with contextlib.suppress(grpc.RpcError):
                future.result()

    def state(self) -> State:
        return self.registry.get(METHOD).state

    def stop(self) -> None:
        self.agent.stop()
        self._raw.close()


def _policy(
    policy_id: str, caller: str, *, quorum: float | None, open_duration: float = OPEN_DURATION
) -> pb.Policy:
    config = BreakerConfig(
        consecutive_failures=1,
        open_duration=open_duration,
        backoff_multiplier=1.0,
        half_open_max_calls=HALF_OPEN_MAX_CALLS,
        half_open_success_threshold=1,
        fleet_open_quorum=quorum,
        fleet_min_instances=3,
    )
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, method=METHOD),
        config=config_to_proto(config),
    )


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _fleet(target: str, service: str, dependency: Dependency) -> list[Instance]:
    fleet = [Instance(target, service, index, dependency) for index in range(INSTANCES)]
    _wait(lambda: all(i.agent.applied_revision > 0 for i in fleet), 30, f"{service} agents")
    for instance in fleet:
        instance.burst(1)  # the breaker exists and is reported
        instance.agent.report_now()
    return fleet


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def decision_latency(target: str, stub: pb_grpc.ControlPlaneStub, trials: int) -> dict[str, Any]:
    """Quorum reached -> every instance rejecting, over `trials` outages."""
    dependency = Dependency()
    fleet = _fleet(target, "latency", dependency)
    # fleet_open_quorum 0.5 of 10: four instances open change nothing, the fifth decides.
    latencies: list[float] = []
    try:
        for _ in range(trials):
            dependency.up = False
            for instance in fleet[:4]:
                instance.burst(1)
            _wait(lambda: all(i.state() is State.OPEN for i in fleet[:4]), 10, "open")
            time.sleep(0.05)  # below the quorum: nothing may happen yet
            fleet[4].burst(1)  # this failure reaches the quorum
            reached = time.monotonic()
            _wait(
                lambda: all(i.state() in (State.OPEN, State.FORCED_OPEN) for i in fleet),
                30,
                "every instance rejecting",
            )
            latencies.append(time.monotonic() - reached)
            # Back to normal for the next trial: the operator ends the decision.
            dependency.up = True
            release = pb.ForceStateRequest(
                selector=pb.Selector(caller="latency", method=METHOD), override=pb.OVERRIDE_NONE
            )
            revision = stub.ForceState(release, timeout=10).revision
            for instance in fleet:
                instance.agent.wait_for_revision(revision, timeout=30)
            for instance in fleet:
                instance.registry.get(METHOD).reset()
            time.sleep(0.1)
    finally:
        for instance in fleet:
            instance.stop()
        dependency.stop()
    p50, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
    return {
        "trials": trials,
        "report_interval_s": REPORT_INTERVAL,
        "latency_ms_p50": p50 * 1000,
        "latency_ms_p99": p99 * 1000,
        "latency_ms_max": max(latencies) * 1000,
        "p99_report_intervals": p99 / REPORT_INTERVAL,
        "target_met": p99 / REPORT_INTERVAL <= TARGET_P99_INTERVALS,
    }


def probes(target: str, stub: pb_grpc.ControlPlaneStub, seconds: float) -> dict[str, Any]:
    """Calls a down dependency gets from ten instances, coordinated and not, at the same time."""
    dependencies = {name: Dependency() for name in ("coordinated", "independent")}
    fleets = {name: _fleet(target, name, dep) for name, dep in dependencies.items()}
    try:
        for dependency in dependencies.values():
            dependency.up = False
        for fleet in fleets.values():
            for instance in fleet:
                instance.burst(1)

        def decided() -> int:
            policies = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies
            listed = [p for p in policies if p.HasField("fleet") and p.id == "coordinated"]
            return listed[0].revision if listed else 0

        _wait(lambda: decided() > 0, 30, "the fleet decision")
        for instance in fleets["coordinated"]:
            instance.agent.wait_for_revision(decided(), timeout=30)
        _wait(
            lambda: all(
                i.registry.get(METHOD).snapshot().times_opened for i in fleets["independent"]
            ),
            30,
            "every breaker open",
        )
        before = {name: dep.calls for name, dep in dependencies.items()}
        opened = sum(i.registry.get(METHOD).snapshot().times_opened for i in fleets["independent"])
        started = time.monotonic()
        stop = started + seconds
        # (seen from when, the coordinated fleet's period, its probers)
        periods: list[tuple[float, int, tuple[str, ...]]] = []

        def load(instance: Instance) -> None:
            while time.monotonic() < stop:
                instance.burst(HALF_OPEN_MAX_CALLS * 2)
                time.sleep(0.01)

        def watch_periods() -> None:
            while time.monotonic() < stop:
                listing = stub.ListPolicies(pb.ListPoliciesRequest(caller="coordinated"))
                fleet = max(
                    (p.fleet for p in listing.policies if p.HasField("fleet")),
                    key=lambda decision: decision.period,
                    default=pb.FleetDecision(),
                )
                if not periods or periods[-1][1] != fleet.period:
                    periods.append((time.monotonic(), fleet.period, tuple(fleet.probers)))
                time.sleep(0.005)

        threads = [
            threading.Thread(target=load, args=(instance,))
            for fleet in fleets.values()
            for instance in fleet
        ]
        threads.append(threading.Thread(target=watch_periods))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Each coordinated probe belongs to the period its sender was the prober of: the latest
        # such period seen starting before it arrived. Exact while the poll (every 5 ms) lags
        # less than an open period (a prober waits that long before its probes); a probe from an
        # instance that was no period's prober counts apart, as one the grants should not allow.
        per_period: dict[int, int] = {}
        not_granted = 0
        coordinated_dependency = dependencies["coordinated"]
        arrivals = zip(
            coordinated_dependency.times[before["coordinated"] :],
            coordinated_dependency.senders[before["coordinated"] :],
            strict=True,
        )
        for arrived, sender in arrivals:
            period = next(
                (
                    p
                    for since, p, probers in reversed(periods)
                    if since <= arrived and sender in probers
                ),
                None,
            )
            if period is None:
                not_granted += 1
            else:
                per_period[period] = per_period.get(period, 0) + 1
        reopened = (
            sum(i.registry.get(METHOD).snapshot().times_opened for i in fleets["independent"])
            - opened
        ) / INSTANCES
        coordinated = dependencies["coordinated"].calls - before["coordinated"]
        independent = dependencies["independent"].calls - before["independent"]
        result: dict[str, Any] = {
            "seconds": seconds,
            "coordinated": {
                "probes": coordinated,
                "fleet_periods": len(per_period),
                "probes_per_open_period": coordinated / max(1, len(per_period)),
                "most_probes_in_one_period": max(per_period.values(), default=0),
                "probes_not_granted": not_granted,
            },
            "independent": {
                "probes": independent,
                "open_periods_per_instance": reopened,
                "probes_per_open_period": independent / max(1.0, reopened),
                "most_probes_in_one_period": None,
                "probes_not_granted": None,
            },
        }
        result["ratio_independent_to_coordinated"] = independent / max(1, coordinated)
        return result
    finally:
        for fleet in fleets.values():
            for instance in fleet:
                instance.stop()
        for dependency in dependencies.values():
            dependency.stop()


@dataclass(frozen=True)
class _Live:
    instance_id: str
    service: str
    breakers: Mapping[str, pb.BreakerSnapshot]


def quorum_counting(quick: bool) -> dict[str, Any]:
    """Microseconds per decider pass: incremental update against a count from scratch."""
    instances, breakers, reported = 500, 40, 10  # 20,000 breakers; 2 % report between passes
    states = (pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN)

    def snapshot_map(number: int, turn: int) -> dict[str, pb.BreakerSnapshot]:
        return {
            f"/bench.v1.Dependency{b}/Call": pb.BreakerSnapshot(
                state=states[(number + b + turn) % 2]
            )
            for b in range(breakers)
        }

    live = [_Live(f"i-{n:04d}", f"svc-{n % 5}", snapshot_map(n, 0)) for n in range(instances)]
    # Each pass, `reported` instances have reported: their breaker mappings are new objects.
    fresh_maps = [[snapshot_map(n, turn) for n in range(reported)] for turn in (1, 2)]
    counter = QuorumCounter()
    counter.update(live)
    turn = [0]

    def incremental(calls: int) -> None:
        for _ in range(calls):
            turn[0] ^= 1
            for n, mapping in enumerate(fresh_maps[turn[0]]):
                live[n] = _Live(live[n].instance_id, live[n].service, mapping)
            counter.update(live)

    def from_scratch(calls: int) -> None:
        for _ in range(calls):
            QuorumCounter().update(live)

    samples = interleaved(
        {"incremental": incremental, "from_scratch": from_scratch},
        rounds=3 if quick else 9,
        calls=3 if quick else 10,
    )
    assert counter.counts() == _fresh(live).counts()  # the same answer, whichever way
    return {
        "instances": instances,
        "breakers": instances * breakers,
        "reported_per_pass": reported,
        "incremental_us_per_pass": statistics.median(samples["incremental"]) / 1000,
        "from_scratch_us_per_pass": statistics.median(samples["from_scratch"]) / 1000,
        "ratio_from_scratch_to_incremental": median_ratio(samples, "from_scratch", "incremental"),
    }


def _fresh(live: list[_Live]) -> QuorumCounter:
    counter = QuorumCounter()
    counter.update(live)
    return counter


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print its tables, write bench/results/fleet.json."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        control_plane_process(Path(tmp) / "fleet.db") as target,
    ):
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.ControlPlaneStub(channel)
        policies = [
            # Long open periods: no instance may probe (and close) while a trial measures.
            _policy("latency", "latency", quorum=0.5, open_duration=60.0),
            _policy("coordinated", "coordinated", quorum=0.5),
            _policy("independent", "independent", quorum=None),
        ]
        stub.PutPolicy(pb.PutPolicyRequest(policies=policies), timeout=10)
        latency = decision_latency(target, stub, 5 if quick else 20)
        counting = quorum_counting(quick)
        probe_counts = probes(target, stub, 2.0 if quick else 5.0)
        channel.close()
    payload: dict[str, Any] = {
        "quick": quick,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "instances": INSTANCES,
        "half_open_max_calls": HALF_OPEN_MAX_CALLS,
        "open_duration_s": OPEN_DURATION,
        "decision_latency": latency,
        "probes": probe_counts,
        "quorum_counting": counting,
    }
    print(
        table(
            ["instances", "trials", "p50 ms", "p99 ms", "p99 / report interval", "target <= 2"],
            [
                [
                    str(INSTANCES),
                    str(latency["trials"]),
                    f"{latency['latency_ms_p50']:.0f}",
                    f"{latency['latency_ms_p99']:.0f}",
                    f"{latency['p99_report_intervals']:.2f}",
                    "met" if latency["target_met"] else "MISSED",
                ]
            ],
        )
    )
    print()
    print(
        table(
            [
                "probes of a down dependency (10 instances)",
                "total",
                "per open period",
                "most in one period",
                "not granted",
                "half_open_max_calls",
            ],
            [
                [
                    name,
                    str(probe_counts[name]["probes"]),
                    f"{probe_counts[name]['probes_per_open_period']:.1f}",
                    str(probe_counts[name]["most_probes_in_one_period"] or "-"),
                    str(probe_counts[name]["probes_not_granted"] if name == "coordinated" else "-"),
                    str(HALF_OPEN_MAX_CALLS),
                ]
                for name in ("coordinated", "independent")
            ],
        )
    )
    print(f"\nindependent / coordinated: {probe_counts['ratio_independent_to_coordinated']:.1f}x")
    print()
    print(
        table(
            ["quorum counting per decider pass", "breakers", "reported", "us per pass"],
            [
                [
                    name,
                    str(counting["breakers"]),
                    str(counting["reported_per_pass"] if name == "incremental" else "all"),
                    f"{counting[f'{name}_us_per_pass']:.0f}",
                ]
                for name in ("incremental", "from_scratch")
            ],
        )
    )
    print(f"\nfrom scratch / incremental: {counting['ratio_from_scratch_to_incremental']:.1f}x")
    write_json("fleet", payload)
    return payload


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
