"""What BreakerInterceptor and guarded_channel cost per RPC, next to a plain channel.

Variants: a plain channel (and a second one, its A/A control), grpc.intercept_channel with a
pass-through interceptor (and its A/A control), BreakerInterceptor, and guarded_channel.

Also what the call-duration histogram (the metrics' one per-call cost) adds to a guarded call.

One run, one server process (a subprocess, so server work does not share the client's GIL), and
many rounds: in a round every variant makes its calls (and streams) one at a time, taking turns
in a fresh random order, so drift on a noisy machine hits all variants alike. Ratios are medians
of per-round ratios, of wall time and of the client's CPU time (all its threads: grpc's pollers
too). A second plain channel and a second pass-through interceptor are the A/A controls: their
ratios to the first show the noise floor. The instruction counts (the client under callgrind)
are the load-independent view of the same calls.

Parts: _grpc_rig (server, pass-through interceptors, workloads), _grpc_sync and _grpc_aio (the
network workloads), _grpc_instructions (the counts), _grpc_interception (the in-process cost of
interception alone).

    python -m bench.grpc_overhead [--quick] [--only PART ...] [--rounds N]
    (PART: sync, aio, instructions, interception)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import sys
import time
from typing import Any

import grpc

from bench._grpc_aio import run_aio
from bench._grpc_instructions import instructions_table, run_instructions
from bench._grpc_interception import (
    guarded_aio_cost,
    guarded_aio_table,
    histogram_table,
    interceptor_cost,
)
from bench._grpc_rig import STREAM_MESSAGES, THREADS, VARIANTS, serve
from bench._grpc_sync import run_sync
from bench._harness import table, write_json

PARTS = ("sync", "aio", "instructions", "interception")

# Issue 18's targets for guarded_channel x plain channel: (api, workload, at most).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("sync", "unary", 1.03),
    ("sync", "stream", 1.03),
    ("aio", "unary", 1.05),
    ("aio", "stream", 1.03),
)


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target's ratio, its A/A control, and whether it is met (or too close to call)."""
    found = []
    for api, key, target in TARGETS:
        workload = results.get(api, {}).get(key)
        if workload is None:
            continue
        ratio = workload["ratio_to_plain"]["guarded"]
        control = workload["ratio_to_plain"]["plain_control"]
        # Two identical channels differ by |control - 1|: a ratio that close to the target
        # could lie on either side of it in another run.
        close = abs(ratio - target) <= abs(control - 1.0)
        found.append(
            {
                "workload": workload["name"],
                "ratio": ratio,
                "control": control,
                "target": target,
                "met": ratio <= target,
                "within_noise": close,
            }
        )
    return found


def _verdict_lines(found: list[dict[str, Any]]) -> str:
    lines = []
    for row in found:
        verdict = "met" if row["met"] else "NOT met"
        if row["within_noise"]:
            verdict += ", within the A/A noise of the target"
        lines.append(
            f"- {row['workload']}: guarded x plain {row['ratio']:.3f} (A/A {row['control']:.3f});"
            f" target <= {row['target']:.2f}: {verdict}"
        )
    return "\n".join(lines)


def _table(results: dict[str, Any]) -> str:
    rows = []
    for api in ("sync", "aio"):
        for workload in results.get(api, {}).values():
            for variant in VARIANTS:
                row = workload["variants"][variant]
                rows.append(
                    [
                        workload["name"],
                        variant,
                        f"{row['median_us']:.1f}",
                        f"{row['p99_us']:.1f}",
                        f"{row['per_s']:.0f}",
                        f"{workload['ratio_to_passthrough'][variant]:.3f}",
                        f"{workload['ratio_to_plain'][variant]:.3f}",
                        f"{row['client_cpu_us']:.1f}",
                        f"{workload['cpu_ratio_to_plain'][variant]:.3f}",
                    ]
                )
    headers = ["workload", "variant", "median µs", "p99 µs", "per s", "x pass-through", "x plain"]
    headers += ["client CPU µs", "CPU x plain"]
    return table(headers, rows)


def main(
    quick: bool = False, only: tuple[str, ...] = PARTS, rounds: int | None = None
) -> dict[str, Any]:
    """Runs the benchmark (the parts in `only`), prints the tables, writes the JSON."""
    # Many short rounds: a round of each variant takes a fraction of a second, so the median of
    # per-round ratios is taken over many pairs measured close together.
    default_rounds, calls, streams, batches = (6, 100, 4, 1) if quick else (36, 200, 10, 1)
    rounds = rounds or default_rounds
    results: dict[str, Any] = {
        "meta": {
            "quick": quick,
            "parts": list(only),
            "rounds": rounds,
            "calls_per_round": calls,
            "streams_per_round": streams,
            "stream_messages": STREAM_MESSAGES,
            "threads": THREADS,
            "python": sys.version.split()[0],
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": list(os.getloadavg()),
        }
    }
    started = time.time()
    network = {"sync", "aio", "instructions"} & set(only)
    if network:
        context = multiprocessing.get_context("spawn")
        ports = context.Queue()
        server = context.Process(target=serve, args=(ports,), daemon=True)
        server.start()
        try:
            target = f"127.0.0.1:{ports.get(timeout=30)}"
            if "sync" in only:
                results["sync"] = run_sync(target, rounds, calls, streams, batches)
            if "aio" in only:
                results["aio"] = asyncio.run(run_aio(target, rounds, calls, streams, batches))
            if "instructions" in only:
                # Counts barely vary: a few rounds tell the spread (callgrind runs ~50x slower).
                counted_rounds = 1 if quick else 2
                results["instructions"] = {
                    api: run_instructions(target, api, 100, counted_rounds)
                    for api in ("sync", "aio")
                }
        finally:
            server.terminate()
            server.join(10)
    if "interception" in only:
        interception_rounds = min(rounds, 12)
        results["interceptor_cost"] = interceptor_cost(
            interception_rounds, 20_000 if quick else 100_000
        )
        results["guarded_aio_cost"] = guarded_aio_cost(
            interception_rounds, 5_000 if quick else 20_000
        )
    results["verdicts"] = verdicts(results)
    results["meta"]["seconds"] = round(time.time() - started, 1)
    results["meta"]["load_average_after"] = list(os.getloadavg())
    if "sync" in only or "aio" in only:
        print(_table(results))
        print(
            "\nx plain / x pass-through = median over rounds of variant / that variant, measured"
            " in the same round (CPU x plain: the same for the client's CPU time per call);"
            " plain_control and passthrough_control are the A/A noise floors. Issue 18's targets:"
        )
        print(_verdict_lines(results["verdicts"]))
    if "instructions" in only:
        counted = results["instructions"]
        if None in counted.values():
            print("\nInstructions per call: valgrind is missing (Debian: apt install valgrind).")
        else:
            print("\nInstructions per call (client under callgrind, all its threads):")
            print(instructions_table(counted))
    if "interception" in only:
        cost = results["interceptor_cost"]
        print(
            f"Interception alone, no network: breaker adds {cost['added_ns_sync']:.0f} ns per"
            f" sync call and {cost['added_ns_aio']:.0f} ns per aio call over a pass-through"
            " interceptor."
        )
        print()
        print(guarded_aio_table(results["guarded_aio_cost"]))
        print()
        print(histogram_table(cost))
    print(f"took {results['meta']['seconds']} s; wrote {write_json('grpc_overhead', results)}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    parser.add_argument(
        "--only", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run"
    )
    parser.add_argument("--rounds", type=int, help="rounds of the network parts (default 36)")
    args = parser.parse_args()
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    main(quick=args.quick, only=tuple(args.only), rounds=args.rounds)
