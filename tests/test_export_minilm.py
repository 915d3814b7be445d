"""The real packaged all-MiniLM-L6-v2 through the export gates (slow; runs in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from explorank.engine.bundle import load_bundle, read_manifest
from explorank.engine.tokenizer import pad_batch
from explorank.export import onnx_export
from explorank.export.pipeline import default_catalog_path, export_bundle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_minilm_bundle_passes_the_gates(minilm_bundle: Path) -> None:
    manifest = read_manifest(minilm_bundle)
    fused = manifest["encoder"]["fused_operators"]
    assert fused["Attention"] >= 6
    assert fused["SkipLayerNormalization"] >= 12
    assert fused["BiasGelu"] + fused["FastGelu"] >= 6
    assert manifest["embedding_dim"] == 384
    int8 = manifest["parity"]["int8"]
    assert int8["min_cosine"] >= 0.99, int8
    assert int8["top10_overlap"] >= 0.9, int8
    assert manifest["parity"]["fp32"]["max_abs_diff"] <= 1e-4
    attempts = manifest["encoder"]["int8_config"]["attempts"]
    # The MiniLM winner is first in the search order, so the default export quantizes once.
    assert len(attempts) == 1 and attempts[0]["passed"], attempts


def test_minilm_int8_encoder_ranks_like_fp32(minilm_bundle: Path, minilm_catalog: Path) -> None:
    """Independent of the export's own check: re-encode queries with the int8 file and compare
    nearest catalog items with the fp32 catalog embeddings (the serving configuration)."""
    import onnxruntime as ort

    bundle = load_bundle(minilm_bundle)
    texts = [json.loads(line)["text"] for line in minilm_catalog.read_text().splitlines()]
    tok = onnx_export.load_tokenizer(minilm_bundle / "tokenizer", bundle.max_seq_length)
    ids, mask = pad_batch(onnx_export.tokenize(tok, texts[:64]))
    sess = ort.InferenceSession(
        str(minilm_bundle / "encoder.int8.onnx"), providers=["CPUExecutionProvider"]
    )
    q = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    cos = np.sum(q * bundle.item_embeddings[:64], axis=1)
    assert cos.min() >= 0.99
    top_fp32 = np.argsort(-(bundle.item_embeddings[:64] @ bundle.item_embeddings.T), axis=1)[:, :10]
    top_int8 = np.argsort(-(q @ bundle.item_embeddings.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_fp32, top_int8, strict=True)])
    assert overlap >= 0.9


def test_default_export_on_the_default_catalog(tmp_path: Path) -> None:
    """What `explorank export --out DIR` does on a fresh machine (the Done-when check)."""
    if not default_catalog_path().is_file():
        pytest.skip(f"the default catalog {default_catalog_path()} is not there yet")
    manifest = export_bundle(tmp_path / "b", tensorrt="off", progress=False)
    assert manifest["encoder"]["fused_operators"]["Attention"] >= 6
    assert manifest["parity"]["int8"]["min_cosine"] >= 0.99
    assert manifest["parity"]["int8"]["top10_overlap"] >= 0.9
    assert manifest["catalog"]["count"] >= 1000
