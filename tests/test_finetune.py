"""Two-tower fine-tuning + heads on a tiny random BERT and a tiny MovieLens-format directory."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from explorank.cli import main as cli_main
from explorank.errors import InvalidArgumentError
from explorank.export.data import Dataset, Interaction, Item, load_dataset
from explorank.export.training.finetune import FinetuneResult, finetune
from explorank.export.training.heads import mf_scores, neural_scores, recall_at_k
from explorank.export.training.two_tower import split_dataset

pytestmark = pytest.mark.timeout(180)

# Each genre owns its words, so "liking a genre" is learnable from text alone.
GENRES = {
    "Action": ["battle", "fight", "soldier", "mission", "war", "agent", "spy"],
    "Comedy": ["funny", "friends", "happy", "family", "dog", "cat"],
    "Horror": ["ghost", "zombie", "vampire", "monster", "dark", "night"],
    "Romance": ["love", "heart", "dream", "soul", "spring", "kiss"],
    "Western": ["horse", "desert", "road", "gold", "river", "town"],
    "Documentary": ["ocean", "planet", "history", "earth", "space", "world"],
}
FAST = {
    "epochs": 3,
    "batch_size": 16,
    "lr": 1e-3,
    "max_seq_length": 64,
    "mf_dim": 16,
    "neural_hidden": 32,
    "progress": False,
}


def write_movielens(root: Path, n_users: int = 40, per_genre: int = 10, seed: int = 0) -> Path:
    """ml-latest-small layout: every user loves one genre (4-5 stars) and dislikes a few others."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    items, mid = [], 1
    for g, words in GENRES.items():
        for _ in range(per_genre):
            items.append(
                (
                    mid,
                    f"The {rng.choice(words).title()} {rng.choice(words).title()} ({rng.randrange(1950, 2020)})",
                    g,
                )
            )
            mid += 1
    with (root / "movies.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        w.writerows(items)
    with (root / "ratings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for u in range(1, n_users + 1):
            fav = rng.choice(list(GENRES))
            liked = rng.sample([m for m, _, g in items if g == fav], 8)
            other = rng.sample([m for m, _, g in items if g != fav], 3)
            seq = [(m, rng.choice([4.0, 4.5, 5.0])) for m in liked] + [
                (m, rng.choice([1.0, 1.5, 2.0])) for m in other
            ]
            rng.shuffle(seq)
            ts = 1_000_000 + u * 1000
            for m, r in seq:
                ts += rng.randrange(1, 50)
                w.writerow([u, m, r, ts])
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny models gain nothing from intra-op threads, and on a shared, busy machine thread
    oversubscription makes them ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir: Path) -> Path:
    """The suite's tiny random BERT (tests/conftest.py), the base model of every run here."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_movielens(tmp_path_factory.mktemp("ml") / "ml-latest-small")


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, ml_dir: Path
) -> FinetuneResult:
    return finetune(
        load_dataset(f"movielens:{ml_dir}"),
        tmp_path_factory.mktemp("ft") / "out",
        base_model=tiny_base,
        seed=0,
        **FAST,
    )


def test_training_lowers_the_loss_and_reports_recall(trained: FinetuneResult) -> None:
    assert (
        len(trained.epoch_losses) == 3 and len(trained.step_losses) == trained.report["steps"] > 0
    )
    assert trained.epoch_losses[-1] < trained.epoch_losses[0] - 0.05
    for head in ("mf", "neural"):
        losses = trained.head_losses[head]
        assert len(losses) == 3 and losses[-1] < losses[0]
    r = trained.recall_at_10
    assert set(r) == {"base", "finetuned", "mf", "neural"} and all(
        0.0 <= v <= 1.0 for v in r.values()
    )
    # Strongly genre-structured data: the fine-tuned towers must not rank worse than the base.
    assert r["finetuned"] >= r["base"]
    report = json.loads((trained.out_dir / "finetune_report.json").read_text())
    assert report["recall_at_10"] == pytest.approx(r)
    assert report["dataset"]["eval_users"] == 40 and report["dataset"]["train_pairs"] == 40 * 6
    assert report["epoch_losses"] == pytest.approx(trained.epoch_losses)


def test_same_seed_same_losses_other_seed_differs(
    tmp_path: Path, tiny_base: Path, ml_dir: Path, trained: FinetuneResult
) -> None:
    ds = load_dataset(f"movielens:{ml_dir}")
    again = finetune(ds, tmp_path / "a", base_model=tiny_base, seed=0, **FAST)
    np.testing.assert_allclose(again.step_losses, trained.step_losses, rtol=0, atol=1e-5)
    for head in ("mf", "neural"):
        np.testing.assert_allclose(
            again.head_losses[head], trained.head_losses[head], rtol=0, atol=1e-5
        )
    other = finetune(ds, tmp_path / "b", base_model=tiny_base, seed=1, **{**FAST, "epochs": 1})
    assert not np.allclose(other.step_losses, trained.step_losses[: len(other.step_losses)])


def test_checkpoint_loads_with_transformers_and_heads_have_the_export_layout(
    trained: FinetuneResult, tiny_base: Path
) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = trained.out_dir
    model = AutoModel.from_pretrained(str(out), attn_implementation="eager")
    base = AutoModel.from_pretrained(str(tiny_base), attn_implementation="eager")
    d = model.config.hidden_size
    changed = [
        not torch.equal(p, base.state_dict()[k])
        for k, p in model.state_dict().items()
        if k in base.state_dict()
    ]
    assert any(changed), "fine-tuning must change the encoder weights"
    tok, base_tok = (
        AutoTokenizer.from_pretrained(str(out)),
        AutoTokenizer.from_pretrained(str(tiny_base)),
    )
    assert tok("A ghost story.")["input_ids"] == base_tok("A ghost story.")["input_ids"]

    mf = np.load(out / "explorank_heads" / "mf.npz")
    assert set(mf.files) == {"user_proj", "item_proj"}
    assert (
        mf["user_proj"].shape == mf["item_proj"].shape == (d, 16)
        and mf["user_proj"].dtype == np.float32
    )
    nn = np.load(out / "explorank_heads" / "neural.npz")
    shapes = {k: nn[k].shape for k in nn.files}
    assert shapes == {"w1": (3 * d, 32), "b1": (32,), "w2": (32,), "b2": ()}
    assert all(nn[k].dtype == np.float32 for k in nn.files)
    heads = json.loads((out / "explorank_heads" / "heads.json").read_text())
    assert (
        heads["embedding_dim"] == d and heads["mf"]["dim"] == 16 and heads["neural"]["hidden"] == 32
    )
    assert heads["config"]["seed"] == 0 and heads["mf"]["losses"] == pytest.approx(
        trained.head_losses["mf"]
    )


def test_split_uses_only_earlier_positives_most_recent_first() -> None:
    items = [Item(str(i), f"item{i}.") for i in range(6)]
    inter = [  # out of time order on purpose
        Interaction("u", "3", 1.0, 40), Interaction("u", "0", 1.0, 10), Interaction("u", "1", -0.5, 20),
        Interaction("u", "2", 0.5, 30), Interaction("u", "4", 1.0, 50), Interaction("v", "5", 1.0, 1),
    ]  # fmt: skip
    sp = split_dataset(Dataset(items, inter, "t"), history_len=2, positive_threshold=0.0)
    # u's positives in time order: 0, 2, 3, 4 -> 4 is held out; pairs (0 -> 2), (2 0 -> 3)
    assert list(zip(sp.pair_texts, sp.pair_items, strict=True)) == [
        ("item0.", 2),
        ("item2. item0.", 3),
    ]
    assert sp.eval_texts == ["item3. item2."] and sp.eval_targets == [4]
    assert sp.eval_exclude == [{0, 1, 2, 3}]  # v has one positive: no pair, no evaluation
    assert sp.n_users == 2


def test_no_training_pairs_is_a_clear_error(tmp_path: Path, tiny_base: Path) -> None:
    ds = Dataset(
        [Item("a", "x"), Item("b", "y")],
        [Interaction("u", "a", 1.0, 1), Interaction("u", "b", -1.0, 2)],
        "d",
    )
    with pytest.raises(InvalidArgumentError, match="no training pairs"):
        finetune(ds, tmp_path / "o", base_model=tiny_base, progress=False)
    with pytest.raises(InvalidArgumentError, match="batch_size: must be >= 2"):
        finetune(ds, tmp_path / "o", base_model=tiny_base, batch_size=1)
    with pytest.raises(InvalidArgumentError, match="no config.json"):
        finetune(ds, tmp_path / "o", base_model=tmp_path)


def test_head_scoring_matches_the_documented_formulas() -> None:
    rng = np.random.default_rng(0)
    d, h, k = 6, 5, 3
    u, v = rng.normal(size=(4, d)).astype(np.float32), rng.normal(size=(7, d)).astype(np.float32)
    w = {"w1": rng.normal(size=(3 * d, h)).astype(np.float32), "b1": rng.normal(size=h).astype(np.float32),
         "w2": rng.normal(size=h).astype(np.float32), "b2": np.asarray(0.3, dtype=np.float32)}  # fmt: skip
    feats = np.concatenate(
        [np.repeat(u[:, None], 7, 1), np.repeat(v[None], 4, 0), u[:, None] * v[None]], axis=-1
    )
    direct = np.maximum(feats @ w["w1"] + w["b1"], 0) @ w["w2"] + w["b2"]
    np.testing.assert_allclose(neural_scores(u, v, w, chunk=3), direct, rtol=1e-4, atol=1e-4)
    pu, pv = rng.normal(size=(d, k)), rng.normal(size=(d, k))
    np.testing.assert_allclose(
        mf_scores(u, v, pu, pv), np.einsum("bk,nk->bn", u @ pu, v @ pv), rtol=1e-6
    )


def test_recall_at_k_excludes_seen_items_and_counts_ties_against() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    assert recall_at_k(scores, [2, 0], [set(), set()], k=2) == 0.0  # row 1: a 3-way tie at the top
    assert recall_at_k(scores, [2, 0], [{0}, {1, 2}], k=2) == 1.0  # seen items removed
    assert recall_at_k(scores, [3, 3], [{2}, set()], k=2) == 0.0


def test_cli_finetune_end_to_end_and_bad_input(
    tmp_path: Path, tiny_base: Path, ml_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    rc = cli_main(["finetune", "--data", f"movielens:{ml_dir}", "--out", str(out), "--base-model", str(tiny_base),
                   "--max-steps", "3", "--batch-size", "8", "--mf-dim", "8", "--head-epochs", "1", "--no-progress"])  # fmt: skip
    assert rc == 0
    assert (out / "config.json").is_file() and (out / "explorank_heads" / "mf.npz").is_file()
    assert json.loads((out / "finetune_report.json").read_text())["steps"] == 3
    capsys.readouterr()
    bad = [
        (["--data", f"movielens:{tmp_path / 'missing'}", "--out", str(tmp_path / "x")], "--data: "),
        (["--catalog", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "x")], "--catalog: "),
        (["--data", str(ml_dir), "--out", str(out)], "--out: "),  # not empty, no --overwrite
        (
            ["--data", str(ml_dir), "--out", str(tmp_path / "x"), "--base-model", str(tmp_path)],
            "--base-model: ",
        ),
    ]
    for argv, field in bad:
        assert cli_main(["finetune", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("explorank: error: ") and field in err


def test_export_accepts_the_finetuned_checkpoint_and_its_heads(
    tmp_path: Path, trained: FinetuneResult, tiny_catalog: Path
) -> None:
    from explorank.export.pipeline import export_bundle

    manifest = export_bundle(
        tmp_path / "bundle", model_dir=trained.out_dir, catalog=tiny_catalog,
        precisions=("fp32",), tensorrt="off", progress=False,
    )  # fmt: skip
    heads = manifest["heads"]
    assert heads["mf"]["trained"] is True and heads["mf"]["dim"] == FAST["mf_dim"]
    assert heads["neural"]["trained"] is True and heads["neural"]["hidden"] == FAST["neural_hidden"]
    assert (
        manifest["embedding_dim"]
        == json.loads((trained.out_dir / "config.json").read_text())["hidden_size"]
    )
    mf = np.load(tmp_path / "bundle" / heads["mf"]["path"])
    saved = np.load(trained.out_dir / "explorank_heads" / "mf.npz")
    np.testing.assert_array_equal(mf["user_proj"], saved["user_proj"])
