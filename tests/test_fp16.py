"""The fp16 ONNX encoder: conversion (keep_io_types, blocked ops, fp32 pooling head), its
export gate, and the manifest/bundle entry (old bundles without it still load).

Everything here runs on the CPU: ONNX Runtime's CPU EP runs the fp16 graph (it computes ops
that lack fp16 CPU kernels in fp32), which is what the export gate measures where there is
no GPU. The GPU numerics are tested by the ``gpu``-marked tests in test_gpu_path.py.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto

from explorank.engine.bundle import load_bundle
from explorank.engine.manifest import parse_manifest
from explorank.errors import BundleError
from explorank.export import fp16 as fp16_mod

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _types(model: Any) -> dict[str, int]:
    """Element type of every named tensor the converted model describes."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_fp16_encoder_keeps_io_types_and_fp32_pooling(tiny_fp16_bundle: Path) -> None:
    import onnx

    fp32 = onnx.load(str(tiny_fp16_bundle / "encoder.onnx"))
    fp16 = onnx.load(str(tiny_fp16_bundle / "encoder.fp16.onnx"))
    io = {v.name: v.type.tensor_type.elem_type for v in (*fp16.graph.input, *fp16.graph.output)}
    assert io == {
        "input_ids": TensorProto.INT64,
        "attention_mask": TensorProto.INT64,
        "embedding": TensorProto.FLOAT,
    }
    assert {v.name: v.type.tensor_type.elem_type for v in fp32.graph.input} == {
        k: v for k, v in io.items() if k != "embedding"
    }
    # every float weight of the encoder is fp16 now; none is left in fp32 but the pooling
    # head's constants
    types = _types(fp16)
    by_op: dict[str, set[int]] = {}
    for node in fp16.graph.node:
        for name in node.input:
            if name in {t.name for t in fp16.graph.initializer}:
                by_op.setdefault(node.op_type, set()).add(types[name])
    for op in ("MatMul", "Attention", "SkipLayerNormalization", "EmbedLayerNormalization"):
        assert by_op[op] - {TensorProto.INT64, TensorProto.INT32} == {TensorProto.FLOAT16}, op
    # the pooling head (masked mean, L2 norm) computes in fp32
    head = {n.name: n for n in fp16.graph.node if n.name in set(fp16_mod.pooling_head(fp32))}
    reduce_ops = [n for n in fp16.graph.node if n.op_type in ("ReduceSum", "ReduceL2", "Div")]
    assert len(reduce_ops) >= 3 and all(n.name in head for n in reduce_ops)
    for node in reduce_ops:
        assert types[node.input[0]] == TensorProto.FLOAT, node.name
        assert types[node.output[0]] == TensorProto.FLOAT, node.name
    n_init = sum(1 for t in fp16.graph.initializer if t.data_type == TensorProto.FLOAT16)
    assert n_init >= 10


def test_op_block_list_keeps_unfused_sensitive_ops_fp32(tmp_path: Path) -> None:
    """An unfused LayerNormalization and Softmax (absent from a fused BERT, present in a
    partially fused one) stay fp32; the MatMul between them is converted."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    d = 8
    inits = [
        numpy_helper.from_array(rng.normal(size=(20, d)).astype(np.float32), "emb"),
        numpy_helper.from_array(np.ones(d, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(d, np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=(d, d)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"], name="gather"),
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "w"], ["h"], name="matmul"),
        helper.make_node("Softmax", ["h"], ["embedding"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", "s", d])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "g.onnx"))
    info = fp16_mod.convert_encoder_fp16(
        tmp_path / "g.onnx", tmp_path / "g16.onnx", keep_pooling_fp32=False
    )
    assert set(info["blocked_ops_in_graph"]) == {"LayerNormalization", "Softmax"}
    out = onnx.load(str(tmp_path / "g16.onnx"))
    types = _types(out)
    node = {n.name: n for n in out.graph.node}
    assert types["gamma"] == TensorProto.FLOAT and types["w"] == TensorProto.FLOAT16
    assert types[node["ln"].input[0]] == TensorProto.FLOAT
    assert types[node["matmul"].input[1]] == TensorProto.FLOAT16
    assert types[node["softmax"].input[0]] == TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT

    # without the block list, both are converted (the list is what keeps them fp32)
    fp16_mod.convert_encoder_fp16(
        tmp_path / "g.onnx", tmp_path / "all16.onnx", op_block_list=[], keep_pooling_fp32=False
    )
    assert _types(onnx.load(str(tmp_path / "all16.onnx")))["gamma"] == TensorProto.FLOAT16


def test_duplicate_nodes_from_older_converters_are_dropped(tmp_path: Path) -> None:
    """ONNX Runtime <= 1.31's converter emits the same Cast twice when an fp16 tensor feeds two
    fp32 nodes (our masked-mean pooling does): such a graph does not load until deduplicated."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    cast = helper.make_node(
        "Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="x_cast_to_fp32_node"
    )
    nodes = [
        cast,
        helper.make_node("Relu", ["x32"], ["a"], name="relu"),
        copy.deepcopy(cast),
        helper.make_node("Add", ["a", "x32"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        value_info=[helper.make_tensor_value_info("x32", TensorProto.FLOAT, [2])] * 2,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(Exception, match="same node name"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert fp16_mod.drop_duplicate_nodes(model) == 1
    assert [n.name for n in model.graph.node] == ["x_cast_to_fp32_node", "relu", "add"]
    assert len(model.graph.value_info) == 1
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": np.array([-1.0, 2.0], np.float16)})[0]
    np.testing.assert_array_equal(out, [-1.0, 4.0])
    assert fp16_mod.drop_duplicate_nodes(model) == 0


def test_export_gate_and_manifest_entry(tiny_fp16_bundle: Path) -> None:
    manifest = json.loads((tiny_fp16_bundle / "manifest.json").read_text())
    enc = manifest["encoder"]
    assert enc["fp16"] == "encoder.fp16.onnx" and enc["tensorrt"] is None
    assert enc["fp16_config"]["keep_io_types"] is True
    assert enc["fp16_config"]["onnxruntime"] and enc["fp16_config"]["duplicate_nodes_dropped"] >= 0
    assert "encoder.fp16.onnx" in manifest["files"]
    assert manifest["precisions"] == ["fp32", "fp16"]
    gate = manifest["parity"]["fp16_onnx"]
    assert gate["passed"] is True and gate["tolerances"] == {"min_cosine": 0.995}
    assert gate["min_cosine"] >= 0.995 and gate["n"] == manifest["validation"]["texts"]
    # where it ran: the CUDA EP on a GPU machine with onnxruntime-gpu, else the CPU EP, and
    # then the note says what that does not cover
    provider, note = fp16_mod.gate_device()
    assert gate["measured_on"] == provider and gate["note"] == note
    if provider == "CPUExecutionProvider":
        assert "checked at load" in gate["note"]


def test_bundle_round_trip_with_fp16(tiny_fp16_bundle: Path) -> None:
    b = load_bundle(tiny_fp16_bundle)
    assert b.has_fp16_onnx() and not b.has_tensorrt_plan()
    assert b.encoder_path("fp16").name == "encoder.fp16.onnx"
    with pytest.raises(BundleError, match="no TensorRT plan"):
        b.plan_path()
    # the fp16 ONNX runs on the CPU EP and stays close to the stored fp32 embeddings
    import onnxruntime as ort

    from explorank.engine.tokenizer import Tokenizer

    sess = ort.InferenceSession(str(b.encoder_path("fp16")), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_bundle(b)
    ids, mask = tok.pad(tok.encode_batch([it.text for it in b.items[:16]]))
    out = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    assert out.dtype == np.float32
    ref = b.item_embeddings[:16]
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.995


def test_old_bundle_without_fp16_still_loads(tiny_bundle: Path, tmp_path: Path) -> None:
    b = load_bundle(tiny_bundle)
    assert "fp16" not in b.manifest["encoder"] and not b.has_fp16_onnx()
    with pytest.raises(BundleError, match="no fp16 ONNX encoder"):
        b.encoder_path("fp16")


def test_manifest_validation_of_the_fp16_entry(tiny_fp16_bundle: Path, tmp_path: Path) -> None:
    data = json.loads((tiny_fp16_bundle / "manifest.json").read_text())
    assert parse_manifest(copy.deepcopy(data)).encoder.fp16 == "encoder.fp16.onnx"
    # precisions lists fp16 with neither the fp16 ONNX nor a plan
    broken = copy.deepcopy(data)
    del broken["encoder"]["fp16"]
    with pytest.raises(BundleError, match="neither encoder.fp16 nor encoder.tensorrt"):
        parse_manifest(broken)
    # the fp16 file must be listed with its sha256, and confined to the bundle
    unlisted = copy.deepcopy(data)
    del unlisted["files"]["encoder.fp16.onnx"]
    with pytest.raises(BundleError, match=r"encoder\.fp16 references"):
        parse_manifest(unlisted)
    escaping = copy.deepcopy(data)
    escaping["encoder"]["fp16"] = "../encoder.fp16.onnx"
    with pytest.raises(BundleError, match=r"\.\."):
        parse_manifest(escaping)
    # a tampered fp16 file fails the checksum at load
    copy_dir = tmp_path / "b"
    shutil.copytree(tiny_fp16_bundle, copy_dir)
    with open(copy_dir / "encoder.fp16.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="encoder.fp16.onnx fails checksum"):
        load_bundle(copy_dir)


def test_fp16_gate_miss_fails_or_is_skipped(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    """An impossible tolerance: the export fails with the fp16 gate named, or (with
    fp16_required=False) writes a bundle without the fp16 encoder and says why."""
    from explorank.errors import ParityError
    from explorank.export.pipeline import export_bundle

    kwargs: dict[str, Any] = dict(
        model_dir=tiny_model_dir,
        catalog=tiny_catalog,
        precisions=("fp32", "fp16"),
        tensorrt="off",
        progress=False,
        parity_overrides={"fp16": {"min_cosine": 1.01}},
    )
    with pytest.raises(ParityError, match=r"fp16 \(encoder.fp16.onnx\).*min_cosine"):
        export_bundle(tmp_path / "a", **kwargs)
    assert not (tmp_path / "a").exists()
    manifest = export_bundle(tmp_path / "b", fp16_required=False, **kwargs)
    assert manifest["precisions"] == ["fp32"]
    assert (
        "fp16" not in manifest["encoder"]
        and "min_cosine" in manifest["encoder"]["fp16_skipped"]["reason"]
    )
    assert not (tmp_path / "b" / "encoder.fp16.onnx").exists()
    assert not load_bundle(tmp_path / "b").has_fp16_onnx()
