"""The GPU path: which encoder and provider serve (GPU availability injected), the load-time
fp16 check and the CUDA-graph hook (stand-in backends), and, marked ``gpu``, the real thing
on ONNX Runtime's CUDA execution provider (skipped with a reason without a GPU and
onnxruntime-gpu; scripts/gpu-check.sh runs them on a GPU machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import explorank.engine.backends as backends_mod
from explorank.engine.backends import create_backend, fp16_route
from explorank.engine.backends.base import cuda_device_count, cuda_ep_usable
from explorank.engine.bundle import Bundle, load_bundle
from explorank.engine.config import Config
from explorank.engine.gpu import check_fp16, finish_gpu_encoder, graph_plan
from explorank.engine.int8_check import PrecisionChoice
from explorank.engine.tokenizer import Tokenizer
from explorank.errors import ConfigError

ALL_EPS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_ONLY = ["CPUExecutionProvider"]
HAS_GPU = cuda_device_count() > 0
HAS_CUDA_EP = cuda_ep_usable()
needs_cuda_ep = pytest.mark.skipif(
    not HAS_CUDA_EP,
    reason="needs an NVIDIA GPU and onnxruntime-gpu (CUDAExecutionProvider); "
    "run scripts/gpu-check.sh on a GPU machine"
    if HAS_GPU
    else "needs an NVIDIA GPU with CUDA (none here); run scripts/gpu-check.sh on a GPU machine",
)
no_gpu_only = pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU path; a GPU is present")


# ------------------------------------------------------------------ provider selection
def route(provider: str, **kw: Any) -> tuple[str, str]:
    args: dict[str, Any] = dict(has_fp16_onnx=True, gpus=1, available=ALL_EPS, trt_usable=False)
    args.update(kw)
    return fp16_route(provider, **args)


def test_fp16_route_serves_the_fp16_onnx_on_cuda() -> None:
    assert route("cuda") == ("fp16", "cuda")
    assert route("auto") == ("fp16", "cuda")  # TensorRT's EP is listed, but not installed
    assert route("auto", available=ALL_EPS[1:]) == ("fp16", "cuda")
    # with TensorRT installed, auto keeps the TensorRT EP (fp32 graph, FP16 flag)
    assert route("auto", trt_usable=True) == ("fp32", "tensorrt")
    assert route("tensorrt") == ("fp32", "tensorrt")
    assert route("cuda", trt_usable=True) == ("fp16", "cuda")


@pytest.mark.parametrize(
    ("provider", "kw", "match"),
    [
        ("cpu", {}, r"runs on an NVIDIA GPU only; set backend\.provider"),
        ("cuda", {"gpus": 0}, r"needs an NVIDIA GPU.*set backend\.precision"),
        ("auto", {"gpus": 0}, r"needs an NVIDIA GPU.*set backend\.precision"),
        ("cuda", {"available": CPU_ONLY}, r"needs onnxruntime-gpu.*explorank\[gpu\]"),
        ("cuda", {"has_fp16_onnx": False}, r"has none.*--precision fp32,int8,fp16"),
    ],
)
def test_fp16_route_errors_name_the_setting(provider: str, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        route(provider, **kw)


def _bundle_with_fp16(tiny_fp16_bundle: Path) -> Bundle:
    return load_bundle(tiny_fp16_bundle)


def test_auto_precision_on_a_gpu_picks_fp16(
    tiny_fp16_bundle: Path, tiny_int8_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp16_bundle = _bundle_with_fp16(tiny_fp16_bundle)
    int8_bundle = load_bundle(tiny_int8_bundle)
    monkeypatch.setattr(backends_mod, "cuda_ep_usable", lambda: True)
    assert backends_mod._auto_precision(fp16_bundle, "auto", "auto") == "fp16"
    assert backends_mod._auto_precision(fp16_bundle, "onnxruntime", "cuda") == "fp16"
    # the TensorRT EP builds its own fp16 from the fp32 graph: auto stays fp32 there
    assert backends_mod._auto_precision(fp16_bundle, "auto", "tensorrt") == "fp32"
    # a GPU but no fp16 encoder in the bundle: fp32 (INT8 is a CPU encoder)
    assert backends_mod._auto_precision(int8_bundle, "auto", "auto") == "fp32"
    assert backends_mod._auto_precision(fp16_bundle, "auto", "cpu") == "fp32"
    assert backends_mod._auto_precision(int8_bundle, "auto", "cpu") == "int8"
    monkeypatch.setattr(backends_mod, "cuda_ep_usable", lambda: False)
    assert backends_mod._auto_precision(fp16_bundle, "auto", "auto") == "fp32"
    assert backends_mod._auto_precision(int8_bundle, "auto", "auto") == "int8"


@no_gpu_only
def test_without_a_gpu_fp16_is_a_clear_error_and_auto_runs_on_cpu(tiny_fp16_bundle: Path) -> None:
    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    for provider in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"needs an NVIDIA GPU.*backend\.precision"):
            create_backend(bundle, precision="fp16", provider=provider)
    with pytest.raises(ConfigError, match=r"backend\.provider"):
        create_backend(bundle, precision="fp16", provider="cpu")
    auto = create_backend(bundle, precision="auto")
    assert auto.precision == "fp32" and auto.provider == "CPUExecutionProvider"
    assert auto.describe()["model"] == "encoder.onnx"


def test_gpu_without_onnxruntime_gpu_is_a_clear_error(
    tiny_fp16_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU is present but this onnxruntime is the CPU build (the GPU machine as delivered)."""
    import onnxruntime as ort

    monkeypatch.setattr(backends_mod, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(CPU_ONLY))
    with pytest.raises(ConfigError, match="needs onnxruntime-gpu"):
        create_backend(_bundle_with_fp16(tiny_fp16_bundle), precision="fp16", provider="cuda")


# ------------------------------------------------------------------ load-time fp16 check
class StandIn:
    """A backend that claims to be fp16 on the CUDA EP and computes with the fp32 CPU encoder
    plus noise of a chosen size (to pass or miss the fp16 gate)."""

    def __init__(self, bundle: Bundle, noise: float, precision: str = "fp16") -> None:
        self._inner = create_backend(bundle, precision="fp32", provider="cpu")
        self._rng = np.random.default_rng(0)
        self.noise = noise
        self.name = "onnxruntime"
        self.provider = "CUDAExecutionProvider"
        self.precision = precision
        self.embedding_dim = bundle.embedding_dim
        self.closed = False
        self.graph_calls: list[tuple[Any, str]] = []

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self._inner.encode(ids, mask)
        return out + self._rng.normal(scale=self.noise, size=out.shape).astype(np.float32)

    def enable_cuda_graphs(self, plan: Any, mode: str) -> str:
        self.graph_calls.append((plan, mode))
        return f"on: {len(plan)} shapes"

    def close(self) -> None:
        self.closed = True


def _config(**backend: Any) -> Config:
    return Config(backend=backend)


def test_check_fp16_measures_against_the_stored_fp32_embeddings(tiny_fp16_bundle: Path) -> None:
    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    tok = Tokenizer.from_bundle(bundle)
    good = check_fp16(StandIn(bundle, 1e-4), tok, bundle, texts=32)
    assert good.passed and good.texts == 32 and good.metrics["min_cosine"] > 0.999
    assert good.tolerances == {"min_cosine": 0.995} and good.device == "CUDAExecutionProvider"
    bad = check_fp16(StandIn(bundle, 0.2), tok, bundle, texts=32)
    assert not bad.passed and bad.missed and "min_cosine" in bad.missed[0]
    assert "gate 0.995" in bad.summary() and "32 catalog texts" in bad.summary()


def test_fp16_passing_the_check_serves_fp16_with_cuda_graphs(tiny_fp16_bundle: Path) -> None:
    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    tok = Tokenizer.from_bundle(bundle)
    config = _config(precision="auto", gpu={"fp16_check_texts": 40})
    backend = StandIn(bundle, 1e-4)
    served, choice = finish_gpu_encoder(
        backend, PrecisionChoice("auto", "fp16", "auto: serving fp16"), bundle, tok, config
    )
    assert served is backend and choice.served == "fp16"
    assert "fp16 passed the load-time check on this GPU" in choice.reason
    assert "40 catalog texts" in choice.reason and "CUDA graphs on" in choice.reason
    ((plan, mode),) = backend.graph_calls
    assert mode == "auto" and plan == graph_plan(config, bundle)
    assert plan.lengths[-1] == bundle.max_seq_length and len(plan) > 0


def test_fp16_missing_the_check_serves_fp32_under_auto(tiny_fp16_bundle: Path) -> None:
    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    tok = Tokenizer.from_bundle(bundle)
    backend = StandIn(bundle, 0.2)
    created: list[dict[str, Any]] = []

    def create(b: Bundle, **kw: Any) -> Any:
        created.append(kw)
        return StandIn(b, 0.0, precision=kw["precision"])

    served, choice = finish_gpu_encoder(
        backend,
        PrecisionChoice("auto", "fp16", "auto: serving fp16"),
        bundle,
        tok,
        _config(precision="auto", gpu={"fp16_check_texts": 40}),
        create=create,
    )
    assert backend.closed and served is not backend
    assert created == [
        dict(
            backend="auto",
            precision="fp32",
            provider="auto",
            intra_op_threads=None,
            allow_spinning=True,
            max_batch_size=32,
        )
    ]
    assert choice.served == "fp32" and "fp16 missed the load-time check" in choice.reason
    assert "min_cosine" in choice.reason
    assert len(served.graph_calls) == 1  # the fp32 fallback on the GPU gets its graphs too


def test_explicit_fp16_missing_the_check_fails_start_up(tiny_fp16_bundle: Path) -> None:
    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    backend = StandIn(bundle, 0.2)
    with pytest.raises(
        ConfigError, match=r"precision=fp16: .*misses the accuracy gate.*min_cosine"
    ):
        finish_gpu_encoder(
            backend,
            PrecisionChoice("fp16", "fp16", "fp16"),
            bundle,
            Tokenizer.from_bundle(bundle),
            _config(precision="fp16", gpu={"fp16_check_texts": 40}),
        )
    assert backend.closed


def test_fp16_check_can_be_switched_off(tiny_fp16_bundle: Path) -> None:
    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    backend = StandIn(bundle, 0.2)  # would miss: not checked
    served, choice = finish_gpu_encoder(
        backend,
        PrecisionChoice("fp16", "fp16", "fp16"),
        bundle,
        Tokenizer.from_bundle(bundle),
        _config(precision="fp16", gpu={"fp16_check_texts": 0, "cuda_graphs": "off"}),
    )
    assert served is backend and choice.served == "fp16"
    assert "not checked on this GPU (backend.gpu.fp16_check_texts = 0)" in choice.reason
    assert backend.graph_calls[0][1] == "off"


def test_cpu_encoder_is_left_alone_and_cuda_graphs_on_needs_the_gpu(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    tok = Tokenizer.from_bundle(bundle)
    cpu = create_backend(bundle, precision="fp32", provider="cpu")
    choice = PrecisionChoice("auto", "fp32", "auto: serving fp32")
    served, after = finish_gpu_encoder(cpu, choice, bundle, tok, _config())
    assert served is cpu and after.reason == choice.reason and after.served == "fp32"
    with pytest.raises(ConfigError, match=r"backend\.gpu\.cuda_graphs = on"):
        finish_gpu_encoder(cpu, choice, bundle, tok, _config(gpu={"cuda_graphs": "on"}))


def test_enable_cuda_graphs_on_a_cpu_session(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    backend = create_backend(bundle, precision="fp32", provider="cpu")
    plan = graph_plan(Config(), bundle)
    status = backend.enable_cuda_graphs(plan, "auto")  # type: ignore[attr-defined]
    assert status.startswith("off: the encoder runs on CPUExecutionProvider")
    with pytest.raises(
        ConfigError, match=r"backend\.gpu\.cuda_graphs = on: .*CPUExecutionProvider"
    ):
        backend.enable_cuda_graphs(plan, "on")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="auto, on or off"):
        backend.enable_cuda_graphs(plan, "maybe")  # type: ignore[attr-defined]
    ids = np.array([[101, 7, 102]])
    assert backend.encode(ids, np.ones_like(ids)).shape == (1, bundle.embedding_dim)


def test_gpu_settings_are_validated() -> None:
    assert Config().backend.gpu.cuda_graphs == "auto"
    assert Config(
        backend={"gpu": {"graph_batch_sizes": [8, 1, 8]}}
    ).backend.gpu.graph_batch_sizes == [1, 8]
    with pytest.raises(ValueError, match="graph_batch_sizes"):
        Config(backend={"gpu": {"graph_batch_sizes": [0]}})
    with pytest.raises(ValueError, match="cuda_graphs"):
        Config(backend={"gpu": {"cuda_graphs": "yes"}})


# ------------------------------------------------------------------ on the GPU (hardware)
@pytest.mark.gpu
@needs_cuda_ep
def test_fp16_onnx_on_cuda_matches_fp32(tiny_fp16_bundle: Path) -> None:
    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    tok = Tokenizer.from_bundle(bundle)
    gpu = create_backend(bundle, precision="fp16", provider="cuda")
    info = gpu.describe()
    assert gpu.provider == "CUDAExecutionProvider" and info["model"] == "encoder.fp16.onnx"
    assert info["io_binding"] is True
    check = check_fp16(gpu, tok, bundle, texts=60)
    assert check.passed, check.summary()
    gpu.close()


@pytest.mark.gpu
@needs_cuda_ep
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_graphs_match_the_session_without_graphs(
    tiny_fp16_bundle: Path, precision: str
) -> None:
    """Replayed graphs give what the plain session gives, for new inputs every call (the
    bound buffers are really refilled), batches padded up, chunked, and off-plan lengths."""
    from explorank.engine.backends.cuda_graphs import plan_cuda_graphs

    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    tok = Tokenizer.from_bundle(bundle)
    plain = create_backend(bundle, precision=precision, provider="cuda")
    graphs = create_backend(bundle, precision=precision, provider="cuda")
    plan = plan_cuda_graphs([16, 32], max_seq_length=32, max_batch_size=8)
    status = graphs.enable_cuda_graphs(plan, "on")  # type: ignore[attr-defined]
    assert status.startswith("on:")
    texts = [it.text for it in bundle.items]
    atol = 2e-3 if precision == "fp16" else 1e-5
    for n, cut in ((1, 10), (3, 30), (8, 16), (11, 32), (2, 40)):
        for offset in (0, 20):  # the same shape twice, with other texts
            seqs = [s[:cut] for s in tok.encode_batch(texts[offset : offset + n])]
            ids, mask = tok.pad(seqs)
            np.testing.assert_allclose(graphs.encode(ids, mask), plain.encode(ids, mask), atol=atol)
    assert graphs.describe()["cuda_graphs_captured"] >= 4


@pytest.mark.gpu
@needs_cuda_ep
def test_engine_serves_fp16_on_the_gpu_by_default(tiny_fp16_bundle: Path) -> None:
    from explorank.engine import generation
    from explorank.engine.metrics import EngineMetrics

    bundle = _bundle_with_fp16(tiny_fp16_bundle)
    gen = generation.prepare(Config(), bundle, EngineMetrics())
    try:
        assert gen.backend.precision == "fp16"
        assert gen.backend.provider == "CUDAExecutionProvider"
        assert "fp16 passed the load-time check on this GPU" in gen.precision_choice.reason
        assert gen.backend.describe()["cuda_graphs"].startswith("on:")
    finally:
        gen.backend.close()
