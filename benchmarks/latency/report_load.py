"""The overload and soak sections of the ``bench serve`` report: markdown and PNG plots
(called from :mod:`.report`; the measurements are in :mod:`.overload` and :mod:`.soak`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["overload_markdown", "overload_plot", "soak_markdown", "soak_plot"]


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _met(v: bool | None, yes: str = "met", no: str = "not met") -> str:
    return "not measured" if v is None else (yes if v else no)


def overload_markdown(sec: dict[str, Any]) -> list[str]:
    from explorank.benchmarks.latency.report import _table

    b = sec.get("server_batching", {})
    mqw = sec.get("max_queue_wait", {})
    single, cap, g = sec["single_client"], sec["capacity"], sec["goals"]
    mqw_text = (
        f"{_f(mqw.get('ms'), 0)} ms ({mqw.get('source')})"
        if mqw.get("ms") is not None
        else str(mqw.get("source"))
        + (
            f" (asked for {mqw['requested_ms']:g} ms)"
            if mqw.get("requested_ms") is not None
            else ""
        )
    )
    cap_text = (
        f"{cap['concurrency']} clients, closed loop, {_f(cap['duration_s'])} s"
        if cap.get("measured")
        else "given with --capacity"
    )
    lines = [
        "## Overload",
        "",
        f"- server: max_batch_size {b.get('max_batch_size')}, max_queue_size "
        f"{b.get('max_queue_size')}, max_queue_delay_ms {b.get('max_queue_delay_ms')}; "
        f"batching.max_queue_wait_ms: {mqw_text}",
        f"- single client (1 client, closed loop, {_f(single['duration_s'])} s): p50 "
        f"{_f(single['p50_ms'])} ms, p99 **{_f(single['p99_ms'])} ms**",
        f"- capacity ({cap_text}): **{_f(cap['throughput_rps'])} req/s**",
        f"- open-loop Poisson phases of {_f(sec['phases'][0]['duration_s'])} s each, back to back, "
        f"client deadline {_f(sec['deadline_s'], 2)} s: {sec['recovery_factor']:g}×, "
        f"{sec['overload_factor']:g}×, {sec['recovery_factor']:g}× capacity",
        "",
        _table(
            [
                "phase",
                "offered req/s",
                "admitted req/s",
                "rejected req/s",
                "deadline exceeded req/s",
                "other errors",
                "admitted p50 ms",
                "admitted p99 ms",
                "rejection p50 ms",
                "rejection p99 ms",
                "client lag p99 ms",
                "client CPU %",
            ],
            [
                [
                    p["phase"],
                    p["offered_rps"],
                    p["goodput_rps"],
                    p["rejected_rps"],
                    p["deadline_exceeded_rps"],
                    ", ".join(f"{k} {v}" for k, v in p["other_errors"].items()) or "0",
                    p["admitted_p50_ms"],
                    p["admitted_p99_ms"],
                    p["rejection_p50_ms"],
                    p["rejection_p99_ms"],
                    p["client_lag_p99_ms"],
                    p.get("client_cpu_pct"),
                ]
                for p in sec["phases"]
            ],
        ),
        "",
        f"- admitted p99 at {sec['overload_factor']:g}× capacity: **{_f(g['overload_admitted_p99_ms'])} ms**; "
        f"{g['p99_bound_formula']} = {_f(g['p99_bound_ms'])} ms: "
        f"{_met(g['p99_within_bound'], 'within it', 'above it')}",
        f"- goodput at {sec['overload_factor']:g}× capacity: **{_f(g['goodput_pct_of_capacity'])} % of "
        f"capacity** with {_f(g['deadline_s'], 2)} s client deadlines (goal with 1 s deadlines: "
        f"≥ 90 %): {_met(g['goodput_at_least_90pct'])}",
        f"- recovery at {sec['recovery_factor']:g}× capacity: admitted p99 {_f(g['recovery_p99_ms'])} ms "
        f"= {_f(g['recovery_p99_vs_single'], 2)}× the single-client p99; first "
        f"{_f(sec['bin_s'], 2)} s window with every request answered within "
        f"{_f(g['p99_bound_ms'])} ms at p99: "
        + (
            f"{_f(g['recovered_after_s'], 2)} s after the load dropped"
            if g["recovered_after_s"] is not None
            else "none within the phase"
        ),
    ]
    if sec.get("rss_mb"):
        r = sec["rss_mb"]
        lines.append(
            f"- server RSS during the phases: {_f(r['start'])} MB at the start, peak "
            f"{_f(r['peak'])} MB, {_f(r['end'])} MB at the end"
        )
    lines += [
        "",
        "Admitted = answered OK (latency from the scheduled arrival); rejection latency is the "
        "round trip from the send. Requests count in the phase they arrived in. Client lag "
        "is how late the load generator sent requests and client CPU its own CPU use in % of "
        "one core (large values: the client, not the server, limited the load or delayed "
        "answers). Plot: `overload.png`.",
        "",
    ]
    return lines


def soak_markdown(sec: dict[str, Any]) -> list[str]:
    r, q, cap = sec["rss"], sec["requests"], sec["capacity"]
    growth = r.get("growth_pct")
    return [
        "## Soak",
        "",
        f"- load: {_f(sec['rate'])} req/s Poisson ({sec['load_fraction']:.0%} of the capacity "
        f"{_f(cap.get('throughput_rps'))} req/s): {_f(sec['warmup_s'], 0)} s warm-up, then "
        f"{_f(sec['soak_s'], 0)} s measured; client deadline "
        f"{_f(sec['deadline_s'], 1)} s; RSS ({sec['rss_source']}) every {_f(sec['interval_s'], 2)} s, "
        f"{r['samples']} samples",
        f"- requests: offered {q['offered']}, admitted {q['admitted']}, rejected {q['rejected']}, "
        f"deadline exceeded {q['deadline_exceeded']}, other errors {sum(q['other_errors'].values())}; "
        f"admitted p50 {_f(q['admitted_p50_ms'])} ms, p99 {_f(q['admitted_p99_ms'])} ms",
        f"- RSS at the start {_f(r['rss_start_mb'])} MB; after warm-up (t = "
        f"{_f(r['rss_after_warmup_t_s'])} s) **{_f(r['rss_after_warmup_mb'])} MB**; at the end "
        f"(t = {_f(r['rss_end_t_s'])} s) **{_f(r['rss_end_mb'])} MB**; peak {_f(r['rss_peak_mb'])} MB",
        f"- growth after warm-up: **{_f(growth, 2)} %** over {_f(r['measured_over_s'], 0)} s at "
        f"{sec['load_fraction']:.0%} load (goal: < 5 % over 10 minutes at 50 % load): "
        + (
            "not measured"
            if growth is None
            else ("below 5 %" if growth < 5.0 else "5 % or more")
            + ("" if sec["soak_s"] >= 600 else f" (this run lasted {_f(sec['soak_s'], 0)} s)")
        ),
        f"- linear trend after warm-up: {_f(r['slope_mb_per_min'], 2)} MB/min"
        + (
            f" (≈ {_f(r['slope_pct_per_10min'], 2)} % per 10 minutes)"
            if (r["measured_over_s"] or 0) >= 60
            else " (too short a run to extrapolate)"
        ),
        *_cache_lines(sec.get("caches") or {}),
        "",
        "Plot: `soak_rss.png`.",
        "",
    ]


def _cache_lines(caches: dict[str, Any]) -> list[str]:
    """The server's caches at the end of the warm-up and at the end (when it exports them)."""

    def one(snap: dict[str, Any] | None) -> str:
        if not snap:
            return "not exported"
        return "; ".join(
            f"{name} {int(c.get('entries', 0))} entries, {_f(c.get('mb'))} of "
            f"{_f(c.get('budget_mb'))} MB"
            for name, c in sorted(snap.items())
        )

    if not caches:
        return []
    return [
        f"- caches after warm-up: {one(caches.get('after_warmup'))}",
        f"- caches at the end: {one(caches.get('end'))}",
    ]


def _plt() -> Any:
    from explorank.benchmarks.latency.report import _plt as plt

    return plt()


def overload_plot(sec: dict[str, Any], out: Path) -> Path:
    """Rates by outcome and admitted latency per time window, phases marked."""
    plt = _plt()
    tl = sec["timeline"]
    xs = [b["t_s"] + sec["bin_s"] / 2 for b in tl]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for key, label, style in (
        ("offered_rps", "offered", "-"),
        ("goodput_rps", "admitted (OK)", "-"),
        ("rejected_rps", "rejected (RESOURCE_EXHAUSTED)", "--"),
        ("deadline_exceeded_rps", "DEADLINE_EXCEEDED", ":"),
    ):
        top.plot(xs, [b[key] for b in tl], style, marker=".", label=label)
    cap = sec["capacity"]["throughput_rps"]
    top.axhline(cap, color="grey", lw=0.8, ls="-.", label=f"capacity {cap:.1f} req/s")
    top.set_ylabel("requests/s (by arrival)")
    top.legend(fontsize=7, loc="upper right")
    pts = [(x, b["admitted_p50_ms"], b["admitted_p99_ms"]) for x, b in zip(xs, tl, strict=True)]
    pts = [p for p in pts if p[1] is not None]
    bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label="admitted p50")
    bottom.plot([p[0] for p in pts], [p[2] for p in pts], marker="^", ls="--", label="admitted p99")
    single = sec["single_client"]["p99_ms"]
    bound = sec["goals"]["p99_bound_ms"]
    if single:
        bottom.axhline(single, color="grey", lw=0.8, ls=":", label="single-client p99")
    if bound:
        bottom.axhline(bound, color="red", lw=0.8, ls="-.", label="2 × single p99 + max_queue_wait")
    if pts:
        bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds since the first phase started")
    bottom.legend(fontsize=7, loc="upper right")
    for ax in (top, bottom):
        for p in sec["phases"]:
            ax.axvline(p["start_s"], color="black", lw=0.6)
            if ax is top:
                ax.text(p["start_s"], ax.get_ylim()[1], f" {p['phase']}", va="top", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        f"explorank bench serve — overload ({sec['overload_factor']:g}× capacity, "
        f"{sec['deadline_s']:g} s deadlines)"
    )
    fig.tight_layout()
    path = out / "overload.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def soak_plot(sec: dict[str, Any], out: Path) -> Path:
    """Server RSS over time, the end of the warm-up marked."""
    plt = _plt()
    samples = sec["rss_samples"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([t for t, _ in samples], [v / 2**20 for _, v in samples], marker=".", lw=1)
    ax.axvline(sec["warmup_s"], color="grey", ls=":", label="end of warm-up")
    ax.set_xlabel("seconds since the soak load started")
    ax.set_ylabel("server RSS (MB)")
    g = sec["rss"].get("growth_pct")
    ax.set_title(
        f"explorank bench serve — soak at {sec['load_fraction']:.0%} load"
        + (f": {g:+.2f} % after warm-up" if g is not None else "")
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "soak_rss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
