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


def reading(runs: list[dict[str, Any]]) -> list[str]:
    """A short automatic reading of the results (plain sentences for report.md)."""
    real = [r for r in runs if r["policy"] != "oracle"]
    if not real:
        return []
    lines = []
    best_reward = max(real, key=lambda r: r["cumulative_reward"])
    best_cov = max(real, key=lambda r: (r["coverage"], -r["gini_exposure"]))  # ties: most even
    lines.append(
        f"Highest reward: **{_label(best_reward)}** (CTR {best_reward['ctr']:.4f}, regret/step "
        f"{best_reward['regret_per_step']:.4f})."
    )
    lines.append(
        f"Widest coverage: **{_label(best_cov)}** ({best_cov['coverage']:.1%} of the catalog, "
        f"Gini {best_cov['gini_exposure']:.3f}, CTR {best_cov['ctr']:.4f})."
    )
    by_policy: dict[str, dict[str, dict[str, Any]]] = {}
    for r in real:
        by_policy.setdefault(r["policy"], {})[r["representation"]] = r
    gaps = []
    for pol, reps in sorted(by_policy.items()):
        if "bert" in reps and "id" in reps:
            b, i = reps["bert"], reps["id"]
            gaps.append((pol, b["ctr"] - i["ctr"], b.get("cold_ctr"), i.get("cold_ctr")))
    if gaps:
        wins = sum(1 for _, g, _, _ in gaps if g > 0)
        mean_gap = float(np.mean([g for _, g, _, _ in gaps]))
        lines.append(
            f"BERT vs id: BERT embeddings give a higher CTR for {wins} of {len(gaps)} policies "
            f"(mean CTR gap {mean_gap:+.4f})."
        )
        cold = [
            (p, bc - ic)
            for p, _, bc, ic in gaps
            if bc is not None and ic is not None and math.isfinite(bc) and math.isfinite(ic)
        ]
        if cold:
            lines.append(
                f"On cold-start items the mean CTR gap (bert - id) is "
                f"{float(np.mean([g for _, g in cold])):+.4f}."
            )
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    runs = report["runs"]
    cfg = report["config"]
    out = [
        "# explorank evaluation",
        "",
        f"Dataset `{report['dataset']['name']}`: {report['dataset']['n_users']} users, "
        f"{report['dataset']['n_items']} items ({report['dataset']['n_cold_items']} cold-start); "
        f"{cfg['steps']} steps, {cfg['candidates']} candidates per step "
        f"({cfg['cold_items']:.0%} cold), top {cfg['top_k']} shown, seed {cfg['seed']}.",
        "",
        "| policy | scorer | repr | CTR | regret/step | coverage | novelty | ILD | Gini | cold CTR | s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: -r["cumulative_reward"]):
        cold = r.get("cold_ctr")
        out.append(
            f"| {r['policy']} | {r['scorer']} | {r['representation']} | {r['ctr']:.4f} | "
            f"{r['regret_per_step']:.4f} | {r['coverage']:.3f} | {r['novelty']:.2f} | "
            f"{r['intra_list_diversity']:.3f} | {r['gini_exposure']:.3f} | "
            f"{'-' if cold is None or not math.isfinite(cold) else f'{cold:.4f}'} | "
            f"{r['wall_s']:.1f} |"
        )
    out += ["", "## Reading", ""] + [f"- {line}" for line in reading(runs)]
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
    out += [
        "",
        "Plots: `regret.png` (cumulative regret), `reward_coverage.png` (reward vs coverage).",
        f"Total wall time {report['timing']['total_s']:.1f} s.",
        "",
    ]
    path.write_text("\n".join(out))


def write_plots(runs: list[dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = sorted({r["policy"] for r in runs})
    colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(policies)}
    styles = {"bert": "-", "id": "--"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        c = r["curves"]
        ax.plot(
            c["step"],
            c["cumulative_regret"],
            styles.get(r["representation"], ":"),
            color=colors[r["policy"]],
            label=_label(r),
            linewidth=1.4,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.set_title(
        "Cumulative regret vs the ground-truth oracle (solid: bert, dashed: id, dotted: oracle)"
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "regret.png", dpi=110)
    plt.close(fig)

    fig = reward_coverage_figure(plt, runs, colors)
    fig.savefig(out_dir / "reward_coverage.png", dpi=110)
    plt.close(fig)
    return ["regret.png", "reward_coverage.png"]


#: scatter marker per representation; the legend shows the same marker as the plot
MARKERS = {"bert": "o", "id": "^", "truth": "*"}


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
        title="policy/representation\n(o bert, ^ id, * ground truth)",
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
    pngs = write_plots(report["runs"], out)
    return [out / "report.json", out / "report.md", *(out / p for p in pngs)]
