"""Subprocesses of explorank import the installed package, whatever the current directory
holds; ``bench serve`` exits non-zero when a target fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from explorank import __version__
from explorank.benchmarks.latency import serve_bench
from explorank.benchmarks.latency.serve_procs import explorank_command, peer_command
from explorank.cli import main
from explorank.launch import _BOOTSTRAP, module_command
from tests.fp32_bundle import fp32_bundle_for


@pytest.fixture(scope="session")
def fp32_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Path:
    return fp32_bundle_for(tmp_path_factory, tiny_model_dir, tiny_catalog)


@pytest.fixture
def shadowing_dir(tmp_path: Path) -> Path:
    """A directory holding a folder named ``explorank`` that breaks on import (a clone's
    parent looks like this to ``python -m explorank``)."""
    fake = tmp_path / "explorank"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("shadowed by the current directory")\n')
    return tmp_path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_plain_python_m_is_shadowed_here(shadowing_dir: Path) -> None:
    """The fixture reproduces the problem: plain ``python -m explorank`` imports the folder."""
    proc = _run([sys.executable, "-m", "explorank", "--version"], shadowing_dir)
    assert proc.returncode != 0
    assert "shadowed by the current directory" in proc.stderr


def test_module_command_imports_the_installed_package(shadowing_dir: Path) -> None:
    proc = _run(module_command("explorank", "--version"), shadowing_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"explorank {__version__}"


def test_python_310_bootstrap_imports_the_installed_package(shadowing_dir: Path) -> None:
    """The bootstrap used where ``-P`` does not exist (Python 3.10) does the same."""
    proc = _run([sys.executable, "-c", _BOOTSTRAP, "explorank", "--version"], shadowing_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"explorank {__version__}"


def test_bench_server_commands_are_not_shadowed(shadowing_dir: Path) -> None:
    missing = shadowing_dir / "no-bundle"
    cmd = explorank_command(missing, shadowing_dir, "explorank", shadowing_dir / "p", 0)
    proc = _run(cmd + ["--port", "0"], shadowing_dir)
    # The real package ran: it got as far as looking for the bundle.
    assert "shadowed" not in proc.stderr
    assert proc.returncode == 2 and "manifest.json is missing" in proc.stderr
    peer = _run(peer_command(missing, missing, shadowing_dir / "p") + ["--help"], shadowing_dir)
    assert peer.returncode == 0, peer.stderr
    assert "--bundle" in peer.stdout


@pytest.mark.slow
def test_bench_serve_exits_1_naming_a_failed_target(
    fp32_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The explorank target asks for INT8 from a bundle that has only fp32: it cannot start.
    real = serve_bench.explorank_command
    monkeypatch.setattr(
        serve_bench,
        "explorank_command",
        lambda *a, **k: real(*a, **k) + ["--precision", "int8"],
    )
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "serve",
            "--bundle",
            str(fp32_bundle),
            "--targets",
            "explorank",
            "--concurrency",
            "1",
            "--duration",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("explorank bench serve: target"))
    assert line.startswith("explorank bench serve: target explorank failed: explorank exited")
    assert "int8" in line  # the server's own last words say why
    report = json.loads((out / "report.json").read_text())
    assert [f["target"] for f in report["failed"]] == ["explorank"]
    assert report["rows"] == []
    assert "## Failed targets" in (out / "report.md").read_text()
