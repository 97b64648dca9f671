"""`make bench`: run every benchmark in one process, print their tables, write bench/results/."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

SUITES = (
    "engine",
    "grpc_overhead",
    "control_plane",
    "control_plane_scale",
    "metrics_scale",
    "etcd_writes",
    "overload",
    "adaptive_breaker",
    "fleet",
    "console",
    "integrations",
)


def main() -> int:
    """Run the suites named on the command line, or all of them."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {SUITES}; default: all")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    failed = []
    for name in args.suites or SUITES:
        print(f"\n## bench/{name}.py\n", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            module.main(quick=args.quick)
        except Exception as exc:  # one broken suite must not hide the others' figures
            print(f"bench/{name}.py failed: {exc!r}", file=sys.stderr)
            failed.append(name)
        print(f"\n({name}: {time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
