"""Writing an evaluation's report: report.json, report.md and PNG plots (matplotlib Agg)."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _label(run: dict[str, Any]) -> str:
    return f"{run['policy']}/{run['representation']}"


def _m(row: dict[str, Any], key: str) -> float:
    """The mean of a summary row's metric (a plain number in a per-run dict)."""
    v = row.get(key)
    if isinstance(v, dict):
        return float(v["mean"]) if v.get("mean") is not None else math.nan
    return float(v) if v is not None else math.nan


def _ci(cell: Any, fmt: str = ".4f") -> str:
    """``mean [low, high]`` of an interval dict (just the mean without an interval)."""
    if not isinstance(cell, dict):
        return "-" if cell is None or not math.isfinite(float(cell)) else format(cell, fmt)
    mean, low, high = cell.get("mean"), cell.get("low"), cell.get("high")
    if mean is None or not math.isfinite(mean):
        return "-"
    if low is None or high is None or not math.isfinite(low):
        return format(mean, fmt)
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def reading(
    summary: list[dict[str, Any]], lift_rows: list[dict[str, Any]] | None = None
) -> list[str]:
    """A short automatic reading of the results (plain sentences for report.md)."""
    real = [r for r in summary if r["policy"] != "oracle"]
    if not real:
        return []
    lines = []
    best_reward = max(real, key=lambda r: _m(r, "cumulative_reward"))
    best_cov = max(real, key=lambda r: (_m(r, "coverage"), -_m(r, "gini_exposure")))
    lines.append(
        f"Highest reward: **{_label(best_reward)}** (CTR {_ci(best_reward['ctr'])}, regret/step "
        f"{_m(best_reward, 'regret_per_step'):.4f})."
    )
    lines.append(
        f"Widest coverage: **{_label(best_cov)}** ({_m(best_cov, 'coverage'):.1%} of the catalog, "
        f"Gini {_m(best_cov, 'gini_exposure'):.3f}, CTR {_m(best_cov, 'ctr'):.4f})."
    )
    by_policy: dict[str, dict[str, dict[str, Any]]] = {}
    for r in real:
        by_policy.setdefault(r["policy"], {})[r["representation"]] = r
    gaps = []
    for pol, reps in sorted(by_policy.items()):
        if "bert" in reps and "id" in reps:
            b, i = reps["bert"], reps["id"]
            gaps.append((pol, _m(b, "ctr") - _m(i, "ctr"), _m(b, "cold_ctr"), _m(i, "cold_ctr")))
    if gaps:
        wins = sum(1 for _, g, _, _ in gaps if g > 0)
        mean_gap = float(np.mean([g for _, g, _, _ in gaps]))
        lines.append(
            f"BERT vs id: BERT embeddings give a higher CTR for {wins} of {len(gaps)} policies "
            f"(mean CTR gap {mean_gap:+.4f})."
        )
        cold = [(p, bc - ic) for p, _, bc, ic in gaps if math.isfinite(bc) and math.isfinite(ic)]
        if cold:
            lines.append(
                f"On cold-start items the mean CTR gap (bert - id) is "
                f"{float(np.mean([g for _, g in cold])):+.4f}."
            )
    for lift in lift_rows or []:
        if lift["lift"].startswith("best neural-linear"):
            low = lift.get("low")
            sure = (
                "the interval is above zero" if low is not None and math.isfinite(low) and low > 0
                else "the interval includes zero or lies below it"
                if low is not None and math.isfinite(low) else "one seed: no interval"
            )  # fmt: skip
            lines.append(
                f"{lift['lift'][0].upper()}{lift['lift'][1:]}: {lift['a']} vs {lift['b']} "
                f"{_ci(lift, '+.1%')} ({sure})."
            )
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    summary = report.get("summary") or []
    cfg = report["config"]
    ds = report["dataset"]
    seeds = cfg.get("seeds_used") or [cfg.get("seed")]
    out = [
        "# explorank evaluation",
        "",
        f"Dataset `{ds['name']}`: {ds['n_users']} users, {ds['n_items']} items "
        f"({ds['n_cold_items']} cold-start); {cfg['steps']} steps, {cfg['candidates']} candidates "
        f"per step ({cfg['cold_items']:.0%} cold), top {cfg['top_k']} shown; seeds {seeds} "
        f"(mean and 95% interval over them); users as "
        f"`{ds.get('user_representation', 'history')}`.",
        "",
        "| policy | scorer | repr | cumulative reward | CTR | warm CTR | cold CTR | cold/warm "
        "| regret/step | coverage | Gini | s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        out.append(
            f"| {r['policy']} | {r['scorer']} | {r['representation']} | "
            f"{_ci(r['cumulative_reward'], '.1f')} | {_ci(r['ctr'])} | {_ci(r['warm_ctr'])} | "
            f"{_ci(r['cold_ctr'])} | {_ci(r['cold_warm_ratio'], '.2f')} | "
            f"{_m(r, 'regret_per_step'):.4f} | {_m(r, 'coverage'):.3f} | "
            f"{_m(r, 'gini_exposure'):.3f} | {_m(r, 'wall_s'):.1f} |"
        )
    if report.get("lifts"):
        out += ["", "## Lifts (cumulative reward, paired per seed)", "",
                "| lift | a | b | mean [95% interval] | seeds |", "|---|---|---|---:|---:|"]  # fmt: skip
        for lift in report["lifts"]:
            out.append(f"| {lift['lift']} | {lift['a']} | {lift['b']} | {_ci(lift, '+.1%')} | "
                       f"{lift['n']} |")  # fmt: skip
    out += ["", "## Reading", ""] + [f"- {line}" for line in reading(summary, report.get("lifts"))]
    if report.get("replay"):
        out += [
            "",
            "## Replay (Li et al. 2011)",
            "",
            "| policy | repr | accepted | replay CTR | ± stderr |",
            "|---|---|---:|---:|---:|",
        ]
        for r in report["replay"]:
            ctr, se = r["replay_ctr"], r["replay_ctr_stderr"]
            out.append(
                f"| {r['policy']} | {r['representation']} | {r['accepted']} / {r['events']} | "
                f"{'-' if ctr is None or not math.isfinite(ctr) else f'{ctr:.4f}'} | "
                f"{'-' if se is None or not math.isfinite(se) else f'{se:.4f}'} |"
            )
        caveat = next((r["caveat"] for r in report["replay"] if r.get("caveat")), None)
        if caveat:
            out += ["", f"> {caveat}"]
    t = report["timing"]
    out += [
        "",
        "Plots: `regret.png` (cumulative regret, mean and 95% band over seeds), "
        "`reward_coverage.png` (CTR, with its 95% interval, vs coverage).",
        f"Total wall time {t['total_s']:.1f} s (worlds and embeddings {t.get('build_s', 0):.1f} s, "
        f"runs {t.get('runs_s', 0):.1f} s on {cfg.get('jobs', 1)} processes).",
        "",
    ]
    path.write_text("\n".join(out))


def _mean_curves(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (policy, scorer, representation): the mean regret curve and its 95% band."""
    from explorank.benchmarks.evaluation.aggregate import t95

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["policy"], r["scorer"], r["representation"]), []).append(r)
    out = []
    for (pol, sc, rep), rs in groups.items():
        n = min(len(r["curves"]["step"]) for r in rs)
        ys = np.array([r["curves"]["cumulative_regret"][:n] for r in rs])
        mean = ys.mean(axis=0)
        half = (t95(len(rs) - 1) * ys.std(axis=0, ddof=1) / np.sqrt(len(rs))
                if len(rs) > 1 else np.zeros(n))  # fmt: skip
        out.append(dict(policy=pol, scorer=sc, representation=rep,
                        step=rs[0]["curves"]["step"][:n], mean=mean, low=mean - half,
                        high=mean + half))  # fmt: skip
    return out


def write_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    policies = sorted({r["policy"] for r in runs})
    cmap = plt.get_cmap("tab10" if len(policies) <= 10 else "tab20")
    colors = {p: cmap(i % cmap.N) for i, p in enumerate(policies)}
    styles = {"bert": "-", "bert-ft": "-.", "id": "--"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in _mean_curves(runs):
        ax.plot(c["step"], c["mean"], styles.get(c["representation"], ":"),
                color=colors[c["policy"]], label=_label(c), linewidth=1.4)  # fmt: skip
        ax.fill_between(c["step"], c["low"], c["high"], color=colors[c["policy"]], alpha=0.15,
                        linewidth=0)  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.set_title(
        "Cumulative regret vs the oracle, mean and 95% band over seeds\n"
        "(solid: bert, dash-dot: bert-ft, dashed: id, dotted: oracle)",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "regret.png", dpi=110)
    plt.close(fig)

    points = [
        dict(
            policy=r["policy"],
            scorer=r["scorer"],
            representation=r["representation"],
            ctr=_m(r, "ctr"),
            coverage=_m(r, "coverage"),
            gini_exposure=_m(r, "gini_exposure"),
            ctr_low=r["ctr"].get("low"),
            ctr_high=r["ctr"].get("high"),
        )  # fmt: skip
        for r in report.get("summary") or []
    ]
    fig = reward_coverage_figure(plt, points, colors)
    fig.savefig(out_dir / "reward_coverage.png", dpi=110)
    plt.close(fig)
    return ["regret.png", "reward_coverage.png"]


#: scatter marker per representation; the legend shows the same marker as the plot
MARKERS = {"bert": "o", "bert-ft": "D", "id": "^", "truth": "*"}


def reward_coverage_figure(plt: Any, runs: list[dict[str, Any]], colors: Any) -> Any:
    """CTR against catalog coverage, or against exposure evenness (1 - Gini of impressions)
    once coverage saturates (every run showed nearly every item) and no longer tells the
    policies apart. Points are named by a legend (one entry per run, same colour and marker,
    ordered by CTR), never by text next to them, so nothing collides; a second panel zooms
    in on the learning policies, which the oracle's much higher CTR squeezes together."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    coverages = [r["coverage"] for r in runs]
    saturated = len({round(c, 4) for c in coverages}) <= 2
    if saturated:
        xlabel, xkey = "exposure evenness (1 - Gini of impressions)", "evenness"
    else:
        xlabel, xkey = "catalog coverage (share of items shown)", "coverage"

    def x_of(r: dict[str, Any]) -> float:
        return float(r["coverage"] if xkey == "coverage" else 1.0 - r["gini_exposure"])

    ordered = sorted(runs, key=lambda r: -r["ctr"])
    learners = [r for r in ordered if r["policy"] != "oracle"]
    panels = [("all runs", ordered)]
    if len(learners) >= 2 and len(learners) < len(ordered):
        panels.append(("zoom: without the oracle", learners))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels) + 2.6, 4.8), squeeze=False, layout="constrained"
    )
    for ax, (title, subset) in zip(axes[0], panels, strict=True):
        for r in subset:
            rep = r["representation"]
            low, high = r.get("ctr_low"), r.get("ctr_high")
            if low is not None and high is not None and math.isfinite(low):
                ax.errorbar(x_of(r), r["ctr"], yerr=[[r["ctr"] - low], [high - r["ctr"]]],
                            color=colors[r["policy"]], linewidth=0.8, capsize=2, zorder=2)  # fmt: skip
            ax.scatter(
                x_of(r),
                r["ctr"],
                color=colors[r["policy"]],
                marker=MARKERS.get(rep, "s"),
                s=130 if rep == "truth" else 55,
                edgecolors="white",
                linewidths=0.6,
                label=_label(r)
                + (f" ({r['scorer']})" if r["scorer"] not in ("dot", "truth") else ""),
                zorder=3,
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CTR")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
        if xkey == "coverage":
            ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
        ax.margins(x=0.08, y=0.08)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside right upper",
        fontsize=8,
        title="policy/representation\n(o bert, D bert-ft, ^ id, * ground truth)",
        title_fontsize=8,
        frameon=False,
    )
    heading = "Reward vs exposure evenness" if saturated else "Reward vs catalog coverage"
    if saturated:
        heading += (
            f" (catalog coverage saturated: {min(coverages):.2%} to {max(coverages):.2%}"
            " of items shown)"
        )
    fig.suptitle(heading, fontsize=11)
    return fig


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and the plots into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = _clean(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, out / "report.md")
    pngs = write_plots(report, out)
    return [out / "report.json", out / "report.md", *(out / p for p in pngs)]
