"""What `make mutate` samples: each group's files, sample size, the tests run against each mutant.

Keep the files in step with the code when modules move (the driver refuses a group whose files or
tests are gone); at least 60 mutants per area.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

ENGINE_TESTS = (
    "tests/test_breaker.py tests/test_window.py tests/test_config.py tests/test_registry.py "
    "tests/test_decorate.py tests/test_model.py tests/test_concurrency.py tests/test_histogram.py "
    "tests/test_events_and_controls.py tests/test_open_periods.py tests/test_throttle.py "
    "tests/test_retry.py tests/test_bulkhead.py tests/test_adaptive_concurrency.py "
    "tests/control/test_agent_failstatic.py"  # Backoff's tests (the agent's reconnects)
)
ADAPTER_TESTS = "tests/contract tests/grpc tests/aio"
AGENT_TESTS = (
    "tests/control/test_agent.py tests/control/test_agent_cache.py "
    "tests/control/test_agent_failover.py tests/control/test_agent_failstatic.py "
    "tests/control/test_agent_status.py tests/control/test_report_binding.py "
    "tests/control/test_safe_defaults.py tests/control/test_agent_lifecycle.py "
    "tests/control/test_tls.py"
)
# The plane's tests, the slow token/validation files last (with -x a detected mutant stops early).
PLANE_TESTS = (
    "tests/control/test_server.py tests/control/test_server_edges.py "
    "tests/control/test_bounds.py tests/control/test_replicas.py tests/control/test_layers.py "
    "tests/control/test_metrics.py tests/control/test_transition_log.py "
    "tests/control/test_store_identity.py tests/control/test_store_contract.py "
    "tests/control/test_store_sqlite.py tests/control/test_report_binding.py "
    "tests/control/test_safe_defaults.py tests/control/test_tls.py "
    "tests/control/test_validation.py"
)


class Group(NamedTuple):
    """Mutants drawn from `files`, each run against `tests` within `timeout` seconds."""

    name: str
    area: str  # engine, adapters or control: the rates are reported per area
    files: tuple[str, ...]
    size: int  # mutants drawn
    tests: str  # pytest arguments, space-separated
    # Generous: on a shared machine a slow survivor must not pass for "detected".
    timeout: int


# The order matters: group i draws with random.Random(seed + i), so a seed redraws its sample.
GROUPS = (
    Group(
        "breaker+window",
        "engine",
        (
            "meshbreaker/breaker.py",
            "meshbreaker/_machine.py",
            "meshbreaker/_admission.py",
            "meshbreaker/_permit.py",
            "meshbreaker/window.py",
        ),
        40,
        ENGINE_TESTS,
        400,
    ),
    Group(
        "registry+config",
        "engine",
        (
            "meshbreaker/registry.py",
            "meshbreaker/config.py",
            "meshbreaker/_quick.py",
            "meshbreaker/_backoff.py",
        ),
        20,
        ENGINE_TESTS,
        400,
    ),
    Group(
        "adapters",
        "adapters",
        (
            "meshbreaker/_adapter/fallback.py",
            "meshbreaker/_adapter/guard.py",
            "meshbreaker/_adapter/rejection.py",
            "meshbreaker/_adapter/retrying.py",
            "meshbreaker/_adapter/tracking.py",
            "meshbreaker/grpc/_calls.py",
            "meshbreaker/grpc/interceptor.py",
            "meshbreaker/aio/_calls.py",
            "meshbreaker/aio/interceptors.py",
        ),
        60,
        ADAPTER_TESTS,
        400,
    ),
    Group(
        "agent",
        "control",
        (
            "meshbreaker/control/agent.py",
            "meshbreaker/control/agent_cache.py",
            "meshbreaker/control/agent_link.py",
            "meshbreaker/control/agent_loop.py",
        ),
        20,
        AGENT_TESTS,
        600,
    ),
    Group(
        "plane",
        "control",
        (
            "meshbreaker/control/server.py",
            "meshbreaker/control/servicer.py",
            "meshbreaker/control/instances.py",
            "meshbreaker/control/policies.py",
            "meshbreaker/control/writes.py",
            "meshbreaker/control/convert.py",
            "meshbreaker/control/validate.py",
            "meshbreaker/control/store/sqlite.py",
        ),
        40,
        PLANE_TESTS,
        900,
    ),
)


def missing(src: Path) -> list[str]:
    """The groups' files and test paths that do not exist under `src` (moved code)."""
    paths = {path for group in GROUPS for path in (*group.files, *group.tests.split())}
    return sorted(path for path in paths if not (src / path).exists())
