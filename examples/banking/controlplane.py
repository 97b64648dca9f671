"""The demo's control plane as a process: meshbreaker's server on 127.0.0.1, ports in files."""

from __future__ import annotations

import argparse
import logging
import os
import threading

from examples.banking.services.common import exit_with_parent, write_port_file

# Replicas share their instances every second, on a lease that outlives a dead one by 3 s.
REPLICA_LEASE_TTL = 3.0


def main() -> None:
    """Serve until SIGTERM/SIGINT; print and write the bound port once listening."""
    parser = argparse.ArgumentParser(prog="python -m examples.banking.controlplane")
    parser.add_argument("--port", type=int, default=0)
    store = parser.add_mutually_exclusive_group(required=True)
    store.add_argument("--db", help="SQLite policy store")
    store.add_argument("--store", help="a store URL, e.g. etcd://127.0.0.1:2379 (replicas)")
    parser.add_argument("--port-file", required=True)
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("BANKING_ADMIN_TOKEN"),
        help="token for mutations (env BANKING_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--agent-token",
        default=os.environ.get("BANKING_AGENT_TOKEN"),
        help="token for agents and reads (env BANKING_AGENT_TOKEN)",
    )
    parser.add_argument("--report-ttl", type=float, default=10.0)
    parser.add_argument(
        "--metrics-port-file",
        help="serve Prometheus metrics on a free port; write it here before --port-file",
    )
    parser.add_argument(
        "--console-port-file",
        help="serve the web console on a free port; write it here before --port-file",
    )
    parser.add_argument("--xds", action="store_true", help="also serve xDS (ADS) on the port")
    parser.add_argument(
        "--xds-allow-anonymous",
        action="store_true",
        help="let ADS streams without a token in (gRPC's xDS client sends none)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s control-plane %(message)s")
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()

    from meshbreaker.control.server import ControlPlaneServer, run

    def ready(server: ControlPlaneServer) -> None:
        if args.metrics_port_file and server.metrics_port is not None:
            write_port_file(args.metrics_port_file, server.metrics_port)
        if args.console_port_file and server.console_port is not None:
            write_port_file(args.console_port_file, server.console_port)
        write_port_file(args.port_file, server.port)
        print(f"PORT {server.port}", flush=True)

    replica = {"replica_publish_interval": 1.0, "replica_lease_ttl": REPLICA_LEASE_TTL}
    if not args.store:
        replica = {}
    run(
        args.port,
        args.db or "",
        store=args.store,
        ready=ready,
        **replica,
        admin_token=args.admin_token,
        agent_token=args.agent_token,
        report_ttl=args.report_ttl,
        metrics_port=0 if args.metrics_port_file else None,
        console_port=0 if args.console_port_file else None,
        xds=args.xds,
        xds_allow_anonymous=args.xds_allow_anonymous,
    )


if __name__ == "__main__":
    main()
