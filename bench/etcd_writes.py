"""etcd writes per agent per minute: what replicas sharing the mesh view cost the store.

Two control-plane replicas (processes, default settings: a publish every 5 s) on one real etcd;
simulated agents (one asyncio loop in this process, as in control_plane_scale) report every
`interval` seconds, half to each replica, each with 20 breakers. "Busy" agents' counters change
in every report, "idle" ones report the same numbers each time. etcd's own counters
(etcd_mvcc_put_total, etcd_mvcc_txn_total, /metrics on its client port) are read before and
after a window; the figures are per agent and per minute. Writing every report to etcd would
cost one write per report: 60 / interval per agent per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench._harness import table, write_json
from bench.control_plane_scale import control_plane
from meshbreaker.control.store.etcd_server import EtcdServer
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

BREAKERS = 20


def etcd_counters(etcd: EtcdServer) -> dict[str, float]:
    """etcd's put and transaction counters."""
    url = f"http://127.0.0.1:{etcd.client_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    wanted = {"etcd_mvcc_put_total": 0.0, "etcd_mvcc_txn_total": 0.0}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            wanted[name] = float(value)
    return wanted


async def _agents(
    targets: list[str], agents: int, *, busy: bool, interval: float, seconds: float
) -> int:
    """Report from `agents` simulated agents for `seconds`; the reports made."""
    channels = [grpc.aio.insecure_channel(target) for target in targets]
    stubs = [pb_grpc.ControlPlaneStub(channel) for channel in channels]
    reports = 0
    deadline = time.monotonic() + seconds

    async def agent(index: int) -> None:
        nonlocal reports
        stub = stubs[index % len(stubs)]
        await asyncio.sleep(interval * index / agents)  # spread out, as real agents are
        turn = 0
        while time.monotonic() < deadline:
            calls = 1000 + (turn * 37 if busy else 0)
            breakers = [
                pb.BreakerSnapshot(
                    name=f"/bench.v1.S{b}/Call",
                    state=pb.BREAKER_STATE_CLOSED,
                    total=calls,
                    successful=calls - 10,
                    failed=10,
                    window_calls=100,
                )
                for b in range(BREAKERS)
            ]
            await stub.ReportState(
                pb.ReportStateRequest(
                    instance_id=f"sim-{index}",
                    service=f"svc{index % 20:02d}",
                    breakers=breakers,
                    full=True,
                ),
                timeout=30,
            )
            reports += 1
            turn += 1
            await asyncio.sleep(interval)

    try:
        await asyncio.gather(*(agent(index) for index in range(agents)))
    finally:
        for channel in channels:
            await channel.close()
    return reports


def etcd_writes(agents: int, seconds: float, interval: float = 5.0) -> list[dict[str, Any]]:
    """Busy and idle agents over two replicas: etcd puts and transactions per agent-minute."""
    rows = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        etcd = stack.enter_context(EtcdServer(Path(tmp) / "etcd"))
        planes = [stack.enter_context(control_plane(["--store", etcd.url])) for _ in range(2)]
        targets = [target for target, _, _ in planes]
        for busy in (True, False):
            # One interval first so every instance exists and its first record is written.
            asyncio.run(_agents(targets, agents, busy=busy, interval=interval, seconds=interval))
            time.sleep(interval)
            before = etcd_counters(etcd)
            reports = asyncio.run(
                _agents(targets, agents, busy=busy, interval=interval, seconds=seconds)
            )
            time.sleep(interval)  # the last publish of the window
            after = etcd_counters(etcd)
            minutes = agents * (seconds + interval) / 60
            puts = after["etcd_mvcc_put_total"] - before["etcd_mvcc_put_total"]
            txns = after["etcd_mvcc_txn_total"] - before["etcd_mvcc_txn_total"]
            rows.append(
                {
                    "agents": agents,
                    "breakers_per_agent": BREAKERS,
                    "counters": "change every report" if busy else "unchanged",
                    "report_interval_s": interval,
                    "reports_per_agent_per_minute": round(reports / (agents * seconds / 60), 1),
                    "etcd_puts_per_agent_per_minute": round(puts / minutes, 2),
                    "etcd_txns_per_agent_per_minute": round(txns / minutes, 3),
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The figures as a table."""
    print(
        table(
            [
                "agents (2 replicas)",
                "counters",
                "reports/agent/min",
                "etcd puts/agent/min",
                "etcd txns/agent/min",
            ],
            [
                [
                    str(row["agents"]),
                    row["counters"],
                    str(row["reports_per_agent_per_minute"]),
                    str(row["etcd_puts_per_agent_per_minute"]),
                    str(row["etcd_txns_per_agent_per_minute"]),
                ]
                for row in rows
            ],
        )
    )


def main(quick: bool = False) -> list[dict[str, Any]]:
    """Run both rows, print them, write bench/results/etcd_writes.json."""
    rows = etcd_writes(*((40, 20.0) if quick else (200, 60.0)))
    print_table(rows)
    payload = {"quick": quick, "load_average": os.getloadavg(), "rows": rows}
    print(f"wrote {write_json('etcd_writes', payload)}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.etcd_writes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer agents, a shorter window")
    main(quick=parser.parse_args().quick)
