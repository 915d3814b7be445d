"""Logged impressions as an evaluation data set: ``--dataset impressions:DIR``.

``DIR`` holds the catalog ``items.csv`` or ``items.jsonl`` (``id,text``, the plain catalog
format of :mod:`explorank.export.data`) and ``impressions.jsonl``, one impression per line::

    {"user_id": "u1", "timestamp": 1700000000, "history": ["i3", "i9"],
     "shown": ["i1", "i2", "i7"], "clicked": ["i2"]}

``history`` is the user's earlier clicks, oldest first (as in MIND), optional;
``timestamp`` is optional (default: the line number); ``clicked`` must be a subset of
``shown``. Every id must be in the catalog.

Evaluation (a full-information log of the shown items): impressions in time order; the
last ``EVAL_SHARE`` are the evaluation part, the rest the training part. Each step is one
evaluation impression: the policy ranks the *shown* items, earns the click labels of
what it puts in its top k and learns only from those (bandit feedback), so the comparison
of policies is unbiased for that candidate set, without a model of the truth. The user
vector comes from the impression's own ``history``. Cold-start items are the items that
never appear (shown or in a history) in the training part; fine-tuning reads only the
training part's clicks and histories. With more evaluation impressions than ``--steps``,
each replicate seed evaluates its own random subset (kept in time order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorank.benchmarks.evaluation.simulator import Steps
from explorank.benchmarks.evaluation.worlds import EVAL_SHARE, Interactions
from explorank.export.data import DataFormatError, Item, load_catalog


@dataclass
class Impression:
    user: int
    timestamp: int
    history: np.ndarray  # item indices, oldest first
    shown: np.ndarray  # item indices, as shown
    clicked: np.ndarray  # (len(shown),) bool


def _ids(path: Path, ln: int, row: dict[str, Any], key: str, index: dict[str, int]) -> np.ndarray:
    raw = row.get(key, [])
    if raw is None:
        raw = []
    if not isinstance(raw, list) or not all(isinstance(x, (str, int)) for x in raw):
        raise DataFormatError(path, f"{key!r} must be a list of item ids", ln)
    out = []
    for x in raw:
        i = index.get(str(x))
        if i is None:
            raise DataFormatError(path, f"{key}: item id {str(x)!r} is not in the catalog", ln)
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def _read(path: Path, index: dict[str, int]) -> tuple[list[Impression], list[str]]:
    users: dict[str, int] = {}
    rows: list[Impression] = []
    with path.open(encoding="utf-8") as f:
        for ln, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, f"invalid JSON ({exc.msg})", ln) from None
            if not isinstance(row, dict):
                raise DataFormatError(path, "each line must be a JSON object", ln)
            uid = row.get("user_id")
            if not isinstance(uid, (str, int)) or not str(uid).strip():
                raise DataFormatError(path, "user_id is missing or empty", ln)
            ts = row.get("timestamp", ln)
            if not isinstance(ts, int):
                raise DataFormatError(path, f"timestamp {ts!r} is not an integer", ln)
            shown = _ids(path, ln, row, "shown", index)
            if shown.size == 0:
                raise DataFormatError(path, "'shown' is missing or empty", ln)
            clicked = _ids(path, ln, row, "clicked", index)
            if not np.isin(clicked, shown).all():
                raise DataFormatError(path, "'clicked' lists an item that was not shown", ln)
            rows.append(Impression(users.setdefault(str(uid), len(users)), ts,
                                   _ids(path, ln, row, "history", index), shown,
                                   np.isin(shown, clicked)))  # fmt: skip
    if not rows:
        raise DataFormatError(path, "no impressions")
    rows.sort(key=lambda r: r.timestamp)  # stable: file order breaks ties
    return rows, list(users)


def _find(root: Path, stem: str) -> Path:
    for ext in (".jsonl", ".csv"):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    raise DataFormatError(root / f"{stem}.jsonl", f"no {stem}.jsonl or {stem}.csv in {root}")


@dataclass
class ImpressionsWorld:
    """The impressions log, split (module docstring); quacks like a simulator
    :class:`~explorank.benchmarks.evaluation.worlds.World` for the study."""

    name: str
    item_ids: list[str]
    item_texts: list[str]
    user_ids: list[str]
    train_rows: list[Impression]
    eval_rows: list[Impression]
    cold: np.ndarray
    popularity: np.ndarray
    train: Interactions
    log: list[tuple[int, int, float]] = field(default_factory=list)
    log_uniform: bool = False
    offset: float = float("nan")
    #: ILD yardstick: the generic text embeddings (set by the study), else one-hot
    div_vectors: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def history(self) -> list[list[int]]:
        return [[] for _ in self.user_ids]  # each step carries its own history

    def diversity_vectors(self) -> np.ndarray:
        if self.div_vectors is not None:
            return self.div_vectors
        return np.eye(self.n_items, dtype=np.float32)

    def train_dataset(self) -> Any:
        from explorank.benchmarks.evaluation.worlds import World

        return World.train_dataset(self)  # type: ignore[arg-type]

    def steps(self, n_steps: int, top_k: int, seed: int) -> Steps:
        """Up to ``n_steps`` evaluation impressions (a seeded subset, in time order)."""
        rows = self.eval_rows
        if len(rows) > n_steps:
            pick = np.sort(np.random.default_rng(seed).choice(len(rows), n_steps, replace=False))
            rows = [rows[i] for i in pick.tolist()]
        k_max = max(r.shown.shape[0] for r in rows)
        t = len(rows)
        cands = np.full((t, k_max), -1, dtype=np.int64)
        labels = np.zeros((t, k_max))
        sizes = np.array([r.shown.shape[0] for r in rows], dtype=np.int64)
        for j, r in enumerate(rows):
            cands[j, : sizes[j]] = r.shown
            labels[j, : sizes[j]] = r.clicked
        oracle = np.minimum(labels.sum(axis=1), top_k)
        return Steps(
            np.array([r.user for r in rows], dtype=np.int64), cands, labels,
            np.full((t, k_max), 0.5), oracle, np.ones(top_k), sizes,
            [r.history[::-1].copy() for r in rows],
        )  # fmt: skip


def load_impressions(directory: str | Path) -> ImpressionsWorld:
    """Read ``DIR/items.{jsonl,csv}`` and ``DIR/impressions.jsonl`` and split them."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataFormatError(root, "not a directory; impressions:DIR needs items + impressions")
    items: list[Item] = load_catalog(_find(root, "items"))
    index = {it.id: i for i, it in enumerate(items)}
    rows, user_ids = _read(root / "impressions.jsonl", index)
    n_eval = max(1, int(round(EVAL_SHARE * len(rows))))
    if n_eval >= len(rows):
        raise DataFormatError(root / "impressions.jsonl", "need at least 2 impressions")
    train_rows, eval_rows = rows[:-n_eval], rows[-n_eval:]
    n_items = len(items)
    seen = np.zeros(n_items, dtype=bool)
    for r in train_rows:
        seen[r.shown] = True
        seen[r.history] = True
    users, its, ts = [], [], []
    done: set[tuple[int, int]] = set()
    for r in train_rows:  # the training part's clicks (each once): history, then clicks
        for i, when in [(i, r.timestamp - 1) for i in r.history.tolist()] + [
            (i, r.timestamp) for i in r.shown[r.clicked].tolist()
        ]:
            if (r.user, i) not in done:
                done.add((r.user, i))
                users.append(r.user)
                its.append(i)
                ts.append(when)
    train = Interactions(np.asarray(users, dtype=np.int64), np.asarray(its, dtype=np.int64),
                         np.ones(len(users)), np.asarray(ts, dtype=np.int64))  # fmt: skip
    popularity = np.bincount(train.items, minlength=n_items).astype(np.float64)
    return ImpressionsWorld(
        f"impressions:{root.name}", [it.id for it in items], [it.text for it in items],
        user_ids, train_rows, eval_rows, ~seen, popularity, train,
    )  # fmt: skip
