"""What meshbreaker.httpx and meshbreaker.db cost per call, next to the same client unguarded.

Side by side in one run, variants interleaved in rounds (harness.interleaved), ratios as medians
of per-round ratios. Each workload has an A/A control (a second unguarded client) whose ratio to
the first shows the noise floor. Workloads:

- httpx, in process: `httpx.MockTransport` answering at once, so the ratio is the transport's own
  cost with no network in it (the worst case for a ratio);
- httpx over loopback: a keep-alive HTTP/1.1 server in its own process;
- sqlite3: a point SELECT on a WAL file, raw connection vs guard_connection;
- SQLAlchemy: connect, SELECT 1, give the connection back, plain engine vs guard_engine.

    python -m bench.integrations [--quick]
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import sqlite3
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from bench._harness import interleaved, median_ratio, table, write_json
from meshbreaker.db import guard_connection, guard_engine
from meshbreaker.httpx import BreakerTransport
from meshbreaker.registry import BreakerRegistry

PATH = "/v1/charges/42"
VARIANTS = ("plain", "plain_control", "guarded")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(ports: Any) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ports.put(server.server_address[1])
    server.serve_forever()


@contextmanager
def _http_server() -> Iterator[str]:
    ports: Any = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(ports,))
    process.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=30)}"
    finally:
        process.terminate()
        process.join()


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


def _http_runs(clients: dict[str, httpx.Client], url: str) -> dict[str, Callable[[int], None]]:
    def run(client: httpx.Client) -> Callable[[int], None]:
        def calls(count: int) -> None:
            for _ in range(count):
                client.get(url).read()

        return calls

    return {name: run(client) for name, client in clients.items()}


def _sqlite_runs(path: Path) -> dict[str, Callable[[int], None]]:
    def run(connection: Any) -> Callable[[int], None]:
        def calls(count: int) -> None:
            for _ in range(count):
                connection.execute("SELECT amount FROM ledger WHERE id = 1").fetchone()

        return calls

    raw = [sqlite3.connect(path, check_same_thread=False) for _ in VARIANTS]
    guarded = guard_connection(raw[2], BreakerRegistry().get(f"sqlite:///{path}"))
    return {"plain": run(raw[0]), "plain_control": run(raw[1]), "guarded": run(guarded)}


def _engine_runs(engines: dict[str, Engine]) -> dict[str, Callable[[int], None]]:
    def run(engine: Engine) -> Callable[[int], None]:
        def calls(count: int) -> None:
            for _ in range(count):
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1")).scalar()

        return calls

    return {name: run(engine) for name, engine in engines.items()}


def _row(name: str, samples: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "workload": name,
        "plain_us": round(statistics.median(samples["plain"]) / 1000, 2),
        "guarded_us": round(statistics.median(samples["guarded"]) / 1000, 2),
        "ratio": round(median_ratio(samples, "guarded", "plain"), 3),
        "control_ratio": round(median_ratio(samples, "plain_control", "plain"), 3),
    }


def main(quick: bool = False) -> None:
    """Run every workload and print the table; write bench/results/integrations.json."""
    rounds = 5 if quick else 15
    calls = 200 if quick else 500  # per variant and round; the SQLite ones do 10x
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = BreakerRegistry()
        mock = {
            "plain": httpx.Client(transport=httpx.MockTransport(_ok)),
            "plain_control": httpx.Client(transport=httpx.MockTransport(_ok)),
            "guarded": httpx.Client(transport=BreakerTransport(registry, httpx.MockTransport(_ok))),
        }
        samples = interleaved(
            _http_runs(mock, f"https://cards.example{PATH}"), rounds=rounds, calls=calls
        )
        rows.append(_row("httpx, in process (MockTransport)", samples))

        with _http_server() as origin:
            real = {
                "plain": httpx.Client(),
                "plain_control": httpx.Client(),
                "guarded": httpx.Client(transport=BreakerTransport(registry)),
            }
            samples = interleaved(_http_runs(real, f"{origin}{PATH}"), rounds=rounds, calls=calls)
            rows.append(_row("httpx over loopback (keep-alive)", samples))
            for client in (*mock.values(), *real.values()):
                client.close()

        path = Path(tmp) / "ledger.db"
        with sqlite3.connect(path) as setup:
            setup.execute("PRAGMA journal_mode=WAL")
            setup.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER)")
            setup.execute("INSERT INTO ledger VALUES (1, 100)")
        setup.close()
        samples = interleaved(_sqlite_runs(path), rounds=rounds, calls=10 * calls)
        rows.append(_row("sqlite3 point SELECT (guard_connection)", samples))

        engines = {name: create_engine(f"sqlite:///{path}") for name in VARIANTS}
        guard_engine(engines["guarded"], registry)
        samples = interleaved(_engine_runs(engines), rounds=rounds, calls=calls)
        rows.append(_row("SQLAlchemy connect + SELECT 1 (guard_engine)", samples))
        for engine in engines.values():
            engine.dispose()

    print(
        table(
            ["workload", "unguarded µs", "guarded µs", "ratio", "A/A control"],
            [
                [
                    row["workload"],
                    f"{row['plain_us']:.2f}",
                    f"{row['guarded_us']:.2f}",
                    f"{row['ratio']:.3f}",
                    f"{row['control_ratio']:.3f}",
                ]
                for row in rows
            ],
        )
    )
    path = write_json("integrations", {"rounds": rounds, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.integrations", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    main(quick=parser.parse_args().quick)
