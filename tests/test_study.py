"""The study's data sets, replicate seeds, splits and fine-tuning step, on tiny generated
directories of every layout (no real data: CI never depends on it)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_evaluate import write_fake_bundle, write_mini_movielens

from explorank.benchmarks.evaluation import aggregate
from explorank.benchmarks.evaluation.datasets import open_source
from explorank.benchmarks.evaluation.impressions import load_impressions
from explorank.benchmarks.evaluation.truth import als
from explorank.benchmarks.evaluation.worlds import EVAL_SHARE, eval_mask
from explorank.cli import main
from explorank.export.data import load_movielens

BASE = ["--no-progress", "--jobs", "1", "--candidates", "10", "--steps", "120"]


def _evaluate(out: Path, *args: str) -> dict[str, Any]:
    assert main(["evaluate", *BASE, "--out", str(out), *args]) == 0
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


def write_tags(ml: Path) -> None:
    rows = ["userId,movieId,tag,timestamp", "1,1,space opera,5", "2,1,Space Opera,6",
            "3,1,funny,7", "1,2,dark,8"]  # fmt: skip
    (ml / "tags.csv").write_text("\n".join(rows) + "\n")


def write_ml100k(out: Path, n_users: int = 30, n_movies: int = 50, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_movies):
        flags = ["0"] * 19
        flags[1 + i % 18] = "1"
        lines.append(
            f"{i + 1}|Film {i + 1} (19{60 + i % 40})|01-Jan-1995||http://x|" + "|".join(flags)
        )
    (out / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_movies, 12, replace=False):
            rows.append(f"{u + 1}\t{i + 1}\t{rng.integers(1, 6)}\t{880000000 + len(rows)}")
    (out / "u.data").write_text("\n".join(rows) + "\n")
    return out


def write_files(out: Path, *, implicit: bool) -> tuple[Path, Path]:
    rng = np.random.default_rng(2)
    out.mkdir(parents=True, exist_ok=True)
    cat = out / "catalog.csv"
    cat.write_text("id,text\n" + "".join(f"p{i},product {i} in aisle {i % 7}\n" for i in range(40)))
    inter = out / "interactions.csv"
    head = "user_id,item_id\n" if implicit else "user_id,item_id,value,timestamp\n"
    rows = []
    for u in range(25):
        for i in rng.choice(40, 10, replace=False):
            rows.append(f"u{u},p{i}" if implicit else
                        f"u{u},p{i},{rng.uniform(-1, 1):.2f},{len(rows)}")  # fmt: skip
    inter.write_text(head + "\n".join(rows) + "\n")
    return cat, inter


def write_impressions(out: Path, n: int = 150, seed: int = 3) -> Path:
    """Items i0..i35 (i30.. appear only in the last 20% of the log: cold); users click items
    whose index is close to their taste; 4-8 shown."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "items.jsonl").write_text(
        "".join(
            json.dumps({"id": f"i{j}", "text": f"story number {j} about topic {j % 5}"}) + "\n"
            for j in range(36)
        )  # fmt: skip
    )
    hist: dict[str, list[str]] = {}
    lines = []
    for t in range(n):
        u = f"u{int(rng.integers(8))}"
        pool = 36 if t >= n - n // 5 else 30
        shown = [f"i{j}" for j in rng.choice(pool, int(rng.integers(4, 9)), replace=False)]
        taste = int(u[1:]) * 4 % 30
        clicked = [s for s in shown if abs(int(s[1:]) - taste) < 6 and rng.random() < 0.7]
        lines.append(json.dumps({"user_id": u, "timestamp": 1000 + t, "history": hist.get(u, [])[-5:],
                                 "shown": shown, "clicked": clicked}))  # fmt: skip
        hist.setdefault(u, []).extend(clicked)
    (out / "impressions.jsonl").write_text("\n".join(lines) + "\n")
    return out


# ----------------------------------------------------------------------------- layouts


def test_movielens_latest_text_has_tags(tmp_path: Path) -> None:
    ml = write_mini_movielens(tmp_path / "ml")
    write_tags(ml)
    ds = load_movielens(ml)
    assert ds.items[0].text == "Movie 1, The (1980). Genres: Drama|Drama. Tags: space opera, funny." \
        or ds.items[0].text.endswith("Tags: space opera, funny.")  # fmt: skip
    assert ds.items[1].text.endswith("Tags: dark.")
    assert "Tags" not in ds.items[2].text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", ["latest", "100k", "files", "files-implicit", "impressions"])
def test_each_layout_runs_a_short_study(tmp_path: Path, layout: str) -> None:
    if layout == "latest":
        ml = write_mini_movielens(tmp_path / "ml")
        write_tags(ml)
        spec = f"movielens:{ml}"
    elif layout == "100k":
        spec = f"movielens:{write_ml100k(tmp_path / 'ml100k')}"
    elif layout.startswith("files"):
        cat, inter = write_files(tmp_path / "files", implicit=layout == "files-implicit")
        spec = f"files:{cat},{inter}"
    else:
        spec = f"impressions:{write_impressions(tmp_path / 'imp')}"
    report = _evaluate(tmp_path / "out", "--dataset", spec, "--representations", "id",
                       "--policies", "random,ucb1,linucb_hybrid", "--seeds", "2")  # fmt: skip
    runs = {(r["policy"], r["seed"]): r for r in report["runs"]}
    assert {p for p, _ in runs} == {"oracle", "random", "ucb1", "linucb_hybrid"}
    assert {s for _, s in runs} == {0, 1}
    for seed in (0, 1):
        assert abs(runs[("oracle", seed)]["cumulative_regret"]) < 1e-9
        assert runs[("random", seed)]["cumulative_regret"] >= 0
    assert report["dataset"]["n_cold_items"] > 0
    if layout == "impressions":
        # the policies rank the logged shown items and earn their labels: never more than
        # the oracle (which puts the clicked ones first)
        for (_pol, seed), r in runs.items():
            assert r["cumulative_reward"] <= runs[("oracle", seed)]["cumulative_reward"]
        assert report["dataset"]["n_items"] == 36


def test_bad_dataset_specs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for spec, says in (("files:only-one", "--dataset"), ("impressions:/no/such/dir", "/no/such"),
                       ("zzz:dir", "--dataset")):  # fmt: skip
        assert main(["evaluate", "--dataset", spec, "--representations", "id"]) == 2
        assert says in capsys.readouterr().err


# ------------------------------------------------------------------------------ splits


def test_ratings_split_keeps_eval_and_cold_out_of_training(tmp_path: Path) -> None:
    ml = write_mini_movielens(tmp_path / "ml", n_users=30, n_movies=50)
    src = open_source(f"movielens:{ml}", bundle=None, users=0, text_signal=0.0)
    for seed in (0, 1):
        world = src.world(seed)
        rows = world.train
        assert rows is not None and len(rows) > 0
        assert not world.cold[rows.items].any()
        # every training row precedes the user's held-out rows in time
        ds = world.train_dataset()
        train_keys = {(x.user_id, x.item_id) for x in ds.interactions}
        for u, i, _ in world.log:  # the evaluation part
            assert (world.user_ids[u], world.item_ids[i]) not in train_keys
        assert all(not world.cold[world.item_ids.index(x.item_id)] for x in ds.interactions)
    users = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    held = eval_mask(users, 3)
    assert held.tolist() == [False, False, False, False, True, False, True, False]
    assert EVAL_SHARE == 0.2


def test_impressions_split_and_steps(tmp_path: Path) -> None:
    world = load_impressions(write_impressions(tmp_path / "imp"))
    assert len(world.eval_rows) == 30 and len(world.train_rows) == 120
    last_train = max(r.timestamp for r in world.train_rows)
    assert all(r.timestamp > last_train for r in world.eval_rows)
    assert not world.cold[world.train.items].any()
    steps = world.steps(20, top_k=3, seed=1)
    assert steps.n_steps == 20 and steps.histories is not None and steps.sizes is not None
    for t in range(steps.n_steps):
        k = steps.size(t)
        assert (steps.candidates[t, :k] >= 0).all() and (steps.candidates[t, k:] == -1).all()
        assert steps.oracle[t] == min(3, steps.probs[t, :k].sum())


# ------------------------------------------------------------------------ statistics


def test_intervals_and_paired_lifts() -> None:
    iv = aggregate.interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and iv["low"] == pytest.approx(2.0 - 4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(aggregate.interval([5.0])["low"])
    runs = []
    for seed, (nl, cf, gr) in enumerate([(120, 100, 80), (130, 100, 90), (125, 110, 85)]):
        for pol, value in (("linucb_hybrid", nl), ("ucb1", cf), ("thompson", cf - 5),
                           ("greedy", gr)):  # fmt: skip
            runs.append(dict(policy=pol, scorer="dot", representation="bert", seed=seed,
                             cumulative_reward=float(value)))  # fmt: skip
    lifts = {x["lift"]: x for x in aggregate.lifts(runs)}
    nl_cf = lifts["best neural-linear vs best context-free (bert)"]
    assert nl_cf["b"] == "ucb1/dot/bert" and nl_cf["n"] == 3
    assert nl_cf["values"] == pytest.approx([0.2, 0.3, 125 / 110 - 1])
    assert nl_cf["low"] > 0


@pytest.mark.timeout(180)
def test_seeds_give_intervals_in_report_and_plots(tmp_path: Path) -> None:
    bundle = write_fake_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    report = _evaluate(out, "--bundle", str(bundle), "--users", "40", "--seeds", "3",
                       "--policies", "greedy,ucb1,linucb_hybrid", "--jobs", "2")  # fmt: skip
    summary = {(r["policy"], r["representation"]): r for r in report["summary"]}
    row = summary[("linucb_hybrid", "bert")]
    ci = row["cumulative_reward"]
    assert ci["n"] == 3 and ci["low"] <= ci["mean"] <= ci["high"] and ci["low"] < ci["high"]
    assert len({r["seed"] for r in report["runs"]}) == 3
    names = {x["lift"] for x in report["lifts"]}
    assert "best neural-linear vs best context-free (bert)" in names
    assert "bert vs id (linucb_hybrid)" in names
    md = (out / "report.md").read_text()
    assert "## Lifts" in md and "[" in md  # intervals are printed
    # a second run with one process gives the same numbers (runs are independent)
    again = _evaluate(tmp_path / "again", "--bundle", str(bundle), "--users", "40", "--seeds",
                      "3", "--policies", "greedy,ucb1,linucb_hybrid")  # fmt: skip
    key = [
        (r["policy"], r["representation"], r["seed"], r["cumulative_reward"])
        for r in report["runs"]
    ]
    assert key == [(r["policy"], r["representation"], r["seed"], r["cumulative_reward"])
                   for r in again["runs"]]  # fmt: skip


def test_batched_als_matches_the_per_entity_solves() -> None:
    rng = np.random.default_rng(0)
    u, i, v = rng.integers(0, 20, 400), rng.integers(0, 30, 400), rng.normal(size=400)
    p, q = als(u, i, v, 25, 30, rank=3, reg=1.0, iters=2, rng=np.random.default_rng(1))
    r2 = np.random.default_rng(1)
    p0, q0 = r2.normal(0, 0.1, (25, 3)), r2.normal(0, 0.1, (30, 3))
    for _ in range(2):
        for e in range(25):
            f = q0[i[u == e]]
            p0[e] = np.linalg.solve(f.T @ f + np.eye(3), f.T @ v[u == e]) if len(f) else 0.0
        for e in range(30):
            f = p0[u[i == e]]
            q0[e] = np.linalg.solve(f.T @ f + np.eye(3), f.T @ v[i == e]) if len(f) else 0.0
    np.testing.assert_allclose(p, p0, atol=1e-12)
    np.testing.assert_allclose(q, q0, atol=1e-12)
