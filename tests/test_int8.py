"""INT8 on every CPU: the CPU-dependent search at export, the record in the manifest, and the
load-time check on the serving CPU (fall back to fp32 under ``auto``, refuse under ``int8``).

The CPU is injected with ``EXPLORANK_CPU_FEATURES`` so that both branches (VNNI and AVX2-only)
run on whatever machine runs the suite; the assertions hold on both kinds of CPU.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from server_harness import ThreadServer, make_config

from explorank.engine import cpu
from explorank.engine.bundle import load_bundle, read_manifest, sha256_file
from explorank.engine.config import load_config
from explorank.engine.int8_check import check_int8, choose_encoder, sample_indices
from explorank.engine.pipeline import Engine
from explorank.engine.tokenizer import Tokenizer
from explorank.errors import ConfigError, InvalidArgumentError
from explorank.export import quantize
from explorank.export.pipeline import export_bundle
from explorank.v1 import ranker_pb2, ranker_pb2_grpc

VNNI = "avx2,fma,avx512f,avx512bw,avx512_vnni"
AVX2 = "avx2,fma"


# ------------------------------------------------------------------------------ the CPU
def test_int8_kernel_family_from_flags() -> None:
    assert cpu.int8_kernels(frozenset({"avx2", "avx512f", "avx512_vnni"})) == "vnni"
    assert cpu.int8_kernels(frozenset({"avx2", "avx_vnni"})) == "vnni"
    assert cpu.int8_kernels(frozenset({"avx2", "amx_int8"})) == "vnni"
    assert cpu.int8_kernels(frozenset({"avx2", "fma"})) == "avx2"
    assert cpu.int8_kernels(frozenset({"avx512f", "avx512bw"})) == "avx2"  # AVX-512, no VNNI
    assert cpu.int8_kernels(frozenset({"asimd", "asimddp"})) == "other"  # ARM


def test_cpu_flags_read_from_cpuinfo_and_overridden_by_env(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 fma avx512f\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 fma avx512f\n"
    )
    desc = cpu.cpu_description(tmp_path, environ={})
    assert desc == {
        "model": "Test CPU 9000",
        "flags": ["avx2", "fma", "avx512f"],
        "int8_kernels": "avx2",
        "forced": False,
    }
    forced = cpu.cpu_description(tmp_path, environ={cpu.FEATURES_ENV: "AVX2, avx512_vnni"})
    assert forced["int8_kernels"] == "vnni" and forced["forced"] is True
    assert cpu.cpu_features(tmp_path, environ={cpu.FEATURES_ENV: ""}) == frozenset()


# --------------------------------------------------------------------- the export search
def test_search_lists_per_cpu() -> None:
    portable = quantize.search_list("auto", "avx2")
    everything = quantize.search_list("auto", "vnni")
    assert portable and all(c.portable for c in portable)
    assert everything[: len(quantize.FULL_RANGE)] == quantize.FULL_RANGE
    assert not any(c.portable for c in quantize.FULL_RANGE)
    assert everything[len(quantize.FULL_RANGE) :] == portable
    assert quantize.search_list("auto", "other") == everything
    assert quantize.search_list("portable", "vnni") == portable  # forced on a VNNI CPU
    assert quantize.search_list("all", "avx2") == everything
    with pytest.raises(InvalidArgumentError, match="int8_search"):
        quantize.search_list("fastest")


def _export_int8(out: Path, model_dir: Path, catalog: Path, **kwargs: object) -> dict:  # type: ignore[type-arg]
    return export_bundle(
        out,
        model_dir=model_dir,
        catalog=catalog,
        precisions=("fp32", "int8"),
        tensorrt="off",
        progress=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_export_on_an_avx2_cpu_tries_only_portable_configs(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cpu.FEATURES_ENV, AVX2)
    manifest = _export_int8(tmp_path / "b", tiny_model_dir, tiny_catalog)
    chosen = manifest["encoder"]["int8_config"]
    names = [a["name"] for a in chosen["attempts"]]
    assert names == [c.name for c in quantize.PORTABLE][: len(names)]
    assert chosen["portable"] is True and chosen["reduce_range"] is True
    assert chosen["gated_on"]["int8_kernels"] == "avx2" and chosen["gated_on"]["forced"] is True
    assert chosen["gated_on"]["flags"] == ["avx2", "fma"]
    assert chosen["search"] == "auto"
    assert chosen["name"] == names[-1] and chosen["attempts"][-1]["passed"] is True
    assert manifest["parity"]["int8"]["passed"] is True


def test_export_on_a_vnni_cpu_tries_full_range_first(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cpu.FEATURES_ENV, VNNI)
    manifest = _export_int8(tmp_path / "b", tiny_model_dir, tiny_catalog)
    chosen = manifest["encoder"]["int8_config"]
    attempts = chosen["attempts"]
    assert attempts[0]["name"] == quantize.FULL_RANGE[0].name
    assert attempts[0]["portable"] is False
    assert chosen["gated_on"]["int8_kernels"] == "vnni"
    # Whichever passed first was kept; on a real AVX2-only CPU the full-range configuration
    # may miss here (its sums saturate), and a portable one is chosen instead.
    first_pass = next(a for a in attempts if a["passed"])
    assert chosen["name"] == first_pass["name"] == attempts[-1]["name"]


def test_int8_optional_export_writes_an_fp32_bundle_when_every_config_misses(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    manifest = _export_int8(
        tmp_path / "b",
        tiny_model_dir,
        tiny_catalog,
        parity_overrides={"int8": {"min_cosine": 1.01}},
        int8_required=False,
    )
    assert manifest["precisions"] == ["fp32"]
    assert manifest["encoder"]["int8"] is None
    skipped = manifest["encoder"]["int8_skipped"]
    assert len(skipped["attempts"]) == len(quantize.search_list())
    assert not any(a["passed"] for a in skipped["attempts"])
    assert "min_cosine >= 1.01" in skipped["reason"]
    assert not (tmp_path / "b" / "encoder.int8.onnx").exists()
    assert load_bundle(tmp_path / "b").precisions == ["fp32"]


# ----------------------------------------------------------------- the load-time check
def _broken_int8_copy(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose INT8 encoder computes wrong embeddings (its word embedding
    table shuffled), with the manifest's checksum updated: a bundle that passed its gate
    somewhere but is wrong here."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "encoder.int8.onnx"))
    table = max(
        (t for t in model.graph.initializer if len(t.dims) == 2),
        key=lambda t: t.dims[0],  # the vocabulary-sized table
    )
    arr = numpy_helper.to_array(table).copy()
    np.random.default_rng(0).shuffle(arr)
    table.CopyFrom(numpy_helper.from_array(arr, table.name))
    onnx.save(model, str(dst / "encoder.int8.onnx"))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["encoder.int8.onnx"] = sha256_file(dst / "encoder.int8.onnx")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_sample_is_the_exports_validation_sample(tiny_int8_bundle: Path) -> None:
    manifest = read_manifest(tiny_int8_bundle)
    n = manifest["catalog"]["count"]
    idx = sample_indices(n, 512)
    assert idx.tolist() == list(range(n))  # the tiny catalog is smaller than the sample
    big = sample_indices(3000, 512)
    assert big.shape == (512,) and big[0] == 0 and big[-1] == 2999
    assert np.all(np.diff(big) > 0)
    assert sample_indices(0, 512).shape == (0,)


def test_gated_int8_passes_the_load_time_check(tiny_int8_bundle: Path, tmp_path: Path) -> None:
    config = make_config(tiny_int8_bundle, tmp_path / "s.db")
    assert config.backend.precision == "auto"
    engine = Engine.from_config(config)
    choice = engine.precision_choice
    assert choice.served == "int8" and engine.backend.precision == "int8"
    assert choice.check is not None and choice.check.passed
    assert choice.check.texts == read_manifest(tiny_int8_bundle)["catalog"]["count"]
    assert choice.check.metrics["min_cosine"] >= 0.99
    assert choice.check.kernels == cpu.int8_kernels()
    info = engine.info()
    assert info["precision"] == "int8" and "passed" in info["precision_reason"]
    assert info["int8_gate"]["passed"] is True
    assert info["int8_gate"]["min_cosine_required"] == 0.99
    engine.backend.close()


def test_int8_that_misses_on_this_cpu_serves_fp32_and_says_why(
    tiny_int8_bundle: Path, tmp_path: Path
) -> None:
    broken = _broken_int8_copy(tiny_int8_bundle, tmp_path / "broken")
    config = make_config(broken, tmp_path / "s.db", server={"metrics_port": 0})
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        info = stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=10)
        assert info.precision == "fp32"
        assert "missed the load-time check" in info.precision_reason
        assert "serving fp32" in info.precision_reason
        assert info.HasField("int8_gate") and not info.int8_gate.passed
        assert info.int8_gate.min_cosine < info.int8_gate.min_cosine_required == 0.99
        assert info.int8_gate.int8_config == read_manifest(broken)["encoder"]["int8_config"]["name"]
        resp = stub.Rank(ranker_pb2.RankRequest(context_text="still serving", top_k=3), timeout=10)
        assert len(resp.items) == 3
        metrics = srv.engine.metrics
        assert metrics.int8_check.labels("passed")._value.get() == 0.0
        assert metrics.precision.labels("fp32")._value.get() == 1.0


def test_int8_that_misses_fails_start_up_when_set_explicitly(
    tiny_int8_bundle: Path, tmp_path: Path
) -> None:
    broken = _broken_int8_copy(tiny_int8_bundle, tmp_path / "broken")
    config = make_config(broken, tmp_path / "s.db", backend={"precision": "int8"})
    with pytest.raises(ConfigError) as info:
        Engine.from_config(config)
    message = str(info.value)
    assert message.startswith("precision=int8: the bundle's INT8 encoder misses")
    assert "min_cosine 0." in message and "< 0.990000" in message  # the measured numbers
    assert "--int8-search portable" in message


def test_check_can_be_switched_off(tiny_int8_bundle: Path, tmp_path: Path) -> None:
    broken = _broken_int8_copy(tiny_int8_bundle, tmp_path / "broken")
    config = load_config(
        environ={},
        overrides={"model": {"bundle": str(broken)}, "backend": {"int8_check_texts": 0}},
    )
    bundle = load_bundle(broken)
    backend, choice = choose_encoder(
        bundle, Tokenizer.from_bundle(bundle), config.backend, max_batch_size=8
    )
    assert backend.precision == "int8" and choice.check is None
    assert "not checked" in choice.reason
    backend.close()


def test_check_measures_what_the_backend_computes(tiny_int8_bundle: Path) -> None:
    """The check compares against the stored fp32 embeddings: the fp32 encoder itself
    reproduces them (cosine ~1), so the check is about the INT8 encoder, not the sample."""
    from explorank.engine.backends import create_backend

    bundle = load_bundle(tiny_int8_bundle)
    tok = Tokenizer.from_bundle(bundle)
    fp32 = create_backend(bundle, precision="fp32", provider="cpu")
    result = check_int8(fp32, tok, bundle, texts=16)
    assert result.passed and result.texts == 16
    assert result.metrics["min_cosine"] > 0.9999 and result.metrics["top10_overlap"] == 1.0


def test_metrics_endpoint_exports_the_check(tiny_int8_bundle: Path, tmp_path: Path) -> None:
    from server_harness import free_port

    port = free_port()
    config = make_config(tiny_int8_bundle, tmp_path / "s.db", server={"metrics_port": port})
    with ThreadServer(config):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'explorank_encoder_precision{precision="int8"} 1.0' in body
    assert 'explorank_int8_check{measure="passed"} 1.0' in body
    assert 'explorank_int8_check{measure="min_cosine"}' in body
