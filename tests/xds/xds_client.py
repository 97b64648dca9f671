"""A plain gRPC xDS client, run as its own process: grpcio resolves `xds:///` from the bootstrap.

No meshbreaker code runs here. It reads one JSON command per line on stdin and answers with JSON
lines on stdout, over one channel created at start (so a test can show that a change reaches a
channel that stays open):

* {"op": "call", "n": N, "method": M, "wait": bool} -> {"results": [backend or status code, ...]}
* {"op": "concurrent", "n": N, "method": M} -> one {"result": ...} line per call as it ends
* {"op": "until_clean", "method": M, "clean": K, "deadline": S} -> {"results": [...]} calls
  until the last K all succeeded, or S seconds passed
"""

from __future__ import annotations

import functools
import json
import queue
import sys
import time
from typing import Any

import grpc

TIMEOUT = 20.0


def outcome(call: Any) -> str:
    """The backend that answered, or the status code's name."""
    try:
        return bytes(call.result()).decode()
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"


def report(ended: queue.Queue[str], call: Any) -> None:
    """Queue the outcome of a finished call."""
    ended.put(outcome(call))


def main() -> None:
    """Serve commands until stdin closes."""
    channel = grpc.insecure_channel(sys.argv[1])
    for line in sys.stdin:
        command = json.loads(line)
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(command["method"])
        if command["op"] == "call":
            results = []
            for _ in range(command["n"]):
                future = method.future(b"", timeout=TIMEOUT, wait_for_ready=command["wait"])
                results.append(outcome(future))
            print(json.dumps({"results": results}), flush=True)
        elif command["op"] == "concurrent":
            ended: queue.Queue[str] = queue.Queue()
            futures = [method.future(b"", timeout=TIMEOUT) for _ in range(command["n"])]
            for future in futures:
                future.add_done_callback(functools.partial(report, ended))
            for _ in futures:
                print(json.dumps({"result": ended.get()}), flush=True)
        elif command["op"] == "until_clean":
            results = []
            deadline = time.monotonic() + command["deadline"]
            clean = command["clean"]
            while time.monotonic() < deadline:
                results.append(outcome(method.future(b"", timeout=TIMEOUT)))
                tail = results[-clean:]
                if len(tail) == clean and all(":" not in result for result in tail):
                    break
            print(json.dumps({"results": results}), flush=True)
    channel.close()


if __name__ == "__main__":
    main()
