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
from explorank.engine.int8_check import (
    check_int8,
    choose_encoder,
    measure_speed,
    sample_indices,
    timing_batch,
)
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
    static_portable = quantize.search_list("auto", "avx2", kind="static")
    assert static_portable == quantize.STATIC_PORTABLE
    assert all(c.portable and c.kind == "static" for c in static_portable)
    assert quantize.search_list("auto", "vnni", kind="static") == (
        quantize.STATIC_FULL_RANGE + quantize.STATIC_PORTABLE
    )
    assert not any(c.portable for c in quantize.STATIC_FULL_RANGE)
    with pytest.raises(InvalidArgumentError, match="int8"):
        quantize.search_list("auto", "avx2", kind="fancy")
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
    variants = manifest["encoder"]["int8_variants"]
    assert [v["kind"] for v in variants] == ["static", "dynamic"]  # the default kinds, in order
    assert manifest["encoder"]["int8"] == variants[0]["path"] == "encoder.int8.onnx"
    assert manifest["encoder"]["int8_config"]["name"] == variants[0]["name"]
    for variant, searched in zip(
        variants, (quantize.STATIC_PORTABLE, quantize.PORTABLE), strict=True
    ):
        names = [a["name"] for a in variant["attempts"]]
        assert names == [c.name for c in searched][: len(names)]
        assert variant["portable"] is True and variant["reduce_range"] is True
        assert variant["gated_on"]["int8_kernels"] == "avx2"
        assert variant["gated_on"]["forced"] is True
        assert variant["gated_on"]["flags"] == ["avx2", "fma"]
        assert variant["search"] == "auto"
        assert variant["name"] == names[-1] and variant["attempts"][-1]["passed"] is True
        assert (tmp_path / "b" / variant["path"]).is_file()
    assert manifest["parity"]["int8"]["passed"] is True


def test_export_on_a_vnni_cpu_tries_full_range_first(
    tiny_model_dir: Path, tiny_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cpu.FEATURES_ENV, VNNI)
    manifest = _export_int8(tmp_path / "b", tiny_model_dir, tiny_catalog)
    variants = {v["kind"]: v for v in manifest["encoder"]["int8_variants"]}
    for kind, full in (("static", quantize.STATIC_FULL_RANGE), ("dynamic", quantize.FULL_RANGE)):
        chosen = variants[kind]
        attempts = chosen["attempts"]
        assert attempts[0]["name"] == full[0].name
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
    assert skipped["kinds"] == ["static", "dynamic"]
    assert len(skipped["attempts"]) == len(quantize.search_list(kind="static")) + len(
        quantize.search_list()
    )
    assert not any(a["passed"] for a in skipped["attempts"])
    assert "min_cosine >= 1.01" in skipped["reason"]
    assert not list((tmp_path / "b").glob("encoder.int8*.onnx"))
    assert load_bundle(tmp_path / "b").precisions == ["fp32"]


# ----------------------------------------------------------------- the load-time check
def _broken_int8_copy(src: Path, dst: Path, only: str | None = None) -> Path:
    """A copy of ``src`` whose INT8 encoders (every variant, or the one named ``only``)
    compute wrong embeddings (their largest embedding table shuffled), with the manifest's
    checksums updated: a bundle that passed its gate somewhere but is wrong here."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for variant in manifest["encoder"]["int8_variants"]:
        if only is not None and variant["name"] != only:
            continue
        rel = variant["path"]
        model = onnx.load(str(dst / rel))
        table = max(
            (t for t in model.graph.initializer if len(t.dims) == 2 and t.data_type == 1),
            key=lambda t: t.dims[0],  # the vocabulary- or position-sized float table
        )
        arr = numpy_helper.to_array(table).copy()
        np.random.default_rng(0).shuffle(arr)
        table.CopyFrom(numpy_helper.from_array(arr, table.name))
        onnx.save(model, str(dst / rel))
        manifest["files"][rel] = sha256_file(dst / rel)
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
    # No timing: the exporter's first variant serves (the speed choice is tested below).
    config = make_config(tiny_int8_bundle, tmp_path / "s.db", backend={"speed_check_rounds": 0})
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
        overrides={
            "model": {"bundle": str(broken)},
            "backend": {"int8_check_texts": 0, "speed_check_rounds": 0},
        },
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
    config = make_config(
        tiny_int8_bundle,
        tmp_path / "s.db",
        server={"metrics_port": port},
        backend={"speed_check_rounds": 0},
    )
    with ThreadServer(config):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'explorank_encoder_precision{precision="int8"} 1.0' in body
    assert 'explorank_int8_check{measure="passed"} 1.0' in body
    assert 'explorank_int8_check{measure="min_cosine"}' in body


# --------------------------------------------------------- the per-CPU choice by speed
def _fixed(ms: dict[str, float], seen: list[list[str]] | None = None):  # type: ignore[no-untyped-def]
    """A ``measure`` that returns fixed timings by candidate label (fp32, int8 static:..,
    int8 dynamic:..), recording which candidates it was asked about."""

    def measure(candidates, ids, mask):  # type: ignore[no-untyped-def]
        assert ids.shape == mask.shape and ids.shape[1] >= 2
        if seen is not None:
            seen.append(list(candidates))
        out = {}
        for label in candidates:
            kind = "fp32" if label == "fp32" else label.split()[1].split(":")[0]
            out[label] = ms[kind] / 1000.0
        return out

    return measure


def _choose(bundle_dir: Path, measure, **backend: object):  # type: ignore[no-untyped-def]
    config = load_config(
        environ={},
        overrides={"model": {"bundle": str(bundle_dir)}, "backend": {"provider": "cpu", **backend}},
    )
    bundle = load_bundle(bundle_dir)
    return choose_encoder(
        bundle, Tokenizer.from_bundle(bundle), config.backend, max_batch_size=8, measure=measure
    )


@pytest.mark.parametrize(
    ("timings", "served", "kind"),
    [
        ({"fp32": 10.0, "static": 4.0, "dynamic": 6.0}, "int8", "static"),
        ({"fp32": 10.0, "static": 7.0, "dynamic": 5.0}, "int8", "dynamic"),
        ({"fp32": 3.0, "static": 7.0, "dynamic": 5.0}, "fp32", None),
    ],
)
def test_auto_serves_the_fastest_variant_that_passed(
    tiny_int8_bundle: Path, timings: dict[str, float], served: str, kind: str | None
) -> None:
    seen: list[list[str]] = []
    backend, choice = _choose(tiny_int8_bundle, _fixed(timings, seen))
    try:
        variants = {v["kind"]: v["name"] for v in load_bundle(tiny_int8_bundle).int8_variants()}
        assert seen == [
            ["fp32", f"int8 static:{variants['static']}", f"int8 dynamic:{variants['dynamic']}"]
        ]
        assert backend.precision == served == choice.served
        assert set(choice.checks) == {f"{k}:{n}" for k, n in variants.items()}
        assert all(c.passed for c in choice.checks.values())
        assert choice.timing_shape == (4, 64)
        assert choice.timings_ms["fp32"] == timings["fp32"]
        assert "fastest" in choice.reason and f"fp32 {timings['fp32']:.1f} ms" in choice.reason
        if kind is None:
            assert choice.variant is None
            assert choice.reason.startswith("auto: fp32 is the fastest here")
        else:
            assert choice.variant == f"{kind}:{variants[kind]}"
            assert getattr(backend, "variant", None) == choice.variant
            assert choice.reason.startswith(f"auto: int8 {kind}:{variants[kind]} is the fastest")
            assert choice.check is choice.checks[choice.variant]
    finally:
        backend.close()


def test_a_variant_that_misses_the_check_is_not_timed(
    tiny_int8_bundle: Path, tmp_path: Path
) -> None:
    static = load_bundle(tiny_int8_bundle).int8_variant()
    assert static["kind"] == "static"
    broken = _broken_int8_copy(tiny_int8_bundle, tmp_path / "broken", only=static["name"])
    seen: list[list[str]] = []
    backend, choice = _choose(broken, _fixed({"fp32": 9.0, "static": 1.0, "dynamic": 5.0}, seen))
    try:
        assert [c.split(":")[0] for c in seen[0]] == ["fp32", "int8 dynamic"]
        assert choice.served == "int8" and choice.variant is not None
        assert choice.variant.startswith("dynamic:")
        assert not choice.checks[f"static:{static['name']}"].passed
    finally:
        backend.close()


def test_a_named_variant_serves_alone_and_int8_is_not_raced_against_fp32(
    tiny_int8_bundle: Path,
) -> None:
    dynamic = [v for v in load_bundle(tiny_int8_bundle).int8_variants() if v["kind"] == "dynamic"][
        0
    ]
    seen: list[list[str]] = []
    backend, choice = _choose(
        tiny_int8_bundle,
        _fixed({"fp32": 1.0, "static": 9.0, "dynamic": 9.0}, seen),
        precision="int8",
        int8_variant=dynamic["name"],
    )
    try:
        assert seen == []  # one candidate, and precision=int8 never falls back to fp32
        assert choice.served == "int8" and choice.variant == f"dynamic:{dynamic['name']}"
    finally:
        backend.close()
    with pytest.raises(Exception, match="no INT8 variant 'nope'"):
        _choose(tiny_int8_bundle, None, int8_variant="nope")


def test_measure_speed_keeps_each_backends_fastest_call() -> None:
    class Fake:
        def __init__(self, name: str, log: list[str]) -> None:
            self.name, self.log = name, log

        def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            self.log.append(self.name)
            return ids

    log: list[str] = []
    clock = iter(range(1000))
    durations = {"a": [5, 3, 4], "b": [2, 6, 7]}
    calls = {"a": 0, "b": 0}
    now = [0.0]

    def timer() -> float:
        # The time advances by the duration of the call that the last encode made.
        next(clock)
        return now[0]

    class Timed(Fake):
        def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            out = super().encode(ids, mask)
            if len(self.log) % 2 == 0:  # every other call is timed; the untimed ones cost 100
                now[0] += durations[self.name][calls[self.name]]
                calls[self.name] += 1
            else:
                now[0] += 100
            return out

    ids = np.ones((2, 4), dtype=np.int64)
    best = measure_speed(
        {"a": Timed("a", log), "b": Timed("b", log)},  # type: ignore[dict-item]
        ids,
        ids,
        rounds=3,
        timer=timer,
    )
    assert best == {"a": 3, "b": 2}  # no untimed call counted
    # each timed call right after an untimed one of the same backend; the first rotates
    assert log == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]


def test_timing_batch_is_real_catalog_tokens(tiny_int8_bundle: Path) -> None:
    bundle = load_bundle(tiny_int8_bundle)
    tok = Tokenizer.from_bundle(bundle)
    ids, mask = timing_batch(bundle, tok)
    again, _ = timing_batch(bundle, tok)
    assert ids.shape == (4, 64) and mask.all() and np.array_equal(ids, again)
    first = tok.encode_batch(["x"])[0]
    assert (ids[:, 0] == first[0]).all() and (ids[:, -1] == first[-1]).all()
    assert len(np.unique(ids[:, 1:-1])) > 10 and tok.pad_id not in ids


# ------------------------------------------------------------------- static INT8
def _stability(
    backend: object, rows: list[np.ndarray], buckets: tuple[int, ...]
) -> dict[str, float]:
    from explorank.engine.tokenizer import pad_batch

    encode = backend.encode  # type: ignore[attr-defined]
    ids, mask = pad_batch(rows[:32])
    together = encode(ids, mask)
    worst = {"batch": 0.0, "padded": 0.0}
    for i, row in enumerate(rows[:32]):
        alone = encode(*pad_batch([row]))[0]
        worst["batch"] = max(worst["batch"], float(np.abs(alone - together[i]).max()))
        for length in buckets:
            if length < len(row):
                continue
            pid = np.zeros((1, length), dtype=np.int64)
            pmask = np.zeros((1, length), dtype=np.int64)
            pid[0, : len(row)], pmask[0, : len(row)] = row, 1
            worst["padded"] = max(
                worst["padded"], float(np.abs(alone - encode(pid, pmask)[0]).max())
            )
    return worst


def test_static_int8_embeddings_do_not_depend_on_batch_or_padding(tiny_int8_bundle: Path) -> None:
    """The same text alone, in a batch of 32 and padded to every length bucket: the static
    variant's embeddings agree to 1e-6; the dynamic variant's do not (which shows the check
    can see the difference)."""
    from explorank.engine.backends import create_backend
    from explorank.engine.config import BatchingConfig

    bundle = load_bundle(tiny_int8_bundle)
    rows = Tokenizer.from_bundle(bundle).encode_batch([it.text for it in bundle.items])
    rows = sorted(rows, key=len)[:: max(1, len(rows) // 32)][:32]
    assert len(rows) == 32 and len({len(r) for r in rows}) > 5
    buckets = tuple(BatchingConfig().length_buckets)
    by_kind = {v["kind"]: v for v in bundle.int8_variants()}
    static = create_backend(
        bundle, precision="int8", provider="cpu", int8_variant=by_kind["static"]["name"]
    )
    dynamic = create_backend(
        bundle, precision="int8", provider="cpu", int8_variant=by_kind["dynamic"]["name"]
    )
    try:
        worst = _stability(static, rows, buckets)
        assert worst["batch"] <= 1e-6 and worst["padded"] <= 1e-6, worst
        moved = _stability(dynamic, rows, buckets)
        assert max(moved.values()) > 1e-4, moved
    finally:
        static.close()
        dynamic.close()


def test_static_calibration_never_sees_the_held_out_texts(tiny_int8_bundle: Path) -> None:
    from explorank.export import static_int8

    val = sample_indices(60, 512)
    cal, held = static_int8.split_catalog(60, val, 256)  # a small catalog: split in two
    assert len(cal) and len(held) and not set(cal) & set(held)
    big_val = sample_indices(3000, 512)
    cal, held = static_int8.split_catalog(3000, big_val, 256)
    assert len(cal) == 256 and held.tolist() == big_val.tolist()
    assert not set(cal.tolist()) & set(big_val.tolist())
    calib, held_generic = static_int8.split_generic(static_int8.generic_texts())
    assert len(calib) >= 150 and len(held_generic) >= 150 and not set(calib) & set(held_generic)

    manifest = read_manifest(tiny_int8_bundle)
    static = manifest["encoder"]["int8_variants"][0]
    note = static["calibration"]
    assert note["held_out_generic_texts"] == len(held_generic)
    assert note["generic_texts"] == len(calib)
    held_out = static["parity"]["held_out"]
    assert set(held_out) == {"held_out_catalog", "held_out_generic"}
    assert held_out["held_out_generic"]["n"] == len(held_generic)
    assert held_out["held_out_catalog"]["n"] == note["held_out_catalog_texts"]
    assert manifest["parity"]["int8"]["held_out"] == held_out


def test_a_variant_that_fails_only_on_held_out_texts_is_refused(
    tiny_int8_bundle: Path, tmp_path: Path
) -> None:
    """The gate covers every set: catalog metrics that pass do not save a configuration
    whose held-out metrics miss."""
    from explorank.engine.parity import embedding_metrics
    from explorank.export.pipeline import encode_sorted, ort_runner

    bundle = load_bundle(tiny_int8_bundle)
    tok = Tokenizer.from_bundle(bundle)
    rows = [r.tolist() for r in tok.encode_batch([it.text for it in bundle.items])]
    reference = bundle.item_embeddings
    drifted = reference + np.random.default_rng(1).normal(0, 0.2, reference.shape)

    def evaluate(path: Path) -> dict[str, dict[str, float]]:
        out = encode_sorted(rows, ort_runner(path), batch_size=16)
        return {
            "catalog": embedding_metrics(reference, out),
            "held_out_generic": embedding_metrics(drifted, out),  # misses
        }

    src = quantize.Sources(
        fused=bundle.path / "encoder.onnx",
        raw=None,
        num_heads=2,
        hidden_size=bundle.embedding_dim,
        calibration=rows[::2],
        workdir=tmp_path,
    )
    config = quantize.configs_by_name(["static_portable_fused_attention"])
    tolerances = {"min_cosine": 0.99, "top10_overlap": 0.9}
    catalog_only = quantize.search(
        src,
        tmp_path / "ok.onnx",
        evaluate=lambda p: {"catalog": evaluate(p)["catalog"]},
        tolerances=tolerances,
        configs=config,
    )
    assert catalog_only[0][1]["passed"] is True  # it passes on the catalog alone
    with pytest.raises(quantize.Int8GateError, match="held_out_generic") as info:
        quantize.search(
            src, tmp_path / "int8.onnx", evaluate=evaluate, tolerances=tolerances, configs=config
        )
    (attempt,) = info.value.attempts
    assert attempt["passed"] is False and attempt["min_cosine"] >= 0.99
    assert attempt["held_out"]["held_out_generic"]["min_cosine"] < 0.99
    assert not (tmp_path / "int8.onnx").exists()
