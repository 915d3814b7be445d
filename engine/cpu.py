"""How many CPUs this process may actually use.

``os.cpu_count()`` reports the host's CPUs; in a container limited by a CFS quota
(``docker run --cpus 2`` on a 64-core host) sizing ONNX Runtime's thread pool from it
starts 64 spinning threads that the kernel throttles every period, and tail latency
explodes. The usable count is the minimum of

* the scheduler affinity mask (``os.sched_getaffinity``, set by ``taskset``/cpusets),
* the cgroup v2 ``cpu.max`` quota/period of this process's cgroup and every ancestor,
* the cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` pair,

floored (a 1.5-CPU quota gives 1 thread: a second thread would be throttled each
period, which costs latency) and at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_limit"]

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
