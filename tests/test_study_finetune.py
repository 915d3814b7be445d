"""The study's fine-tuning step (``explorank evaluate --finetune-steps``): it reads only the
training part of each replicate (no evaluation-part, no cold-item interaction), and the
fine-tuned, exported encoder becomes the ``bert-ft`` representation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_evaluate import write_mini_movielens

from explorank.benchmarks.evaluation import study_finetune
from explorank.benchmarks.evaluation.datasets import open_source
from explorank.cli import main


def test_finetuning_sees_only_the_training_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORANK_CACHE_DIR", str(tmp_path / "cache"))
    ml = write_mini_movielens(tmp_path / "ml", n_users=40, n_movies=60)
    world = open_source(f"movielens:{ml}", bundle=None, users=0, text_signal=0.0).world(1)
    seen: dict[str, Any] = {}

    def fake_train(dataset: Any, out: Path, steps: int, **kw: Any) -> dict[str, Any]:
        seen["dataset"], seen["steps"] = dataset, steps
        raise RuntimeError("stop before training")

    monkeypatch.setattr(study_finetune, "train_checkpoint", fake_train)
    with pytest.raises(RuntimeError, match="stop before training"):
        study_finetune.finetuned(world, 7, seed=1, progress=False)
    ds = seen["dataset"]
    assert seen["steps"] == 7 and len(ds.interactions) == len(world.train) > 0
    cold_ids = {world.item_ids[i] for i in np.flatnonzero(world.cold)}
    assert cold_ids and not any(x.item_id in cold_ids for x in ds.interactions)
    held = {(world.user_ids[u], world.item_ids[i]) for u, i, _ in world.log}
    assert held and not any((x.user_id, x.item_id) in held for x in ds.interactions)
    # the pairs fine-tuning trains on: every target and every history item is warm
    pairs = study_finetune.training_pairs(ds)
    assert pairs.pair_items and not any(world.cold[i] for i in pairs.pair_items)
    cold_texts = {world.item_texts[i] for i in np.flatnonzero(world.cold)}
    assert not any(t in text for text in pairs.pair_texts for t in cold_texts)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_finetune_steps_add_bert_ft(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORANK_CACHE_DIR", str(tmp_path / "cache"))
    ml = write_mini_movielens(tmp_path / "ml")
    out = tmp_path / "out"
    args = ["evaluate", "--bundle", str(tiny_bundle), "--dataset", f"movielens:{ml}",
            "--policies", "greedy,linucb_hybrid", "--steps", "100", "--candidates", "10",
            "--finetune-steps", "3", "--seeds", "2", "--jobs", "1", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    reps = {(r["policy"], r["representation"], r["seed"]) for r in report["runs"]}
    for seed in (0, 1):
        assert ("linucb_hybrid", "bert-ft", seed) in reps and ("greedy", "bert", seed) in reps
    names = {x["lift"] for x in report["lifts"]}
    assert "bert-ft vs bert (linucb_hybrid)" in names and "bert-ft vs id (greedy)" in names
    bundles = sorted((tmp_path / "cache" / "eval-finetuned").glob("*/bundle/manifest.json"))
    assert len(bundles) == 2  # one fine-tuned, exported encoder per replicate's split
    info = json.loads((bundles[0].parent.parent / "finetune.json").read_text())
    assert info["steps"] == 3 and info["pairs"] > 0
    stamp = [b.stat().st_mtime for b in bundles]
    assert main(args) == 0  # the second run reuses them
    assert [b.stat().st_mtime for b in bundles] == stamp


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_text_and_both_users_encode_histories(tiny_bundle: Path, tmp_path: Path) -> None:
    """``--user-representation text|both`` build BERT users with the bundle's encoder (a
    different user vector, so other rankings than ``history``); ``id`` runs ignore it."""
    ml = write_mini_movielens(tmp_path / "ml")
    rewards = {}
    for mode in ("history", "text", "both"):
        out = tmp_path / mode
        args = ["evaluate", "--bundle", str(tiny_bundle), "--dataset", f"movielens:{ml}",
                "--policies", "greedy", "--steps", "80", "--candidates", "10", "--jobs", "1",
                "--no-progress", "--user-representation", mode, "--out", str(out)]  # fmt: skip
        assert main(args) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["dataset"]["user_representation"] == mode
        rewards[mode] = {r["representation"]: r["expected_reward"] for r in report["runs"]}
    assert rewards["text"]["bert"] != rewards["history"]["bert"]
    assert rewards["both"]["bert"] not in (rewards["text"]["bert"], rewards["history"]["bert"])
    assert rewards["text"]["id"] == rewards["history"]["id"] == rewards["both"]["id"]
