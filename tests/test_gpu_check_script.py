"""scripts/gpu-check.sh without a GPU: its syntax, the dry run (arguments, the wheel given in
parts, the plan), and the report it writes from what the steps left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
WHEEL_NAME = "fake_pkg-1.2.3-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
STEPS = ("install", "environment", "gpu-tests", "export", "probe", "bench-encoder", "bench-serve")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("OUT", "ORT_GPU_WHEEL")}
    full_env.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def fake_wheel(path: Path) -> bytes:
    """A wheel-shaped zip (METADATA and WHEEL, two platform tags) with incompressible payload."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake_pkg/__init__.py", "")
        zf.writestr("fake_pkg/payload.bin", os.urandom(300_000))
        zf.writestr(
            "fake_pkg-1.2.3.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: fake-pkg\nVersion: 1.2.3\n",
        )
        zf.writestr(
            "fake_pkg-1.2.3.dist-info/WHEEL",
            "Wheel-Version: 1.0\nTag: cp312-cp312-manylinux_2_27_x86_64\n"
            "Tag: cp312-cp312-manylinux_2_28_x86_64\n",
        )
    return path.read_bytes()


def split(data: bytes, prefix: Path, n: int = 3) -> list[Path]:
    size = -(-len(data) // n)
    parts = []
    for i in range(n):
        part = prefix.with_name(f"{prefix.name}.part-a{chr(ord('a') + i)}")
        part.write_bytes(data[i * size : (i + 1) * size])
        parts.append(part)
    return parts


def test_syntax() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    proc = run(
        "--dry-run", "--python", sys.executable, "--work", str(tmp_path / "w"),
        OUT=str(tmp_path / "o"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"out {tmp_path / 'o'}" in out and "budget 570s" in out
    assert "wheel: none given" in out and out.rstrip().endswith("dry run: nothing executed")
    for i, step in enumerate(STEPS, 1):
        assert f"{i}. {step}" in out
    assert "--provider cuda" in out and "bench serve" in out and "--precision fp32,fp16" in out
    assert not (tmp_path / "w" / "steps.tsv").exists()
    assert not (tmp_path / "o" / "gpu-check.md").exists()


@pytest.mark.parametrize("form", ["beside", "glob"])
def test_dry_run_joins_a_wheel_given_in_parts(tmp_path: Path, form: str) -> None:
    data = fake_wheel(tmp_path / "original.whl")
    parts_dir = tmp_path / "carried"
    parts_dir.mkdir()
    split(data, parts_dir / "ort_gpu.whl")
    wheel = str(parts_dir / "ort_gpu.whl") + (".part-*" if form == "glob" else "")
    work = tmp_path / "w"
    proc = run("--dry-run", "--python", sys.executable, "--work", str(work), "--wheel", wheel)
    assert proc.returncode == 0, proc.stderr
    joined = work / "wheel" / WHEEL_NAME
    assert f"wheel: {joined}" in proc.stdout
    assert "3 part(s)" in proc.stderr and "ort_gpu.whl.part-aa, ort_gpu.whl.part-ab" in proc.stderr
    assert joined.read_bytes() == data
    assert f"--target '{work}/site' '{joined}'" in proc.stdout


def test_parts_are_checked_against_sha256sums(tmp_path: Path) -> None:
    import hashlib

    data = fake_wheel(tmp_path / "original.whl")
    split(data, tmp_path / "ort_gpu.whl")
    sums = tmp_path / "SHA256SUMS"
    args = ("--dry-run", "--python", sys.executable, "--work", str(tmp_path / "w"))
    sums.write_text(f"{hashlib.sha256(data).hexdigest()}  {WHEEL_NAME}\n")
    ok = run(*args, "--wheel", str(tmp_path / "ort_gpu.whl"))
    assert ok.returncode == 0 and "sha256 of" in ok.stderr
    sums.write_text(f"{'0' * 64}  {WHEEL_NAME}\n")
    bad = run(*args, "--wheel", str(tmp_path / "ort_gpu.whl"))
    assert bad.returncode == 2 and "does not match its sha256" in bad.stderr


def test_a_missing_or_misordered_part_is_refused(tmp_path: Path) -> None:
    data = fake_wheel(tmp_path / "original.whl")
    parts = split(data, tmp_path / "ort_gpu.whl")
    parts[1].unlink()
    proc = run("--dry-run", "--python", sys.executable, "--work", str(tmp_path / "w"),
               "--wheel", str(tmp_path / "ort_gpu.whl"))  # fmt: skip
    assert proc.returncode == 2
    assert "not a wheel (zip)" in proc.stderr and "2 part(s)" in proc.stderr
    assert not list((tmp_path / "w" / "wheel").glob("*.whl"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown argument --frobnicate"),
        (["--budget", "abc"], "--budget must be whole seconds"),
        (["--budget", "30"], "too short"),
        (["--wheelhouse", "/nonexistent/wheels"], "is not a directory"),
        (["--wheel", "/nonexistent/ort.whl"], "no wheel at /nonexistent/ort.whl"),
        (["--python", "/nonexistent/python3"], "python not found"),
        (["--out"], "--out needs a directory"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run("--dry-run", "--work", str(tmp_path / "w"), *args, PY=sys.executable)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_must_run_from_the_repository_root(tmp_path: Path) -> None:
    proc = run("--dry-run", cwd=tmp_path, PY=sys.executable)
    assert proc.returncode == 2 and "repository root" in proc.stderr


def _report(work: Path, out: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "report",
         "--work", str(work), "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads((out / "gpu-check.json").read_text())
    return data


def test_report_gathers_steps_tests_and_figures(tmp_path: Path) -> None:
    work, out = tmp_path / "w", tmp_path / "o"
    work.mkdir()
    (work / "steps.tsv").write_text(
        "install\tok\t0\t12\t\ngpu-tests\tfailed\t1\t40\texit 1\nbench-serve\tnot-run\t0\t0\tno time left\n"
    )
    (work / "nvidia-smi.csv").write_text("NVIDIA H200, 143771 MiB, 580.159.03, 9.0, 1980 MHz, 5\n")
    (work / "gpu-tests.xml").write_text(
        '<testsuites><testsuite tests="2" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.test_gpu_path" name="test_a"/>'
        '<testcase classname="tests.test_gpu_path" name="test_b">'
        '<failure message="min cosine 0.98 &lt; 0.995"/></testcase></testsuite></testsuites>'
    )
    row = {"backend": "ort-cuda-fp16", "batch_size": 1, "seq_len": 16, "p50_ms": 0.8,
           "p99_ms": 1.1, "throughput_seq_s": 1250.0, "speedup_vs_pytorch": 5.0,
           "speedup_base": "pytorch-cuda", "device": "gpu"}  # fmt: skip
    cpu_row = dict(row, backend="ort-fp32", device="cpu")
    (work / "encoder-report.json").write_text(
        json.dumps({"headline": {"cuda_graphs_vs_none": 2.5}, "rows": [row, cpu_row]})
    )
    data = _report(work, out)
    assert data["passed"] is False
    assert [s["status"] for s in data["steps"]] == ["ok", "failed", "not-run"]  # type: ignore[index]
    assert data["gpus"] == [  # type: ignore[comparison-overlap]
        {"name": "NVIDIA H200", "memory_total": "143771 MiB", "driver": "580.159.03",
         "compute_cap": "9.0", "sm_clock_max": "1980 MHz", "pcie": "5"}
    ]  # fmt: skip
    tests = data["tests"]
    assert tests["failures"] == 1 and tests["cases"][1]["status"] == "failure"  # type: ignore[index]
    assert [r["backend"] for r in data["encoder"]["rows"]] == ["ort-cuda-fp16"]  # type: ignore[index]
    md = (out / "gpu-check.md").read_text()
    assert "**FAILED**" in md and "NVIDIA H200" in md and "| gpu-tests | failed | 1 |" in md
    assert "CUDA graphs vs none: 2.50×" in md and "min cosine 0.98" in md
    assert "| ort-cuda-fp16 | 1 | 16 | 0.800 |" in md

    (work / "steps.tsv").write_text("install\tok\t0\t12\t\ngpu-tests\tok\t0\t40\t\n")
    assert _report(work, out)["passed"] is True
    (work / "steps.tsv").write_text("")
    assert _report(work, out)["passed"] is False  # nothing ran: not a pass
