"""Database and HTTP breakers in the mesh: reported, selected by policies, explained by the CLI."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshbreaker import BreakerConfig, BreakerRegistry, CallNotPermittedError, State
from meshbreaker.cli import main
from meshbreaker.control import MeshAgent
from meshbreaker.db import guard_connection
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.integrations.sqlite_faults import make_ledger
from tests.integrations.test_mesh_http import put
from tests.server_support import ControlPlane, wait_until

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "mesh.db")
    yield plane
    plane.close()


@pytest.fixture
def cli(control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--target", control_plane.target, *args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_a_database_breaker_is_reported_selected_and_explained(
    control_plane: ControlPlane, tmp_path: Path, cli: Cli
) -> None:
    ledger = make_ledger(tmp_path / "ledger.db")
    name = f"sqlite:///{ledger}"
    registry = BreakerRegistry()
    connection = sqlite3.connect(ledger)
    db = guard_connection(connection, registry.get(name))
    try:
        with MeshAgent(control_plane.target, "account", registry, report_interval=0.1) as agent:
            db.execute("SELECT 1").fetchall()

            def reported() -> bool:
                request = pb.ListBreakersRequest(service="account", method=name)
                groups = control_plane.stub.ListBreakers(request, timeout=5).groups
                return [group.name for group in groups] == [name]

            assert wait_until(reported, timeout=10.0)  # the report with it was accepted

            strict = BreakerConfig(consecutive_failures=2)
            put(control_plane, "ledger", pb.Selector(caller="account", method=name), strict)
            revision = put(
                control_plane, "sqlite", pb.Selector(service="sqlite://"), forced_open=True
            )
            assert agent.wait_for_revision(revision, timeout=10.0)
            assert registry.get(name).config.consecutive_failures == 2
            with pytest.raises(CallNotPermittedError) as refused:
                db.execute("SELECT 1")  # every SQLite database of the process is forced open
            assert refused.value.state is State.FORCED_OPEN

            status, out, err = cli(
                "policy", "explain", "--caller", "account", "--method", name, "--json"
            )
            assert status == 0, err
            explained = json.loads(out)
            assert explained["config"]["consecutive_failures"] == {
                "value": 2,
                "from": f"method {name} (policy ledger)",
            }
            assert explained["override"] == "FORCED_OPEN"
            assert explained["override_from"] == "service sqlite:// (policy sqlite)"

            status, out, err = cli("status", "--caller", "account", "--method", "sqlite://")
            assert status == 0, err
            assert str(ledger) in out
    finally:
        connection.close()


def test_explain_takes_an_http_route_and_refuses_what_no_policy_can_select(cli: Cli) -> None:
    route = "https://cards.example/v1/charges"
    status, out, err = cli("policy", "explain", "--caller", "notification", "--method", route)
    assert status == 0, err
    assert out.startswith(f"{route} called by notification")
    for bad in ("https://cards.example/v1/charges?x=1", "GetBalance", "dns:///accounts/v1"):
        status, _, err = cli("policy", "explain", "--caller", "notification", "--method", bad)
        assert status == 1 and "--method" in err and err.count("\n") == 1
