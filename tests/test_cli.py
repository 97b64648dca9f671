"""The `meshbreaker` command, end to end against a real control plane on 127.0.0.1."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

import meshbreaker
from meshbreaker.cli import main
from meshbreaker.config import BreakerConfig, Mode, State
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.limits import Limits
from meshbreaker.control.store import SqliteStore, StoreError
from meshbreaker.control.store.sqlite import SCHEMA_VERSION, explain_open_error
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.scrape_support import Scrape
from tests.server_support import ControlPlane, wait_until
from tests.tls_support import Pem, issue, pem

METHOD = "/bank.v1.AccountService/GetBalance"
CONSOLE_SCRIPT = Path(sys.executable).parent / "meshbreaker"


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp.db")
    yield plane
    plane.close()


@pytest.fixture
def cli(
    cp: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run `meshbreaker --target <cp> ARGS...` in-process: (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--target", cp.target, *args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def reported_now(agents: list[MeshAgent], shown: Callable[[], bool]) -> bool:
    """Each agent reports now, not at its interval, until `shown()` (at once, unless lost)."""
    return wait_until(lambda: all(agent.report_now(timeout=30.0) for agent in agents) and shown())


# ---------------------------------------------------------------------------------------------
# No server needed


def test_console_script_help_works_without_a_server() -> None:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for command in ("control-plane", "status", "policy", "force", "events"):
        assert command in result.stdout


def test_help_of_each_command_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--help"], ["policy", "put", "--help"], ["status", "--help"]):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "--failure-rate" in out and "--half-open-success-threshold" in out
    assert "--instances" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["policy", "put", "--id", "p", "--failure-rate", "2"], "'2' is not a rate in (0, 1]"),
        (["policy", "put", "--id", "p", "--failure-codes", "NOPE"], "unknown gRPC status code"),
        (["policy", "put", "--id", "p", "--window-type", "sliding"], "is not 'count' or 'time'"),
        (["status", "--state", "AJAR"], "'AJAR' is not a state"),
        (["force", "sideways", "--service", "a.B"], "invalid choice"),
        (["policy"], "required"),
        ([], "required"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_control_plane_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--target", "127.0.0.1:1", "--timeout", "2", "policy", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("meshbreaker: error: cannot reach the control plane at 127.0.0.1:1")


def test_target_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHBREAKER_TARGET", "127.0.0.1:1")
    assert main(["--timeout", "2", "status"]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"meshbreaker {meshbreaker.__version__}\n"
    assert meshbreaker.__version__ == importlib.metadata.version("meshbreaker")


def test_a_usage_error_is_one_line_naming_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state", "AJAR"]) == 2
    assert capsys.readouterr().err == (
        "meshbreaker: error: argument --state: 'AJAR' is not a state (CLOSED, OPEN, HALF_OPEN, "
        "FORCED_OPEN, FORCED_CLOSED) (see 'meshbreaker status --help')\n"
    )
    assert main(["policy", "put", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --bogus" in err


def test_connection_flags_work_after_the_command_too(
    cp: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--target", cp.target, "--timeout", "3"]) == 0
    assert "store revision 0" in capsys.readouterr().out
    assert main(["policy", "list", "--target", cp.target]) == 0
    assert main(["policy", "--target", cp.target, "list"]) == 0
    capsys.readouterr()
    # Given before the command, a flag is not reset by the command's own (unset) copy of it.
    assert main(["--target", cp.target, "force", "open", "--method", METHOD]) == 0
    assert "forced open" in capsys.readouterr().out
    # After the command, the later one wins, as everywhere in argparse.
    assert main(["--target", cp.target, "status", "--target", "127.0.0.1:1", "--timeout", "1"]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_status_and_events_name_the_caller_with_caller(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("status", "events"):
        assert main([command, "--service", "transaction"]) == 2
        err = capsys.readouterr().err
        assert "--service is now --caller here (the calling service)" in err
        assert err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Policies


def test_policy_put_list_delete_with_flags(cli: Callable[..., tuple[int, str, str]]) -> None:
    status, out, _ = cli(
        "policy", "put", "--id", "tight", "--method", METHOD,
        "--failure-rate", "0.25", "--open-duration", "5", "--open-duration-max", "40",
        "--slow-call-duration", "off", "--failure-codes", "unavailable,internal",
        "--mode", "shadow", "--description", "tuning", "--half-open-max-wait", "30",
    )  # fmt: skip
    assert status == 0
    assert out.splitlines() == ["put policy tight at revision 1", "store revision 1"]

    status, out, _ = cli("policy", "list")
    assert status == 0
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "ID", "CALLER", "SERVICE", "METHOD", "MODE", "OVERRIDE", "REVISION", "SETTINGS"
    ]  # fmt: skip
    assert row.split()[:7] == ["tight", "*", "*", METHOD, "shadow", "-", "1"]
    for word in (
        "failure_rate_threshold=0.25",
        "open_duration=5.0",
        "open_duration_max=40.0",
        "slow_call_duration=off",
        "failure_codes=INTERNAL,UNAVAILABLE",
        "half_open_max_wait=30.0",
    ):
        assert word in row

    status, out, _ = cli("policy", "list", "--json")
    stored = json.loads(out)["policies"][0]
    # Only the flags given are stored, in the --file format: everything else stays "default".
    assert stored["config"] == {
        "failure_rate_threshold": 0.25,
        "open_duration": 5.0,
        "open_duration_max": 40.0,
        "slow_call_duration": None,
        "failure_codes": ["INTERNAL", "UNAVAILABLE"],
        "half_open_max_wait": 30.0,
        "mode": "shadow",
    }

    status, out, err = cli("policy", "delete", "tight", "--expected-revision", "7")
    assert status == 1
    assert err.startswith("meshbreaker: error: ABORTED:") and err.count("\n") == 1
    status, out, _ = cli("policy", "delete", "tight", "--expected-revision", "1")
    assert (status, out) == (0, "deleted policy tight; store revision 2\n")
    status, out, _ = cli("policy", "list")
    assert "(no policies)" in out and "store revision 2" in out


def test_an_open_duration_above_the_default_maximum_needs_no_maximum(
    cli: Callable[..., tuple[int, str, str]],
) -> None:
    status, _, err = cli(
        "policy", "put", "--id", "slow", "--method", METHOD, "--open-duration", "120"
    )  # fmt: skip
    assert status == 0, err
    status, out, _ = cli("policy", "list", "--json")
    stored = json.loads(out)["policies"][0]
    assert set(stored["config"]) == {"open_duration"}  # the maximum stays unset, as sent


def test_policy_list_json_is_the_file_format_and_round_trips(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane, tmp_path: Path
) -> None:
    """What `policy list --json` prints, `policy put --file` puts back unchanged."""
    puts = [
        ("--id", "tight", "--method", METHOD, "--failure-rate", "0.25", "--open-duration", "5",
         "--slow-call-duration", "off", "--failure-codes", "unavailable,internal",
         "--ignored-codes", "cancelled", "--mode", "shadow", "--window-type", "count",
         "--window-size", "50", "--description", "tuning", "--throttle-k", "2",
         "--retry", "max_attempts=3,retryable_codes=UNAVAILABLE|ABORTED", "--idempotent", "true",
         "--concurrency-limit", "adaptive"),
        ("--id", "mesh-default", "--consecutive-failures", "7"),
        ("--id", "pinned", "--caller", "gateway", "--service", "bank.v1.AuditService",
         "--override", "closed", "--no-config"),
    ]  # fmt: skip
    for flags in puts:
        status, _, err = cli("policy", "put", *flags)
        assert status == 0, err

    def stored() -> list[pb.Policy]:
        policies = list(cp.stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies)
        for policy in policies:
            policy.ClearField("revision")
            policy.ClearField("updated_at")
            policy.ClearField("updated_by")
        return policies

    before = stored()
    status, out, _ = cli("policy", "list", "--json")
    path = tmp_path / "policies.json"
    path.write_text(out)
    status, out, err = cli("policy", "put", "--file", str(path))
    assert status == 0, err
    assert out.splitlines()[-1] == "store revision 4"  # all three again, in one revision
    assert stored() == before
    one = tmp_path / "one.json"
    one.write_text(json.dumps(json.loads(path.read_text())["policies"][2]))
    assert cli("policy", "put", "--file", str(one))[0] == 0  # one entry of it works too


def test_policy_put_from_a_file_with_flags_overriding_it(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane, tmp_path: Path
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps(
            {
                "id": "accounts",
                "selector": {"caller": "transaction", "service": "bank.v1.AccountService"},
                "config": {"consecutive_failures": 3, "window_type": "count", "window_size": 50},
                "mode": "enforce",
            }
        )
    )
    status, out, err = cli("policy", "put", "--file", str(path), "--consecutive-failures", "4")
    assert status == 0, err
    (policy,) = cp.stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
    assert policy.selector.caller == "transaction"
    assert policy.selector.service == "bank.v1.AccountService"
    assert policy.config.consecutive_failures == 4
    assert policy.config.window_type == pb.WINDOW_TYPE_COUNT
    assert policy.config.window_size == 50
    assert policy.config.mode == pb.MODE_ENFORCE

    many = tmp_path / "many.json"
    many.write_text(
        json.dumps(
            {
                "policies": [
                    {"id": "a", "method": "/bank.v1.AuditService/Record"},
                    {"id": "b", "service": "bank.v1.NotificationService", "config": None,
                     "override": "open"},
                ]
            }
        )
    )  # fmt: skip
    status, out, err = cli("policy", "put", "--file", str(many), "--expected-revision", "1")
    assert status == 0, err
    assert out.splitlines()[-1] == "store revision 2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", METHOD], "id: a policy needs an id"),
        (["--id", "x", "--open-duration", "10", "--open-duration-max", "5"], "open_duration_max"),
        (["--id", "bad id!", "--method", METHOD], "INVALID_ARGUMENT: policies[0].id"),
        (["--id", "x", "--method", "GetBalance"], "INVALID_ARGUMENT: policies[0].selector.method"),
    ],
)
def test_invalid_policies_fail_with_one_line_naming_the_field(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane, args: list[str], message: str
) -> None:
    status, _, err = cli("policy", "put", *args)
    assert status == 1
    assert message in err and err.count("\n") == 1
    assert len(cp.stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies) == 0


def test_a_bad_file_is_one_line(cli: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{")
    status, _, err = cli("policy", "put", "--file", str(path))
    assert status == 1 and "not valid JSON" in err and err.count("\n") == 1
    status, _, err = cli("policy", "put", "--file", str(tmp_path / "missing.json"))
    assert status == 1 and "missing.json" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Force, status, events (with a real agent reporting)


def test_force_open_closed_auto(cli: Callable[..., tuple[int, str, str]], cp: ControlPlane) -> None:
    registry = BreakerRegistry()
    with MeshAgent(cp.target, "transaction", registry, report_interval=60.0) as agent:
        breaker = registry.get(METHOD)
        status, out, _ = cli("force", "open", "--method", METHOD, "--caller", "transaction")
        assert status == 0
        assert out.startswith(f"caller=transaction method={METHOD}: forced open (policy ")
        assert agent.wait_for_revision(1, timeout=1.0)
        assert breaker.state is State.FORCED_OPEN

        status, out, _ = cli("force", "closed", "--method", METHOD, "--caller", "transaction")
        assert status == 0 and "forced closed" in out
        assert agent.wait_for_revision(2, timeout=1.0)
        assert breaker.state is State.FORCED_CLOSED

        status, out, _ = cli("policy", "list")
        assert "FORCED_CLOSED" in out and "(no config)" in out

        status, out, _ = cli("force", "auto", "--method", METHOD, "--caller", "transaction")
        assert status == 0 and "back to automatic; store revision 3" in out
        assert agent.wait_for_revision(3, timeout=1.0)
        assert breaker.state is State.CLOSED
    status, _, err = cli("force", "open")
    assert status == 1 and "force needs --service or --method" in err


def test_force_for_a_while_shows_the_time_left_in_status(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    status, out, _ = cli(
        "force", "open", "--method", METHOD, "--for", "10m", "--reason", "account deploy"
    )
    assert status == 0 and "forced open for 10m00s" in out
    status, out, _ = cli("status")
    assert status == 0
    row = next(line for line in out.splitlines() if "FORCED_OPEN" in line)
    assert re.search(r"\b(10m00s|9m5\ds)\b", row) and "account deploy" in row
    status, _, err = cli("force", "open", "--method", METHOD, "--for", "ten minutes")
    assert status == 2 and "is not a length of time (e.g. 90s, 10m, 2h, 1d)" in err
    status, _, err = cli("force", "auto", "--method", METHOD, "--for", "10m")
    assert status == 1 and "--for needs open or closed" in err


def test_status_tables_filters_instances_and_watch(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    config = BreakerConfig(consecutive_failures=1, open_duration=60.0, open_duration_max=60.0)
    agents = [
        MeshAgent(cp.target, "transaction", BreakerRegistry(config), instance_id=f"tx-{i}",
                  report_interval=60.0).start()
        for i in range(2)
    ]  # fmt: skip
    try:
        for agent in agents:
            agent.registry.get(METHOD).acquire().success()
        agents[0].registry.get(METHOD).acquire().failure()  # opens on tx-0 only
        agents[1].registry.get("/bank.v1.AuditService/Record").acquire().success()

        def reported() -> bool:
            groups = cp.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).groups
            return any(g.name == METHOD and g.open == 1 and g.closed == 1 for g in groups) and any(
                g.name == "/bank.v1.AuditService/Record" for g in groups
            )

        assert reported_now(agents, reported)
        status, out, _ = cli("status")
        assert status == 0
        lines = out.splitlines()
        assert lines[0].split()[:7] == [
            "CALLER", "BREAKER", "INSTANCES", "CLOSED", "OPEN", "HALF_OPEN", "FORCED"
        ]  # fmt: skip
        row = next(line for line in lines if METHOD in line).split()
        assert row[:7] == ["transaction", METHOD, "2", "1", "1", "0", "0"]
        assert row[7:9] == ["0", "25.0%"]  # none in shadow; mean failure rate: tx-0 1/2, tx-1 0/1
        assert "2 live instance(s)" in out

        status, out, _ = cli("status", "--state", "OPEN")
        assert METHOD in out and "AuditService" not in out
        status, out, _ = cli("status", "--state", "HALF_OPEN", "--caller", "transaction")
        assert "(no breakers match --caller transaction --state HALF_OPEN)" in out
        status, out, _ = cli("status", "--method", "bank.v1.AuditService")
        assert METHOD not in out and "AuditService/Record" in out

        status, out, _ = cli("status", "--method", METHOD, "--instances")
        rows = [line.split() for line in out.splitlines() if line.startswith("transaction")]
        assert ["transaction", METHOD, "tx-0", "OPEN"] in [r[:4] for r in rows]
        assert ["transaction", METHOD, "tx-1", "CLOSED"] in [r[:4] for r in rows]
        assert any(line.startswith("tx-0") for line in out.splitlines())  # the instance table

        status, out, _ = cli("status", "--watch", "--interval", "0.05", "--iterations", "2")
        headers = [line for line in out.splitlines() if line.startswith(cp.target)]
        assert status == 0 and len(headers) == 2, out
        assert all("rev 0  2 instances" in line and line.endswith("connected") for line in headers)

        status, out, _ = cli("status", "--json")
        assert {g["name"] for g in json.loads(out)["groups"]} == {
            METHOD,
            "/bank.v1.AuditService/Record",
        }
    finally:
        for agent in agents:
            agent.stop()


def test_a_state_filter_finds_the_forced_breakers_of_that_state(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    states = {
        "ForcedOpen": pb.BREAKER_STATE_FORCED_OPEN,
        "Open": pb.BREAKER_STATE_OPEN,
        "Closed": pb.BREAKER_STATE_CLOSED,
        "ForcedClosed": pb.BREAKER_STATE_FORCED_CLOSED,
        "HalfOpen": pb.BREAKER_STATE_HALF_OPEN,
    }
    cp.stub.ReportState(
        pb.ReportStateRequest(
            instance_id="tx-1",
            service="transaction",
            breakers=[
                pb.BreakerSnapshot(name=f"/bank.v1.S/{name}", state=state)
                for name, state in states.items()
            ],
        ),
        timeout=5,
    )

    def shown(state: str) -> set[str]:
        status, out, _ = cli("status", "--state", state)
        assert status == 0
        return {name for name in states if f"/bank.v1.S/{name} " in out}

    assert shown("OPEN") == {"Open", "ForcedOpen"}  # both refuse calls
    assert shown("CLOSED") == {"Closed", "ForcedClosed"}
    assert shown("FORCED_OPEN") == {"ForcedOpen"}
    assert shown("HALF_OPEN") == {"HalfOpen"}


def test_shadow_mode_breakers_are_marked(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    """A breaker in shadow mode reports the state it would be in; it must not look enforcing."""
    shadow = BreakerConfig(consecutive_failures=1, mode=Mode.SHADOW)
    agents = [
        MeshAgent(cp.target, "transaction", BreakerRegistry(config), instance_id=name,
                  report_interval=60.0).start()
        for name, config in (("tx-shadow", shadow), ("tx-enforce", BreakerConfig()))
    ]  # fmt: skip
    try:
        agents[0].registry.get(METHOD).acquire().failure()  # "opens", in shadow
        agents[1].registry.get(METHOD).acquire().success()

        def reported() -> bool:
            groups = cp.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).groups
            return any(group.instances == 2 and group.open == 1 for group in groups)

        assert reported_now(agents, reported)
        status, out, _ = cli("status", "--instances")
        lines = out.splitlines()
        assert lines[0].split()[7] == "SHADOW"
        assert next(line for line in lines if METHOD in line).split()[2:8] == [
            "2", "1", "1", "0", "0", "1"
        ]  # fmt: skip
        detail = [line.split() for line in lines if "tx-shadow" in line or "tx-enforce" in line]
        assert ["tx-shadow", "OPEN", "(shadow)"] in [row[2:5] for row in detail]
        assert ["tx-enforce", "CLOSED"] in [row[2:4] for row in detail]

        status, out, _ = cli("status", "--watch", "--iterations", "1")
        assert status == 0
        row = next(line for line in out.splitlines() if "GetBalance " in line).split()
        assert row[2:4] == ["OPEN", "shadow:1"]
        assert "shadow: in shadow mode" in out
    finally:
        for agent in agents:
            agent.stop()


def test_status_shows_the_concurrency_limits(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    """LIMIT: each instance's adaptive limit or bulkhead, summed per breaker; '-' for none."""
    audit = "/bank.v1.AuditService/Record"
    adaptive = BreakerRegistry(BreakerConfig(concurrency_limit="adaptive"))  # type: ignore[arg-type]
    agents = [
        MeshAgent(cp.target, "transaction", registry, instance_id=name,
                  report_interval=60.0).start()
        for name, registry in (
            ("tx-adaptive", adaptive),
            ("tx-fixed", BreakerRegistry(BreakerConfig(max_concurrent_calls=5, throttle_k=2.0))),
            ("tx-none", BreakerRegistry()),
        )
    ]  # fmt: skip
    try:
        for agent in agents[:2]:
            agent.registry.get(METHOD).acquire().success()
        agents[2].registry.get(audit).acquire().success()

        def reported() -> bool:
            groups = cp.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).groups
            return {(g.name, g.instances) for g in groups} == {(METHOD, 2), (audit, 1)}

        assert reported_now(agents, reported)
        status, out, _ = cli("status", "--instances")
        assert status == 0
        lines = out.splitlines()
        assert lines[0].split()[-1] == "LIMIT"
        assert next(line for line in lines if f"{METHOD} " in line).split()[-1] == "25"
        assert next(line for line in lines if f"{audit} " in line).split()[-1] == "-"
        rows = [line.split() for line in lines if line.startswith("transaction ")]
        detail = {row[2]: row[7:9] for row in rows if row[2].startswith("tx-")}
        assert detail["tx-adaptive"] == ["20", "-"]  # no throttling
        assert detail["tx-fixed"] == ["5", "0.0%"]  # throttling on, refusing nothing now
        header = next(line for line in lines if "WINDOW" in line).split()
        assert header[7:9] == ["LIMIT", "THROTTLE"]
    finally:
        for agent in agents:
            agent.stop()


def test_status_says_when_nothing_has_reported(cli: Callable[..., tuple[int, str, str]]) -> None:
    status, out, _ = cli("status")
    assert status == 0
    assert "(no breakers reported: no instance with an agent has reported yet)" in out


def test_status_shows_nacks(cli: Callable[..., tuple[int, str, str]], cp: ControlPlane) -> None:
    def refuse_shadow(resolved: Any) -> None:
        if any(c.mode.value == "shadow" for c in resolved.policies.values()):
            raise ValueError("this service never runs breakers in shadow mode")

    with MeshAgent(
        cp.target, "transaction", BreakerRegistry(), instance_id="tx-strict",
        report_interval=60.0, validate=refuse_shadow,
    ) as agent:  # fmt: skip
        assert cli("policy", "put", "--id", "s", "--method", METHOD, "--mode", "shadow")[0] == 0
        assert wait_until(lambda: agent.last_nack is not None)

        def shown() -> bool:
            out = cli("status")[1]
            return "tx-strict" in out and "rev 1: this service never runs" in out

        assert wait_until(shown)


def test_events_without_follow_show_the_recent_history_and_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plane = ControlPlane(tmp_path / "history.db", limits=Limits(event_history=3))
    try:
        assert main(["--target", plane.target, "events"]) == 0
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            "meshbreaker: no events yet "
            "(the control plane keeps the recent ones since it started)\n"
        )
        for index in range(4):
            policy = pb.Policy(id=f"p{index}", selector=pb.Selector(method=f"{METHOD}{index}"))
            plane.stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]), timeout=5)
        plane.stub.ReportState(
            pb.ReportStateRequest(
                instance_id="tx-1",
                service="transaction",
                breakers=[pb.BreakerSnapshot(name=METHOD, state=pb.BREAKER_STATE_OPEN)],
            ),
            timeout=5,
        )
        assert main(["--target", plane.target, "events"]) == 0
        lines = capsys.readouterr().out.splitlines()
        # The last three kept (a bounded history), oldest first.
        assert [line.split(" ", 2)[2] for line in lines] == [
            "policy put p2 revision 3 by anonymous@" + lines[0].rsplit("@", 1)[1],
            "policy put p3 revision 4 by anonymous@" + lines[1].rsplit("@", 1)[1],
            f"transition transaction/tx-1 {METHOD} NEW -> OPEN",
        ]
        assert main(["--target", plane.target, "events", "--limit", "1"]) == 0
        assert capsys.readouterr().out.endswith(f"{METHOD} NEW -> OPEN\n")
        # Another caller's transitions are left out; policy changes concern every caller.
        assert main(["--target", plane.target, "events", "--caller", "gateway"]) == 0
        assert "transition" not in capsys.readouterr().out
    finally:
        plane.close()


def test_events_follow_prints_transitions_and_policy_changes(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    results: list[tuple[int, str, str]] = []
    listener = threading.Thread(
        target=lambda: results.append(cli("events", "--follow", "--max-events", "2"))
    )
    listener.start()
    assert wait_until(lambda: cp.running.servicer.events.subscribers > 0)
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1))
    with MeshAgent(cp.target, "transaction", registry, instance_id="tx-9", report_interval=60.0):
        cp.stub.PutPolicy(
            pb.PutPolicyRequest(policies=[pb.Policy(id="p1", selector=pb.Selector(method=METHOD))]),
            timeout=5,
        )
        registry.get("/bank.v1.AuditService/Record").acquire().failure()
        listener.join(5)
    assert not listener.is_alive()
    status, out, err = results[0]
    assert status == 0, err
    lines = out.splitlines()
    assert any(" policy put p1 revision 1 " in line for line in lines)
    assert any(
        line.endswith("transition transaction/tx-9 /bank.v1.AuditService/Record CLOSED -> OPEN")
        for line in lines
    ), lines


# ---------------------------------------------------------------------------------------------
# Tokens, and the control-plane command itself


def test_tokens_from_flag_and_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = ControlPlane(
        tmp_path / "auth.db", admin_token="root-secret", agent_token="agent-secret"
    )
    try:
        put = ["policy", "put", "--id", "p", "--method", METHOD]
        assert main(["--target", plane.target, *put]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert main(["--target", plane.target, "--token", "agent-secret", *put]) == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err
        assert main(["--target", plane.target, "--token", "agent-secret", "policy", "list"]) == 0
        monkeypatch.setenv("MESHBREAKER_TOKEN", "root-secret")
        assert main(["--target", plane.target, *put]) == 0
        assert "store revision 1" in capsys.readouterr().out
    finally:
        plane.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_control_plane_command_serves_until_interrupted(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    db = tmp_path / "served.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "control-plane", "--port", str(port), "--db", str(db),
         "--admin-token", "t0k", "--report-ttl", "5", "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        target = f"127.0.0.1:{port}"
        put = [
            "--target",
            target,
            "--token",
            "t0k",
            "policy",
            "put",
            "--id",
            "p",
            "--method",
            METHOD,
        ]
        assert wait_until(lambda: main([*put]) == 0, timeout=30.0)  # a loaded machine starts slowly
        assert db.exists()
        page = Scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert page.one("meshbreaker_control_plane_revision") == 1.0
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"serving on 127.0.0.1:{port}" in output
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in output


# ---------------------------------------------------------------------------------------------
# Mutual TLS: the CLI's TLS flags and an agent's credentials, certificates made here


def _write_pem(pair: Pem, directory: Path, stem: str) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(pair.cert)
    key_path.write_bytes(pair.key)
    return cert_path, key_path


def test_mutual_tls_for_the_cli_and_an_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = issue("test CA", None, ca=True)
    ca_cert, _ = _write_pem(pem(ca), tmp_path, "ca")
    server_pair = pem(issue("localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH))
    server_cert, server_key = _write_pem(server_pair, tmp_path, "server")
    client_pair = pem(issue("ops", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    client_cert, client_key = _write_pem(client_pair, tmp_path, "client")
    plane = ControlPlane(
        tmp_path / "tls.db",
        tls_cert=server_cert,
        tls_key=server_key,
        tls_client_ca=ca_cert,
        admin_token="admin",
        agent_token="agent",
    )
    base = ["--target", plane.target, "--tls-ca", str(ca_cert), "--timeout", "3"]
    client = ["--tls-cert", str(client_cert), "--tls-key", str(client_key)]
    registry = BreakerRegistry()
    credentials = grpc.ssl_channel_credentials(
        ca_cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes()
    )
    agent = MeshAgent(
        plane.target, "transaction", registry, token="agent", credentials=credentials
    ).start()
    try:
        put = ["policy", "put", "--id", "p", "--method", METHOD, "--consecutive-failures", "2"]
        assert main([*base, *client, "--token", "admin", *put]) == 0
        assert "store revision 1" in capsys.readouterr().out
        assert agent.wait_for_revision(1, timeout=2.0)
        assert registry.resolve(METHOD).consecutive_failures == 2

        # Without a client certificate the handshake fails: one line, exit 1.
        assert main([*base, "--token", "admin", "policy", "list"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("meshbreaker: error: cannot reach the control plane") and (
            err.count("\n") == 1
        )
        assert main([*base, "--tls-cert", str(client_cert), "policy", "list"]) == 1
        assert "--tls-cert and --tls-key must be given together" in capsys.readouterr().err
    finally:
        agent.stop()
        plane.close()


# ---------------------------------------------------------------------------------------------
# A control plane that cannot start says why in one line


def _old_store(path: Path) -> Path:
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    db.close()
    return path


@pytest.mark.parametrize(
    ("make_db", "message"),
    [
        (lambda tmp: tmp / "missing" / "cp.db", "missing does not exist: create it, or choose"),
        (lambda tmp: tmp, "is a directory: give the path of a file, e.g. --db DIR/meshbreaker.db"),
        (
            lambda tmp: (tmp / "notes.txt", (tmp / "notes.txt").write_text("x" * 200))[0],
            "is not an SQLite database: give a new file or an existing meshbreaker store",
        ),
        (
            lambda tmp: _old_store(tmp / "old.db"),
            f"schema version 99 is newer than this meshbreaker's ({SCHEMA_VERSION}): upgrade",
        ),
    ],
    ids=["missing-directory", "a-directory", "not-a-database", "newer-schema"],
)
def test_a_bad_db_is_one_line_naming_cause_and_fix(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_db: Callable[[Path], Path],
    message: str,
) -> None:
    db = make_db(tmp_path)
    assert main(["control-plane", "--port", "0", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"meshbreaker: error: {db}: ") and message in err, err
    assert err.count("\n") == 1


def test_a_read_only_db_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    SqliteStore(path).close()
    if os.geteuid() != 0:  # root writes through file modes: then only the message is checked
        path.chmod(0o444)
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(StoreError) as raised:
                SqliteStore(path)
        finally:
            tmp_path.chmod(0o755)
        assert "cannot be written" in str(raised.value)
    reason = explain_open_error(
        str(path), sqlite3.OperationalError("attempt to write a readonly database")
    )
    assert reason == (
        "cannot be written (attempt to write a readonly database): the store needs the file and "
        "its directory writable (SQLite keeps its -wal and -shm files beside it)"
    )


@pytest.fixture
def server_pems(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate and key, and a second key that matches nothing."""
    ca = issue("test CA", None, ca=True)
    ca_cert, _ = _write_pem(pem(ca), tmp_path, "ca")
    cert, key = _write_pem(
        pem(issue("localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH)), tmp_path, "server"
    )
    _, other_key = _write_pem(
        pem(issue("localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH)), tmp_path, "other"
    )
    junk = tmp_path / "junk.crt"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    return {"ca": ca_cert, "cert": cert, "key": key, "other_key": other_key, "junk": junk}


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("cert", "other_key", "tls_key: does not match tls_cert: give the key the certificate"),
        ("junk", "key", "tls_cert: holds no readable PEM certificate"),
        ("cert", "cert", "tls_key: is not a readable, unencrypted PEM private key"),
    ],
)
def test_bad_tls_material_is_named_instead_of_address_in_use(
    server_pems: dict[str, Path], tmp_path: Path, cert: str, key: str, message: str
) -> None:
    """The console script itself: grpc core's own lines must not come before ours."""
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "control-plane", "--port", str(free_port()),
         "--db", str(tmp_path / "tls.db"),
         "--tls-cert", str(server_pems[cert]), "--tls-key", str(server_pems[key])],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"meshbreaker: error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_tls_on_one_side_only_names_the_flag_that_fixes_it(
    server_pems: dict[str, Path], tmp_path: Path
) -> None:
    secured = ControlPlane(
        tmp_path / "tls.db", tls_cert=server_pems["cert"], tls_key=server_pems["key"]
    )
    plain = ControlPlane(tmp_path / "plain.db")
    try:
        cases = [
            ([secured.target], "it closed the connection at once: if it serves TLS, connect with "
             "--tls-ca FILE"),
            ([f"localhost:{plain.port}", "--tls-ca", str(server_pems["ca"])],
             "it does not speak TLS: drop --tls-ca, --tls-cert and --tls-key"),
        ]  # fmt: skip
        for (target, *tls), reason in cases:
            result = subprocess.run(
                [str(CONSOLE_SCRIPT), "status", "--target", target, *tls, "--timeout", "3"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert result.returncode == 1
            assert result.stderr == (
                f"meshbreaker: error: cannot reach the control plane at {target}: {reason}\n"
            )
    finally:
        secured.close()
        plain.close()
