"""``--dataset`` specs: where the study's items, users and truth come from.

- ``synthetic``: the bundle's catalog and a world built so that text matters
  (:func:`~explorank.benchmarks.evaluation.worlds.synthetic_world`);
- ``movielens:DIR``: a MovieLens directory (ml-latest-small / ml-25m, ml-100k, ml-1m
  layouts; item text = title with year, genres, and tags where the layout has them);
- ``files:CATALOG,INTERACTIONS``: the plain catalog (``id,text``) and interactions
  (``user_id,item_id[,value][,timestamp]``) files of :mod:`explorank.export.data`; all-equal
  values (clicks only) are implicit feedback (:mod:`.truth`);
- ``impressions:DIR``: logged impressions (:mod:`.impressions`).

A :class:`Source` builds the world of each replicate seed. The ratings truth does not
depend on the seed (it is the data set's); it is fitted once and cached on disk under
``<cache dir>/eval-truth`` keyed by the data, like the BERT embeddings.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorank.benchmarks.evaluation import worlds as w
from explorank.errors import InvalidArgumentError

log = logging.getLogger("explorank.benchmarks")

#: bump when the truth's fitting changes, so cached truths are refitted
TRUTH_VERSION = "als16-r5-i8-v2"


@dataclass
class Source:
    name: str
    kind: str  # synthetic | ratings | impressions
    item_ids: list[str]
    item_texts: list[str]
    make: Callable[[int], Any]  # replicate seed -> world

    def world(self, seed: int) -> Any:
        return self.make(seed)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n == 0, 1.0, n)).astype(np.float32)


def _truth_key(ds: Any) -> str:
    h = hashlib.sha256(TRUTH_VERSION.encode())
    for it in ds.items:
        h.update(it.id.encode() + b"\0")
    for x in ds.interactions:
        h.update(f"{x.user_id}\0{x.item_id}\0{x.value!r}\0{x.timestamp}\n".encode())
    return h.hexdigest()[:20]


def cached_truth(ds: Any, name: str) -> w.RatingsTruth:
    """:func:`~explorank.benchmarks.evaluation.worlds.ratings_truth`, cached on disk."""
    from explorank.paths import default_cache_dir

    path = default_cache_dir() / "eval-truth" / f"{_truth_key(ds)}.npz"
    if path.is_file():
        try:
            z = np.load(path)
            truth = w.ratings_truth(ds, name, factors=(z["u"], z["i"], z["b"], float(z["o"])))
            log.info("ground truth from the cache (%s)", path)
            return truth
        except (OSError, KeyError, ValueError):
            pass
    truth = w.ratings_truth(ds, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, u=truth.user_factors, i=truth.item_factors, b=truth.item_bias,
                 o=np.array(truth.offset))  # fmt: skip
    except OSError:
        pass
    return truth


def _ratings(ds: Any, name: str) -> Source:
    truth = cached_truth(ds, name)
    return Source(
        truth.name, "ratings", truth.item_ids, truth.item_texts,
        lambda seed: w.ratings_world(truth, seed=seed),
    )  # fmt: skip


def open_source(spec: str, *, bundle: Any, users: int, text_signal: float) -> Source:
    """The :class:`Source` of a ``--dataset`` spec (module docstring)."""
    from explorank.export.data import load_movielens, load_plain

    if spec == "synthetic":
        if bundle is None:
            raise InvalidArgumentError("--dataset", "synthetic needs a bundle (its catalog)")
        ids = [it.id for it in bundle.items]
        texts = [it.text for it in bundle.items]
        emb = _normalize_rows(bundle.item_embeddings)
        return Source(
            "synthetic", "synthetic", ids, texts,
            lambda seed: w.synthetic_world(ids, texts, emb, n_users=users,
                                           text_signal=text_signal, seed=seed),
        )  # fmt: skip
    kind, _, arg = spec.partition(":")
    if kind == "movielens" and arg:
        return _ratings(load_movielens(Path(arg).expanduser()), f"movielens:{Path(arg).name}")
    if kind == "files" and arg:
        parts = [p.strip() for p in arg.split(",")]
        if len(parts) != 2 or not all(parts):
            raise InvalidArgumentError("--dataset", "use files:CATALOG,INTERACTIONS")
        cat, inter = (Path(p).expanduser() for p in parts)
        return _ratings(load_plain(cat, inter), f"files:{cat.stem}")
    if kind == "impressions" and arg:
        from explorank.benchmarks.evaluation.impressions import load_impressions

        world = load_impressions(arg)
        return Source(world.name, "impressions", world.item_ids, world.item_texts,
                      lambda seed: world)  # fmt: skip
    raise InvalidArgumentError(
        "--dataset",
        f"expected synthetic, movielens:DIR, files:CATALOG,INTERACTIONS or impressions:DIR, "
        f"got {spec!r}",
    )
