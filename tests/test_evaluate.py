"""The simulator / replay evaluation: metrics on hand-made inputs, the CLI end to end on a
tiny synthetic world and a miniature MovieLens directory, and replay's acceptance rule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explorank.benchmarks.evaluation import metrics as m
from explorank.benchmarks.evaluation.replay import BIAS_CAVEAT, replay
from explorank.benchmarks.evaluation.representations import IdRepresentation
from explorank.cli import main
from explorank.plugins.api import (
    Policy,
    PolicyStats,
    RankContext,
    Ranking,
    RewardContext,
    StatsDelta,
)

WORDS = ["space", "war", "love", "comedy", "horror", "drama", "robot", "music", "crime", "family"]


def write_fake_bundle(out: Path, n_items: int = 120, dim: int = 16, seed: int = 0) -> Path:
    """A bundle with a catalog and topic-structured item embeddings but no encoder: enough for
    the synthetic world and the bert representation (which read item_embeddings.npy)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    topics = rng.normal(size=(len(WORDS), dim))
    lines, embs = [], []
    for i in range(n_items):
        t = rng.choice(len(WORDS), 2, replace=False)
        lines.append(
            json.dumps(
                {"id": f"item-{i:04d}", "text": f"A {WORDS[t[0]]} story with {WORDS[t[1]]}."}
            )
        )
        e = topics[t].sum(0) + 0.3 * rng.normal(size=dim)
        embs.append(e / np.linalg.norm(e))
    (out / "items.jsonl").write_text("\n".join(lines) + "\n")
    np.save(out / "item_embeddings.npy", np.array(embs, dtype=np.float32))
    files = {
        f: hashlib.sha256((out / f).read_bytes()).hexdigest()
        for f in ("items.jsonl", "item_embeddings.npy")
    }
    manifest = {
        "format_version": 1,
        "model_name": "fake",
        "model_version": "fake-1",
        "embedding_dim": dim,
        "encoder": {},
        "heads": {},
        "files": files,
        "parity": {},
        "catalog": {"items": "items.jsonl", "embeddings": "item_embeddings.npy", "count": n_items},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def write_mini_movielens(out: Path, n_users: int = 40, n_movies: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    out.mkdir(parents=True, exist_ok=True)
    rows = ["movieId,title,genres"]
    movie_genre = rng.integers(0, len(genres), n_movies)
    for i in range(n_movies):
        rows.append(
            f'{i + 1},"Movie {i + 1}, The ({1980 + i % 30})",{genres[movie_genre[i]]}|Drama'
        )
    (out / "movies.csv").write_text("\n".join(rows) + "\n")
    taste = rng.integers(0, len(genres), n_users)
    ratings = ["userId,movieId,rating,timestamp"]
    ts = 1_000_000
    for u in range(n_users):
        for i in rng.choice(n_movies, 15, replace=False):
            base = 4.5 if movie_genre[i] == taste[u] else 2.5
            ratings.append(f"{u + 1},{i + 1},{np.clip(base + rng.normal(0, 0.7), 0.5, 5):.1f},{ts}")
            ts += 1
    (out / "ratings.csv").write_text("\n".join(ratings) + "\n")
    return out


# --------------------------------------------------------------------------- metrics


def test_gini_coverage_novelty_diversity() -> None:
    assert m.gini(np.full(10, 3)) == pytest.approx(0.0)
    assert m.gini(np.array([0, 0, 0, 5])) == pytest.approx(0.75)  # (n-1)/n: all on one item
    assert m.gini(np.zeros(4)) == 0.0
    assert 0.0 < m.gini(np.array([1, 2, 3, 10])) < 0.75
    assert m.coverage(np.array([0, 1, 0, 4])) == pytest.approx(0.5)
    pop = m.popularity_probs(np.array([3.0, 0.0, 3.0, 0.0]))  # smoothed: 4/10, 1/10, ...
    assert pop == pytest.approx([0.4, 0.1, 0.4, 0.1])
    assert m.novelty(np.array([1, 3]), pop) == pytest.approx(np.log2(10))
    assert m.novelty(np.array([0, 1]), pop) == pytest.approx((-np.log2(0.4) + np.log2(10)) / 2)
    same = np.array([[1.0, 0.0], [2.0, 0.0]])
    ortho = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert m.intra_list_diversity(same) == pytest.approx(0.0)
    assert m.intra_list_diversity(ortho) == pytest.approx(1.0)


def test_run_metrics_accumulate() -> None:
    vecs = np.eye(4)
    rm = m.RunMetrics(
        4, 2, m.popularity_probs(np.zeros(4)), np.array([True, False, False, False]), vecs
    )
    rm.record(np.array([0, 1]), np.array([1.0, 0.0]), expected=0.5, oracle=0.7)
    rm.record(np.array([0, 2]), np.array([0.0, 1.0]), expected=0.7, oracle=0.7)
    s = rm.summary()
    assert s["ctr"] == pytest.approx(0.5) and s["coverage"] == pytest.approx(0.75)
    assert s["cumulative_regret"] == pytest.approx(0.2)
    assert s["cold_impressions"] == 2 and s["cold_ctr"] == pytest.approx(0.5)
    assert s["intra_list_diversity"] == pytest.approx(1.0)
    assert s["curves"]["step"][-1] == 2


# ---------------------------------------------------------------------------- the CLI

REQUIRED_RUN_KEYS = {
    "policy",
    "scorer",
    "representation",
    "cumulative_reward",
    "ctr",
    "cumulative_regret",
    "coverage",
    "novelty",
    "intra_list_diversity",
    "gini_exposure",
    "cold_ctr",
    "curves",
}


def _runs(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["policy"], r["representation"]): r for r in report["runs"]}


@pytest.mark.timeout(120)
def test_synthetic_evaluation_writes_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_fake_bundle(tmp_path / "bundle")
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--bundle",
            str(bundle),
            "--steps",
            "300",
            "--users",
            "60",
            "--candidates",
            "15",
            "--out",
            str(out),
            "--no-progress",
            "--replay-events",
            "200",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert {"runs", "config", "dataset", "machine"} <= report.keys()
    runs = _runs(report)
    policies = {
        "random",
        "greedy",
        "epsilon_greedy",
        "softmax",
        "ucb1",
        "thompson",
        "linucb",
        "lin_ts",
        "linucb_hybrid",
        "lin_ts_hybrid",
    }
    assert {p for p, _ in runs} == policies | {"oracle"}
    for p in policies:
        assert (p, "bert") in runs and (p, "id") in runs
    for r in report["runs"]:
        assert r.keys() >= REQUIRED_RUN_KEYS
        assert r["steps"] == 300 and 0.0 <= r["coverage"] <= 1.0
    assert abs(runs[("oracle", "truth")]["cumulative_regret"]) < 1e-9
    assert runs[("random", "bert")]["cumulative_regret"] > 10.0
    # random ignores the representation: identical under common random numbers
    assert (
        runs[("random", "bert")]["cumulative_reward"] == runs[("random", "id")]["cumulative_reward"]
    )
    # in the synthetic world the text carries signal: greedy on BERT beats random
    assert runs[("greedy", "bert")]["expected_reward"] > runs[("random", "bert")]["expected_reward"]
    assert report["replay"] and all(
        r["uniform_log"] and r["caveat"] is None for r in report["replay"]
    )
    md = (out / "report.md").read_text()
    assert "| lin_ts | dot | bert |" in md and "BERT vs id" in md
    for png in ("regret.png", "reward_coverage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_movielens_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ml = write_mini_movielens(tmp_path / "ml")
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--dataset",
            f"movielens:{ml}",
            "--representations",
            "id",
            "--policies",
            "random,greedy,ucb1",
            "--steps",
            "200",
            "--candidates",
            "10",
            "--out",
            str(out),
            "--no-progress",
            "--replay-events",
            "300",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["n_items"] == 60 and report["dataset"]["n_users"] == 40
    assert report["dataset"]["n_cold_items"] == 12
    runs = _runs(report)
    assert abs(runs[("oracle", "truth")]["cumulative_regret"]) < 1e-9
    assert runs[("random", "id")]["cumulative_regret"] > 0
    # ratings are not a uniformly random log: the caveat is printed and stored
    assert BIAS_CAVEAT in capsys.readouterr().err
    assert all(r["caveat"] == BIAS_CAVEAT for r in report["replay"])
    # replay reads the evaluation part only (each user's latest ratings, the cold items')
    assert all(0 < r["accepted"] < r["events"] <= 300 for r in report["replay"])


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = write_fake_bundle(tmp_path / "bundle")
    assert main(["evaluate", "--bundle", str(bundle), "--cold-items", "1.5", "--steps", "5"]) == 2
    assert "--cold-items" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "nope", "--representations", "id"]) == 2
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(bundle),
                "--policies",
                "no_such_policy",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


# ----------------------------------------------------------------------------- replay


class _RecordingPolicy(Policy):
    """Picks the candidate with the smallest id; records every call and update."""

    name = "recording"
    stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.updates: list[tuple[str, float]] = []

    def rank(self, ctx: RankContext) -> Ranking:
        i = int(np.argmin(np.array(ctx.item_ids)))
        self.calls.append(ctx.item_ids[i])
        return Ranking(np.array([i]), np.ones(1), np.zeros(1, dtype=bool))

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        self.updates.append((reward.item_id, reward.value))
        return StatsDelta(arrays={"n": np.ones(1)})


def test_replay_accepts_only_matching_events() -> None:
    rng = np.random.default_rng(3)
    n_items, ids = 30, [f"i{j:03d}" for j in range(30)]
    log = [
        (int(rng.integers(0, 5)), int(rng.integers(0, n_items)), float(rng.random() < 0.4))
        for _ in range(400)
    ]
    policy = _RecordingPolicy()
    rep = IdRepresentation(n_items, [[] for _ in range(5)], dim=4)
    res = replay(log, ids, policy, None, rep, n_candidates=5, uniform_log=True, seed=1)
    matches = [
        (ids[item], r)
        for (_, item, r), pick in zip(log, policy.calls, strict=True)
        if pick == ids[item]
    ]
    assert len(policy.calls) == 400
    assert res.accepted == len(matches) > 0
    assert res.accepted < 400
    assert res.reward_sum == pytest.approx(sum(r for _, r in matches))
    # the policy learns from accepted events only, with non-clicks reported as -1
    assert policy.updates == [(i, 1.0 if r > 0 else -1.0) for i, r in matches]
    assert res.summary()["caveat"] is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_movielens_with_bert_from_tiny_bundle(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bert representation on MovieLens texts runs the bundle's real ONNX encoder (the
    titles are not in the bundle's catalog), batched and cached on disk."""
    monkeypatch.setenv("EXPLORANK_CACHE_DIR", str(tmp_path / "cache"))
    ml = write_mini_movielens(tmp_path / "ml")
    out = tmp_path / "report"
    args = [
        "evaluate",
        "--bundle",
        str(tiny_bundle),
        "--dataset",
        f"movielens:{ml}",
        "--policies",
        "random,linucb",
        "--steps",
        "150",
        "--candidates",
        "10",
        "--out",
        str(out),
        "--no-progress",
        "--replay-events",
        "0",
    ]
    assert main(args) == 0
    cached = list((tmp_path / "cache" / "eval-embeddings").glob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape[0] == 60
    runs = _runs(json.loads((out / "report.json").read_text()))
    assert ("linucb", "bert") in runs and ("linucb", "id") in runs
