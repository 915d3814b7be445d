"""Results over replicate seeds: the mean and a 95% interval of every run's metrics, and
of the lifts the study is about.

Each replicate seed is an independent repetition (its own cold split, users, candidates,
click draws and policy randomness), and within a seed every run sees the same draws, so
a lift is computed per seed on paired runs (``reward_a / reward_b - 1``) and then
summarised across seeds: mean ± ``t(0.975, n-1)·sd/√n`` (Student's t; no interval with
one seed).

Lifts: the best neural-linear policy vs the best context-free (per-item counting) policy
(of the same representation, and of any representation when that one is better) and vs
``greedy``, per representation; ``bert`` vs ``id`` and ``bert-ft`` vs ``bert`` per
policy. "Best" is chosen by the mean over seeds (choosing per seed would bias the lift
upwards), and the same pair is then compared in every seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

NEURAL_LINEAR = ("linucb", "lin_ts", "linucb_hybrid", "lin_ts_hybrid")
CONTEXT_FREE = ("ucb1", "thompson")
METRICS = (
    "cumulative_reward", "ctr", "warm_ctr", "cold_ctr", "cold_warm_ratio", "coverage",
    "regret_per_step", "expected_reward", "gini_exposure", "novelty", "wall_s",
)  # fmt: skip
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df


def interval(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"mean", "low", "high", "n", "values"}`` over the finite values (NaN interval
    with fewer than two)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "values": []}
    mean = float(np.mean(vals))
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n, "values": vals}
    half = t95(n - 1) * float(np.std(vals, ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "values": vals}


def _key(run: dict[str, Any]) -> tuple[str, str, str]:
    return (run["policy"], run["scorer"], run["representation"])


def _with_ratio(run: dict[str, Any]) -> dict[str, Any]:
    c, wm = run.get("cold_ctr"), run.get("warm_ctr")
    if c is None or wm is None or not (math.isfinite(c) and math.isfinite(wm) and wm > 0):
        return {**run, "cold_warm_ratio": math.nan}
    return {**run, "cold_warm_ratio": float(c) / float(wm)}


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (policy, scorer, representation): every metric's :func:`interval`."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(_with_ratio(r))
    out = []
    for (pol, sc, rep), rs in groups.items():
        row: dict[str, Any] = {"policy": pol, "scorer": sc, "representation": rep,
                               "seeds": sorted(r["seed"] for r in rs)}  # fmt: skip
        for m in METRICS:
            row[m] = interval(r.get(m) for r in rs)
        out.append(row)
    return sorted(out, key=lambda r: -r["cumulative_reward"]["mean"])


def _by_seed(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], dict[int, float]]:
    out: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in runs:
        out.setdefault(_key(r), {})[int(r["seed"])] = float(r["cumulative_reward"])
    return out


def _lift(name: str, a: tuple[str, str, str], b: tuple[str, str, str],
          table: dict[tuple[str, str, str], dict[int, float]]) -> dict[str, Any] | None:  # fmt: skip
    ra, rb = table.get(a), table.get(b)
    if not ra or not rb:
        return None
    seeds = sorted(set(ra) & set(rb))
    ratios = [ra[s] / rb[s] - 1.0 for s in seeds if rb[s] > 0]
    return {"lift": name, "a": "/".join(a), "b": "/".join(b), **interval(ratios)}


def _best(table: dict[tuple[str, str, str], dict[int, float]], policies: Sequence[str],
          rep: str) -> tuple[str, str, str] | None:  # fmt: skip
    cands = [k for k in table if k[0] in policies and k[2] == rep]
    return max(cands, key=lambda k: float(np.mean(list(table[k].values()))), default=None)


def lifts(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's lifts (module docstring), each with its per-seed values and interval."""
    table = _by_seed([r for r in runs if r["policy"] != "oracle"])
    reps = sorted({k[2] for k in table})
    out: list[dict[str, Any] | None] = []
    for rep in reps:
        nl = _best(table, NEURAL_LINEAR, rep)
        if nl is None:
            continue
        cf = _best(table, CONTEXT_FREE, rep)
        if cf is not None:
            out.append(_lift(f"best neural-linear vs best context-free ({rep})", nl, cf, table))
        cf_any = max(
            (_best(table, CONTEXT_FREE, r) for r in reps if _best(table, CONTEXT_FREE, r)),
            key=lambda k: float(np.mean(list(table[k].values()))),  # type: ignore[index]
            default=None,
        )
        if cf_any is not None and cf_any != cf:
            out.append(_lift(f"best neural-linear ({rep}) vs best context-free (any)", nl,
                             cf_any, table))  # fmt: skip
        greedy = next((k for k in table if k[0] == "greedy" and k[2] == rep), None)
        if greedy is not None:
            out.append(_lift(f"best neural-linear vs greedy ({rep})", nl, greedy, table))
    for a_rep, b_rep in (("bert", "id"), ("bert-ft", "bert"), ("bert-ft", "id")):
        for k in sorted(table):
            if k[2] != a_rep:
                continue
            other = next((j for j in table if j[0] == k[0] and j[2] == b_rep), None)
            if other is not None:
                out.append(_lift(f"{a_rep} vs {b_rep} ({k[0]})", k, other, table))
    return [x for x in out if x is not None]
