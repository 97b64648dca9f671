"""Control plane on loopback: policy propagation to N agents, and reports handled per second.

The control plane runs in its own process (`meshbreaker control-plane`, as in production), the
agents in this one: N MeshAgents, each with its own registry and channel, all on the agents'
shared event loop. For each put we take the time from PutPolicy returning (and, second figure,
from it being sent, which adds the store's fsync) to the moment each agent has applied the new
revision (`MeshAgent.applied_at`, same monotonic clock), and quote p50/p99 over every
(put, agent) pair. Reports/s: clients keep a window of ReportState calls in flight, each a
realistic report of 20 breakers from one of 200 instances, for a fixed time. Machines here are
shared and noisy: absolute figures drift by 2x or more between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from bench._harness import table, write_json
from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.convert import config_to_proto
from meshbreaker.histogram import DEFAULT_BUCKETS
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

METHOD = "/bench.v1.Service/Call"
TARGET_P99_MS = 250.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def control_plane_process(db: Path, *options: str) -> Iterator[str]:
    """`meshbreaker control-plane` in a child process (with more `options`, e.g. a console port);
    yields its target once it answers."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "meshbreaker.cli", "control-plane"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--db", str(db), "--report-ttl", "60", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=20)
        yield target
    finally:
        channel.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def propagation(target: str, agents: int, puts: int) -> dict[str, Any]:
    """Start `agents` agents, do `puts` puts, and measure put -> applied in every agent."""
    threads_before = threading.active_count()
    started = time.monotonic()
    fleet = [
        MeshAgent(
            target,
            "bench",
            BreakerRegistry(),
            instance_id=f"bench-{agents}-{index}",
            report_interval=5.0,
        ).start()
        for index in range(agents)
    ]
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.ControlPlaneStub(channel)
    try:
        deadline = time.monotonic() + 30
        while not all(agent.connected for agent in fleet):
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not connect within 30 s")
            time.sleep(0.01)
        connect_seconds = time.monotonic() - started
        threads_per_agent = (threading.active_count() - threads_before) / agents
        delays_ms: list[float] = []
        from_send_ms: list[float] = []
        put_ms: list[float] = []
        worst_ms: list[float] = []
        for round_ in range(puts):
            config = config_to_proto(BreakerConfig(consecutive_failures=3 + round_ % 5))
            policy = pb.Policy(id="bench", selector=pb.Selector(method=METHOD), config=config)
            before = time.monotonic()
            revision = stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]), timeout=10).revision
            returned = time.monotonic()
            put_ms.append((returned - before) * 1000)
            for agent in fleet:
                if not agent.wait_for_revision(revision, timeout=10):
                    raise RuntimeError(f"{agent.instance_id} did not apply revision {revision}")
            # Applied before the response reached us counts as zero: it was already there.
            delays = [max(0.0, (agent.applied_at or returned) - returned) * 1000 for agent in fleet]
            delays_ms.extend(delays)
            from_send_ms.extend(((agent.applied_at or returned) - before) * 1000 for agent in fleet)
            worst_ms.append(max(delays))
            time.sleep(0.05)  # let the ACK reports drain, as between real changes
        return {
            "agents": agents,
            "puts": puts,
            "connect_all_s": round(connect_seconds, 3),
            "threads_per_agent": round(threads_per_agent, 2),
            "put_rpc_ms_p50": round(statistics.median(put_ms), 2),
            "applied_ms_p50": round(_percentile(delays_ms, 0.50), 2),
            "applied_ms_p99": round(_percentile(delays_ms, 0.99), 2),
            "applied_ms_max": round(max(delays_ms), 2),
            "last_agent_ms_p50": round(statistics.median(worst_ms), 2),
            "from_put_sent_ms_p50": round(_percentile(from_send_ms, 0.50), 2),
            "from_put_sent_ms_p99": round(_percentile(from_send_ms, 0.99), 2),
        }
    finally:
        channel.close()
        for agent in fleet:
            agent.stop()


def _report(instance: int, breakers: int, *, bound: bool = False) -> pb.ReportStateRequest:
    # What an agent whose process exports metrics sends: transition counts and a histogram too;
    # `bound`: also its instance key and a two-transition log, as agents send now (their
    # effective configs go only in the report after a change, so a steady report has none).
    histogram = pb.DurationHistogram(
        bounds=DEFAULT_BUCKETS, counts=[90 + i for i in range(len(DEFAULT_BUCKETS) + 1)], sum=4.0
    )
    transitions = [
        pb.TransitionCount(from_state=old, to_state=new, count=3)
        for old, new in (
            (pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN),
            (pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN),
            (pb.BREAKER_STATE_HALF_OPEN, pb.BREAKER_STATE_CLOSED),
        )
    ]
    snapshots = [
        pb.BreakerSnapshot(
            name=f"/bench.v1.Service/Method{index}",
            state=pb.BREAKER_STATE_CLOSED,
            total=1000 + index,
            successful=990,
            failed=10 + index,
            failure_rate=0.01,
            window_calls=100,
            mean_duration=0.004,
            times_opened=3,
            transitions=transitions,
            duration_histogram=histogram,
        )
        for index in range(breakers)
    ]
    request = pb.ReportStateRequest(
        instance_id=f"reporter-{instance}{'-bound' if bound else ''}",
        service="bench",
        applied_revision=1,
        breakers=snapshots,
        full=True,
    )
    if bound:
        request.instance_key = f"bench-key-{instance:06d}-0123456789"
        opened = (pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN)
        probing = (pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN)
        request.transition_log.extend(
            pb.TransitionRecord(
                sequence=sequence, name=snapshots[0].name, from_state=old, to_state=new
            )
            for sequence, (old, new) in enumerate((opened, probing), start=1)
        )
    return request


def reports_per_second(
    target: str,
    seconds: float,
    *,
    clients: int = 4,
    window: int = 32,
    breakers: int = 20,
    bound: bool = False,
) -> dict[str, Any]:
    """ReportState calls the control plane completes per second, `clients` x `window` in flight."""
    requests = [_report(index, breakers, bound=bound) for index in range(200)]
    channels = [
        grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(clients)
    ]
    stubs = [pb_grpc.ControlPlaneStub(channel) for channel in channels]
    done = [0] * clients
    failed = [0] * clients
    stop_at = time.monotonic() + seconds

    def client(slot: int) -> None:
        stub = stubs[slot]
        in_flight: list[Any] = []
        sent = 0
        while time.monotonic() < stop_at or in_flight:
            while time.monotonic() < stop_at and len(in_flight) < window:
                request = requests[(slot * 50 + sent) % len(requests)]
                in_flight.append(stub.ReportState.future(request, timeout=10))
                sent += 1
            future = in_flight.pop(0)
            try:
                future.result()
                done[slot] += 1
            except grpc.RpcError:
                failed[slot] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    for channel in channels:
        channel.close()
    return {
        "seconds": round(elapsed, 2),
        "breakers_per_report": breakers,
        "clients": clients,
        "in_flight": clients * window,
        "reports": sum(done),
        "failed": sum(failed),
        "bound": bound,
        "report_bytes": requests[0].ByteSize(),
        "reports_per_s": round(sum(done) / elapsed, 1),
        "breaker_snapshots_per_s": round(sum(done) * breakers / elapsed, 1),
    }


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print its tables, write bench/results/control_plane.json."""
    puts = 5 if quick else 20
    sizes = (50, 200)
    with (
        tempfile.TemporaryDirectory() as tmp,
        control_plane_process(Path(tmp) / "bench.db") as target,
    ):
        results = [propagation(target, agents, puts) for agents in sizes]
        # Side by side in one run: reports without and with an instance key and transition log.
        throughput = reports_per_second(target, 1.0 if quick else 3.0)
        bound = reports_per_second(target, 1.0 if quick else 3.0, bound=True)
    payload: dict[str, Any] = {
        "quick": quick,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "grpc": grpc.__version__,
        "target_p99_ms_at_200": TARGET_P99_MS,
        "propagation": results,
        "reports": throughput,
        "bound_reports": bound,
    }
    at_200 = next(r for r in results if r["agents"] == 200)
    payload["target_met"] = at_200["applied_ms_p99"] <= TARGET_P99_MS
    print(
        table(
            [
                "agents",
                "puts",
                "put RPC p50 ms",
                "applied p50 ms",
                "applied p99 ms",
                "max ms",
                "from put sent p50/p99 ms",
                "all connected s",
                "threads/agent",
            ],
            [
                [
                    str(r["agents"]),
                    str(r["puts"]),
                    f"{r['put_rpc_ms_p50']:.1f}",
                    f"{r['applied_ms_p50']:.1f}",
                    f"{r['applied_ms_p99']:.1f}",
                    f"{r['applied_ms_max']:.1f}",
                    f"{r['from_put_sent_ms_p50']:.1f} / {r['from_put_sent_ms_p99']:.1f}",
                    f"{r['connect_all_s']:.2f}",
                    f"{r['threads_per_agent']:.2f}",
                ]
                for r in results
            ],
        )
    )
    print()
    print(
        table(
            [
                "reports",
                "bytes",
                "reports/s",
                "breaker snapshots/s",
                "breakers/report",
                "in flight",
                "failed",
            ],
            [
                [
                    "key + log" if run["bound"] else "plain",
                    str(run["report_bytes"]),
                    f"{run['reports_per_s']:.0f}",
                    f"{run['breaker_snapshots_per_s']:.0f}",
                    str(run["breakers_per_report"]),
                    str(run["in_flight"]),
                    str(run["failed"]),
                ]
                for run in (throughput, bound)
            ],
        )
    )
    verdict = "met" if payload["target_met"] else "NOT met"
    print(f"\np99 at 200 agents: {at_200['applied_ms_p99']:.1f} ms (target <= 250 ms: {verdict})")
    path = write_json("control_plane", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer puts, shorter load")
    main(quick=parser.parse_args().quick)
