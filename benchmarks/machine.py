"""What machine a benchmark ran on: CPU, usable cores, GPU, library versions.

Everything here is read without importing heavy libraries (versions come from package
metadata), and every probe tolerates failure: a report must never be lost because
``nvidia-smi`` is missing.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from explorank.engine.cpu import available_cpus, cgroup_cpu_limit

__all__ = ["cpu_model", "gpu_info", "library_versions", "machine_info"]

#: Distributions whose versions matter for the numbers.
LIBRARIES = (
    "explorank",
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "transformers",
    "tokenizers",
    "grpcio",
    "tensorrt",
    "threadpoolctl",
)
#: CPU flags that decide which GEMM / INT8 kernels run.
_INTERESTING_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_int8",
)


def cpu_model(cpuinfo: str | None = None) -> dict[str, Any]:
    """``{"model": ..., "flags": [...]}`` from /proc/cpuinfo (or ``platform`` elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {
        "model": model or platform.processor() or platform.machine(),
        "flags": [f for f in _INTERESTING_FLAGS if f in flags],
    }


def gpu_info(timeout_s: float = 10.0) -> list[dict[str, str]]:
    """One entry per GPU from ``nvidia-smi`` (name, memory, driver); empty when none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    gpus = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu["model"],
        "cpu_flags": cpu["flags"],
        "cores_logical": os.cpu_count(),
        "cores_available": available_cpus(),
        "cgroup_cpu_limit": cgroup_cpu_limit(),
        "gpus": gpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
