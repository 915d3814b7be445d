"""The evaluation's reward/coverage plot: points named by a legend whose markers are the
plotted ones (the oracle's star included), no text on the axes, no colliding tick labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.markers import MarkerStyle  # noqa: E402

from explorank.benchmarks.evaluation.report import MARKERS, reward_coverage_figure  # noqa: E402

POLICIES = ["greedy", "epsilon_greedy", "softmax", "ucb1", "thompson", "linucb", "lin_ts"]


def _runs(coverage: list[float]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    runs = [
        dict(policy="oracle", scorer="truth", representation="truth", ctr=0.16, gini_exposure=0.22)
    ]
    for pol in POLICIES:
        for rep in ("bert", "id"):
            runs.append(
                dict(
                    policy=pol,
                    scorer="dot",
                    representation=rep,
                    ctr=float(rng.uniform(0.048, 0.074)),
                    gini_exposure=float(rng.uniform(0.09, 0.25)),
                )
            )
    for r, c in zip(runs, coverage * len(runs), strict=False):
        r["coverage"] = c
    return runs


def _marker_vertices(marker: str) -> np.ndarray:
    style = MarkerStyle(marker)
    return style.get_path().transformed(style.get_transform()).vertices


def _overlap(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize(
    "coverage",
    [
        [0.99967, 1.0, 1.0, 1.0],  # saturated (the README's run): evenness on the x axis
        [0.6, 0.8, 0.9995, 0.9997, 1.0],  # close values near 1: the ticks must stay apart
    ],
)
def test_reward_coverage_plot_is_readable(coverage: list[float]) -> None:
    runs = _runs(coverage)
    colors = {
        p: plt.get_cmap("tab10")(i) for i, p in enumerate(sorted({r["policy"] for r in runs}))
    }
    fig = reward_coverage_figure(plt, runs, colors)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = fig.axes
        assert len(axes) == 2  # all runs + a zoom without the oracle
        legend = fig.legends[0]
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels[0] == "oracle/truth" and len(labels) == len(runs)
        for ax in axes:
            assert len(ax.texts) == 0  # no point labels that could collide
            ticks = [t for t in ax.get_xticklabels() if t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in ticks]
            assert len(boxes) >= 3
            for i, a in enumerate(boxes):
                assert not any(_overlap(a, b) for b in boxes[i + 1 :]), [
                    t.get_text() for t in ticks
                ]
            assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
        # every legend entry shows the marker its points are drawn with
        plotted = {c.get_label(): c for c in axes[0].collections}
        for handle, label in zip(legend.legend_handles, labels, strict=True):
            rep = label.split("/")[1].split(" ")[0]
            want = _marker_vertices(MARKERS[rep])
            assert np.allclose(plotted[label].get_paths()[0].vertices, want)
            assert np.allclose(handle.get_paths()[0].vertices, want)
            assert np.allclose(handle.get_facecolor(), plotted[label].get_facecolor())
        assert MARKERS["truth"] == "*"
    finally:
        plt.close(fig)
