"""pyproject.toml: the CPU ONNX Runtime by default, the CUDA build only through the ``gpu``
extra, an SPDX license, and the default catalog shipped as package data."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in requirements]
    return {r.name.lower(): r for r in reqs}


def test_onnxruntime_cpu_is_the_default_on_every_platform() -> None:
    deps = _names(PYPROJECT["project"]["dependencies"])
    assert "onnxruntime" in deps
    assert deps["onnxruntime"].marker is None  # no platform carve-out
    assert "onnxruntime-gpu" not in deps


def test_onnxruntime_gpu_only_in_the_gpu_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(_names(extras["gpu"])) == {"onnxruntime-gpu"}
    others = {name for name, reqs in extras.items() if "onnxruntime-gpu" in _names(reqs)}
    assert others == {"gpu"}


def test_license_is_an_spdx_expression_and_setuptools_supports_it() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    build = _names(PYPROJECT["build-system"]["requires"])
    assert build["setuptools"].specifier.contains("77.0")
    assert not build["setuptools"].specifier.contains("76.9")


def test_default_catalog_is_package_data_of_a_declared_package() -> None:
    st = PYPROJECT["tool"]["setuptools"]
    assert "explorank.export.catalogs" in st["packages"]
    folder = ROOT / st["package-dir"]["explorank.export.catalogs"]
    assert (folder / "default_catalog.jsonl").is_file()
    data = st["package-data"]["explorank.export.catalogs"]
    assert "*.jsonl" in data
    # the generic calibration / held-out texts of static INT8 ship with the package too
    texts = [p for p in folder.glob("*.txt")]
    assert texts and "*.txt" in data
    # one top-level import name, every package mapped to a folder that exists
    assert {p.split(".")[0] for p in st["packages"]} == {"explorank"}
    assert all((ROOT / st["package-dir"][p]).is_dir() for p in st["packages"])


def test_serve_warns_when_both_onnxruntime_builds_are_installed() -> None:
    from explorank.cli.serve import onnxruntime_conflict

    assert onnxruntime_conflict(["onnxruntime"]) is None
    assert onnxruntime_conflict(["onnxruntime-gpu"]) is None
    warning = onnxruntime_conflict(["onnxruntime", "onnxruntime-gpu"])
    assert warning is not None and "pip uninstall -y onnxruntime onnxruntime-gpu" in warning
