"""`meshbreaker xds ...` against a real control plane with xds=True, and the bootstrap it prints."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshbreaker.cli import main
from meshbreaker.control.xds.resources import CLUSTER
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc
from tests.server_support import ControlPlane, wait_until

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp.db", xds=True)
    yield plane
    plane.close()


@pytest.fixture
def cli(cp: ControlPlane, capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--target", cp.target, *args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_cluster_put_list_and_delete(cli: Cli) -> None:
    status, out, err = cli(
        "xds",
        "cluster",
        "put",
        "accounts",
        "--endpoint",
        "127.0.0.1:5001",
        "--endpoint",
        "[::1]:5002/3",
        "--service",
        "bank.v1.AccountService",
    )
    assert (status, err) == (0, "")
    assert "registry revision 1" in out
    status, out, _ = cli("xds", "cluster", "list")
    assert out.split() == [
        "accounts",
        "127.0.0.1:5001",
        "[::1]:5002/3",
        "round_robin",
        "bank.v1.AccountService",
    ]
    status, out, _ = cli("xds", "cluster", "list", "--json")
    listed = json.loads(out)
    assert listed["revision"] == "1" and listed["clusters"][0]["name"] == "accounts"
    assert cli("xds", "cluster", "delete", "accounts")[0] == 0
    status, _, err = cli("xds", "cluster", "delete", "accounts")
    assert status == 1 and "NOT_FOUND: no xDS cluster named 'accounts'" in err


def test_cluster_list_shows_the_endpoints_servers_registered(cli: Cli, cp: ControlPlane) -> None:
    assert cli("xds", "cluster", "put", "accounts", "--endpoint", "127.0.0.1:5001")[0] == 0
    stub = xds_pb2_grpc.XdsAdminStub(cp.channel)
    request = xds_pb2.RegisterEndpointRequest(
        cluster="accounts", endpoint=xds_pb2.XdsEndpoint(host="::1", port=6000)
    )
    stub.RegisterEndpoint(request, timeout=30)
    status, out, _ = cli("xds", "cluster", "list")
    assert status == 0
    assert out.split() == [
        "accounts",
        "127.0.0.1:5001",
        "+registered",
        "[::1]:6000",
        "round_robin",
        "(mesh-wide",
        "policies",
        "only)",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoint", "db.internal:5432"], "is not an IP address"),
        (["--endpoint", "127.0.0.1:70000"], "the port must be in 1..65535"),
        (["--endpoint", "127.0.0.1"], "is not HOST:PORT"),
        (["--endpoint", "127.0.0.1:1", "--endpoint", "127.0.0.1:1"], "is listed twice"),
        (["--endpoint", "127.0.0.1:1", "--service", "not a service"], "not a gRPC service name"),
        ([], "give at least one --endpoint"),
    ],
)
def test_a_bad_cluster_is_one_line_and_stores_nothing(
    cli: Cli, cp: ControlPlane, args: list[str], message: str
) -> None:
    status, _, err = cli("xds", "cluster", "put", "accounts", *args)
    assert status == 1 and message in err and len(err.splitlines()) == 1
    assert cp.running.store.xds_clusters() == (0, [])


def test_a_put_with_a_method_selector_and_outlier_detection_is_refused(cp: ControlPlane) -> None:
    policy = pb.Policy(
        id="p",
        selector=pb.Selector(method="/bank.v1.AccountService/Get"),
        outlier_detection=xds_pb2.OutlierDetection(max_ejection_percent=10),
    )
    with pytest.raises(grpc.RpcError) as caught:
        cp.stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "policies[0].outlier_detection: needs a selector without a method" in str(
        caught.value.details()
    )
    policy.selector.method = ""
    policy.selector.service = "bank.v1.AccountService"
    policy.outlier_detection.max_ejection_percent = 101
    with pytest.raises(grpc.RpcError) as caught:
        cp.stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]))
    assert "policies[0].outlier_detection.max_ejection_percent: must be in 0..100" in str(
        caught.value.details()
    )


def test_bootstrap_prints_what_grpc_reads(cli: Cli, tmp_path: Path) -> None:
    status, out, _ = cli(
        "xds", "bootstrap", "--server", "10.0.0.7:7070", "--node-id", "gw-1", "--caller", "gateway"
    )
    assert status == 0
    assert json.loads(out) == {
        "xds_servers": [
            {
                "server_uri": "10.0.0.7:7070",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": "gw-1", "cluster": "gateway"},
    }
    written = tmp_path / "bootstrap.json"
    args = ("--server", "10.0.0.7:7070", "--node-id", "gw-1", "--caller", "gateway")
    assert cli("xds", "bootstrap", *args, "--output", str(written))[:2] == (0, "")
    assert json.loads(written.read_text())["node"] == {"id": "gw-1", "cluster": "gateway"}
    ca = tmp_path / "ca.pem"
    status, out, _ = cli(
        "xds", "bootstrap", "--server", "cp:7070", "--node-id", "gw-1", "--ca-file", str(ca)
    )
    assert json.loads(out)["xds_servers"][0]["channel_creds"] == [
        {"type": "tls", "config": {"ca_certificate_file": str(ca.resolve())}}
    ]
    status, _, err = cli("xds", "bootstrap", "--server", "cp", "--node-id", "x")
    assert status == 1 and "--server: 'cp' is not HOST:PORT" in err
    status, _, err = cli(
        "xds", "bootstrap", "--server", "cp:1", "--node-id", "x", "--cert-file", "c"
    )
    assert (status == 1 and "--private-key-file" in err) or "go together" in err


def test_clients_show_what_each_node_acked_or_nacked(cli: Cli, cp: ControlPlane) -> None:
    assert cli("xds", "cluster", "put", "accounts", "--endpoint", "127.0.0.1:5001")[0] == 0
    _, out, _ = cli("xds", "clients")
    assert "0 xDS client(s)" in out
    channel = grpc.insecure_channel(cp.target)
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    subscribe = discovery_pb2.DiscoveryRequest(
        node={"id": "raw-node", "cluster": "gateway"}, type_url=CLUSTER, resource_names=["accounts"]
    )
    requests.put(subscribe)
    stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        iter(requests.get, None), timeout=20
    )
    try:
        response = next(stream)
        assert response.version_info == "0.1" and len(response.resources) == 1
        _, out, _ = cli("xds", "clients")
        assert out.splitlines()[1].split() == ["raw-node", "gateway", "cluster", "accounts", "-"]
        requests.put(
            discovery_pb2.DiscoveryRequest(
                type_url=CLUSTER,
                resource_names=["accounts"],
                version_info=response.version_info,
                response_nonce=response.nonce,
            )
        )
        assert wait_until(lambda: "0.1" in cli("xds", "clients")[1], timeout=30)
        # New endpoints alone change EDS, not this CDS resource: nothing is sent for it.
        assert cli("xds", "cluster", "put", "accounts", "--endpoint", "127.0.0.1:5002")[0] == 0
        put = ("xds", "cluster", "put", "accounts", "--endpoint", "127.0.0.1:5002")
        assert cli(*put, "--lb-policy", "ring_hash")[0] == 0
        second = next(stream)
        assert second.version_info == "0.3"
        requests.put(
            discovery_pb2.DiscoveryRequest(
                type_url=CLUSTER,
                resource_names=["accounts"],
                version_info=response.version_info,
                response_nonce=second.nonce,
                error_detail={"code": 3, "message": "\x1b[31mno thanks"},
            )
        )
        assert wait_until(lambda: "NACKing" in cli("xds", "clients")[1], timeout=30)
        _, out, _ = cli("xds", "clients")
        row = out.splitlines()[1]
        assert row.split()[:5] == ["raw-node", "gateway", "cluster", "accounts", "0.1"]
        # The client's words reach the terminal escaped, never as control characters.
        assert "0.3: \\x1b[31mno thanks" in row and "\x1b" not in out
        _, out, _ = cli("xds", "clients", "--json")
        (client,) = json.loads(out)["clients"]
        assert client["resources"][0]["nacked_version"] == "0.3"
    finally:
        requests.put(None)
        stream.cancel()
        channel.close()


def test_outlier_detection_from_a_policy_file_reaches_the_service_config(
    cli: Cli, tmp_path: Path
) -> None:
    policy = {
        "id": "accounts-ejection",
        "service": "bank.v1.AccountService",
        "outlier_detection": {"interval": "2s", "enforcing_failure_percentage": 100},
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    status, _, err = cli("policy", "put", "--file", str(path))
    assert (status, err) == (0, "")
    status, out, _ = cli("policy", "list", "--json")
    (stored,) = json.loads(out)["policies"]
    assert stored["outlier_detection"] == {"interval": "2s", "enforcing_failure_percentage": 100}
    status, out, _ = cli("xds", "service-config", "--service", "bank.v1.AccountService")
    config = json.loads(out)["loadBalancingConfig"][0]["outlier_detection_experimental"]
    assert config["interval"] == "2s"
    assert config["failurePercentageEjection"]["enforcementPercentage"] == 100
    assert config["successRateEjection"]["stdevFactor"] == 1900  # A50's default
    assert json.loads(cli("xds", "service-config", "--service", "bank.v1.Other")[1]) == {}
    for bad, message in (
        ({"intervall": "2s"}, "outlier_detection: "),
        ({"max_ejection_percent": 150}, "outlier_detection.max_ejection_percent: must be in"),
        ("often", "must be an object of OutlierDetection fields"),
    ):
        path.write_text(json.dumps({**policy, "outlier_detection": bad}))
        status, _, err = cli("policy", "put", "--file", str(path))
        assert status == 1 and message in err and len(err.splitlines()) == 1


def test_envoy_style_wildcard_subscriptions_get_every_cluster(cli: Cli, cp: ControlPlane) -> None:
    for name in ("b", "a"):
        assert cli("xds", "cluster", "put", name, "--endpoint", "127.0.0.1:5001")[0] == 0
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    requests.put(discovery_pb2.DiscoveryRequest(node={"id": "envoy-1"}, type_url=CLUSTER))
    with grpc.insecure_channel(cp.target) as channel:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            iter(requests.get, None), timeout=20
        )
        try:
            response = next(stream)
            names = [cluster_pb2.Cluster.FromString(r.value).name for r in response.resources]
            assert names == ["a", "b"]
            # A new cluster reaches a wildcard subscriber without asking.
            assert cli("xds", "cluster", "put", "c", "--endpoint", "127.0.0.1:5001")[0] == 0
            response = next(stream)
            assert len(response.resources) == 3
        finally:
            requests.put(None)
            stream.cancel()


def test_status_watch_shows_the_xds_clients_beside_the_breakers(cli: Cli, cp: ControlPlane) -> None:
    assert cli("xds", "cluster", "put", "accounts", "--endpoint", "127.0.0.1:5001")[0] == 0
    channel = grpc.insecure_channel(cp.target)
    subscribe = discovery_pb2.DiscoveryRequest(
        node={"id": "watched-node", "cluster": "gateway"},
        type_url=CLUSTER,
        resource_names=["accounts"],
    )
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    requests.put(subscribe)
    stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        iter(requests.get, None), timeout=20
    )
    try:
        next(stream)
        status, out, err = cli("status", "--watch", "--iterations", "1")
        assert status == 0, err
        assert "1 xDS client(s)" in out
        row = next(line for line in out.splitlines() if "watched-node" in line)
        assert row.split()[:4] == ["watched-node", "gateway", "cluster", "accounts"]
    finally:
        requests.put(None)
        stream.cancel()
        channel.close()


def test_status_watch_of_a_control_plane_without_xds_shows_breakers_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plane = ControlPlane(tmp_path / "plain.db")
    try:
        assert main(["--target", plane.target, "status", "--watch", "--iterations", "2"]) == 0
    finally:
        plane.close()
    out = capsys.readouterr().out
    assert "no breakers" in out and "xDS" not in out
