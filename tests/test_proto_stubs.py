"""The checked-in stubs: what proto/generate.sh writes, gencode that protobuf 6.30+ and 7.x both
run, and the Open Inference Protocol messages in a pool of their own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STUBS = (
    "explorank/v1/ranker_pb2.py",
    "explorank/v1/ranker_pb2.pyi",
    "explorank/v1/ranker_pb2_grpc.py",
    "explorank/oip/grpc_service_descriptors.py",
)
#: grpcio-tools 1.72.1's protoc writes gencode 6.30.0: the oldest runtime the stubs accept.
GENCODE = (6, 30, 0)


def _pinned_generator() -> str:
    (req,) = PYPROJECT["project"]["optional-dependencies"]["proto"]
    spec = Requirement(req)
    assert spec.name == "grpcio-tools" and str(spec.specifier).startswith("==")
    return str(spec.specifier)[2:]


def _generator_python() -> str | None:
    """An interpreter with the pinned grpcio-tools: this one, else .venv-proto's (make proto)."""
    pinned = _pinned_generator()
    probe = "import importlib.metadata as m; print(m.version('grpcio-tools'))"
    for python in (sys.executable, str(ROOT / ".venv-proto" / "bin" / "python")):
        if not Path(python).exists():
            continue
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() == pinned:
            return python
    return None


def test_stubs_match_proto(tmp_path: Path) -> None:
    python = _generator_python()
    if python is None:
        pytest.skip(
            f"the pinned generator grpcio-tools=={_pinned_generator()} is not installed here "
            "(`make proto` puts it in .venv-proto; CI's protobuf-6 step has it)"
        )
    proto_src = tmp_path / "proto"
    shutil.copytree(
        ROOT / "proto", proto_src, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__")
    )
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(proto_src / "generate.sh"), str(out)], check=True, env=env)
    for name in STUBS:
        fresh = (out / name).read_text()
        committed = (ROOT / "proto" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"


def test_stubs_are_gencode_6_30_and_the_pins_admit_protobuf_6_and_7() -> None:
    stub = (ROOT / "proto/explorank/v1/ranker_pb2.py").read_text()
    assert "# Protobuf Python Version: 6.30.0" in stub
    call = re.search(r"ValidateProtobufRuntimeVersion\(\s*[\w.]+,\s*(\d+),\s*(\d+),\s*(\d+),", stub)
    assert call is not None and tuple(int(g) for g in call.groups()) == GENCODE
    grpc_stub = (ROOT / "proto/explorank/v1/ranker_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{_pinned_generator()}'" in grpc_stub
    deps = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    protobuf = deps["protobuf"].specifier
    for version in ("6.30.0", "6.33.6", "7.35.1", "7.99.0"):
        assert protobuf.contains(version), version
    for version in ("6.29.5", "8.0.0"):
        assert not protobuf.contains(version), version
    # health and reflection must not force protobuf 7: 1.72.1 is the release for 6.30
    for name in ("grpcio-health-checking", "grpcio-reflection"):
        assert deps[name].specifier.contains("1.72.1"), name
    # the grpcio version the gRPC stub checks for at import is below explorank's floor
    (floor,) = [s.version for s in deps["grpcio"].specifier if s.operator == ">="]
    assert _version(_pinned_generator()) <= _version(floor)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def test_the_runtime_accepts_the_stubs() -> None:
    import google.protobuf
    from google.protobuf import runtime_version

    from explorank.v1 import ranker_pb2

    # what the stub itself calls at import, repeated here so that a failure names versions
    runtime_version.ValidateProtobufRuntimeVersion(
        runtime_version.Domain.PUBLIC, *GENCODE, "", "explorank/v1/ranker.proto"
    )
    assert int(google.protobuf.__version__.split(".")[0]) in (6, 7)
    assert ranker_pb2.RankRequest(top_k=3).top_k == 3


def test_service_descriptor() -> None:
    from explorank.v1 import ranker_pb2

    svc = ranker_pb2.DESCRIPTOR.services_by_name["Ranker"]
    assert svc.full_name == "explorank.v1.Ranker"
    assert {m.name for m in svc.methods} >= {"Rank", "Reward", "GetInfo"}


def test_oip_service_comes_from_the_vendored_files() -> None:
    import explorank.oip as oip

    assert oip.SERVICE_NAME == "inference.GRPCInferenceService"
    methods = {m.name for m in oip.SERVICE.methods}
    assert {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelConfig",
        "ModelInfer",
    } <= methods
    assert [oip.POOL.FindFileByName(n).name for n in ("model_config.proto", "grpc_service.proto")]
    req = oip.ModelInferRequest.FromString(
        oip.ModelInferRequest(model_name="encoder", id="r1").SerializeToString()
    )
    assert (req.model_name, req.id) == ("encoder", "r1")
    for name in ("grpc_service.proto", "model_config.proto"):
        head = (ROOT / "proto/explorank/oip" / name).read_text()[:400]
        assert "NVIDIA CORPORATION" in head and "Redistribution and use" in head  # licence kept
    note = (ROOT / "proto/explorank/oip/UPSTREAM.md").read_text()
    assert re.search(r"commit `[0-9a-f]{40}`", note)


def test_oip_messages_live_beside_another_copy_in_the_default_pool() -> None:
    """tritonclient and kserve put their own ``inference.*`` messages in protobuf's default
    pool; explorank's copy must not collide with them (a collision fails at import)."""
    script = textwrap.dedent(
        """
        from google.protobuf import descriptor_pb2, descriptor_pool
        other = descriptor_pb2.FileDescriptorProto(name="grpc_service.proto", package="inference")
        other.message_type.add(name="ServerLiveRequest")
        other.message_type.add(name="ModelInferRequest")
        descriptor_pool.Default().AddSerializedFile(other.SerializeToString())
        import explorank.oip, explorank.engine.server
        assert explorank.oip.ModelInferRequest(model_name="rank").model_name == "rank"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
