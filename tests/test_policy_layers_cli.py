"""Layered policies end to end: a one-field `policy put`, an agent, `policy explain`, `status`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from meshbreaker.cli import main
from meshbreaker.config import BreakerConfig, WindowType
from meshbreaker.control.agent import MeshAgent
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.server_support import ControlPlane, wait_until

METHOD = "/bank.v1.AccountService/GetBalance"
SERVICE = "bank.v1.AccountService"
# The process's own default: nothing like the library's.
PROCESS = BreakerConfig(
    window_type=WindowType.COUNT,
    window_size=20,
    failure_rate_threshold=0.9,
    slow_call_duration=None,
)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp.db")
    yield plane
    plane.close()


@pytest.fixture
def cli(
    cp: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--target", cp.target, *args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_a_one_field_policy_keeps_every_other_field_of_the_process(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    registry = BreakerRegistry(PROCESS)
    breaker = registry.get(METHOD)
    with MeshAgent(cp.target, "gateway", registry, report_interval=60.0) as agent:
        status, _, err = cli(
            "policy", "put", "--id", "acct", "--service", SERVICE, "--consecutive-failures", "3"
        )
        assert status == 0, err
        assert agent.wait_for_revision(1, timeout=30)
        assert breaker.config == BreakerConfig(
            window_type=WindowType.COUNT,
            window_size=20,
            failure_rate_threshold=0.9,
            slow_call_duration=None,
            consecutive_failures=3,
        )
        status, out, _ = cli("policy", "list")
        assert "consecutive_failures=3" in out.splitlines()[1]

        # A mesh default sets the open duration; the service policy still only adds its field.
        status, _, err = cli("policy", "put", "--id", "mesh", "--open-duration", "30")
        assert status == 0, err
        assert agent.wait_for_revision(2, timeout=30)
        assert (breaker.config.open_duration, breaker.config.consecutive_failures) == (30.0, 3)
        assert breaker.config.window_size == 20

        assert agent.report_now()
        status, out, err = cli("policy", "explain", "--caller", "gateway", "--method", METHOD)
        assert status == 0, err
        rows = {
            line.split()[0]: [word.strip() for word in line.split(maxsplit=2)[1:]]
            for line in out.splitlines()[2:-1]
        }
        assert rows["consecutive_failures"] == ["3", f"service {SERVICE} (policy acct)"]
        assert rows["open_duration"] == ["30.0", "mesh default (policy mesh)"]
        assert rows["window_type"][0] == "count"
        assert rows["window_size"][1].startswith("process default (")
        assert rows["slow_call_duration"][0] == "off"
        assert out.splitlines()[-1] == "override: none"

        status, out, _ = cli(
            "policy", "explain", "--caller", "gateway", "--method", METHOD, "--json"
        )
        explained = json.loads(out)["config"]
        assert explained["failure_rate_threshold"]["value"] == 0.9
        assert explained["consecutive_failures"]["from"] == f"service {SERVICE} (policy acct)"

        # status --instances shows each instance's effective values.
        status, out, _ = cli("status", "--method", METHOD, "--instances")
        row = next(
            line for line in out.splitlines() if agent.instance_id in line and METHOD in line
        )
        for word in ("window_type=count", "window_size=20", "consecutive_failures=3",
                     "open_duration=30.0", "slow_call_duration=off"):  # fmt: skip
            assert word in row


def test_explain_without_a_live_instance_says_where_unset_fields_come_from(
    cli: Callable[..., tuple[int, str, str]], cp: ControlPlane
) -> None:
    cp.stub.PutPolicy(
        pb.PutPolicyRequest(
            policies=[
                pb.Policy(
                    id="balance",
                    selector=pb.Selector(caller="gateway", method=METHOD),
                    config=pb.BreakerConfig(minimum_calls=4),
                    override=pb.OVERRIDE_FORCED_OPEN,
                )
            ]
        ),
        timeout=5,
    )
    status, out, _ = cli("policy", "explain", "--caller", "gateway", "--method", METHOD)
    assert status == 0
    assert "minimum_calls" in out and f"method {METHOD} (policy balance)" in out
    assert "library default" in out and "no live instance reports this breaker" in out
    assert f"override: forced_open (from method {METHOD} (policy balance))".lower() in out.lower()
    status, out, _ = cli("policy", "explain", "--caller", "other", "--method", METHOD)
    assert "policy balance" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--caller", "gateway", "--method", "GetBalance"], "is not a full method name"),
        (["--caller", "bad caller", "--method", METHOD], "--caller"),
    ],
)
def test_explain_refuses_bad_names_in_one_line(
    cli: Callable[..., tuple[int, str, str]], args: list[str], message: str
) -> None:
    status, _, err = cli("policy", "explain", *args)
    assert status == 1 and message in err and err.count("\n") == 1


def test_a_reported_config_is_validated_like_a_policy(cp: ControlPlane) -> None:
    report = pb.ReportStateRequest(
        instance_id="liar",
        service="gateway",
        breakers=[
            pb.BreakerSnapshot(
                name=METHOD,
                state=pb.BREAKER_STATE_CLOSED,
                config=pb.BreakerConfig(failure_codes=pb.CodeList(codes=["\x1b[2J"])),
            )
        ],
        full=True,
    )
    with pytest.raises(grpc.RpcError) as caught:
        cp.stub.ReportState(report, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "breakers[0].config.failure_codes" in str(caught.value.details())
    assert not cp.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).instances


def test_a_config_is_sent_when_it_changes_and_again_to_a_server_that_lost_it(
    cp: ControlPlane,
) -> None:
    registry = BreakerRegistry(PROCESS)
    registry.get(METHOD)
    with MeshAgent(cp.target, "gateway", registry, report_interval=60.0) as agent:
        assert agent.report_now()
        requests, configs = agent._build_reports()
        assert configs == {} and not requests[0].breakers[0].HasField("config")

        def shown() -> str:
            groups = cp.stub.ListBreakers(
                pb.ListBreakersRequest(include_instances=True), timeout=5
            ).groups
            config = groups[0].instance_breakers[0].snapshot.config if groups else None
            return (
                ""
                if config is None or not config.HasField("window_size")
                else str(config.window_size)
            )

        assert shown() == "20"  # kept by the server from the first report
        cp.stop()
        cp.start()  # a new server process knows nothing of this instance
        assert wait_until(lambda: agent.report_now() and shown() == "20")
