"""Backends: ONNX Runtime on a hand-built ONNX encoder, provider policy, TensorRT gating,
and the cgroup/affinity-aware CPU count.

The tiny encoder is embedding Gather (+ token-type Gather) -> MatMul -> masked mean ->
L2 norm, built with onnx.helper, so every output can be checked against numpy.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explorank.engine.backends import create_backend, cuda_device_count
from explorank.engine.backends.ort import OrtBackend
from explorank.engine.bundle import Bundle
from explorank.engine.cpu import available_cpus, cgroup_cpu_limit
from explorank.errors import BundleError, ConfigError, InvalidArgumentError

VOCAB, DIM = 50, 8
HAS_GPU = cuda_device_count() > 0
no_gpu_only = pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU error path; a GPU is present")


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "emb": rng.normal(size=(VOCAB, DIM)).astype(np.float32),
        "type_emb": rng.normal(size=(2, DIM)).astype(np.float32),
        "proj": rng.normal(size=(DIM, DIM)).astype(np.float32),
    }


def build_encoder(path: Path, *, token_type: bool = False, output: str = "embedding") -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = _weights()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type else [])
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names]
    inits = [numpy_helper.from_array(w["emb"], "emb"), numpy_helper.from_array(w["proj"], "proj")]
    inits += [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_seq"),
        numpy_helper.from_array(np.array([1e-9], dtype=np.float32), "eps"),
    ]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["tok"])]
    x = "tok"
    if token_type:
        inits.append(numpy_helper.from_array(w["type_emb"], "type_emb"))
        nodes += [
            helper.make_node("Gather", ["type_emb", "token_type_ids"], ["typ"]),
            helper.make_node("Add", ["tok", "typ"], ["tok_typ"]),
        ]
        x = "tok_typ"
    nodes += [
        helper.make_node("MatMul", [x, "proj"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis_last"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis_seq"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis_seq"], ["c"], keepdims=0),
        helper.make_node("Max", ["c", "eps"], ["c2"]),
        helper.make_node("Div", ["s", "c2"], ["mean"]),
        helper.make_node("LpNormalization", ["mean"], [output], axis=1, p=2),
    ]
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", DIM])
    graph = helper.make_graph(nodes, "tiny_encoder", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def reference(ids: np.ndarray, mask: np.ndarray, *, token_type: bool = False) -> np.ndarray:
    w = _weights()
    x = w["emb"][ids]
    if token_type:
        x = x + w["type_emb"][np.zeros_like(ids)]
    h = x @ w["proj"]
    m = mask[..., None].astype(np.float32)
    mean = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def make_bundle(
    root: Path,
    *,
    token_type: bool = False,
    manifest_inputs: list[str] | None = None,
    int8: bool = False,
    **encoder_extra: Any,
) -> Bundle:
    root.mkdir(parents=True, exist_ok=True)
    build_encoder(root / "encoder.onnx", token_type=token_type)
    precisions = ["fp32"]
    encoder: dict[str, Any] = {
        "inputs": manifest_inputs
        or (["input_ids", "attention_mask"] + (["token_type_ids"] if token_type else [])),
        "output": "embedding",
        "fp32": "encoder.onnx",
        "tensorrt": None,
    }
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # 7-bit weights (reduce_range): plain int8 weights saturate the u8s8 kernels of
        # CPUs without VNNI, and this test must not depend on the CPU it runs on.
        quantize_dynamic(
            root / "encoder.onnx",
            root / "encoder.int8.onnx",
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
        )
        encoder["int8"] = "encoder.int8.onnx"
        precisions.append("int8")
    encoder.update(encoder_extra)
    manifest = {
        "format_version": 1,
        "embedding_dim": DIM,
        "max_seq_length": 32,
        "encoder": encoder,
        "precisions": precisions,
        "heads": {},
        "catalog": {},
        "files": {},
        "parity": {},
    }
    return Bundle(
        path=root,
        manifest=manifest,
        items=[],
        item_embeddings=np.zeros((0, DIM), np.float32),
        index={},
    )


def random_batch(
    rng: np.random.Generator, n: int = 5, width: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(1, VOCAB, size=(n, width))
    mask = np.zeros_like(ids)
    for row in range(n):
        mask[row, : rng.integers(1, width + 1)] = 1
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_bundle(tmp_path_factory.mktemp("bundle"), int8=True)


# ---------------------------------------------------------------- ONNX Runtime, CPU
def test_ort_cpu_matches_numpy(bundle: Bundle) -> None:
    backend = create_backend(bundle, provider="cpu", intra_op_threads=1)
    ids, mask = random_batch(np.random.default_rng(1))
    out = backend.encode(ids, mask)
    assert out.dtype == np.float32 and out.shape == (5, DIM)
    np.testing.assert_allclose(out, reference(ids, mask), atol=1e-5)
    assert backend.name == "onnxruntime"
    assert backend.provider == "CPUExecutionProvider"
    info = backend.describe()
    assert info["provider"] == "CPUExecutionProvider" and info["intra_op_threads"] == 1
    assert info["precision"] == "fp32" and info["embedding_dim"] == DIM
    backend.close()


@pytest.mark.parametrize(("allow", "entry", "said"), [(False, "0", "off"), (True, "1", "on")])
def test_intra_op_spinning_reaches_the_session(
    bundle: Bundle, allow: bool, entry: str, said: str
) -> None:
    backend = create_backend(bundle, provider="cpu", intra_op_threads=2, allow_spinning=allow)
    assert isinstance(backend, OrtBackend)
    opts = backend._session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == entry
    assert backend.describe()["intra_op_spinning"] == said
    ids, mask = random_batch(np.random.default_rng(2))
    np.testing.assert_allclose(backend.encode(ids, mask), reference(ids, mask), atol=1e-5)
    backend.close()
    default = create_backend(bundle, provider="cpu", intra_op_threads=1)
    assert default.describe()["intra_op_spinning"] == "default (on)"
    default.close()


def test_burst_session_runs_a_batch_when_told_and_tells_the_peers(bundle: Bundle) -> None:
    """``serve --workers``: a worker pinned to one CPU holds a second session with a thread
    per CPU of the group and runs a batch on it when ``when()`` says the others are idle;
    every batch, on either session, is reported to the peers (started, then ended)."""
    import os

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        pytest.skip(f"needs two CPUs to borrow one; this process may use {len(cpus)}")
    backend = create_backend(bundle, provider="cpu", intra_op_threads=1)
    assert isinstance(backend, OrtBackend)
    calls: list[str] = []

    class Peers:
        idle = False

        def others_idle(self) -> bool:
            return self.idle

        def started(self) -> None:
            calls.append("started")

        def ended(self) -> None:
            calls.append("ended")

    peers = Peers()
    mine = os.sched_getaffinity(0)
    ids, mask = random_batch(np.random.default_rng(3))
    assert backend.warm_burst(ids, mask) is None  # no burst session yet
    assert not backend.enable_burst(cpus[:1], peers)  # no more CPUs than it has
    assert backend.enable_burst(cpus, peers)
    assert os.sched_getaffinity(0) == mine  # widened only while the session was made
    # its threads stop spinning when a batch ends (they run on the other workers' cores)
    opts = backend._burst.get_session_options()
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    own = backend.encode(ids, mask)
    assert backend.burst_batches == 0
    warm = backend.warm_burst(ids, mask)  # the warm-up's run: no peer told, none counted
    assert warm is not None and backend.burst_batches == 0 and calls == ["started", "ended"]
    np.testing.assert_allclose(warm, own, atol=1e-5)
    peers.idle = True
    burst = backend.encode(ids, mask)
    assert backend.burst_batches == 1
    np.testing.assert_allclose(burst, own, atol=1e-5)
    np.testing.assert_allclose(burst, reference(ids, mask), atol=1e-5)
    assert calls == ["started", "ended"] * 2
    info = backend.describe()
    assert info["burst_threads"] == len(cpus) and info["burst_batches"] == 1
    backend.close()
    assert not backend.enable_burst(cpus, peers)  # closed


def test_lanes_compute_side_by_side_only_while_batches_overlap(bundle: Bundle) -> None:
    """``backend.lanes``: one-thread sessions per lane, used while another lane computes
    (or batches overlapped within ``quiet_s``); a batch alone runs on the session with every
    thread. Every session gives the same embeddings."""
    backend = create_backend(bundle, provider="cpu", intra_op_threads=2)
    assert isinstance(backend, OrtBackend)
    ids, mask = random_batch(np.random.default_rng(4))
    expected = reference(ids, mask)
    assert backend.enable_lanes(1) == 1 and backend.extra_sessions() == []
    assert backend.enable_lanes(5, quiet_s=60.0) == 2  # at most one lane per thread
    assert backend.enable_lanes(2) == 2  # already on: unchanged
    assert backend.lanes == 2 and backend.lane_threads == 1 and len(backend._lanes) == 2
    for session in backend._lanes:
        assert session.get_session_options().intra_op_num_threads == 1
    # serial work (this thread alone, as lane 0): the full session, no lane batch
    backend.bind_lane(0)
    for _ in range(3):
        np.testing.assert_allclose(backend.encode(ids, mask), expected, atol=1e-5)
    assert backend.lane_batches == 0
    # lane 1 computing: a thread bound to no lane still runs on the full session ...
    other = backend._lane_peers[1]
    other.started()
    unbound = ThreadPoolExecutor(1).submit(backend.encode, ids, mask).result()
    np.testing.assert_allclose(unbound, expected, atol=1e-5)
    assert backend.lane_batches == 0
    # ... and lane 0's batch goes to lane 0's session
    np.testing.assert_allclose(backend.encode(ids, mask), expected, atol=1e-5)
    assert backend.lane_batches == 1
    other.ended()
    # the overlap is recent (quiet_s = 60 s): the next batch stays on its lane too
    np.testing.assert_allclose(backend.encode(ids, mask), expected, atol=1e-5)
    assert backend.lane_batches == 2
    # the warm-up runs each lane's session (one shape per length), counting no batch
    extra = backend.extra_sessions()
    assert [(label, every) for label, _, every in extra] == [
        ("encoder lane 1 of 2", False),
        ("encoder lane 2 of 2", False),
    ]
    for _, fn, _ in extra:
        np.testing.assert_allclose(fn(ids, mask), expected, atol=1e-5)
    assert backend.lane_batches == 2
    info = backend.describe()
    assert (info["lanes"], info["lane_threads"], info["lane_batches"]) == (2, 1, 2)
    backend.close()
    assert backend.extra_sessions() == []
    single = create_backend(bundle, provider="cpu", intra_op_threads=1)
    assert single.enable_lanes(2) == 1  # one thread: nothing to share out
    assert "lanes" not in single.describe()
    single.close()


def test_lanes_split_the_threads_and_stop_spinning(bundle: Bundle) -> None:
    backend = create_backend(bundle, provider="cpu", intra_op_threads=4)
    assert isinstance(backend, OrtBackend)
    assert backend.enable_lanes(2) == 2 and backend.lane_threads == 2
    for session in backend._lanes:
        opts = session.get_session_options()
        assert opts.intra_op_num_threads == 2
        # an idle lane's threads must not hold a core the other lane needs
        assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    backend.close()


@pytest.mark.parametrize(
    ("lanes", "threads", "expected"), [("auto", 2, 2), (1, 2, 1), ("auto", 1, 1)]
)
def test_prepare_gives_the_encoder_its_lanes(
    tiny_bundle: Path, lanes: object, threads: int, expected: int
) -> None:
    """``backend.lanes`` reaches the served encoder and the batcher computes that many
    batches at once ("auto": two where there are two threads to share out)."""
    import asyncio

    from explorank.engine import generation
    from explorank.engine.bundle import load_bundle
    from explorank.engine.config import load_config
    from explorank.engine.metrics import EngineMetrics

    cfg = load_config(
        environ={},
        overrides={"backend": {"lanes": lanes, "intra_op_threads": threads, "provider": "cpu"}},
    )
    gen = generation.prepare(cfg, load_bundle(tiny_bundle), EngineMetrics())
    try:
        assert gen.backend.lanes == expected

        async def shape() -> tuple[int, int]:
            await gen.embedder.start(warmup=False)
            try:
                batcher = gen.embedder.batcher
                return int(batcher._max_inflight), int(batcher.max_batch_size)
            finally:
                await gen.embedder.stop()

        # on a lane a batch holds batching.lane_batch_size (4) per lane thread
        assert asyncio.run(shape()) == (expected, 4 if expected > 1 else 32)
    finally:
        gen.backend.close()


def test_padding_does_not_change_embeddings(bundle: Bundle) -> None:
    """What length bucketing relies on: a sequence's row is the same at any padded width."""
    backend = create_backend(bundle, provider="cpu")
    seq = np.array([[4, 9, 17, 3]])
    alone = backend.encode(seq, np.ones_like(seq))
    padded = np.zeros((3, 32), dtype=np.int64)
    padded[1, :4] = seq
    mask = np.zeros_like(padded)
    mask[:, :2] = 1
    mask[1, :4] = 1
    np.testing.assert_allclose(backend.encode(padded, mask)[1], alone[0], atol=1e-6)


def test_token_type_ids_fed_as_zeros(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, token_type=True)
    backend = create_backend(b, provider="cpu")
    ids, mask = random_batch(np.random.default_rng(2))
    np.testing.assert_allclose(
        backend.encode(ids, mask), reference(ids, mask, token_type=True), atol=1e-5
    )


def test_int8_is_close_to_fp32(bundle: Bundle) -> None:
    fp32 = create_backend(bundle, precision="fp32", provider="cpu")
    int8 = create_backend(bundle, precision="int8")
    assert int8.precision == "int8" and int8.describe()["model"] == "encoder.int8.onnx"
    assert int8.provider == "CPUExecutionProvider"
    ids, mask = random_batch(np.random.default_rng(3), n=16)
    cos = (fp32.encode(ids, mask) * int8.encode(ids, mask)).sum(1)
    assert cos.min() > 0.98


def test_encode_rejects_bad_batches(bundle: Bundle) -> None:
    backend = create_backend(bundle, provider="cpu")
    with pytest.raises(InvalidArgumentError, match="attention_mask"):
        backend.encode(np.ones((2, 4), np.int64), np.ones((2, 5), np.int64))
    with pytest.raises(InvalidArgumentError, match="input_ids"):
        backend.encode(np.ones(4, np.int64), np.ones(4, np.int64))
    with pytest.raises(InvalidArgumentError):
        backend.encode(np.ones((2, 4), np.float32), np.ones((2, 4), np.int64))


def test_manifest_graph_mismatches_are_bundle_errors(tmp_path: Path) -> None:
    wrong_input = make_bundle(
        tmp_path / "a", manifest_inputs=["input_ids", "attention_mask", "token_type_ids"]
    )
    with pytest.raises(BundleError, match="token_type_ids"):
        create_backend(wrong_input, provider="cpu")
    missing_input = make_bundle(
        tmp_path / "b", token_type=True, manifest_inputs=["input_ids", "attention_mask"]
    )
    with pytest.raises(BundleError, match="token_type_ids"):
        create_backend(missing_input, provider="cpu")
    wrong_output = make_bundle(tmp_path / "c", output="pooled")
    with pytest.raises(BundleError, match="pooled"):
        create_backend(wrong_output, provider="cpu")
    wrong_dim = make_bundle(tmp_path / "d")
    wrong_dim.manifest["embedding_dim"] = DIM + 1
    backend = create_backend(wrong_dim, provider="cpu")
    with pytest.raises(BundleError, match="embedding_dim"):
        backend.encode(np.ones((1, 3), np.int64), np.ones((1, 3), np.int64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "torch"}, "backend"),
        ({"precision": "bf16"}, "precision"),
        ({"provider": "rocm"}, "provider"),
        ({"intra_op_threads": 0}, "intra_op_threads"),
        ({"precision": "int8", "provider": "cuda"}, "CPU only"),
        ({"precision": "fp16", "provider": "cpu"}, "fp16"),
        ({"backend": "tensorrt", "provider": "cpu"}, "contradicts"),
        ({"backend": "tensorrt"}, "no TensorRT plan"),
    ],
)
def test_config_errors(bundle: Bundle, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_backend(bundle, **kwargs)


def test_int8_missing_from_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no INT8 encoder"):
        create_backend(make_bundle(tmp_path), precision="int8")


@no_gpu_only
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_without_gpu_is_a_clear_error(bundle: Bundle, provider: str) -> None:
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
        create_backend(bundle, provider=provider)


@no_gpu_only
def test_auto_without_gpu_runs_on_cpu(bundle: Bundle) -> None:
    backend = create_backend(bundle)  # auto/auto/fp32
    assert backend.name == "onnxruntime" and backend.provider == "CPUExecutionProvider"


@no_gpu_only
def test_auto_falls_back_from_tensorrt_plan_with_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "encoder.plan").write_bytes(b"not a real plan")
    b = make_bundle(
        tmp_path, tensorrt={"path": "encoder.plan", "precision": "fp16", "profiles": []}
    )
    b.manifest["precisions"].append("fp16")
    with caplog.at_level(logging.INFO, logger="explorank.engine.backends"):
        backend = create_backend(b, backend="auto", precision="fp32", provider="auto")
    assert backend.name == "onnxruntime"
    assert "not using the native TensorRT plan" in caplog.text and "fp16" in caplog.text
    with pytest.raises(ConfigError, match="backend=tensorrt"):
        create_backend(b, backend="tensorrt", precision="fp16")
    auto = create_backend(b, precision="auto")  # the plan cannot run here: fp32 on ORT
    assert auto.name == "onnxruntime" and auto.precision == "fp32"


def test_provider_attempt_order_with_a_gpu() -> None:
    """The auto policy as a pure function: TensorRT EP -> CUDA EP -> CPU when a GPU exists."""
    all_eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def attempts(
        provider: str, precision: str, gpus: int, available: list[str] = all_eps
    ) -> list[list[str]]:
        lists = OrtBackend._provider_attempts(
            provider,
            precision,
            available=available,
            gpus=gpus,
            max_batch_size=8,
            max_seq_length=32,
            trt_cache_dir=Path("/nonexistent/never-created") if provider == "cpu" else _tmp_cache(),
            input_names=["input_ids", "attention_mask"],
        )
        return [[p[0] if isinstance(p, tuple) else p for p in ps] for ps in lists]

    assert attempts("auto", "fp32", 1) == [all_eps, all_eps[1:], all_eps[2:]]
    assert attempts("auto", "fp32", 0) == [["CPUExecutionProvider"]]  # listed EPs but no GPU
    assert attempts("auto", "int8", 1) == [["CPUExecutionProvider"]]
    assert attempts("auto", "fp16", 1) == [all_eps]
    assert attempts("auto", "fp32", 1, all_eps[1:]) == [all_eps[1:], all_eps[2:]]
    assert attempts("cuda", "fp32", 1) == [all_eps[1:]]
    with pytest.raises(ConfigError, match="lacks TensorrtExecutionProvider"):
        attempts("tensorrt", "fp32", 1, all_eps[1:])
    with pytest.raises(ConfigError, match="fp16"):
        attempts("auto", "fp16", 0)
    opts = OrtBackend._provider_attempts(
        "tensorrt",
        "fp16",
        available=all_eps,
        gpus=1,
        max_batch_size=8,
        max_seq_length=32,
        trt_cache_dir=_tmp_cache(),
        input_names=["input_ids", "attention_mask"],
    )[0][0][1]
    assert opts["trt_fp16_enable"] is True
    assert opts["trt_profile_max_shapes"] == "input_ids:8x32,attention_mask:8x32"


def _tmp_cache() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="explorank-trt-cache-"))


# ---------------------------------------------------------------- GPU / TensorRT (hardware)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with CUDA")
def test_cuda_provider_matches_cpu(bundle: Bundle) -> None:
    gpu = create_backend(bundle, provider="cuda")
    assert gpu.provider == "CUDAExecutionProvider" and gpu.describe()["io_binding"] is True
    ids, mask = random_batch(np.random.default_rng(4), n=8)
    np.testing.assert_allclose(gpu.encode(ids, mask), reference(ids, mask), atol=1e-4)


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and TensorRT")
def test_native_tensorrt_plan_matches_reference(tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt", reason="needs the tensorrt Python package")
    pytest.importorskip("cuda", reason="needs cuda-python")
    b = make_bundle(tmp_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((tmp_path / "encoder.onnx").read_bytes())
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    for seq in (16, 32):
        profile = builder.create_optimization_profile()
        for name in ("input_ids", "attention_mask"):
            profile.set_shape(name, (1, 1), (4, seq), (8, seq))
        config.add_optimization_profile(profile)
    (tmp_path / "encoder.plan").write_bytes(
        bytes(builder.build_serialized_network(network, config))
    )
    b.manifest["encoder"]["tensorrt"] = {
        "path": "encoder.plan",
        "precision": "fp16",
        "profiles": [16, 32],
    }
    b.manifest["precisions"].append("fp16")
    backend = create_backend(b, backend="tensorrt", precision="fp16")
    assert backend.name == "tensorrt" and len(backend.describe()["profiles"]) == 2
    for width in (12, 30):
        ids, mask = random_batch(np.random.default_rng(width), n=6, width=width)
        cos = (backend.encode(ids, mask) * reference(ids, mask)).sum(1)
        assert cos.min() > 0.999
    backend.close()


# ---------------------------------------------------------------- CPU count (cgroups)
def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    _write(tmp_path, "proc/self/cgroup", "0::/\n")
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    assert available_cpus(tmp_path, affinity=8) == 1  # floored: no throttled extra thread
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "400000 100000\n")
    assert available_cpus(tmp_path, affinity=8) == 4
    assert available_cpus(tmp_path, affinity=2) == 2  # affinity is smaller
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path, affinity=6) == 6


def test_cgroup_v2_nested_takes_tightest_ancestor(tmp_path: Path) -> None:
    _write(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    _write(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n")
    _write(tmp_path, "sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000\n")
    _write(tmp_path, "sys/fs/cgroup/kubepods/cpu.max", "800000 100000\n")
    assert available_cpus(tmp_path, affinity=16) == 3


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    _write(tmp_path, "proc/self/cgroup", "4:memory:/x\n1:cpu,cpuacct:/\n")
    _write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "200000\n")
    _write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert available_cpus(tmp_path, affinity=16) == 2
    _write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    assert available_cpus(tmp_path, affinity=16) == 16


def test_tiny_quota_and_empty_tree_give_at_least_one(tmp_path: Path) -> None:
    assert available_cpus(tmp_path, affinity=3) == 3  # no cgroup files at all
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "10000 100000\n")  # 0.1 CPU
    assert available_cpus(tmp_path, affinity=3) == 1
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "garbage\n")
    assert available_cpus(tmp_path, affinity=3) == 3


def test_real_machine_count_is_sane() -> None:
    import os

    n = available_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)


# ---------------------------------------------------------------- a real exported bundle
def test_tiny_bundle_reproduces_stored_item_embeddings(tiny_bundle: Path) -> None:
    """Tokenizer + ORT backend (fp32, and through the bucketing batcher) reproduce the
    catalog embeddings the exporter stored; int8 stays close."""
    import asyncio

    from explorank.engine.batcher import DynamicBatcher
    from explorank.engine.bundle import load_bundle
    from explorank.engine.tokenizer import Tokenizer

    b = load_bundle(tiny_bundle)
    tok = Tokenizer.from_bundle(b)
    seqs = tok.encode_batch([item.text for item in b.items])
    assert max(len(s) for s in seqs) <= b.max_seq_length
    backend = create_backend(b, precision="fp32", provider="cpu", intra_op_threads=1)
    assert backend.embedding_dim == b.embedding_dim
    ids, mask = tok.pad(seqs)
    direct = backend.encode(ids, mask)
    cos = (direct * b.item_embeddings).sum(1) / (
        np.linalg.norm(direct, axis=1) * np.linalg.norm(b.item_embeddings, axis=1)
    )
    assert cos.min() > 0.9999

    async def batched() -> np.ndarray:
        batcher = DynamicBatcher(
            backend.encode, max_batch_size=8, max_queue_delay_ms=1, pad_id=tok.pad_id
        )
        await batcher.start()
        out = await batcher.submit_many(seqs)
        await batcher.stop()
        assert batcher.stats.padding_efficiency > 0.5
        return out

    via_batcher = asyncio.run(batched())
    assert (via_batcher * b.item_embeddings).sum(1).min() > 0.9999


def test_gated_int8_stays_close_to_stored_embeddings(tiny_int8_bundle: Path) -> None:
    from explorank.engine.bundle import load_bundle
    from explorank.engine.tokenizer import Tokenizer

    b = load_bundle(tiny_int8_bundle)
    tok = Tokenizer.from_bundle(b)
    ids, mask = tok.pad(tok.encode_batch([item.text for item in b.items]))
    int8 = create_backend(b, precision="int8")
    assert (int8.encode(ids, mask) * b.item_embeddings).sum(1).min() > 0.99


def test_closed_backend_refuses_work(bundle: Bundle) -> None:
    backend = create_backend(bundle, provider="cpu")
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        backend.encode(np.ones((1, 3), np.int64), np.ones((1, 3), np.int64))


def test_auto_precision_prefers_gated_int8_on_cpu(tiny_int8_bundle: Path) -> None:
    from explorank.engine.bundle import load_bundle

    bundle = load_bundle(tiny_int8_bundle)
    assert "int8" in bundle.precisions
    auto = create_backend(bundle, precision="auto", provider="cpu")
    assert auto.precision == "int8"
    assert create_backend(bundle, precision="fp32", provider="cpu").precision == "fp32"
