"""Control plane at mesh scale: many policies and watchers, replicas on etcd, memory per breaker.

Every control plane runs in its own process (`meshbreaker control-plane`, as in production).
Watchers and agents are simulated in this process, on one asyncio loop: a simulated agent is one
WatchConfig stream with its own instance id plus the ReportState ACK a MeshAgent sends when a
snapshot arrives (what the control plane sees of a MeshAgent, without a registry behind it); they
share a few channels per replica. Times are taken from the moment PutPolicy returns to the moment
a stream delivers the new revision. Memory is the control plane's resident set (VmRSS) before and
after reports of 20,000 breakers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench._harness import table, write_json
from meshbreaker.control.store.etcd_server import EtcdServer, free_port
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

CALLERS = 100


@contextlib.contextmanager
def control_plane(
    store: list[str], *, metrics: bool = False
) -> Iterator[tuple[str, int, int | None]]:
    """A control plane process on `store` flags; yields (target, pid, metrics port)."""
    port = _port()
    metrics_port = _port() if metrics else None
    command = [sys.executable, "-m", "meshbreaker.cli", "control-plane", "--port", str(port)]
    command += [*store, "--report-ttl", "600"]
    if metrics_port is not None:
        command += ["--metrics-port", str(metrics_port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield target, process.pid, metrics_port
    finally:
        channel.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _port() -> int:
    return free_port()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def _policy(index: int, caller: str, failures: int = 3) -> pb.Policy:
    return pb.Policy(
        id=f"p{index:05d}",
        selector=pb.Selector(caller=caller, method=f"/bench.v1.S{index}/Call"),
        config=pb.BreakerConfig(consecutive_failures=failures),
    )


def _caller_of(index: int, policies: int) -> str:
    # One policy in a hundred applies to every caller; the rest belong to one caller each.
    return "" if index >= policies - policies // 100 else f"svc{index % CALLERS:03d}"


def preload(target: str, policies: int) -> None:
    """Store `policies` policies, 100 per put."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        for start in range(0, policies, 100):
            batch = [_policy(i, _caller_of(i, policies)) for i in range(start, start + 100)]
            stub.PutPolicy(pb.PutPolicyRequest(policies=batch), timeout=60)


class Fleet:
    """Simulated agents (or plain watchers): WatchConfig streams on a loop in a thread."""

    def __init__(self, targets: list[str], count: int, *, acknowledge: bool) -> None:
        self.arrivals: dict[int, list[float]] = {}  # revision -> arrival times
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._targets = targets
        self._count = count
        self._acknowledge = acknowledge
        self.connected = 0
        self._tasks: list[asyncio.Future[Any]] = []
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)

    async def _start(self) -> None:
        per_target = 10
        self._channels = [
            grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )
            for target in self._targets
            for slot in range(per_target)
        ]
        for index in range(self._count):
            channel = self._channels[index % len(self._channels)]
            task = asyncio.ensure_future(self._run(channel, index))
            self._tasks.append(task)

    async def _run(self, channel: grpc.aio.Channel, index: int) -> None:
        stub = pb_grpc.ControlPlaneStub(channel)
        service = f"svc{index % CALLERS:03d}"
        instance = f"sim-{index}" if self._acknowledge else ""
        first = True
        async for snapshot in stub.WatchConfig(
            pb.WatchConfigRequest(service=service, instance_id=instance)
        ):
            now = time.monotonic()
            if first:
                first = False
                self.connected += 1
            with self._lock:
                self.arrivals.setdefault(snapshot.revision, []).append(now)
            if self._acknowledge:
                await stub.ReportState(
                    pb.ReportStateRequest(
                        instance_id=instance, service=service, applied_revision=snapshot.revision
                    )
                )

    def wait_connected(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.connected < self._count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.connected}/{self._count} streams connected")
            time.sleep(0.05)

    def close(self) -> None:
        async def stop() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for channel in self._channels:
                await channel.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def puts_under_watchers(policies: int, watchers: int, puts: int) -> dict[str, Any]:
    """PutPolicy and GetConfig latency with `watchers` streams open on `policies` policies."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        control_plane(["--db", str(Path(tmp) / "bench.db")]) as (target, _, _),
    ):
        preload(target, policies)
        fleet = Fleet([target], watchers, acknowledge=False)
        try:
            fleet.wait_connected()
            get_ms: list[float] = []
            stop = threading.Event()

            def probe() -> None:
                with grpc.insecure_channel(
                    target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
                ) as channel:
                    stub = pb_grpc.ControlPlaneStub(channel)
                    turn = 0
                    while not stop.is_set():
                        started = time.monotonic()
                        stub.GetConfig(pb.GetConfigRequest(service=f"svc{turn % CALLERS:03d}"))
                        get_ms.append((time.monotonic() - started) * 1000)
                        turn += 1
                        time.sleep(0.005)

            prober = threading.Thread(target=probe)
            prober.start()
            put_ms: list[float] = []
            delivered_ms: list[float] = []
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.ControlPlaneStub(channel)
                for turn in range(puts):
                    # Nine puts in ten change one caller's policy, one in ten a global one.
                    index = turn * 7 % (policies - policies // 100)
                    if turn % 10 == 9:
                        index = policies - 1 - turn % (policies // 100)
                    policy = _policy(index, _caller_of(index, policies), 4 + turn % 5)
                    started = time.monotonic()
                    revision = stub.PutPolicy(
                        pb.PutPolicyRequest(policies=[policy]), timeout=60
                    ).revision
                    returned = time.monotonic()
                    put_ms.append((returned - started) * 1000)
                    deadline = time.monotonic() + 30
                    expected = watchers if policy.selector.caller == "" else watchers // CALLERS
                    while len(fleet.arrivals.get(revision, ())) < expected:
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.005)
                    delivered_ms.extend(
                        max(0.0, t - returned) * 1000 for t in fleet.arrivals.get(revision, ())
                    )
                    time.sleep(0.05)
            stop.set()
            prober.join()
        finally:
            fleet.close()
    return {
        "policies": policies,
        "watchers": watchers,
        "puts": puts,
        "put_ms_p50": round(statistics.median(put_ms), 1),
        "put_ms_p99": round(_percentile(put_ms, 0.99), 1),
        "get_config_ms_p50": round(statistics.median(get_ms), 1),
        "get_config_ms_p99": round(_percentile(get_ms, 0.99), 1),
        "delivered_ms_p50": round(statistics.median(delivered_ms), 1) if delivered_ms else None,
        "delivered_ms_p99": round(_percentile(delivered_ms, 0.99), 1) if delivered_ms else None,
    }


def replicas_fanout(agents: int, replicas: int, puts: int) -> dict[str, Any]:
    """A global policy change reaching `agents` simulated agents spread over etcd replicas."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        etcd = stack.enter_context(EtcdServer(Path(tmp) / "etcd"))
        planes = [
            stack.enter_context(control_plane(["--store", etcd.url])) for _ in range(replicas)
        ]
        targets = [target for target, _, _ in planes]
        fleet = Fleet(targets, agents, acknowledge=True)
        try:
            fleet.wait_connected()
            delays: list[float] = []
            stubs = [pb_grpc.ControlPlaneStub(grpc.insecure_channel(t)) for t in targets]
            for turn in range(puts):
                policy = _policy(0, "", 3 + turn % 5)
                stub = stubs[turn % len(stubs)]
                revision = stub.PutPolicy(
                    pb.PutPolicyRequest(policies=[policy]), timeout=60
                ).revision
                returned = time.monotonic()
                deadline = returned + 30
                while len(fleet.arrivals.get(revision, ())) < agents:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"revision {revision} did not reach every agent")
                    time.sleep(0.005)
                delays.extend(max(0.0, t - returned) * 1000 for t in fleet.arrivals[revision])
                time.sleep(0.2)
        finally:
            fleet.close()
    return {
        "agents": agents,
        "replicas": replicas,
        "puts": puts,
        "applied_ms_p50": round(statistics.median(delays), 1),
        "applied_ms_p99": round(_percentile(delays, 0.99), 1),
        "applied_ms_max": round(max(delays), 1),
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def memory_per_breaker(instances: int, breakers: int) -> dict[str, Any]:
    """Resident memory per reported breaker, and one /metrics scrape at that size."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        control_plane(["--db", str(Path(tmp) / "bench.db")], metrics=True) as (
            target,
            pid,
            metrics_port,
        ),
    ):
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ControlPlaneStub(channel)
            stub.ReportState(pb.ReportStateRequest(instance_id="warm", service="warm"))
            before = _rss_kib(pid)
            for instance in range(instances):
                snapshots = [
                    pb.BreakerSnapshot(
                        name=f"/bench.v1.S{index}/Call",
                        state=pb.BREAKER_STATE_CLOSED,
                        total=1000,
                        successful=990,
                        failed=10,
                        failure_rate=0.01,
                        window_calls=100,
                        mean_duration=0.004,
                    )
                    for index in range(breakers)
                ]
                stub.ReportState(
                    pb.ReportStateRequest(
                        instance_id=f"i{instance}",
                        service=f"svc{instance % CALLERS:03d}",
                        breakers=snapshots,
                        full=True,
                    )
                )
            after = _rss_kib(pid)
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=120) as r:
            body = r.read()
        scrape_s = time.monotonic() - started
        peak = _rss_kib(pid)
    total = instances * breakers
    return {
        "reported_breakers": total,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "bytes_per_breaker": round((after - before) * 1024 / total),
        "scrape_s": round(scrape_s, 2),
        "scrape_mb": round(len(body) / 1e6, 1),
        "rss_kib_after_scrape": peak,
    }


def main(quick: bool = False) -> dict[str, Any]:
    """Run the scale scenarios, print their tables, write bench/results/control_plane_scale.json."""
    policies, watchers, puts = (2_000, 100, 10) if quick else (10_000, 500, 40)
    runs = [puts_under_watchers(policies, watchers, puts)]
    fanout = [
        replicas_fanout(*((100, 3, 3) if quick else (1_000, 3, 10))),
        replicas_fanout(*((50, 1, 3) if quick else (200, 1, 10))),
    ]
    memory = memory_per_breaker(*((20, 100) if quick else (200, 100)))
    payload = {
        "quick": quick,
        "load_average": os.getloadavg(),
        "watchers": runs,
        "fanout": fanout,
        "memory": memory,
    }
    print(
        table(
            [
                "policies",
                "watchers",
                "PutPolicy p50/p99 ms",
                "GetConfig p50/p99 ms (during puts)",
                "delivered p50/p99 ms",
            ],
            [
                [
                    str(r["policies"]),
                    str(r["watchers"]),
                    f"{r['put_ms_p50']} / {r['put_ms_p99']}",
                    f"{r['get_config_ms_p50']} / {r['get_config_ms_p99']}",
                    f"{r['delivered_ms_p50']} / {r['delivered_ms_p99']}",
                ]
                for r in runs
            ],
        )
    )
    print()
    print(
        table(
            ["agents", "replicas (etcd)", "applied p50 / p99 / max ms"],
            [
                [
                    str(f["agents"]),
                    str(f["replicas"]),
                    f"{f['applied_ms_p50']} / {f['applied_ms_p99']} / {f['applied_ms_max']}",
                ]
                for f in fanout
            ],
        )
    )
    print()
    print(
        table(
            ["reported breakers", "bytes/breaker (RSS)", "/metrics scrape s", "scrape MB"],
            [
                [
                    str(memory["reported_breakers"]),
                    str(memory["bytes_per_breaker"]),
                    str(memory["scrape_s"]),
                    str(memory["scrape_mb"]),
                ]
            ],
        )
    )
    path = write_json("control_plane_scale", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.control_plane_scale", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    main(quick=parser.parse_args().quick)
