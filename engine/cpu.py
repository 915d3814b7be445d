"""How many CPUs this process may actually use, and which integer kernels they have.

**Counts.**
``os.cpu_count()`` reports the host's CPUs; in a container limited by a CFS quota
(``docker run --cpus 2`` on a 64-core host) sizing ONNX Runtime's thread pool from it
starts 64 spinning threads that the kernel throttles every period, and tail latency
explodes. The usable count is the minimum of

* the scheduler affinity mask (``os.sched_getaffinity``, set by ``taskset``/cpusets),
* the cgroup v2 ``cpu.max`` quota/period of this process's cgroup and every ancestor,
* the cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` pair,

floored (a 1.5-CPU quota gives 1 thread: a second thread would be throttled each
period, which costs latency) and at least 1.

**INT8 kernels.** ONNX Runtime multiplies uint8 activations by int8 weights (u8s8). On x86
CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX) the products are summed in 32 bits; on CPUs
with only AVX2 (and AVX-512 without VNNI) the kernel pairs products into *saturating* 16-bit
sums (``vpmaddubsw``), so the same quantized model computes different, sometimes much worse,
embeddings there. :func:`int8_kernels` names the family of this CPU: ``"vnni"``, ``"avx2"``
(x86 without VNNI: u8s8 may saturate) or ``"other"`` (ARM and the rest, whose int8 dot
products do not saturate). Quantization with 7-bit weights (``reduce_range``) or uint8
weights cannot saturate and computes the same on every x86 CPU.

``EXPLORANK_CPU_FEATURES`` (comma-separated flags, e.g. ``avx2,fma``) replaces the flags
read from ``/proc/cpuinfo``, so both branches can be exercised on any machine (tests, and
exporting for a fleet of older CPUs on a newer one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "available_cpus",
    "cgroup_cpu_limit",
    "cpu_description",
    "cpu_features",
    "int8_kernels",
]

FEATURES_ENV = "EXPLORANK_CPU_FEATURES"
#: Flags (as /proc/cpuinfo spells them) whose int8 dot products accumulate in 32 bits.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
#: The flags worth recording next to an INT8 measurement.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
)

_V1_CONTROLLER_DIRS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _proc_cgroup_paths(root: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu path) of this process's cgroup from /proc/self/cgroup."""
    text = _read(root / "proc" / "self" / "cgroup")
    v2: str | None = None
    v1: str | None = None
    if text is None:
        return v2, v1
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, rel: str | None) -> list[Path]:
    """``base/rel`` and every parent up to ``base`` (limits of ancestors apply too).

    Inside a container with a private cgroup namespace the path in /proc/self/cgroup
    may not exist under the mount; ``base`` itself is always tried.
    """
    dirs: list[Path] = []
    if rel and rel not in ("/", ""):
        cur = base / rel.lstrip("/")
        while cur != base and base in cur.parents:
            dirs.append(cur)
            cur = cur.parent
    dirs.append(base)
    return dirs


def _v2_limit(root: Path, rel: str | None) -> float | None:
    base = root / "sys" / "fs" / "cgroup"
    best: float | None = None
    for d in _ancestors(base, rel):
        text = _read(d / "cpu.max")
        if not text:
            continue
        fields = text.split()
        if not fields or fields[0] == "max":
            continue
        try:
            quota = float(fields[0])
            period = float(fields[1]) if len(fields) > 1 else 100_000.0
        except ValueError:
            continue
        if quota > 0 and period > 0:
            limit = quota / period
            best = limit if best is None else min(best, limit)
    return best


def _v1_limit(root: Path, rel: str | None) -> float | None:
    best: float | None = None
    for name in _V1_CONTROLLER_DIRS:
        base = root / "sys" / "fs" / "cgroup" / name
        for d in _ancestors(base, rel):
            q = _read(d / "cpu.cfs_quota_us")
            p = _read(d / "cpu.cfs_period_us")
            if q is None or p is None:
                continue
            try:
                quota, period = float(q), float(p)
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limit = quota / period
                best = limit if best is None else min(best, limit)
        if best is not None:
            return best
    return best


def cgroup_cpu_limit(root: str | os.PathLike[str] = "/") -> float | None:
    """The CFS CPU quota in CPUs (possibly fractional), or ``None`` when unlimited.

    ``root`` is the filesystem root to read ``proc/self/cgroup`` and ``sys/fs/cgroup``
    under (tests point it at a fake tree).
    """
    root = Path(root)
    v2_rel, v1_rel = _proc_cgroup_paths(root)
    limits = [x for x in (_v2_limit(root, v2_rel), _v1_limit(root, v1_rel)) if x is not None]
    return min(limits) if limits else None


def _affinity_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def available_cpus(root: str | os.PathLike[str] = "/", *, affinity: int | None = None) -> int:
    """CPUs usable by this process: min(affinity, cgroup quota), floored, at least 1.

    ``affinity`` overrides the affinity-mask count (for tests); by default it is read
    with ``os.sched_getaffinity`` and falls back to ``os.cpu_count()`` where that call
    does not exist (macOS).
    """
    candidates: list[float] = []
    aff = affinity if affinity is not None else _affinity_count()
    if aff is None:
        aff = os.cpu_count()
    if aff:
        candidates.append(float(aff))
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        candidates.append(quota)
    if not candidates:
        return 1
    return max(1, math.floor(min(candidates) + 1e-9))


def _cpuinfo(root: Path) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in ``root/proc/cpuinfo``."""
    text = _read(root / "proc" / "cpuinfo") or ""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value
    return model, frozenset(flags.split())


def cpu_features(
    root: str | os.PathLike[str] = "/", environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The CPU's feature flags (lower case), or ``EXPLORANK_CPU_FEATURES`` when set."""
    env = os.environ if environ is None else environ
    forced = env.get(FEATURES_ENV)
    if forced is not None:
        return frozenset(f.strip().lower() for f in forced.split(",") if f.strip())
    return _cpuinfo(Path(root))[1]


def int8_kernels(features: frozenset[str] | None = None) -> str:
    """``"vnni"``, ``"avx2"`` or ``"other"``: see the module docstring."""
    flags = cpu_features() if features is None else features
    if flags & VNNI_FLAGS:
        return "vnni"
    if "avx2" in flags or "avx512f" in flags:
        return "avx2"
    return "other"


def cpu_description(
    root: str | os.PathLike[str] = "/", environ: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Model name, the INT8-relevant flags and the kernel family, for manifests and logs."""
    env = os.environ if environ is None else environ
    flags = cpu_features(root, env)
    model = _cpuinfo(Path(root))[0]
    return {
        "model": model or "unknown",
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
        "int8_kernels": int8_kernels(flags),
        "forced": FEATURES_ENV in env,
    }
