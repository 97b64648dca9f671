"""The committed meshbreaker/v1 code is exactly what `make proto` generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = (
    "control_plane_pb2.py",
    "control_plane_pb2.pyi",
    "control_plane_pb2_grpc.py",
    "control_plane_pb2_grpc.pyi",
    "mesh_pb2.py",
    "mesh_pb2.pyi",
    "mesh_pb2_grpc.py",
    "mesh_pb2_grpc.pyi",
    "xds_pb2.py",
    "xds_pb2.pyi",
    "xds_pb2_grpc.py",
    "xds_pb2_grpc.pyi",
)


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    if not plugin.exists():
        pytest.fail(f"mypy-protobuf's protoc-gen-mypy is not installed next to {sys.executable}")
    # Same command line as the Makefile's `proto` target, into a temp dir.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--plugin=protoc-gen-mypy_grpc={plugin.parent / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            "protos/meshbreaker/v1/control_plane.proto",
            "protos/meshbreaker/v1/mesh.proto",
            "protos/meshbreaker/v1/xds.proto",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "meshbreaker" / "v1" / name).read_bytes()
        committed = (ROOT / "meshbreaker" / "v1" / name).read_bytes()
        assert fresh == committed, f"meshbreaker/v1/{name} is stale: run `make proto`"


def test_generated_code_imports_by_package_path() -> None:
    from meshbreaker.v1 import control_plane_pb2, control_plane_pb2_grpc

    assert control_plane_pb2.DESCRIPTOR.package == "meshbreaker.v1"
    assert hasattr(control_plane_pb2_grpc, "ControlPlaneStub")
    source = (ROOT / "meshbreaker" / "v1" / "control_plane_pb2_grpc.py").read_text()
    assert "from meshbreaker.v1 import control_plane_pb2" in source


def test_every_rpc_of_the_issue_exists() -> None:
    from meshbreaker.v1 import control_plane_pb2

    service = control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlane"]
    assert set(service.methods_by_name) >= {
        "GetConfig",
        "WatchConfig",
        "ReportState",
        "ListBreakers",
        "ListPolicies",
        "PutPolicy",
        "DeletePolicy",
        "ForceState",
        "WatchEvents",
    }
    assert service.methods_by_name["WatchConfig"].server_streaming
    assert service.methods_by_name["WatchEvents"].server_streaming
