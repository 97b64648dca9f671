"""Instructions per call in bench/grpc_overhead.py: the client under callgrind, load-independent.

Wall time on a shared machine moves with whatever else runs; the instructions a call executes
do not. The client runs under valgrind's callgrind (the server stays outside it, in its own
process) and calls os.getppid() between batches of calls: `--dump-before=getppid` writes the
counts since the previous dump each time, so each dump is one batch of one variant. Counts
cover all the client's threads (grpc's pollers too); the A/A control shows what they vary by.

    python -m bench._grpc_instructions TARGET API CALLS ROUNDS   (run by run_instructions)
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._grpc_rig import STREAM, STREAM_MESSAGES, UNARY, VARIANTS, rotated

# A stream of STREAM_MESSAGES costs about as much as that many unary calls: fewer per batch.
_STREAMS_PER_CALL = 50
_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def _mark() -> None:
    os.getppid()  # callgrind dumps the counts before each call of getppid (the batch boundary)


def _client_sync(target: str, calls: int, rounds: int) -> list[tuple[str, str, int]]:
    from bench._grpc_sync import _sync_channels, _sync_stream, _sync_unary

    channels = _sync_channels(target)
    unary: dict[str, Any] = {v: channels[v].unary_unary(UNARY) for v in VARIANTS}
    stream: dict[str, Any] = {v: channels[v].unary_stream(STREAM) for v in VARIANTS}
    streams = max(1, calls // _STREAMS_PER_CALL)
    for variant in VARIANTS:
        _sync_unary(unary[variant], 50)
        _sync_stream(stream[variant], 3)
    batches: list[tuple[str, str, int]] = []
    for index in range(rounds):
        for variant in rotated(index):
            _mark()
            _sync_unary(unary[variant], calls)
            batches.append(("unary", variant, calls))
            _mark()
            _sync_stream(stream[variant], streams)
            batches.append(("stream", variant, streams))
    _mark()
    for channel in channels.values():
        channel.close()
    return batches


async def _client_aio(target: str, calls: int, rounds: int) -> list[tuple[str, str, int]]:
    from bench._grpc_aio import _aio_channels, _aio_stream, _aio_unary

    channels = _aio_channels(target)
    unary: dict[str, Any] = {v: channels[v].unary_unary(UNARY) for v in VARIANTS}
    stream: dict[str, Any] = {v: channels[v].unary_stream(STREAM) for v in VARIANTS}
    streams = max(1, calls // _STREAMS_PER_CALL)
    for variant in VARIANTS:
        await _aio_unary(unary[variant], 50)
        await _aio_stream(stream[variant], 3)
    batches: list[tuple[str, str, int]] = []
    for index in range(rounds):
        for variant in rotated(index):
            _mark()
            await _aio_unary(unary[variant], calls)
            batches.append(("unary", variant, calls))
            _mark()
            await _aio_stream(stream[variant], streams)
            batches.append(("stream", variant, streams))
    _mark()
    for channel in channels.values():
        await channel.close()
    return batches


def _dumps(directory: Path) -> list[int]:
    """The totals of callgrind's numbered dumps, in order (dump k: up to the k-th getppid)."""
    numbered = sorted(directory.glob("cg.out.*"), key=lambda path: int(path.suffix[1:]))
    totals = []
    for path in numbered:
        found = _TOTALS.search(path.read_bytes())
        totals.append(int(found.group(1)) if found else 0)
    return totals


def run_instructions(target: str, api: str, calls: int, rounds: int) -> dict[str, Any] | None:
    """Instructions per operation of each variant (median over rounds); None without valgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory(prefix="grpc-instructions-") as folder:
        directory = Path(folder)
        batches_file = directory / "batches.txt"
        command = [valgrind, "--tool=callgrind", "--dump-before=getppid"]
        command += [f"--callgrind-out-file={directory / 'cg.out'}", "--collect-systime=no"]
        command += [sys.executable, "-m", "bench._grpc_instructions", target, api, str(calls)]
        command += [str(rounds), str(batches_file)]
        environment = os.environ | {"PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, env=environment, check=False)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"the client under callgrind failed: {' / '.join(tail)}")
        batches = [line.split() for line in batches_file.read_text().splitlines()]
        # Dump 1 is start-up and warm-up; dump k+1 is batch k (the getppid after it ends it).
        totals = _dumps(directory)[1 : len(batches) + 1]
    if len(totals) != len(batches):
        raise RuntimeError(f"callgrind wrote {len(totals)} batch dumps for {len(batches)} batches")
    per_op: dict[str, dict[str, list[float]]] = {}
    for (workload, variant, count), total in zip(batches, totals, strict=True):
        per_op.setdefault(workload, {}).setdefault(variant, []).append(total / int(count))
    result: dict[str, Any] = {}
    for workload, by_variant in per_op.items():
        medians = {v: statistics.median(by_variant[v]) for v in VARIANTS}
        result[workload] = {
            "instructions_per_op": {v: round(medians[v]) for v in VARIANTS},
            "ratio_to_plain": {v: round(medians[v] / medians["plain"], 4) for v in VARIANTS},
        }
    return result


def instructions_table(results: dict[str, Any]) -> str:
    """The instruction counts as a markdown table, one row per API, workload and variant."""
    from bench._harness import table

    rows = []
    for api in ("sync", "aio"):
        for workload, data in results.get(api, {}).items():
            name = (
                f"{api} {'unary' if workload == 'unary' else f'server-stream of {STREAM_MESSAGES}'}"
            )
            for variant in VARIANTS:
                count = data["instructions_per_op"][variant]
                rows.append([name, variant, f"{count:,}", f"{data['ratio_to_plain'][variant]:.3f}"])
    return table(["workload", "variant", "instructions per call", "x plain"], rows)


if __name__ == "__main__":
    target, api, calls, rounds, out = sys.argv[1:6]
    if api == "sync":
        made = _client_sync(target, int(calls), int(rounds))
    else:
        made = asyncio.run(_client_aio(target, int(calls), int(rounds)))
    Path(out).write_text("".join(f"{w} {v} {n}\n" for w, v, n in made))
