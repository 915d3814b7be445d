"""The checked-in stubs must match what proto/generate.sh writes from ranker.proto."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ("ranker_pb2.py", "ranker_pb2.pyi", "ranker_pb2_grpc.py")


def test_stubs_match_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    proto_src = tmp_path / "proto"
    shutil.copytree(
        ROOT / "proto", proto_src, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(proto_src),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(proto_src / "explorank/v1/ranker.proto"),
        ],
        check=True,
    )
    for name in STUBS:
        fresh = (tmp_path / "explorank" / "v1" / name).read_text()
        committed = (ROOT / "proto" / "explorank" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"


def test_service_descriptor() -> None:
    from explorank.v1 import ranker_pb2

    svc = ranker_pb2.DESCRIPTOR.services_by_name["Ranker"]
    assert svc.full_name == "explorank.v1.Ranker"
    assert {m.name for m in svc.methods} >= {"Rank", "Reward", "GetInfo"}
