"""Export stage on a tiny random BERT: ONNX parity, fusion, INT8 gate, heads, bundle integrity."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorank.engine.bundle import (
    REQUIRED_KEYS,
    load_bundle,
    read_manifest,
    sha256_file,
    verify_bundle,
)
from explorank.engine.tokenizer import pad_batch
from explorank.errors import BundleError, ExportError, InvalidArgumentError, ParityError
from explorank.export import heads as heads_mod
from explorank.export import onnx_export, parity, quantize, tensorrt_build
from explorank.export.optimize import op_counts
from explorank.export.pipeline import export_bundle

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_torch(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    model, arch = onnx_export.load_encoder(tiny_model_dir)
    return onnx_export.pooled_encoder(model), arch


@pytest.fixture(scope="module")
def fused_session(tiny_bundle: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(
        str(tiny_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_is_deterministic_and_tokenizes(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tiny_model import build_tiny_model
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert sha256_file(again / "model.safetensors") == sha256_file(
        tiny_model_dir / "model.safetensors"
    )
    assert sha256_file(other / "model.safetensors") != sha256_file(
        tiny_model_dir / "model.safetensors"
    )

    text = "A Thrilling space adventure, 1984 edition: robots vs. aliens!"
    fast = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode(text)
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)(text)["input_ids"]
    assert fast.ids == hf
    assert fast.tokens[0] == "[CLS]" and fast.tokens[-1] == "[SEP]"
    assert "[UNK]" not in fast.tokens  # letters + ## pieces cover arbitrary lowercase text
    assert "space" in fast.tokens and "adventure" in fast.tokens


# --------------------------------------------------------------------------- ONNX parity


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.integers(1, 9), seq=st.integers(1, 128), seed=st.integers(0, 2**31 - 1))
def test_fused_onnx_matches_pytorch_across_shapes(
    tiny_torch, fused_session, batch: int, seq: int, seed: int
) -> None:  # type: ignore[no-untyped-def]
    """Dynamic axes are really dynamic: any (batch, seq) with right padding matches PyTorch."""
    module, arch = tiny_torch
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, arch.vocab_size, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq  # at least one unpadded row
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    expected = onnx_export.torch_embed(module, ids, mask)
    got = fused_session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == (batch, arch.hidden_size)
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_fused_operator_counts_reported(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    fused = manifest["encoder"]["fused_operators"]
    layers = manifest["encoder"]["architecture"]["num_layers"]
    assert fused["Attention"] == layers
    assert fused["SkipLayerNormalization"] == 2 * layers
    assert fused["BiasGelu"] + fused["FastGelu"] == layers
    actual = op_counts(tiny_bundle / "encoder.onnx")
    assert all(actual.get(op, 0) == n for op, n in fused.items())
    assert actual.get("Softmax", 0) == 0  # no unfused attention left behind


# --------------------------------------------------------------------------- manifest + bundle


def test_manifest_and_catalog_embeddings(tiny_bundle: Path, tiny_torch, tiny_catalog: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = read_manifest(tiny_bundle)
    assert all(k in manifest for k in REQUIRED_KEYS)
    assert manifest["precisions"] == ["fp32"]
    assert manifest["encoder"]["int8"] is None and manifest["encoder"]["int8_config"] is None
    assert manifest["encoder"]["inputs"] == ["input_ids", "attention_mask"]
    on_disk = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for name in ("fp32", "head_mf", "head_neural"):
        assert manifest["parity"][name]["passed"] is True

    bundle = load_bundle(tiny_bundle)
    source = [json.loads(line) for line in tiny_catalog.read_text().splitlines()]
    assert [it.id for it in bundle.items] == [it["id"] for it in source]
    # Row i of the embeddings is item i, although the catalog was encoded in length-sorted batches.
    module, _ = tiny_torch
    tok = onnx_export.load_tokenizer(tiny_bundle / "tokenizer", manifest["max_seq_length"])
    rows = onnx_export.tokenize(tok, [it["text"] for it in source])
    assert max(len(r) for r in rows) == manifest["max_seq_length"]  # truncation happened
    for i in (0, 7, 31, 59):
        ids, mask = pad_batch([rows[i]])
        ref = onnx_export.torch_embed(module, ids, mask)[0]
        assert np.max(np.abs(bundle.item_embeddings[i] - ref)) <= 1e-4


def test_tampered_artifact_fails_verification(tiny_int8_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_int8_bundle, copy)
    verify_bundle(copy)  # intact copy verifies
    target = copy / "encoder.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder.int8.onnx"):
        verify_bundle(copy)
    with pytest.raises(BundleError):
        load_bundle(copy)
    shutil.copyfile(tiny_int8_bundle / "encoder.int8.onnx", target)
    (copy / "items.jsonl").unlink()
    with pytest.raises(BundleError, match="items.jsonl"):
        verify_bundle(copy)


def test_forced_fp32_parity_miss_leaves_no_bundle(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    with pytest.raises(ParityError, match=r"fp32.*min_cosine.*short by") as info:
        export_bundle(
            out,
            model_dir=tiny_model_dir,
            catalog=tiny_catalog,
            precisions=("fp32",),
            tensorrt="off",
            progress=False,
            parity_overrides={"fp32": {"min_cosine": 1.5}},
        )
    assert "1.5" in str(info.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind


def test_int8_gate_miss_keeps_previous_bundle(
    tiny_int8_bundle: Path, tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    shutil.copytree(tiny_int8_bundle, out)
    before = read_manifest(out)["files"]
    with pytest.raises(ParityError, match="int8") as info:
        export_bundle(
            out,
            model_dir=tiny_model_dir,
            catalog=tiny_catalog,
            tensorrt="off",
            progress=False,
            parity_overrides={"int8": {"top10_overlap": 1.01}},
            int8_search="all",
        )
    message = str(info.value)
    for config in quantize.search_list("all"):
        assert config.name in message  # every configuration tried is reported
    assert read_manifest(out)["files"] == before
    verify_bundle(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_trained_heads_csv_catalog_and_cli(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorank.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    d = 32
    rng = np.random.default_rng(3)
    (model / heads_mod.HEADS_DIR).mkdir()
    np.savez(
        model / heads_mod.HEADS_DIR / "mf.npz",
        user_proj=rng.normal(size=(d, 8)),
        item_proj=rng.normal(size=(d, 8)),
    )
    np.savez(
        model / heads_mod.HEADS_DIR / "neural.npz",
        w1=rng.normal(size=(3 * d, 16)),
        b1=rng.normal(size=16),
        w2=rng.normal(size=16),
        b2=np.array(0.3),
    )
    catalog = tmp_path / "catalog.csv"
    with open(catalog, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i in range(25):
            writer.writerow(
                [f"p{i}", f"product {i}, a {'very ' * (i % 5)}good backpack with a laptop sleeve"]
            )
    out = tmp_path / "bundle"
    rc = main(
        [
            "export",
            "--model",
            str(model),
            "--catalog",
            str(catalog),
            "--out",
            str(out),
            "--precision",
            "fp32",
            "--tensorrt",
            "off",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precisions"] == ["fp32"] and summary["items"] == 25
    manifest = read_manifest(out)
    assert manifest["encoder"]["int8"] is None and not (out / "encoder.int8.onnx").exists()
    assert manifest["heads"]["mf"]["trained"] and manifest["heads"]["mf"]["dim"] == 8
    assert manifest["heads"]["neural"]["trained"] and manifest["heads"]["neural"]["hidden"] == 16
    with np.load(out / "head_mf.npz") as data:
        np.testing.assert_allclose(
            data["user_proj"],
            np.load(model / heads_mod.HEADS_DIR / "mf.npz")["user_proj"],
            rtol=1e-6,
        )

    rc = main(
        [
            "export",
            "--model",
            str(model),
            "--catalog",
            str(catalog),
            "--out",
            str(tmp_path / "x"),
            "--precision",
            "fp32,int4",
        ]
    )
    assert rc == 2
    assert "int4" in capsys.readouterr().err


# --------------------------------------------------------------------------- heads


def _ort_logits(path: Path, feats: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"features": feats})[0]


def test_default_heads_reproduce_similarity(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    emb = bundle.item_embeddings
    u, v = emb[:20], emb[20:40]
    cos = np.sum(u * v, axis=1)
    with np.load(tiny_bundle / "head_mf.npz") as data:
        mf = np.sum((u @ data["user_proj"]) * (v @ data["item_proj"]), axis=1)
    np.testing.assert_allclose(mf, cos, atol=1e-6)
    logits = _ort_logits(tiny_bundle / "head_neural.onnx", heads_mod.features(u, v))
    np.testing.assert_allclose(logits, heads_mod.DEFAULT_NEURAL_SCALE * cos, atol=1e-4)
    assert bundle.manifest["heads"]["neural"]["trained"] is False
    assert "untrained default" in bundle.manifest["heads"]["neural"]["note"]


@pytest.mark.parametrize("n", [1, 7, 300])
def test_neural_head_onnx_matches_numpy(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    d, h = 12, 5
    heads = heads_mod.Heads(
        user_proj=rng.normal(size=(d, 4)).astype(np.float32),
        item_proj=rng.normal(size=(d, 4)).astype(np.float32),
        w1=rng.normal(size=(3 * d, h)).astype(np.float32),
        b1=rng.normal(size=h).astype(np.float32),
        w2=rng.normal(size=h).astype(np.float32),
        b2=np.array(-0.25, np.float32),
        mf_trained=True,
        neural_trained=True,
    )
    emb = rng.normal(size=(50, d)).astype(np.float32)
    section, report = heads_mod.write_heads(tmp_path, heads, emb, parity.DEFAULT_TOLERANCES["head"])
    assert report["head_neural"]["passed"] and report["head_mf"]["passed"]
    feats = rng.normal(size=(n, 3 * d)).astype(np.float32)
    got = _ort_logits(tmp_path / section["neural"]["path"], feats)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, heads_mod.neural_reference(heads, feats), rtol=1e-5, atol=1e-5)


def test_heads_with_wrong_shapes_are_rejected(tmp_path: Path) -> None:
    (tmp_path / heads_mod.HEADS_DIR).mkdir()
    np.savez(
        tmp_path / heads_mod.HEADS_DIR / "neural.npz",
        w1=np.zeros((10, 4)),
        b1=np.zeros(4),
        w2=np.zeros(4),
        b2=np.zeros(()),
    )
    with pytest.raises(InvalidArgumentError, match=r"w1 has shape \(10, 4\), expected \(96, \?\)"):
        heads_mod.load_heads(tmp_path, 32)
    np.savez(tmp_path / heads_mod.HEADS_DIR / "mf.npz", user_proj=np.zeros((32, 4)))
    with pytest.raises(InvalidArgumentError, match="item_proj"):
        heads_mod.load_heads(tmp_path, 32)


# --------------------------------------------------------------------------- parity helpers


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 10_000))
def test_topk_overlap_bounds(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 6))
    mean, low = parity.topk_overlap(a, a)
    assert mean == low == 1.0
    b = rng.normal(size=(n, 6))
    mean, low = parity.topk_overlap(a, b)
    assert 0.0 <= low <= mean <= 1.0
    assert parity.topk_overlap(a, a * 3.0)[0] == 1.0  # scale-invariant (cosine ranking)


def test_gate_names_metric_and_gap() -> None:
    metrics = {"min_cosine": 0.97, "top10_overlap": 0.95, "max_abs_diff": 0.2}
    assert parity.gate("x", metrics, {"top10_overlap": 0.9})["passed"] is True
    with pytest.raises(
        ParityError, match=r"int8: min_cosine 0\.970000 < 0\.990000 \(short by 0\.020000\)"
    ):
        parity.gate("int8", metrics, {"min_cosine": 0.99, "top10_overlap": 0.9})
    with pytest.raises(ParityError, match="max_abs_diff 0.2 > 0.0001"):
        parity.gate("fp32", metrics, {"max_abs_diff": 1e-4})
    with pytest.raises(InvalidArgumentError, match="parity_overrides"):
        parity.resolve_tolerances({"int8": {"recall": 0.5}})


# --------------------------------------------------------------------------- bad input, TensorRT


def test_bad_inputs_are_clear_errors(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgumentError, match="catalog"):
        export_bundle(
            tmp_path / "b",
            model_dir=tiny_model_dir,
            catalog=tmp_path / "missing.jsonl",
            tensorrt="off",
        )
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(InvalidArgumentError, match="dup.jsonl"):
        export_bundle(tmp_path / "b", model_dir=tiny_model_dir, catalog=dup, tensorrt="off")
    with pytest.raises(InvalidArgumentError, match="model"):
        export_bundle(tmp_path / "b", model_dir=tmp_path, catalog=tiny_catalog, tensorrt="off")
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="not a bundle"):
        export_bundle(
            tmp_path / "notabundle", model_dir=tiny_model_dir, catalog=tiny_catalog, tensorrt="off"
        )
    assert (tmp_path / "notabundle" / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "b").exists()


def test_tensorrt_on_without_tensorrt_is_a_clear_error(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    ok, reason = tensorrt_build.tensorrt_status()
    if ok:
        pytest.skip(f"TensorRT is available here ({reason})")
    with pytest.raises(ExportError, match=r"--tensorrt on: cannot build encoder\.plan") as info:
        export_bundle(
            tmp_path / "b",
            model_dir=tiny_model_dir,
            catalog=tiny_catalog,
            tensorrt="on",
            progress=False,
        )
    assert reason in str(info.value)
    assert not tensorrt_build.resolve_mode("auto")  # auto skips instead
    assert not (tmp_path / "b").exists()


@pytest.mark.tensorrt
def test_tensorrt_plan_parity(tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path) -> None:
    ok, reason = tensorrt_build.tensorrt_status()
    if not ok:
        pytest.skip(f"TensorRT plan not testable here: {reason}")
    manifest = export_bundle(
        tmp_path / "b",
        model_dir=tiny_model_dir,
        catalog=tiny_catalog,
        precisions=("fp32", "fp16"),
        tensorrt="on",
        progress=False,
    )
    assert manifest["encoder"]["tensorrt"]["path"] == "encoder.plan"
    assert manifest["parity"]["fp16"]["min_cosine"] >= 0.995
    seqs = [p["seq"] for p in manifest["encoder"]["tensorrt"]["profiles"]]
    assert seqs[0][0] == 1 and seqs[-1][2] == manifest["max_seq_length"]
